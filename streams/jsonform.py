"""The JSON form of case events: validation and conversion to and from Avro datums.

JSON form = what publishers send and partners receive: uuid as a lower-case hyphenated string,
timestamp-millis as RFC 3339 UTC text ("2026-11-20T21:14:00Z", ".123" when milliseconds are
non-zero), date as "YYYY-MM-DD". ``to_datum`` validates and converts in one pass and collects
every problem as a FieldError naming the path, never the value (values are personal data).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EPOCH_DATE = date(1970, 1, 1)
_MS = timedelta(milliseconds=1)
_TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?(Z|[+-]\d{2}:\d{2})$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_SAFE_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


@dataclass(frozen=True)
class FieldError:
    path: str
    problem: str


def _nhs_number_ok(text: str) -> bool:
    """10 digits whose last is the NHS modulus-11 check digit."""
    if not re.fullmatch(r"\d{10}", text):
        return False
    total = sum(int(d) * w for d, w in zip(text[:9], range(10, 1, -1)))
    check = 11 - total % 11
    check = 0 if check == 11 else check
    return check != 10 and check == int(text[9])


def _pattern(regex: str) -> tuple[Callable[[str], bool], str]:
    compiled = re.compile(regex)
    return (lambda text: compiled.fullmatch(text) is not None), f"does not match {regex}"


# Rules for string fields, by field name wherever the field appears. These keep identifiers
# that travel in keys, headers and labels (case_ref, unit_id) free of names and free text.
STRING_RULES: dict[str, tuple[Callable[[str], bool], str]] = {
    "case_ref": _pattern(r"^[A-Z]{2,4}-[0-9A-Z]{6,32}$"),
    "unit_id": _pattern(r"^[a-z][a-z0-9-]{1,63}$"),
    "urn": _pattern(r"^[0-9]{6,7}$"),
    "uprn": _pattern(r"^[0-9]{1,12}$"),
    "postcode": _pattern(r"^[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}$"),
    "nhs_number": (_nhs_number_ok, "is not a 10-digit NHS number with a valid check digit"),
}


def parse_timestamp_ms(text: str) -> int:
    """RFC 3339 with an explicit offset and at most millisecond precision -> ms since epoch (UTC)."""
    if not _TIMESTAMP_RE.match(text):
        raise ValueError("bad timestamp")
    return (datetime.fromisoformat(text) - _EPOCH) // _MS


def render_timestamp(value: datetime) -> str:
    value = value.astimezone(timezone.utc)
    base = value.strftime("%Y-%m-%dT%H:%M:%S")
    ms = value.microsecond // 1000
    return f"{base}.{ms:03d}Z" if ms else f"{base}Z"


def parse_date_days(text: str) -> int:
    if not _DATE_RE.match(text):
        raise ValueError("bad date")
    return (date.fromisoformat(text) - _EPOCH_DATE).days


def key_label(key: Any) -> str:
    """A key as it may appear in an error path: only identifier-like keys are shown."""
    return key if isinstance(key, str) and _SAFE_KEY_RE.match(key) else "<non-identifier key>"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class SchemaWalker:
    """Validates/converts the JSON form against one expanded Avro schema (named types resolved once)."""

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
        return self._convert(self.schema, value, "", "", errors)

    def _convert(self, node: Any, value: Any, path: str, name: str, errors: list[FieldError]) -> Any:
        node = self.resolve(node)
        if isinstance(node, list):
            return self._union(node, value, path, name, errors)
        if isinstance(node, str):
            return self._primitive(node, value, path, name, errors)
        kind = node["type"]
        logical = node.get("logicalType")
        if logical is not None:
            return self._logical(logical, node, value, path, errors)
        if kind == "record":
            return self._record(node, value, path, errors)
        if kind == "enum":
            if not isinstance(value, str) or value not in node["symbols"]:
                errors.append(FieldError(path, f"expected one of {', '.join(node['symbols'])}"))
            return value
        if kind == "array":
            if not isinstance(value, list):
                errors.append(FieldError(path, "expected an array"))
                return value
            return [self._convert(node["items"], item, f"{path}[{i}]", name, errors) for i, item in enumerate(value)]
        if kind == "map":
            if not isinstance(value, dict):
                errors.append(FieldError(path, "expected an object"))
                return value
            return {k: self._convert(node["values"], v, f"{path}.{key_label(k)}", name, errors) for k, v in value.items()}
        return self._convert(kind, value, path, name, errors)

    def _record(self, node: dict, value: Any, path: str, errors: list[FieldError]) -> Any:
        if not isinstance(value, dict):
            errors.append(FieldError(path or "<event>", "expected an object"))
            return value
        out = {}
        for field in node["fields"]:
            fname = field["name"]
            fpath = _join(path, fname)
            if fname in value:
                out[fname] = self._convert(field["type"], value[fname], fpath, fname, errors)
            elif "default" in field:
                out[fname] = field["default"]
            else:
                errors.append(FieldError(fpath, "required field is missing"))
        known = {f["name"] for f in node["fields"]}
        for key in value:
            if key not in known:
                errors.append(FieldError(_join(path, key_label(key)), "unknown field"))
        return out

    def _union(self, branches: list, value: Any, path: str, name: str, errors: list[FieldError]) -> Any:
        if value is None:
            if "null" in branches:
                return None
            errors.append(FieldError(path, "must not be null"))
            return None
        candidates = [b for b in branches if b != "null"]
        if len(candidates) == 1:
            return self._convert(candidates[0], value, path, name, errors)
        for branch in candidates:  # general unions: first branch that accepts the value
            trial: list[FieldError] = []
            converted = self._convert(branch, value, path, name, trial)
            if not trial:
                return converted
        errors.append(FieldError(path, "matches none of the allowed types"))
        return value

    def _primitive(self, kind: str, value: Any, path: str, name: str, errors: list[FieldError]) -> Any:
        if kind == "string":
            if not isinstance(value, str):
                errors.append(FieldError(path, "expected a string"))
            elif not value.strip():
                errors.append(FieldError(path, "must not be empty (use null for an absent optional value)"))
            elif name in STRING_RULES:
                ok, problem = STRING_RULES[name]
                if not ok(value):
                    errors.append(FieldError(path, problem))
        elif kind in ("int", "long"):
            low, high = _INT_RANGE[kind]
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                errors.append(FieldError(path, f"expected an integer ({kind})"))
        elif kind == "boolean":
            if not isinstance(value, bool):
                errors.append(FieldError(path, "expected true or false"))
        elif kind in ("float", "double"):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                errors.append(FieldError(path, "expected a number"))
        elif kind == "null":
            if value is not None:
                errors.append(FieldError(path, "expected null"))
        elif kind == "bytes":
            if not isinstance(value, bytes):
                errors.append(FieldError(path, "expected bytes"))
        return value

    def _logical(self, logical: str, node: dict, value: Any, path: str, errors: list[FieldError]) -> Any:
        if logical == "uuid":
            if not isinstance(value, str) or not _UUID_RE.match(value):
                errors.append(FieldError(path, "expected a UUID string like 3f0c1b2a-9d4e-4c1a-8f00-5b7e2d9a6c10"))
                return value
            return value.lower()
        if logical == "timestamp-millis":
            try:
                return parse_timestamp_ms(value)
            except (TypeError, ValueError):
                errors.append(FieldError(path, "expected an RFC 3339 timestamp with offset, e.g. 2026-11-20T21:14:00Z"))
                return value
        if logical == "date":
            try:
                return parse_date_days(value)
            except (TypeError, ValueError):
                errors.append(FieldError(path, "expected a date YYYY-MM-DD"))
                return value
        return self._convert(node["type"], value, path, "", errors)

    # -- decoded datum checks: Avro already guarantees the types, so only string rules remain

    def check_strings(self, datum: Any, errors: list[FieldError]) -> None:
        self._strings(self.schema, datum, "", "", errors)

    def _strings(self, node: Any, value: Any, path: str, name: str, errors: list[FieldError]) -> None:
        node = self.resolve(node)
        if value is None:
            return
        if isinstance(node, list):
            candidates = [b for b in node if b != "null"]
            if len(candidates) == 1:
                self._strings(candidates[0], value, path, name, errors)
            return
        if isinstance(node, str):
            if node == "string":
                self._primitive(node, value, path, name, errors)
            return
        kind = node["type"]
        if "logicalType" in node or kind == "enum":
            return
        if kind == "record":
            for field in node["fields"]:
                self._strings(field["type"], value.get(field["name"]), _join(path, field["name"]), field["name"], errors)
        elif kind == "array":
            for i, item in enumerate(value):
                self._strings(node["items"], item, f"{path}[{i}]", name, errors)
        elif kind == "map":
            for key, item in value.items():
                self._strings(node["values"], item, f"{path}.{key_label(key)}", name, errors)
        elif isinstance(kind, (str, list, dict)):
            self._strings(kind, value, path, name, errors)

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
                path = _join(prefix, field["name"])
                out.add(path)
                self._paths(field["type"], path, out)


def to_json_form(datum: Any) -> Any:
    """Render a decoded fastavro datum back to the JSON form (logical types -> strings)."""
    if isinstance(datum, dict):
        return {k: to_json_form(v) for k, v in datum.items()}
    if isinstance(datum, list):
        return [to_json_form(v) for v in datum]
    if isinstance(datum, datetime):
        return render_timestamp(datum)
    if isinstance(datum, date):
        return datum.isoformat()
    if isinstance(datum, uuid.UUID):
        return str(datum)
    return datum


# ---------------------------------------------------------------- cross-field rules
# They run on the converted datum (timestamps in ms, dates in days) and guard their own types,
# so a structural error elsewhere never makes them crash.

_LEVEL_ORDER = {"STANDARD": 0, "MEDIUM": 1, "HIGH": 2}
DASH_MAX_SCORE = 24


def dash_level(score: int) -> str:
    """SafeLives DASH thresholds: 14+ HIGH, 10-13 MEDIUM, otherwise STANDARD."""
    return "HIGH" if score >= 14 else "MEDIUM" if score >= 10 else "STANDARD"


def _get(datum: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(datum, dict):
            return None
        datum = datum.get(key)
    return datum


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _instant(value: Any) -> int | None:
    """Timestamps/dates as ms/days whether from to_datum (ints) or fastavro (datetime/date)."""
    if isinstance(value, datetime):
        return (value - _EPOCH) // _MS
    if isinstance(value, date):
        return (value - _EPOCH_DATE).days
    return value if _is_int(value) else None


def _score_in_range(datum: dict, field: str, errors: list[FieldError]) -> None:
    score = datum.get(field)
    if _is_int(score) and not 0 <= score <= DASH_MAX_SCORE:
        errors.append(FieldError(field, f"must be between 0 and {DASH_MAX_SCORE}"))


def _risk_rules(datum: dict, errors: list[FieldError]) -> None:
    _score_in_range(datum, "score", errors)
    answers = datum.get("answers")
    if isinstance(answers, list):
        seen: set[str] = set()
        for i, answer in enumerate(answers):
            qid = _get(answer, "question_id")
            if isinstance(qid, str):
                if qid in seen:
                    errors.append(FieldError(f"answers[{i}].question_id", "duplicate question id"))
                seen.add(qid)
    score, scored = datum.get("score"), datum.get("scored_level")
    if _get(datum, "tool", "name") == "DASH" and _is_int(score):
        if isinstance(answers, list) and all(isinstance(a, dict) for a in answers):
            if score != sum(1 for a in answers if a.get("answer") == "YES"):
                errors.append(FieldError("score", "must equal the number of YES answers for DASH"))
        if scored in _LEVEL_ORDER and scored != dash_level(score):
            errors.append(FieldError("scored_level", "does not match the DASH thresholds for the score"))
    judgement = datum.get("professional_judgement")
    final = _get(judgement, "level") if judgement else scored
    if judgement and scored in _LEVEL_ORDER and final in _LEVEL_ORDER and _LEVEL_ORDER[final] <= _LEVEL_ORDER[scored]:
        errors.append(FieldError("professional_judgement.level", "professional judgement can only raise the scored level"))
    level = _get(datum, "header", "risk_level")
    if level in _LEVEL_ORDER and final in _LEVEL_ORDER and level != final:
        errors.append(FieldError("header.risk_level", "must equal the professional judgement level, or the scored level without one"))


def _after(datum: dict, start: str, end: str, errors: list[FieldError]) -> None:
    begin, finish = _instant(datum.get(start)), _instant(datum.get(end))
    if begin is not None and finish is not None and finish <= begin:
        errors.append(FieldError(end, f"must be after {start}"))


def _child_rules(datum: dict, errors: list[FieldError]) -> None:
    incident, notify_by = _instant(datum.get("incident_at")), _instant(datum.get("notify_by"))
    if incident is not None and notify_by is not None and notify_by < incident // 86_400_000:
        errors.append(FieldError("notify_by", "must not be before the incident date"))


def _transfer_rules(datum: dict, errors: list[FieldError]) -> None:
    if datum.get("reason") == "TRANSFERRED" and not datum.get("transferred_to"):
        errors.append(FieldError("transferred_to", "required when reason is TRANSFERRED"))


def _plan_rules(datum: dict, errors: list[FieldError]) -> None:
    if _is_int(datum.get("plan_version")) and datum["plan_version"] < 1:
        errors.append(FieldError("plan_version", "must be 1 or more"))


_EVENT_RULES: dict[str, Callable[[dict, list[FieldError]], None]] = {
    "RISK_ASSESSMENT_COMPLETED": _risk_rules,
    "MARAC_REFERRAL": lambda d, e: _score_in_range(d, "dash_score", e),
    "PROTECTION_NOTICE_ISSUED": lambda d, e: _after(d, "issued_at", "expires_at", e),
    "PROTECTION_ORDER_GRANTED": lambda d, e: _after(d, "granted_at", "expires_at", e),
    "CHILD_NOTIFICATION": _child_rules,
    "SAFETY_PLAN_UPDATED": _plan_rules,
    "CASE_CLOSED": _transfer_rules,
}


def rule_errors(event_type: str, datum: Any) -> list[FieldError]:
    """Cross-field rules that Avro types cannot express."""
    errors: list[FieldError] = []
    if not isinstance(datum, dict):
        return errors
    consent = _get(datum, "header", "consent")
    if isinstance(consent, dict) and consent.get("status") in ("REFUSED", "NOT_SOUGHT") and not consent.get("reason"):
        errors.append(FieldError("header.consent.reason", "required when consent status is not GIVEN"))
    rule = _EVENT_RULES.get(event_type)
    if rule is not None:
        rule(datum, errors)
    return errors
