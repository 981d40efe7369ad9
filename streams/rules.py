"""The one rule set for case events: what every door accepts and what the router re-checks.

Every door (`masb publish` and the Python client through streams.publisher.prepare, the HTTP
ingest) converts the JSON form to the Avro datum (streams.jsonform), applies
:func:`event_problems` to it, and encodes exactly that datum. The router decodes the wire bytes
back to the same datum and applies the same function (streams.codec.decode_valid_event), so an
event a door accepted is never refused by the router as invalid or undecodable. The rules read
the datum, i.e. the values on the wire: timestamps as milliseconds since the Unix epoch (UTC),
dates as days since 1970-01-01, uuids as text.

The rules (docs/events.md, "Validation rules"):

- text: every string is valid Unicode text that partner systems can store and show (see
  :func:`text_problem`), in NFC, not blank;
- identifiers: fields named in IDENTIFIER_RULES are ASCII only, matched with [0-9]/[A-Z] and
  re.ASCII (``\\d``, ``str.isdigit`` and ``int()`` accept any Unicode digit, e.g. full-width);
- uuids in their canonical lower-case form;
- time: every timestamp and date lies between EARLIEST and LATEST (UTC), a range every reader of
  the data can represent;
- required arrays that mean nothing when empty (answers, conditions, actions) are not empty;
- cross-field rules per event type.

Problems are FieldErrors naming a field path and a problem, never a value. The same module holds
the publisher check shared by the doors and the router (:func:`publisher_refusal`).
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date, datetime, timezone
from typing import Any, Callable

from streams.jsonform import FieldError, SchemaWalker, join_path
from streams.jsonin import key_label

__all__ = [
    "EARLIEST", "LATEST", "MIN_TIMESTAMP_MS", "MAX_TIMESTAMP_MS", "MIN_DATE_DAYS", "MAX_DATE_DAYS",
    "IDENTIFIER_RULES", "NON_EMPTY_ARRAYS", "DASH_MAX_SCORE", "text_problem", "timestamp_problem", "date_problem",
    "is_canonical_uuid", "event_problems", "publisher_refusal", "dash_level",
]

# ---------------------------------------------------------------- time range
# Lower bound: readers disagree before 1900 (Apache Spark and Hive rebase older Avro timestamps
# between calendars, java.sql.Date switches to the Julian calendar before 1582, time zone rules
# before 1900 are local mean time). Upper bound: Python (fastavro's datetime), .NET DateTime and
# 4-digit RFC 3339 years end at 9999. Java Avro (Instant, LocalDate) reads far wider.
EARLIEST = datetime(1900, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=timezone.utc)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MIN_TIMESTAMP_MS = int((EARLIEST - _EPOCH).total_seconds()) * 1000
MAX_TIMESTAMP_MS = int((LATEST.replace(microsecond=0) - _EPOCH).total_seconds()) * 1000 + 999
MIN_DATE_DAYS = (EARLIEST.date() - date(1970, 1, 1)).days
MAX_DATE_DAYS = (LATEST.date() - date(1970, 1, 1)).days
_TIME_RANGE = "1900-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z"


def timestamp_problem(ms: int) -> str | None:
    if MIN_TIMESTAMP_MS <= ms <= MAX_TIMESTAMP_MS:
        return None
    return f"instant (in UTC, offset applied) is outside the accepted range {_TIME_RANGE}"


def date_problem(days: int) -> str | None:
    if MIN_DATE_DAYS <= days <= MAX_DATE_DAYS:
        return None
    return "date is outside the accepted range 1900-01-01 to 9999-12-31"


# ---------------------------------------------------------------- text
# Code points refused in any text: C0 and C1 controls except tab, line feed and carriage return
# (NUL truncates C strings, others corrupt CSV, XML 1.0 and terminals), surrogates (not Unicode
# scalar values: no UTF-8 encoder accepts them), noncharacters (not for interchange), the byte
# order mark, bidirectional embedding/override/isolate controls (they reorder what a partner's
# screen shows, e.g. a name or a phone number), and U+2028/U+2029 (they break JSON in JavaScript
# before ES2019 and line-based tools; write a line feed).
_NONCHARACTERS = "\ufdd0-\ufdef" + "".join(f"{chr(plane * 0x10000 + 0xFFFE)}{chr(plane * 0x10000 + 0xFFFF)}"
                                             for plane in range(17))
_REFUSED = {
    "control": "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f",
    "surrogate": "\ud800-\udfff",
    "noncharacter": _NONCHARACTERS,
    "bom": "\ufeff",
    "bidi": "\u202a-\u202e\u2066-\u2069",
    "separator": "\u2028\u2029",
}
_REFUSED_RE = re.compile("[" + "".join(_REFUSED.values()) + "]")
_REFUSED_CLASSES = [(name, re.compile(f"[{chars}]")) for name, chars in _REFUSED.items()]
_TEXT_PROBLEMS = {
    "control": "contains a control character (only tab, line feed and carriage return are allowed)",
    "surrogate": "is not valid Unicode text (it contains a surrogate code point, such as half of an emoji)",
    "noncharacter": "contains a Unicode noncharacter",
    "bom": "contains a byte order mark (U+FEFF)",
    "bidi": "contains a bidirectional formatting control (U+202A-U+202E, U+2066-U+2069)",
    "separator": "contains a line or paragraph separator (U+2028, U+2029); use a line feed",
}


def _blank(text: str) -> bool:
    """No visible character: only white space and invisible format characters (e.g. U+200B)."""
    return all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in text)


def text_problem(text: str) -> str | None:
    """Why a string is not acceptable text (None if it is). Never quotes the text."""
    if _REFUSED_RE.search(text):
        for name, pattern in _REFUSED_CLASSES:
            if pattern.search(text):
                return _TEXT_PROBLEMS[name]
    if _blank(text):
        return "must not be empty or blank (use null for an absent optional value)"
    if not unicodedata.is_normalized("NFC", text):
        return "is not in Unicode normalization form NFC (compose accents, e.g. with unicodedata.normalize)"
    return None


# ---------------------------------------------------------------- identifiers

def _nhs_number_ok(text: str) -> bool:
    """10 ASCII digits whose last is the NHS modulus-11 check digit."""
    if not re.fullmatch(r"[0-9]{10}", text, re.ASCII):
        return False
    total = sum(int(d) * w for d, w in zip(text[:9], range(10, 1, -1)))
    check = 11 - total % 11
    check = 0 if check == 11 else check
    return check != 10 and check == int(text[9])


def _pattern(regex: str) -> tuple[Callable[[str], bool], str]:
    compiled = re.compile(regex, re.ASCII)
    return (lambda text: compiled.fullmatch(text) is not None), f"does not match {regex} (ASCII only)"


_REFERENCE = r"[A-Za-z0-9](?:[A-Za-z0-9 ./_-]{0,62}[A-Za-z0-9])?"

# Rules for string fields, by field name wherever the field appears. They keep identifiers that
# travel in keys, headers, labels and partners' matching (case_ref, unit_id, NHS number, ...) to
# their documented ASCII shape, free of names and free text.
IDENTIFIER_RULES: dict[str, tuple[Callable[[str], bool], str]] = {
    "case_ref": _pattern(r"[A-Z]{2,4}-[0-9A-Z]{6,32}"),
    "unit_id": _pattern(r"[a-z][a-z0-9-]{1,63}"),
    "urn": _pattern(r"[0-9]{6,7}"),
    "uprn": _pattern(r"[0-9]{1,12}"),
    "postcode": _pattern(r"[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}"),
    "nhs_number": (_nhs_number_ok, "is not a 10-digit NHS number (ASCII digits) with a valid check digit"),
    # References partners quote back or match on: letters, digits and . / _ - space inside.
    "question_id": _pattern(_REFERENCE),
    "crime_reference": _pattern(_REFERENCE),
    "police_reference": _pattern(_REFERENCE),
    "version": _pattern(_REFERENCE),  # tool.version, e.g. "2009", "1.1"
}

_UUID_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII)


def is_canonical_uuid(text: Any) -> bool:
    """The 36-character lower-case hyphenated form (the wire form of every uuid)."""
    return isinstance(text, str) and _UUID_CANONICAL.fullmatch(text) is not None


# Required arrays of top-level fields that carry the event's substance: empty means nothing.
NON_EMPTY_ARRAYS = frozenset({"answers", "conditions", "actions"})


# ---------------------------------------------------------------- the walk over a datum

def event_problems(event_type: str, datum: Any, schema: SchemaWalker) -> list[FieldError]:
    """Every rule problem of a datum of ``event_type`` written with ``schema``.

    Values whose type does not fit the schema are skipped (the door's conversion reports them;
    the router's Avro decode cannot produce them), so this never raises on malformed input.
    """
    errors: list[FieldError] = []
    _check(schema, schema.schema, datum, "", "", errors)
    if isinstance(datum, dict):
        errors.extend(_cross_field_errors(event_type, datum))
    return errors


def _check(schema: SchemaWalker, node: Any, value: Any, path: str, name: str, errors: list[FieldError]) -> None:
    node = schema.resolve(node)
    if value is None:
        return
    if isinstance(node, list):
        for branch in node:
            if branch != "null" and _fits(schema.resolve(branch), value):
                _check(schema, branch, value, path, name, errors)
                return
        return
    if isinstance(node, str):
        if node == "string" and isinstance(value, str):
            _check_string(value, path, name, errors)
        return
    kind, logical = node["type"], node.get("logicalType")
    if logical == "timestamp-millis":
        problem = timestamp_problem(value) if _is_int(value) else None
    elif logical == "date":
        problem = date_problem(value) if _is_int(value) else None
    elif logical == "uuid":
        problem = None if not isinstance(value, str) or is_canonical_uuid(value) else \
            "is not a UUID in canonical form (36 characters, lower-case hexadecimal, hyphenated)"
    elif kind == "record":
        if isinstance(value, dict):
            for field in node["fields"]:
                _check(schema, field["type"], value.get(field["name"]), join_path(path, field["name"]), field["name"], errors)
        return
    elif kind == "array":
        if isinstance(value, list):
            if not value and path in NON_EMPTY_ARRAYS:
                errors.append(FieldError(path, "must not be empty"))
            for i, item in enumerate(value):
                _check(schema, node["items"], item, f"{path}[{i}]", name, errors)
        return
    elif kind == "map":
        if isinstance(value, dict):
            for key, item in value.items():
                _check(schema, node["values"], item, f"{path}.{key_label(key)}", name, errors)
        return
    elif kind in ("enum", "fixed"):
        return
    else:
        _check(schema, kind, value, path, name, errors)
        return
    if problem:
        errors.append(FieldError(path, problem))


def _check_string(value: str, path: str, name: str, errors: list[FieldError]) -> None:
    problem = text_problem(value)
    if problem is None and name in IDENTIFIER_RULES:
        ok, rule_problem = IDENTIFIER_RULES[name]
        problem = None if ok(value) else rule_problem
    if problem:
        errors.append(FieldError(path, problem))


def _fits(node: Any, value: Any) -> bool:
    kind = node if isinstance(node, str) else node.get("type")
    if kind in ("record", "map"):
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind in ("int", "long"):
        return _is_int(value)
    if kind in ("string", "enum"):
        return isinstance(value, str)
    return True


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------- cross-field rules
# They guard their own types, so a structural error elsewhere never makes them crash.

_LEVEL_ORDER = {"STANDARD": 0, "MEDIUM": 1, "HIGH": 2}
DASH_MAX_SCORE = 24
_DASH_QUESTION = re.compile(r"Q(?:[1-9]|1[0-9]|2[0-4])", re.ASCII)


def dash_level(score: int) -> str:
    """SafeLives DASH thresholds: 14+ HIGH, 10-13 MEDIUM, otherwise STANDARD."""
    return "HIGH" if score >= 14 else "MEDIUM" if score >= 10 else "STANDARD"


def _get(datum: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(datum, dict):
            return None
        datum = datum.get(key)
    return datum


def _score_in_range(datum: dict, field: str, errors: list[FieldError]) -> None:
    score = datum.get(field)
    if _is_int(score) and not 0 <= score <= DASH_MAX_SCORE:
        errors.append(FieldError(field, f"must be between 0 and {DASH_MAX_SCORE}"))


def _risk_rules(datum: dict, errors: list[FieldError]) -> None:
    _score_in_range(datum, "score", errors)
    answers = datum.get("answers")
    dash = _get(datum, "tool", "name") == "DASH"
    if isinstance(answers, list):
        seen: set[str] = set()
        for i, answer in enumerate(answers):
            qid = _get(answer, "question_id")
            if isinstance(qid, str):
                if qid in seen:
                    errors.append(FieldError(f"answers[{i}].question_id", "duplicate question id"))
                elif dash and not _DASH_QUESTION.fullmatch(qid):
                    errors.append(FieldError(f"answers[{i}].question_id", "is not a DASH question id (Q1 to Q24)"))
                seen.add(qid)
    score, scored = datum.get("score"), datum.get("scored_level")
    if dash and _is_int(score):
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
    begin, finish = datum.get(start), datum.get(end)
    if _is_int(begin) and _is_int(finish) and finish <= begin:
        errors.append(FieldError(end, f"must be after {start}"))


def _child_rules(datum: dict, errors: list[FieldError]) -> None:
    incident, notify_by = datum.get("incident_at"), datum.get("notify_by")
    if _is_int(incident) and _is_int(notify_by) and notify_by < incident // 86_400_000:
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


def _cross_field_errors(event_type: str, datum: dict) -> list[FieldError]:
    errors: list[FieldError] = []
    consent = _get(datum, "header", "consent")
    if isinstance(consent, dict) and consent.get("status") in ("REFUSED", "NOT_SOUGHT") and not consent.get("reason"):
        errors.append(FieldError("header.consent.reason", "required when consent status is not GIVEN"))
    rule = _EVENT_RULES.get(event_type)
    if rule is not None:
        rule(datum, errors)
    return errors


# ---------------------------------------------------------------- who may publish it

UNIT_MISMATCH = "UNIT_MISMATCH"
UNAUTHORISED_PUBLISHER = "UNAUTHORISED_PUBLISHER"


def publisher_refusal(policy: Any, signer: str, header: dict[str, Any]) -> tuple[str, str] | None:
    """(reason code, reason) if unit ``signer`` may not publish a valid event with this header
    under ``policy`` (streams.policy.Policy), else None. Applied by the doors before signing and by
    the router after verifying the signature; the reason names only policy ids, types and areas."""
    if header["unit_id"] != signer:
        return UNIT_MISMATCH, f"signed by unit {signer} but header.unit_id names another unit"
    if not policy.unit_may_publish(signer, header["event_type"], header["area"]):
        return UNAUTHORISED_PUBLISHER, (f"unit {signer} is not registered to publish {header['event_type']} "
                                        f"for area {header['area']} (policy version {policy.version})")
    return None
