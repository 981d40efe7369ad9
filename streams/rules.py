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
- uuids in their canonical lower-case form, and never the nil UUID (all zeros: it identifies
  nothing, and an event id must identify one event);
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
import weakref
from datetime import date, datetime, timezone
from typing import Any, Callable

from streams.jsonform import FieldError, SchemaWalker
from streams.jsonin import key_label

__all__ = [
    "EARLIEST", "LATEST", "MIN_TIMESTAMP_MS", "MAX_TIMESTAMP_MS", "MIN_DATE_DAYS", "MAX_DATE_DAYS",
    "IDENTIFIER_RULES", "NON_EMPTY_ARRAYS", "DASH_MAX_SCORE", "text_problem", "timestamp_problem", "date_problem",
    "NIL_UUID", "is_canonical_uuid", "uuid_problem", "canonical_uuid", "event_problems", "publisher_refusal", "dash_level",
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


_BLANK = "must not be empty or blank (use null for an absent optional value)"


def _blank(text: str) -> bool:
    """No visible character: only white space and invisible format characters (e.g. U+200B)."""
    if text[:1].isalnum():  # the usual case, decided by the first character
        return False
    return all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in text)


def text_problem(text: str) -> str | None:
    """Why a string is not acceptable text (None if it is). Never quotes the text."""
    if text.isascii() and text.isprintable():  # the usual case: no refused character, already NFC
        return None if text.strip() else _BLANK
    if _REFUSED_RE.search(text):
        for name, pattern in _REFUSED_CLASSES:
            if pattern.search(text):
                return _TEXT_PROBLEMS[name]
    if _blank(text):
        return _BLANK
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


NIL_UUID = "00000000-0000-0000-0000-000000000000"


def uuid_problem(text: Any) -> str | None:
    """Why a wire uuid (an event id, a receipt's event id) is not acceptable, None if it is: not
    in canonical form, or the nil UUID. Never quotes the value."""
    if not is_canonical_uuid(text):
        return "is not a UUID in canonical form (36 characters, lower-case hexadecimal, hyphenated)"
    if text == NIL_UUID:
        return "is the nil UUID (all zeros), which identifies nothing; give each event its own UUID (version 4)"
    return None


_H = "[0-9a-fA-F]"
# The forms a person may type an id in (upper or lower case; hyphenated or 32 digits; in braces or
# as urn:uuid:), ASCII only: Python's uuid.UUID alone would also take "_" and non-ASCII digits.
_UUID_TYPED = re.compile(rf"(?:[uU][rR][nN]:[uU][uU][iI][dD]:)?(\{{)?(?:{_H}{{8}}-{_H}{{4}}-{_H}{{4}}-{_H}{{4}}-{_H}{{12}}"
                         rf"|{_H}{{32}})(?(1)\}})", re.ASCII)


def canonical_uuid(text: Any) -> str | None:
    """The canonical form (what the wire and the exchange log hold) of a uuid typed in any of the
    forms above, None if ``text`` is not one or is the nil UUID: how every command reads an event id."""
    if not isinstance(text, str) or not _UUID_TYPED.fullmatch(text):
        return None
    digits = text.rsplit(":", 1)[-1].strip("{}").replace("-", "").lower()
    canonical = "-".join((digits[:8], digits[8:12], digits[12:16], digits[16:20], digits[20:]))
    return None if uuid_problem(canonical) else canonical


# Required arrays of top-level fields that carry the event's substance: empty means nothing.
NON_EMPTY_ARRAYS = frozenset({"answers", "conditions", "actions"})


# ---------------------------------------------------------------- the walk over a datum

def event_problems(event_type: str, datum: Any, schema: SchemaWalker) -> list[FieldError]:
    """Every rule problem of a datum of ``event_type`` written with ``schema``.

    Values whose type does not fit the schema are skipped (the door's conversion reports them;
    the router's Avro decode cannot produce them), so this never raises on malformed input.
    """
    errors: list[FieldError] = []
    check = _CHECKERS.get(schema)
    if check is None:
        check = _CHECKERS[schema] = _Compiler(schema).compile(schema.schema, "") or _nothing
    check(datum, "", errors)
    if isinstance(datum, dict):
        errors.extend(_cross_field_errors(event_type, datum))
    return errors


# The walk over a datum is compiled once per schema into nested closures, one per schema node that
# has a rule to apply (strings, timestamps, dates, uuids, non-empty arrays, and the records, arrays,
# maps and unions on the way to them); nodes with nothing to check are left out. The router checks
# every publication, so this walk is on its hot path: the closures skip the per-node schema lookups.
Checker = Callable[[Any, str, list[FieldError]], None]
_CHECKERS: "weakref.WeakKeyDictionary[SchemaWalker, Checker]" = weakref.WeakKeyDictionary()


def _nothing(value: Any, path: str, errors: list[FieldError]) -> None:
    return None


class _Compiler:
    """Turns one schema into a Checker: check(value, path, errors) appends the value's problems."""

    _PENDING = object()

    def __init__(self, schema: SchemaWalker) -> None:
        self.schema = schema
        self.done: dict[tuple[int, str], Any] = {}  # (node, field name) -> its checker (None: nothing)

    def compile(self, node: Any, name: str) -> Checker | None:
        node = self.schema.resolve(node)
        key = (id(node), name)
        known = self.done.get(key)
        if known is self._PENDING:  # a recursive named type: look it up when called
            done = self.done
            return lambda value, path, errors: (done[key] or _nothing)(value, path, errors)
        if key in self.done:
            return known
        self.done[key] = self._PENDING
        checker = self._compile(node, name)
        self.done[key] = checker
        return checker

    def _compile(self, node: Any, name: str) -> Checker | None:
        if isinstance(node, list):
            return self._union(node, name)
        if isinstance(node, str):
            return _string_checker(name) if node == "string" else None
        kind, logical = node["type"], node.get("logicalType")
        if logical == "timestamp-millis":
            return _timestamp_checker
        if logical == "date":
            return _date_checker
        if logical == "uuid":
            return _uuid_checker
        if kind == "record":
            return self._record(node)
        if kind == "array":
            return self._array(node, name)
        if kind == "map":
            return self._map(node, name)
        if kind in ("enum", "fixed"):
            return None
        return self.compile(kind, name)

    def _union(self, branches: list, name: str) -> Checker | None:
        # The first non-null branch the value fits decides; only if one of them checks anything.
        options = [(_fits_test(self.schema.resolve(b)), self.compile(b, name)) for b in branches if b != "null"]
        if all(check is None for _, check in options):
            return None
        if len(options) == 1:  # ["null", T]: T's checker tests the value's type as the branch would
            return options[0][1]

        def union(value: Any, path: str, errors: list[FieldError]) -> None:
            if value is None:
                return
            for fits, check in options:
                if fits(value):
                    if check is not None:
                        check(value, path, errors)
                    return
        return union

    def _record(self, node: dict) -> Checker | None:
        fields = [(f["name"], check) for f in node["fields"] if (check := self.compile(f["type"], f["name"]))]
        if not fields:
            return None

        def record(value: Any, path: str, errors: list[FieldError]) -> None:
            if isinstance(value, dict):
                get = value.get
                prefix = path + "." if path else ""
                for fname, check in fields:
                    check(get(fname), prefix + fname, errors)
        return record

    def _array(self, node: dict, name: str) -> Checker | None:
        item = self.compile(node["items"], name)
        # Only a top-level field can be one of NON_EMPTY_ARRAYS, and its path is its name.
        if item is None and name not in NON_EMPTY_ARRAYS:
            return None

        def array(value: Any, path: str, errors: list[FieldError]) -> None:
            if isinstance(value, list):
                if not value and path in NON_EMPTY_ARRAYS:
                    errors.append(FieldError(path, "must not be empty"))
                if item is not None:
                    for i, element in enumerate(value):
                        item(element, f"{path}[{i}]", errors)
        return array

    def _map(self, node: dict, name: str) -> Checker | None:
        item = self.compile(node["values"], name)
        if item is None:
            return None

        def mapping(value: Any, path: str, errors: list[FieldError]) -> None:
            if isinstance(value, dict):
                for key, element in value.items():
                    item(element, f"{path}.{key_label(key)}", errors)
        return mapping


def _string_checker(name: str) -> Checker:
    rule = IDENTIFIER_RULES.get(name)

    def string(value: Any, path: str, errors: list[FieldError]) -> None:
        if isinstance(value, str):
            problem = text_problem(value)
            if problem is None and rule is not None and not rule[0](value):
                problem = rule[1]
            if problem:
                errors.append(FieldError(path, problem))
    return string


def _timestamp_checker(value: Any, path: str, errors: list[FieldError]) -> None:
    if _is_int(value) and not MIN_TIMESTAMP_MS <= value <= MAX_TIMESTAMP_MS:
        errors.append(FieldError(path, timestamp_problem(value)))


def _date_checker(value: Any, path: str, errors: list[FieldError]) -> None:
    if _is_int(value) and not MIN_DATE_DAYS <= value <= MAX_DATE_DAYS:
        errors.append(FieldError(path, date_problem(value)))


def _uuid_checker(value: Any, path: str, errors: list[FieldError]) -> None:
    if isinstance(value, str):
        problem = uuid_problem(value)
        if problem:
            errors.append(FieldError(path, problem))


def _fits_test(node: Any) -> Callable[[Any], bool]:
    """Does a value belong to this union branch (by its Python type)?"""
    kind = node if isinstance(node, str) else node.get("type")
    if kind in ("record", "map"):
        return lambda value: isinstance(value, dict)
    if kind == "array":
        return lambda value: isinstance(value, list)
    if kind in ("int", "long"):
        return _is_int
    if kind in ("string", "enum"):
        return lambda value: isinstance(value, str)
    return lambda value: True


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
