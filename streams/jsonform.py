"""The JSON form of case events, converted to and from the Avro datum (the values on the wire).

JSON form = what publishers send and partners receive: uuid as a hyphenated string (rendered
lower-case), timestamp-millis as RFC 3339 text with an offset ("2026-11-20T21:14:00Z"; rendered in
UTC with ".mmm" when the milliseconds are not zero), date as "YYYY-MM-DD".
Datum = what Avro encodes: the same structure with timestamps as int milliseconds since
1970-01-01T00:00:00Z, dates as int days since 1970-01-01, uuids as lower-case text.

This module checks only the *shape* of the JSON form (JSON types, required and unknown fields,
enum symbols, the syntax of logical types). What a valid event is beyond its shape (identifiers,
text, time range, cross-field rules) is decided in one place, streams/rules.py, on the datum, by
every door and by the router alike. Problems are FieldErrors naming a path, never a value.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable

from streams.jsonin import key_label

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EPOCH_DATE = date(1970, 1, 1)
_MS = timedelta(milliseconds=1)
# ASCII digits only ([0-9], not \d), and fullmatch: "$" would also match before a final newline.
_TIMESTAMP_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,3})?(?:Z|[+-][0-9]{2}:[0-9]{2})",
                           re.ASCII)
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", re.ASCII)
_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


@dataclass(frozen=True)
class FieldError:
    path: str
    problem: str


class _Rejected:
    """Stands in the datum for a value the conversion refused, so no rule reports it twice."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<rejected>"


REJECTED = _Rejected()


TIMESTAMP_SYNTAX = "expected an RFC 3339 timestamp with offset, e.g. 2026-11-20T21:14:00Z"
TIMESTAMP_NOT_CALENDAR = ("not a calendar date and time: the day does not exist in that month, or the hour, minute, "
                          "second or offset is out of range (00-23, 00-59, 00-59, within ±23:59)")
DATE_SYNTAX = "expected a date YYYY-MM-DD"
DATE_NOT_CALENDAR = "not a calendar date: the month is not 01-12 or the day does not exist in that month"


class NotCalendarError(ValueError):
    """Text of the right syntax naming a date or time that does not exist (1991-02-29, 24:00, :60)."""


def parse_timestamp_ms(text: str) -> int:
    """RFC 3339 with an explicit offset and at most millisecond precision -> ms since epoch (UTC).

    The offset is applied, so "0001-01-01T00:30:00+01:00" is an instant in year 0: the result may be
    outside any range; streams.rules bounds it. ValueError if the text is not such a timestamp,
    NotCalendarError (a ValueError) if it has the syntax but names no real date, time or offset.
    """
    if not isinstance(text, str) or not _TIMESTAMP_RE.fullmatch(text):
        raise ValueError("bad timestamp")
    if text[-1] != "Z" and int(text[-2:]) > 59:  # Python reads "+00:99" as +01:39
        raise NotCalendarError("offset minutes out of range")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise NotCalendarError("no such date or time") from None
    return (moment - _EPOCH) // _MS


def render_timestamp_ms(ms: int) -> str:
    """ms since epoch -> 'YYYY-MM-DDThh:mm:ss[.mmm]Z'; OverflowError outside years 1-9999."""
    value = _EPOCH + ms * _MS
    ms_part = value.microsecond // 1000
    text = f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    return f"{text}.{ms_part:03d}Z" if ms_part else f"{text}Z"


def parse_date_days(text: str) -> int:
    """'YYYY-MM-DD' -> days since 1970-01-01; ValueError if it is not that syntax, NotCalendarError
    (a ValueError) if it names no real calendar date (1991-02-29, 2026-13-01)."""
    if not isinstance(text, str) or not _DATE_RE.fullmatch(text):
        raise ValueError("bad date")
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise NotCalendarError("no such date") from None
    return (day - _EPOCH_DATE).days


def render_date_days(days: int) -> str:
    """days since 1970-01-01 -> 'YYYY-MM-DD'; OverflowError outside years 1-9999."""
    value = _EPOCH_DATE + timedelta(days=days)
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"


def join_path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def strip_logical_types(node: Any) -> Any:
    """A copy of a schema without logicalType attributes: the datum keeps wire values (ints, text),
    so the door and the router check exactly the values that are encoded."""
    if isinstance(node, list):
        return [strip_logical_types(n) for n in node]
    if isinstance(node, dict):
        return {k: strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    return node


class SchemaWalker:
    """One expanded Avro schema (named types resolved once): JSON form <-> datum, field paths."""

    def __init__(self, schema: dict):
        self.schema = schema
        self.named: dict[str, dict] = {}
        self._index(schema)

    def _index(self, node: Any) -> None:
        if isinstance(node, list):
            for branch in node:
                self._index(branch)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in ("record", "error", "enum", "fixed"):
                self.named[node["name"]] = node
                for field in node.get("fields", []):
                    self._index(field["type"])
            elif kind == "array":
                self._index(node["items"])
            elif kind == "map":
                self._index(node["values"])

    def resolve(self, node: Any) -> Any:
        return self.named.get(node, node) if isinstance(node, str) else node

    # -- JSON form -> Avro datum, collecting every error

    def to_datum(self, value: Any, errors: list[FieldError]) -> Any:
        return self._convert(self.schema, value, "", errors)

    def _convert(self, node: Any, value: Any, path: str, errors: list[FieldError]) -> Any:
        node = self.resolve(node)
        if isinstance(node, list):
            return self._union(node, value, path, errors)
        if isinstance(node, str):
            return self._primitive(node, value, path, errors)
        kind = node["type"]
        logical = node.get("logicalType")
        if logical is not None:
            return self._logical(logical, node, value, path, errors)
        if kind == "record":
            return self._record(node, value, path, errors)
        if kind == "enum":
            if not isinstance(value, str) or value not in node["symbols"]:
                errors.append(FieldError(path, f"expected one of {', '.join(node['symbols'])}"))
                return REJECTED
            return value
        if kind == "array":
            if not isinstance(value, list):
                errors.append(FieldError(path, "expected an array"))
                return REJECTED
            return [self._convert(node["items"], item, f"{path}[{i}]", errors) for i, item in enumerate(value)]
        if kind == "map":
            if not isinstance(value, dict):
                errors.append(FieldError(path, "expected an object"))
                return REJECTED
            return {k: self._convert(node["values"], v, f"{path}.{key_label(k)}", errors) for k, v in value.items()}
        return self._convert(kind, value, path, errors)

    def _record(self, node: dict, value: Any, path: str, errors: list[FieldError]) -> Any:
        if not isinstance(value, dict):
            errors.append(FieldError(path or "<event>", "expected an object"))
            return REJECTED
        out = {}
        for field in node["fields"]:
            fname = field["name"]
            fpath = join_path(path, fname)
            if fname in value:
                out[fname] = self._convert(field["type"], value[fname], fpath, errors)
            elif "default" in field:
                out[fname] = copy.deepcopy(field["default"])
            else:
                errors.append(FieldError(fpath, "required field is missing"))
        known = {f["name"] for f in node["fields"]}
        for key in value:
            if key not in known:
                errors.append(FieldError(join_path(path, key_label(key)), "unknown field"))
        return out

    def _union(self, branches: list, value: Any, path: str, errors: list[FieldError]) -> Any:
        if value is None:
            if "null" in branches:
                return None
            errors.append(FieldError(path, "must not be null"))
            return REJECTED
        candidates = [b for b in branches if b != "null"]
        if len(candidates) == 1:
            return self._convert(candidates[0], value, path, errors)
        for branch in candidates:  # general unions: first branch that accepts the value
            trial: list[FieldError] = []
            converted = self._convert(branch, value, path, trial)
            if not trial:
                return converted
        errors.append(FieldError(path, "matches none of the allowed types"))
        return REJECTED

    @staticmethod
    def _primitive(kind: str, value: Any, path: str, errors: list[FieldError]) -> Any:
        problem = None
        if kind == "string":
            if not isinstance(value, str):
                problem = "expected a string"
        elif kind in ("int", "long"):
            low, high = _INT_RANGE[kind]
            # A JSON number with a fraction or exponent (14.0, 1e2) is a float: not an integer.
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                problem = f"expected an integer ({kind}, {low} to {high})"
        elif kind == "boolean":
            if not isinstance(value, bool):
                problem = "expected true or false"
        elif kind in ("float", "double"):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                problem = "expected a finite number"
        elif kind == "null":
            if value is not None:
                problem = "expected null"
        elif kind == "bytes":
            if not isinstance(value, bytes):
                problem = "expected bytes"
        if problem:
            errors.append(FieldError(path, problem))
            return REJECTED
        return value

    def _logical(self, logical: str, node: dict, value: Any, path: str, errors: list[FieldError]) -> Any:
        if logical == "uuid":
            if not isinstance(value, str) or not _UUID_RE.fullmatch(value):
                errors.append(FieldError(path, "expected a UUID string like 3f0c1b2a-9d4e-4c1a-8f00-5b7e2d9a6c10"))
                return REJECTED
            return value.lower()
        if logical == "timestamp-millis":
            try:
                return parse_timestamp_ms(value)
            except NotCalendarError:
                errors.append(FieldError(path, TIMESTAMP_NOT_CALENDAR))
                return REJECTED
            except (TypeError, ValueError):
                errors.append(FieldError(path, TIMESTAMP_SYNTAX))
                return REJECTED
        if logical == "date":
            try:
                return parse_date_days(value)
            except NotCalendarError:
                errors.append(FieldError(path, DATE_NOT_CALENDAR))
                return REJECTED
            except (TypeError, ValueError):
                errors.append(FieldError(path, DATE_SYNTAX))
                return REJECTED
        return self._convert(node["type"], value, path, errors)

    # -- Avro datum -> JSON form

    def to_json_form(self, datum: Any) -> Any:
        """Render a datum (wire values, as decoded without logical types) in the JSON form.

        OverflowError/ValueError when a timestamp or date is outside years 1-9999: such a datum
        breaks streams.rules, and the codec reports it as undecodable.
        """
        render = self.__dict__.get("_renderer")
        if render is None:
            render = self._renderer = _RenderCompiler(self).compile(self.schema) or _same
        return render(datum)

    # -- schema shape

    def field_paths(self) -> frozenset[str]:
        paths: set[str] = set()
        self._paths(self.schema, "", paths)
        return frozenset(paths)

    def _paths(self, node: Any, prefix: str, out: set[str]) -> None:
        node = self.resolve(node)
        if isinstance(node, list):  # optional record: recurse into its non-null branches
            for branch in node:
                if branch != "null":
                    self._paths(branch, prefix, out)
            return
        if isinstance(node, dict) and node.get("type") == "record":
            for field in node["fields"]:
                path = join_path(prefix, field["name"])
                out.add(path)
                self._paths(field["type"], path, out)


_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "bytes": (bytes,), "boolean": (bool,), "int": (int,), "long": (int,),
    "float": (float, int), "double": (float, int), "enum": (str,), "record": (dict,), "map": (dict,),
    "array": (list,),
}


def _branch_for(branches: list, value: Any, resolve) -> Any:
    """The union branch a decoded value belongs to (general unions; MASB's own are ["null", T])."""
    for branch in branches:
        node = resolve(branch)
        kind = node if isinstance(node, str) else node.get("type")
        if isinstance(value, _PYTHON_TYPES.get(kind, ())) and not (kind in ("int", "long") and isinstance(value, bool)):
            return branch
    return branches[0]


# Rendering is compiled once per schema into nested closures (the router renders every event it
# routes): one per schema node that changes the value (timestamps, dates) or rebuilds it (records,
# arrays, maps, unions on the way to them); None stands for "the value as it is".
Renderer = Callable[[Any], Any]


def _same(value: Any) -> Any:
    return value


class _RenderCompiler:
    _PENDING = object()

    def __init__(self, walker: SchemaWalker) -> None:
        self.walker = walker
        self.done: dict[int, Any] = {}

    def compile(self, node: Any) -> Renderer | None:
        node = self.walker.resolve(node)
        key = id(node)
        known = self.done.get(key)
        if known is self._PENDING:  # a recursive named type: look it up when called
            done = self.done
            return lambda value: (done[key] or _same)(value)
        if key in self.done:
            return known
        self.done[key] = self._PENDING
        renderer = self._compile(node)
        self.done[key] = renderer
        return renderer

    def _compile(self, node: Any) -> Renderer | None:
        if isinstance(node, list):
            return self._union(node)
        if isinstance(node, str):
            return None
        kind, logical = node["type"], node.get("logicalType")
        if logical == "timestamp-millis":
            return lambda value: None if value is None else render_timestamp_ms(value)
        if logical == "date":
            return lambda value: None if value is None else render_date_days(value)
        if kind == "record":
            fields = [(f["name"], self.compile(f["type"])) for f in node["fields"]]

            def record(value: Any) -> Any:
                if value is None:
                    return None
                get = value.get
                return {name: get(name) if render is None else render(get(name)) for name, render in fields}
            return record
        if kind == "array":
            item = self.compile(node["items"])
            if item is None:
                return lambda value: None if value is None else [element for element in value]
            return lambda value: None if value is None else [item(element) for element in value]
        if kind == "map":
            item = self.compile(node["values"]) or _same
            return lambda value: None if value is None else {k: item(v) for k, v in value.items()}
        if isinstance(kind, (list, dict)) or kind in self.walker.named:
            return self.compile(kind)
        return None  # enum, fixed, or a primitive written as {"type": ...}

    def _union(self, branches: list) -> Renderer | None:
        candidates = [b for b in branches if b != "null"]
        if len(candidates) == 1:
            return self.compile(candidates[0])
        compiled = {id(b): self.compile(b) or _same for b in candidates}
        resolve = self.walker.resolve

        def union(value: Any) -> Any:
            if value is None:
                return None
            return compiled[id(_branch_for(candidates, value, resolve))](value)
        return union
