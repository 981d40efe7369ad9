"""What every `masb` command group shares: settings from flags or MASB_* variables, the policy and
topics they name, reading JSON input, and progress on long work.

Settings: a flag wins, then its environment variable, then the default (docs/cli.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from agents.settings import bootstrap_of, env_or, positive_number, range_in_words
from streams.errors import InvalidInput, shown


class UsageError(InvalidInput):
    """A command given something it cannot use: a missing file, a wrong kind of key, an unknown id."""


def kafka_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", help="Kafka bootstrap servers host:port (env MASB_BOOTSTRAP)")
    p.add_argument("--topic-prefix", help="prefix of every topic name (env MASB_TOPIC_PREFIX)")


def policy_flag(p: argparse.ArgumentParser, help_text: str = "sharing policy YAML (env MASB_POLICY)") -> None:
    p.add_argument("--policy", help=help_text)


def pseudonym_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pseudonym-key", help="the case pseudonym key file (env MASB_PSEUDONYM_KEY; default: the "
                                           "newest *.secret in --keys-dir / MASB_KEYS_DIR)")


def pseudonym_keys(args):
    """The unit's case pseudonym keys (docs/keys.md): --pseudonym-key, MASB_PSEUDONYM_KEY, or the
    *.secret files of the keys directory."""
    from streams.crypto.pseudonym import PseudonymKeys

    path = env_or(getattr(args, "pseudonym_key", None), "MASB_PSEUDONYM_KEY", None)
    if path:
        return PseudonymKeys.load_files([existing_file(path, "pseudonym key file")])
    keys_dir = env_or(getattr(args, "keys_dir", None), "MASB_KEYS_DIR", "keys")
    if not Path(keys_dir).is_dir():
        raise UsageError("no case pseudonym key given",
                         hint="use --pseudonym-key FILE, MASB_PSEUDONYM_KEY, or --keys-dir holding it (docs/keys.md)")
    return PseudonymKeys.load_dir(keys_dir)


def bootstrap(args) -> str:
    """--bootstrap, MASB_BOOTSTRAP or the default, checked: HOST:PORT[,HOST:PORT...] (else exit 2)."""
    return bootstrap_of(args)


def topics(args):
    from streams.topics import Topics

    return Topics(env_or(getattr(args, "topic_prefix", None), "MASB_TOPIC_PREFIX", ""))


def existing_topics(args, operation: str, *names: str) -> None:
    """Refuse (exit 2, naming the topic and the prefix in use) if a topic the command would
    ``operation`` (READ, WRITE) does not exist; never creates one (streams.kafka.require_topics)."""
    import asyncio

    from streams.kafka import require_topics, topic_hint

    asyncio.run(require_topics(bootstrap(args), names, operation, hint=topic_hint(topics(args).prefix)))


def existing_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` if it names a readable regular file; else a UsageError naming it."""
    if str(path) == "":  # Path("") is ".", the current directory
        raise UsageError(f"{what}: the path is empty")
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{what} {path} not found")
    if path.is_dir():
        raise UsageError(f"{what} {path} is a directory, not a file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{what} {path} is not readable")
    return path


def existing_dir(path: str | os.PathLike, what: str) -> Path:
    if str(path) == "":
        raise UsageError(f"{what}: the path is empty")
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{what} {path} not found")
    if not path.is_dir():
        raise UsageError(f"{what} {path} is not a directory")
    return path


def output_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` if a file can be written there: not a directory, in an existing writable folder;
    else a UsageError naming it. Checked before any work, so that a typo fails at once."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a directory; give a file name")
    _writable_folder(path, what)
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{what} {path} is not writable")
    return path


def output_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` if it is a directory, or can be made one: its parent folder exists and is writable
    (an output folder is created, never its parents: a mistyped path fails instead of growing a
    tree). Call ``.mkdir(exist_ok=True)`` only once every other input is checked."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path} is a file, not a directory")
    if not path.exists():
        _writable_folder(path, what)
    return path


def _writable_folder(path: Path, what: str) -> None:
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"{what} {path}: folder {folder} not found" if not folder.exists()
                         else f"{what} {path}: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: folder {folder} is not writable")


def given(value: str, flag: str, what: str) -> str:
    """``value`` unless it is empty or blank (a flag given as '' or an unset shell variable):
    then a UsageError naming the flag, not a message about an id with nothing in it."""
    if not value.strip():
        raise UsageError(f"{flag} is empty: give {what}")
    return value


def policy_path(args) -> Path:
    value = env_or(getattr(args, "policy", None), "MASB_POLICY", None)
    if value is None:
        if not Path("policy.yaml").exists():
            raise UsageError("no sharing policy given", hint="use --policy FILE or set MASB_POLICY")
        value = "policy.yaml"
    return existing_file(value, "policy file")


def load_policy(args):
    """The policy the command's flags or MASB_POLICY name; PolicyError (exit 2) if it is invalid."""
    return load_policy_file(policy_path(args))


def load_policy_file(path: str | os.PathLike):
    """A valid policy from ``path``; InvalidInput naming the file and every problem otherwise."""
    from streams.policy import PolicyError
    from streams.policy import load_policy as load

    path = existing_file(path, "policy file")
    try:
        return load(path)
    except PolicyError as exc:
        raise InvalidInput(f"policy file {path} is invalid: {exc}") from None


def read_events(source: str) -> list[dict]:
    """JSON events from a file or '-' (stdin): one object, an array, or one object per line, read
    strictly (streams/jsonin.py: repeated keys, lone surrogates, NaN... are refused)."""
    from streams.jsonin import JsonInputError, loads_events

    name = "standard input" if source == "-" else source
    data = sys.stdin.buffer.read() if source == "-" else existing_file(source, "input file").read_bytes()
    try:
        events = loads_events(data, source=name)
    except JsonInputError as exc:
        raise UsageError(str(exc)) from None
    if not events:
        raise UsageError(f"no event in {name}")
    return events


def print_json(value) -> None:
    print(json.dumps(value), flush=True)


class Progress:
    """Progress of long work on stderr: a tqdm bar on a terminal; on a file or pipe, a plain line
    at most every ``every`` seconds and one at the end (no carriage returns, no escape codes)."""

    def __init__(self, what: str, unit: str = "entries", every: float = 10.0) -> None:
        self.what = what
        self.count = 0
        self._bar = None
        self._every = every
        self._last = time.monotonic()
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(desc=what, unit=f" {unit}", unit_scale=True, file=sys.stderr, leave=False)

    def __call__(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count - self.count)
        elif time.monotonic() - self._last >= self._every:
            self._last = time.monotonic()
            print(f"{self.what}: {count:,}", file=sys.stderr, flush=True)
        self.count = count

    def done(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self.count:
            print(f"{self.what}: {self.count:,} done", file=sys.stderr, flush=True)


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1-65535."""
    return _port(text, lowest=1)


def port_or_zero(text: str) -> int:
    """argparse type: a TCP port, 1-65535, or 0 for any free port."""
    return _port(text, lowest=0)


def _port(text: str, lowest: int) -> int:
    import argparse

    value = int(text) if text.isascii() and text.isdigit() else -1  # no "+80", " 80", "８０" or "8_0"
    if not lowest <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{shown(text)!r} is not a port number ({lowest}-65535"
                                         f"{'; 0 picks a free one' if lowest == 0 else ''})")
    return value


def non_negative(kind):
    """argparse type: a number of ``kind`` (int or float) in ASCII digits, 0 or more."""
    return positive(kind, zero_ok=True)


def positive(kind, maximum: float | None = None, *, zero_ok: bool = False):
    """argparse type: a number of ``kind`` (int or float) in ASCII digits, above 0 (or 0 if
    ``zero_ok``; up to ``maximum``): the same rule and words as the MASB_* settings
    (agents/settings.py), so no nan, inf, -1 or 1_000."""
    import argparse

    def parse(text: str):
        try:
            return positive_number(text, "", kind, zero_ok=zero_ok, maximum=maximum)
        except InvalidInput:
            whole = "whole " if kind is int else ""
            raise argparse.ArgumentTypeError(f"{shown(text)!r} is not a {whole}number in ASCII digits, "
                                             f"{range_in_words(kind, zero_ok, maximum)}") from None
    return parse


# Flags for which an empty value means something: no topic prefix (overriding MASB_TOPIC_PREFIX).
EMPTY_ALLOWED = frozenset({"topic_prefix"})


def refuse_empty_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 (argparse's usage error, naming the flag) if an argument was given as an empty string:
    `--bootstrap ''` (an unset shell variable) must not quietly mean MASB_BOOTSTRAP or the default, nor
    `dlq redrive --event-id ''` every event."""
    leaf = parser
    while True:  # the parser of the (sub)command that was run: masb -> dlq -> list
        chosen = next((a.choices.get(getattr(args, a.dest, None)) for a in leaf._actions
                       if isinstance(a, argparse._SubParsersAction)), None)
        if chosen is None:
            break
        leaf = chosen
    for action in leaf._actions:
        value = getattr(args, action.dest, None)
        values = value if isinstance(value, list) else [value]
        if action.dest not in EMPTY_ALLOWED and any(v == "" for v in values):
            name = "/".join(action.option_strings) or action.metavar or action.dest
            optional = action.option_strings and not action.required
            leaf.error(f"argument {name}: empty; give a value{', or leave the flag out for its default' if optional else ''}")


def event_id(text: str) -> str:
    """argparse type of every argument and flag that takes an event id (`status`, `audit prove`,
    `dlq --event-id`): a UUID in any case, hyphenated or not, in braces or as urn:uuid:, given back
    in the canonical lower-case form the exchange log stores (streams.rules.canonical_uuid). Anything
    else, and the nil UUID, is refused without echoing the value (it may be a case reference)."""
    import argparse

    from streams.rules import canonical_uuid

    if text == "":  # as for every other argument (refuse_empty_arguments runs after the types)
        raise argparse.ArgumentTypeError("empty; give an event id (a UUID)")
    canonical = canonical_uuid(text)
    if canonical is None:
        raise argparse.ArgumentTypeError("not an event id: event ids are UUIDs, not the nil UUID "
                                          "(like 123e4567-e89b-42d3-a456-426614174000)") from None
    return canonical


def check_case_ref(text: str, what: str) -> None:
    """A case reference of the documented shape (streams/rules.py), else a UsageError naming
    ``what`` (the flag or argument): the value is never echoed, as it identifies a case."""
    from streams.rules import IDENTIFIER_RULES

    matches, problem = IDENTIFIER_RULES["case_ref"]
    if not matches(text):
        raise UsageError(f"{what} is not a case reference: it {problem}")
