"""One base error for everything MASB refuses on purpose, and the exit codes of the `masb` command.

Every expected failure is a :class:`MasbError`. It knows how to explain itself to a person:
:meth:`MasbError.diagnostics` is one line naming the thing at fault (a file, a key, a field path, a
broker address, a principal), optionally followed by a short hint; it never holds personal data
(event values), only names, paths, ids and codes. The CLI prints it and exits with
:attr:`MasbError.exit_code`; only a real bug prints a traceback (docs/cli.md, "Exit codes").

Library errors subclass the kind that fits, so callers may catch the specific class
(``PolicyError``) or the kind (``InvalidInput``) or everything (``MasbError``).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1       # a check or verification ran and found a problem
EXIT_USAGE = 2        # bad flags or invalid input (a file, a policy, an event, a key)
EXIT_UNAVAILABLE = 3  # the broker (or another service) could not be reached in time
EXIT_DENIED = 4       # the broker refused the operation: authentication or authorization
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), as shells report it
EXIT_TERMINATED = 143   # SIGTERM, after a clean stop: what a shell reports for a process SIGTERM ended
EXIT_BROKEN_PIPE = 141  # the reader of standard output went away (`masb consume | head`), as SIGPIPE reports
EXIT_BUG = 70         # an unexpected error: a bug in MASB (EX_SOFTWARE)


class MasbError(Exception):
    """A failure MASB expects and can explain.

    ``message`` names the thing at fault; ``hint`` (optional) says what to do about it.
    """

    exit_code = EXIT_USAGE

    def __init__(self, message: str = "", *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def diagnostics(self) -> str:
        """What to show a person: the message, then the hint on its own line (if any)."""
        text = str(self) or type(self).__name__
        return f"{text}\nhint: {self.hint}" if self.hint else text


class InvalidInput(MasbError):
    """Bad flags or invalid input: a file, a policy, an event, a key, a schema (exit 2)."""

    exit_code = EXIT_USAGE


class CheckFailed(MasbError):
    """A check or verification ran to the end and found a problem (exit 1)."""

    exit_code = EXIT_FAILED


class BrokerUnavailable(MasbError):
    """The broker at ``bootstrap`` could not be reached or did not answer in time (exit 3)."""

    exit_code = EXIT_UNAVAILABLE

    def __init__(self, bootstrap: str, detail: str = "", *, hint: str | None = None) -> None:
        self.bootstrap = bootstrap
        text = f"Kafka at {bootstrap} is unavailable" + (f": {detail}" if detail else "")
        super().__init__(text, hint=hint or "check --bootstrap / MASB_BOOTSTRAP and that the broker is running")


class AccessDenied(MasbError):
    """The broker refused an operation to this principal (exit 4)."""

    exit_code = EXIT_DENIED


SHOWN_MAX = 80  # characters of a value a message echoes


def shown(value: object, limit: int = SHOWN_MAX) -> str:
    """``value`` as text to echo in a message, cut to ``limit`` characters with an ellipsis: a
    mistyped or pasted setting of thousands of characters must not flood the terminal."""
    text = str(value)
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def why_unreadable(exc: BaseException) -> str:
    """A person's words for why a file could not be read: "not found", "is a directory",
    "permission denied", "not UTF-8 text", else the exception's class name."""
    if isinstance(exc, FileNotFoundError):
        return "not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return f"cannot be read ({type(exc).__name__})"
