"""Strict JSON reader: everything MASB reads as JSON from outside (events at every door, schema and
registry files) goes through here, so that a document means one thing to every reader.

Accepted: RFC 8259 JSON in UTF-8. Refused, each reported as a problem naming where (a path of keys
and indexes, and for syntax errors and repeated keys the line and column), never a value:

- input that is not UTF-8, or starts with a byte order mark;
- syntax errors (the parser's description, at line L column C);
- an object with a repeated key: RFC 8259 leaves the meaning open and readers disagree on which
  value wins (Python and most others take the last, some the first, some refuse);
- ``NaN``, ``Infinity``, ``-Infinity`` (not JSON), and numbers no MASB reader can hold: integers of
  more than ``MAX_INTEGER_DIGITS`` digits, floats that overflow to infinity (``1e400``);
- strings or keys holding an escaped lone surrogate (``"\\ud83d"``): not Unicode text, no UTF-8
  encoder accepts them;
- nesting deeper than ``MAX_DEPTH``.

    loads(data)         -> the value                       (JsonInputError listing every problem)
    loads_events(data)  -> [event, ...] from one object, an array, or one object per line (JSON Lines)
    load_file(path)     -> the value; problems name the file
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from json.decoder import JSONArray, JSONDecodeError, scanstring
from json.scanner import py_make_scanner
from pathlib import Path
from typing import Any, Iterator

from streams.errors import InvalidInput
from streams.problems import first, more_line

__all__ = ["MAX_DEPTH", "MAX_INTEGER_DIGITS", "JsonProblem", "JsonInputError", "loads", "loads_events", "load_file",
           "key_label", "format_path"]

MAX_DEPTH = 64             # an event is at most 6 levels deep; this only stops runaway nesting
MAX_INTEGER_DIGITS = 19    # 2**63 has 19 digits: no MASB field holds more (Avro long)

_WS = re.compile(r"[ \t\n\r]*")
_WS_CHARS = " \t\n\r"
_SURROGATE = re.compile("[\ud800-\udfff]")
# Keys are shown in paths only when they look like a schema field name (all MASB field names are
# lower-case snake_case); anything else might be a value typed in the wrong place.
_FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}", re.ASCII)

Path_ = tuple  # a path: keys (str) and array indexes (int), outermost first


def key_label(key: Any) -> str:
    """A key as it may appear in an error path: only field-name-like keys are shown."""
    return key if isinstance(key, str) and _FIELD_NAME.fullmatch(key) else "<non-identifier key>"


def format_path(path: Path_, root: str = "<document>") -> str:
    """('children', 0, 'school', 'urn') -> 'children[0].school.urn'; () -> root."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{key_label(part)}" if out else key_label(part)
    return out or root


@dataclass(frozen=True)
class JsonProblem:
    path: Path_                 # where in the document; () for the document itself
    problem: str                # what is wrong, never the value
    line: int | None = None     # 1-based, when known
    column: int | None = None   # 1-based, when known

    def where(self, root: str = "<document>") -> str:
        return format_path(self.path, root)

    def describe(self) -> str:
        """The problem, with its line and column when known."""
        if self.line is None:
            return self.problem
        return f"{self.problem} (line {self.line}, column {self.column})"

    def __str__(self) -> str:
        return f"{self.where()}: {self.describe()}"


class JsonInputError(InvalidInput, ValueError):
    """The input is not strict JSON; ``problems`` lists every problem found (never values)."""

    def __init__(self, problems: list[JsonProblem], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        shown_problems, left_out = first(self.problems)  # the first few say what is wrong (streams/problems.py)
        lines = [f"{prefix}{p}" for p in shown_problems] + ([more_line(left_out)] if left_out else [])
        super().__init__(f"not accepted as JSON ({len(self.problems)} problem(s)):\n" + "\n".join(lines))


class _Invalid:
    """Stands in for a value the reader refuses, so parsing goes on and every problem is found."""

    __slots__ = ("problem",)

    def __init__(self, problem: str):
        self.problem = problem


class _RepeatedKeys(dict):
    """An object that had a repeated key: the first value of each key is kept, the repeats listed."""

    repeats: list[tuple[str, int, int, int]]  # (key, line, column, line of the first) of each later occurrence


def _line_column(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _parse_int(text: str) -> Any:
    digits = len(text) - (text[0] == "-")
    if digits > MAX_INTEGER_DIGITS:
        return _Invalid(f"integer of more than {MAX_INTEGER_DIGITS} digits")
    return int(text)


def _parse_float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _Invalid("number too large to represent (overflows to infinity)")


def _parse_constant(name: str) -> Any:
    return _Invalid("NaN and Infinity are not JSON numbers")


def _parse_object(s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo=None):
    """json.decoder.JSONObject, keeping the first value of a repeated key and noting where the repeat is."""
    s, end = s_and_end
    pairs: dict[str, Any] = {}
    starts: dict[str, int] = {}
    repeats: list[tuple[str, int, int, int]] = []
    nextchar = s[end:end + 1]
    if nextchar != '"':
        if nextchar in _WS_CHARS:
            end = _WS.match(s, end).end()
            nextchar = s[end:end + 1]
        if nextchar == "}":
            return pairs, end + 1
        if nextchar != '"':
            raise JSONDecodeError("Expecting property name enclosed in double quotes", s, end)
    end += 1
    while True:
        key_start = end - 1
        key, end = scanstring(s, end, strict)
        if s[end:end + 1] != ":":
            end = _WS.match(s, end).end()
            if s[end:end + 1] != ":":
                raise JSONDecodeError("Expecting ':' delimiter", s, end)
        end = _WS.match(s, end + 1).end()
        try:
            value, end = scan_once(s, end)
        except StopIteration as err:
            raise JSONDecodeError("Expecting value", s, err.value) from None
        if key in pairs:
            repeats.append((key, *_line_column(s, key_start), _line_column(s, starts[key])[0]))
        else:
            pairs[key] = value
            starts[key] = key_start
        end = _WS.match(s, end).end()
        nextchar = s[end:end + 1]
        end += 1
        if nextchar == "}":
            break
        if nextchar != ",":
            raise JSONDecodeError("Expecting ',' delimiter", s, end - 1)
        end = _WS.match(s, end).end()
        nextchar = s[end:end + 1]
        end += 1
        if nextchar != '"':
            raise JSONDecodeError("Expecting property name enclosed in double quotes", s, end - 1)
    if repeats:
        marked = _RepeatedKeys(pairs)
        marked.repeats = repeats
        return marked, end
    return pairs, end


class _StrictDecoder(json.JSONDecoder):
    def __init__(self) -> None:
        super().__init__(parse_float=_parse_float, parse_int=_parse_int, parse_constant=_parse_constant,
                         strict=True)
        self.parse_object = _parse_object
        self.parse_array = JSONArray
        self.memo = {}
        # The pure-Python scanner calls parse_object above; the C one would bypass it.
        self.scan_once = py_make_scanner(self)


def _problems(value: Any, path: Path_ = (), depth: int = 0) -> Iterator[JsonProblem]:
    if depth > MAX_DEPTH:
        yield JsonProblem(path, f"nested more than {MAX_DEPTH} levels deep")
        return
    if isinstance(value, _Invalid):
        yield JsonProblem(path, value.problem)
    elif isinstance(value, str):
        if _SURROGATE.search(value):
            yield JsonProblem(path, "text is not valid Unicode (it holds a lone surrogate escape)")
    elif isinstance(value, dict):
        for key, line, column, first in getattr(value, "repeats", ()):
            yield JsonProblem(path + (key,), f"repeated key (first at line {first}): an object must not name the "
                                             "same key twice", line, column)
        for key, item in value.items():
            if _SURROGATE.search(key):
                yield JsonProblem(path + (key,), "key is not valid Unicode (it holds a lone surrogate escape)")
            yield from _problems(item, path + (key,), depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _problems(item, path + (index,), depth + 1)


def _text(data: bytes | str) -> str:
    if isinstance(data, str):
        text = data
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            before = bytes(data)[: exc.start].decode("utf-8")
            line, column = _line_column(before, len(before))
            raise JsonInputError([JsonProblem((), f"not UTF-8 (invalid byte at offset {exc.start})", line, column)]) \
                from None
    if text.startswith("\ufeff"):
        raise JsonInputError([JsonProblem((), "starts with a byte order mark (U+FEFF); send UTF-8 without one", 1, 1)])
    return text


def _loads_text(text: str) -> Any:
    decoder = _StrictDecoder()
    try:
        value, end = decoder.scan_once(text, _WS.match(text, 0).end())
    except StopIteration as err:
        raise JsonInputError([JsonProblem((), "not valid JSON: Expecting value", *_line_column(text, err.value))]) \
            from None
    except JSONDecodeError as exc:
        # exc.msg is the parser's description ("Expecting ',' delimiter"), never document text.
        raise JsonInputError([JsonProblem((), f"not valid JSON: {exc.msg}", exc.lineno, exc.colno)]) from None
    except RecursionError:
        raise JsonInputError([JsonProblem((), f"nested more than {MAX_DEPTH} levels deep")]) from None
    end = _WS.match(text, end).end()
    if end != len(text):
        raise JsonInputError([JsonProblem((), "not valid JSON: Extra data", *_line_column(text, end))])
    problems = list(_problems(value))
    if problems:
        raise JsonInputError(problems)
    return value


def loads(data: bytes | str) -> Any:
    """One strict JSON document (bytes must be UTF-8); JsonInputError lists every problem."""
    return _loads_text(_text(data))


def loads_events(data: bytes | str, source: str | None = None) -> list[Any]:
    """Events from one JSON value (an object, or an array of them) or JSON Lines (one value per line).

    A document that does not parse as a whole is read as JSON Lines only if its first non-blank line
    is a complete JSON value on its own; otherwise the whole document's syntax error (with its line
    and column) is reported. JSON Lines problems name their line. An empty input is an empty list.
    ``source`` (a file name) prefixes every problem of the JsonInputError.
    """
    try:
        return _events(data)
    except JsonInputError as exc:
        if source is None:
            raise
        raise JsonInputError(exc.problems, source=source) from None


def _events(data: bytes | str) -> list[Any]:
    text = _text(data)
    if not text.strip():
        return []
    try:
        value = _loads_text(text)
    except JsonInputError as whole:
        lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
        if not _is_syntax_error(whole) or len(lines) < 2 or not _parses(lines[0][1]):
            raise
        events, problems = [], []
        for number, line in lines:
            try:
                events.append(_loads_text(line))
            except JsonInputError as exc:
                problems += [JsonProblem(p.path, p.problem, number, p.column) for p in exc.problems]
        if problems:
            raise JsonInputError(problems) from None
        return events
    return value if isinstance(value, list) else [value]


def _is_syntax_error(error: JsonInputError) -> bool:
    return len(error.problems) == 1 and error.problems[0].problem.startswith("not valid JSON")


def _parses(line: str) -> bool:
    try:
        _loads_text(line)
    except JsonInputError as exc:
        return not _is_syntax_error(exc)
    return True


def load_file(path: str | Path) -> Any:
    """A JSON file read strictly; JsonInputError's message names the file (and line, key)."""
    path = Path(path)
    try:
        return loads(path.read_bytes())
    except JsonInputError as exc:
        raise JsonInputError(exc.problems, source=str(path)) from None
