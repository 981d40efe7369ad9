"""masb: the single command-line door for people (units, partners, auditors, operators).

One module per command group (agents/cli/<group>.py), each with ``register(subparsers)``; this
module builds the parser and is the one place where failures become messages and exit codes:

    0  OK                                      3  Kafka unavailable (connection, timeout)
    1  a check or verification found a problem 4  Kafka refused the operation (authentication, ACLs)
    2  usage error or invalid input            130 interrupted (Ctrl-C)
    70 a bug in MASB: the traceback is printed 143 terminated (SIGTERM), after a clean stop
                                               141 the reader of stdout went away (`| head`)

Expected failures print one line (``masb: <what> ...``, naming the file, key, field or broker at
fault) and at most a hint; ``--verbose`` adds the traceback. Settings come from flags first, then
MASB_* environment variables (docs/cli.md). No command prints personal data except the decrypted
events `masb consume` exists to show to their entitled recipient.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import traceback

from streams.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_BUG,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    MasbError,
)

GROUPS = ("demo", "worker", "publish", "ingest", "consume", "status", "keys", "policy", "schemas", "audit", "dlq",
          "witness", "acl")


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors in the form of every other error: one line, then a hint."""

    def error(self, message: str):
        where = "" if self.prog == "masb" else f"{self.prog.removeprefix('masb ')}: "
        _say(f"{where}{message}\nsee `{self.prog} --help`")
        sys.exit(2)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("masb")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = _Parser(prog="masb", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"masb {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show tracebacks and debug logging of the client libraries (env MASB_VERBOSE=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        importlib.import_module(f"agents.cli.{group}").register(sub)
    return parser


def _say(text: str) -> None:
    # Values a message echoes are cut where it is made (streams.errors.shown); this bounds what
    # slips through (argparse's own messages): no word of thousands of characters floods a terminal.
    from streams.errors import shown

    text = re.sub(r"\S{201,}", lambda m: shown(m.group(), 200), text)
    lines = text.splitlines() or [""]
    print(f"masb: {lines[0]}", file=sys.stderr)
    for line in lines[1:]:
        print(f"  {line}", file=sys.stderr)


def _quiet_client_libraries(verbose: bool) -> None:
    """aiokafka logs every refused connection at ERROR; the command reports the outcome itself."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.CRITICAL, format="%(name)s: %(message)s")
    for name in ("aiokafka", "kafka", "asyncio"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.CRITICAL)


class Terminated(BaseException):
    """SIGTERM: unwinds the command like Ctrl-C does, so that its Kafka clients are closed."""


def _terminate(signum, frame) -> None:
    raise Terminated


def run(args) -> int:
    """Run the parsed command; every failure becomes a message and an exit code."""
    verbose = args.verbose or os.environ.get("MASB_VERBOSE") == "1"
    if args.command not in ("worker", "ingest"):  # those configure their own service logging and stop
        _quiet_client_libraries(verbose)
        signal.signal(signal.SIGTERM, _terminate)
    try:
        code = args.func(args) or EXIT_OK
        sys.stdout.flush()  # here, where a reader that went away is an answer, not a shutdown error
        return code
    except BrokenPipeError:
        # The reader went away (`masb consume | head`): stop quietly, as other tools do on SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    except Terminated:
        _say("terminated")
        return EXIT_TERMINATED
    except Exception as exc:  # noqa: BLE001 - the one place where failures become exit codes
        error = _as_masb_error(exc, args)
        if error is None:
            traceback.print_exc()
            _say(f"internal error ({type(exc).__name__}): this is a bug in MASB; please report it with the "
                 "traceback above")
            return EXIT_BUG
        if verbose:
            traceback.print_exc()
        _say(error.diagnostics())
        return error.exit_code


def _as_masb_error(exc: Exception, args) -> MasbError | None:
    from aiokafka.errors import KafkaError

    from agents.cli.common import bootstrap
    from streams.kafka import broker_error

    if isinstance(exc, MasbError):
        return exc
    if isinstance(exc, (KafkaError, TimeoutError)):
        try:
            server = bootstrap(args)
        except MasbError:  # not an address at all: say what the client said about it
            server = str(getattr(args, "bootstrap", None) or os.environ.get("MASB_BOOTSTRAP"))
        return broker_error(exc, server)
    return None


def main(argv: list[str] | None = None) -> int:
    problem = _not_text(sys.argv[1:] if argv is None else argv)
    if problem:
        _say(f"{problem} is not valid UTF-8 text\nevery argument and MASB_* setting is UTF-8 text")
        return EXIT_USAGE
    from agents.cli.common import refuse_empty_arguments

    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors: argparse prints usage and exits 2
    refuse_empty_arguments(parser, args)  # `--bootstrap ''` is a mistake, not the default (exit 2 too)
    return run(args)


def _not_text(argv: list[str]) -> str | None:
    """What is not UTF-8 text (Python keeps such bytes as lone surrogates): 'argument N' or the
    setting's name; never the value, which may be a case reference."""
    def text(value: str) -> bool:
        try:
            value.encode("utf-8")
            return True
        except UnicodeEncodeError:
            return False

    bad = next((n for n, value in enumerate(argv, start=1) if not text(value)), None)
    if bad is not None:
        return f"argument {bad}"
    return next((name for name, value in os.environ.items() if name.startswith("MASB_") and not text(value)), None)


if __name__ == "__main__":
    sys.exit(main())
