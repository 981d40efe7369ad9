"""Case event codec: JSON form <-> Confluent wire format (0x00, 4-byte big-endian schema id, Avro body).

Encoding always uses the latest registered schema of the event's type; decoding reads with the
writer schema named by the id and resolves to the latest reader schema of the same type, so old
data stays readable. Schemas come only from the frozen registry (see streams.schema_registry).

One path for every door and the router (docs/events.md, "Validation rules"):

    encode:        JSON form --jsonform--> datum --rules--> Avro bytes
    decode_valid:  Avro bytes --fastavro--> datum --rules--> JSON form

The datum is the values on the wire (logical types are not converted by fastavro: timestamps stay
int milliseconds, dates int days), so the doors and the router apply streams.rules to the very
same values. Errors name field paths and problems, never values: events carry personal data.
"""

from __future__ import annotations

import io
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import parse_schema

from streams import rules
from streams.errors import InvalidInput
from streams.jsonform import FieldError, SchemaWalker, strip_logical_types
from streams.jsonin import key_label
from streams.schema_registry import DEFAULT_SCHEMA_ROOT, Registry, SchemaSourceError, schema_root

__all__ = [
    "EVENT_TYPES", "MAX_EVENT_BYTES", "MAGIC_BYTE", "FieldError", "EventValidationError", "WireFormatError",
    "Codec", "validate_event", "encode_event", "decode_event", "decode_valid_event", "schema_id_of", "schema_ref",
    "field_paths", "get_path", "default_codec",
]

EVENT_TYPES: tuple[str, ...] = (
    "RISK_ASSESSMENT_COMPLETED", "MARAC_REFERRAL", "PROTECTION_NOTICE_ISSUED", "PROTECTION_ORDER_GRANTED",
    "CHILD_NOTIFICATION", "SAFETY_PLAN_UPDATED", "CASE_CLOSED",
)
MAX_EVENT_BYTES = 64 * 1024  # limit on the whole wire-format message
MAGIC_BYTE = 0
_PREFIX = struct.Struct(">bI")  # magic byte, schema id
PREFIX_BYTES = _PREFIX.size


class EventValidationError(InvalidInput, ValueError):
    """The event is invalid; ``errors`` lists every problem found.

    ``event_id`` is the event's header.event_id when it is a valid one (a canonical UUID, not the
    nil UUID; else None): an id, not a value, so refusals may carry it.
    """

    def __init__(self, errors: list[FieldError], event_id: str | None = None):
        self.errors = list(errors)
        self.event_id = event_id
        lines = "\n".join(f"{e.path}: {e.problem}" for e in self.errors)
        super().__init__(f"invalid case event ({len(self.errors)} problem(s)):\n{lines}")


class WireFormatError(InvalidInput, ValueError):
    """Bytes that are not a valid message: bad prefix, unknown schema id, undecodable body."""


@dataclass(frozen=True)
class _TypeSchemas:
    schema_id: int
    parsed: dict  # fastavro-parsed latest schema without logical types (writer on encode, reader on decode)
    walker: SchemaWalker
    paths: frozenset[str]


class Codec:
    """Encoder/decoder bound to one schema root; parsed schemas are cached on first use."""

    def __init__(self, root: Path = DEFAULT_SCHEMA_ROOT):
        self.registry = Registry(root)
        self._latest: dict[str, _TypeSchemas] = {}
        self._writers: dict[int, dict] = {}
        self._lock = threading.Lock()

    # -- schema lookup

    def _schemas(self, event_type: str) -> _TypeSchemas:
        cached = self._latest.get(event_type)
        if cached is not None:
            return cached
        with self._lock:
            entry = self.registry.latest(event_type)
            if entry is None:
                raise KeyError(f"no registered schema for event type {event_type}")
            raw = self.registry.schema(entry.id)
            walker = SchemaWalker(raw)
            cached = _TypeSchemas(entry.id, parse_schema(strip_logical_types(raw)), walker, walker.field_paths())
            self._latest[event_type] = cached
            return cached

    def _writer(self, schema_id: int) -> tuple[str, dict]:
        entry = self.registry.entry(schema_id)
        if entry is None:
            raise WireFormatError(f"unknown schema id {schema_id}")
        parsed = self._writers.get(schema_id)
        if parsed is None:
            try:
                frozen = self.registry.schema(schema_id)
            except SchemaSourceError:  # an edited frozen file: never read data with it
                raise WireFormatError(f"schema id {schema_id}: its frozen schema fails the integrity check") from None
            parsed = parse_schema(strip_logical_types(frozen))
            self._writers[schema_id] = parsed
        return entry.event_type, parsed

    def schema_ref(self, event_type: str) -> str:
        return f"{event_type}@{self._schemas(event_type).schema_id}"

    def field_paths(self, event_type: str) -> frozenset[str]:
        if event_type not in EVENT_TYPES:
            raise KeyError(f"unknown event type {key_label(event_type)}")
        return self._schemas(event_type).paths

    # -- encode

    @staticmethod
    def _event_type(event: Any) -> str:
        """The schema is chosen by header.event_type, so it must be sound before anything else."""
        if not isinstance(event, dict):
            problem = FieldError("<event>", "expected an object")
        elif not isinstance(event.get("header"), dict):
            problem = FieldError("header", "required field is missing" if "header" not in event else "expected an object")
        elif "event_type" not in event["header"]:
            problem = FieldError("header.event_type", "required field is missing")
        elif isinstance(event["header"]["event_type"], str) and event["header"]["event_type"] in EVENT_TYPES:
            return event["header"]["event_type"]
        else:
            problem = FieldError("header.event_type", f"unknown event type; expected one of {', '.join(EVENT_TYPES)}")
        raise EventValidationError([problem])

    def encode(self, event: dict) -> bytes:
        """The wire message of a JSON-form event; EventValidationError lists every problem."""
        event_type = self._event_type(event)
        schemas = self._schemas(event_type)
        errors: list[FieldError] = []
        datum = schemas.walker.to_datum(event, errors)
        errors.extend(rules.event_problems(event_type, datum, schemas.walker))
        if errors:
            raise EventValidationError(errors, _event_id(datum))
        buf = io.BytesIO()
        buf.write(_PREFIX.pack(MAGIC_BYTE, schemas.schema_id))
        schemaless_writer(buf, schemas.parsed, datum)
        data = buf.getvalue()
        if len(data) > MAX_EVENT_BYTES:
            raise EventValidationError([FieldError("<event>", f"encoded size exceeds MAX_EVENT_BYTES ({MAX_EVENT_BYTES})")],
                                       _event_id(datum))
        return data

    def validate(self, event: dict) -> None:
        self.encode(event)  # the size limit applies to the encoded form, so validate by encoding

    # -- decode

    def decode(self, data: bytes, *, validate: bool = False) -> dict:
        datum, event_type, reader, schema_id = self._decode_datum(data)
        if validate:
            errors = rules.event_problems(event_type, datum, reader.walker)
            if errors:
                paths = ", ".join(sorted({e.path for e in errors}))
                raise WireFormatError(f"body for schema id {schema_id} fails validation at: {paths}")
        return self._json_form(datum, reader, schema_id)

    def decode_valid(self, data: bytes) -> dict:
        """Decode, then apply the same rules as the doors (streams.rules) to the decoded datum.

        A body that is not decodable raises WireFormatError; a decodable body that breaks the
        rules raises EventValidationError naming each field, as encode would have.
        """
        datum, event_type, reader, schema_id = self._decode_datum(data)
        errors = rules.event_problems(event_type, datum, reader.walker)
        if errors:
            raise EventValidationError(errors, _event_id(datum))
        return self._json_form(datum, reader, schema_id)

    def _decode_datum(self, data: bytes) -> tuple[Any, str, _TypeSchemas, int]:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise WireFormatError("expected bytes")
        data = bytes(data)
        if len(data) < PREFIX_BYTES:
            raise WireFormatError(f"message shorter than the {PREFIX_BYTES}-byte prefix")
        if len(data) > MAX_EVENT_BYTES:
            raise WireFormatError(f"message larger than MAX_EVENT_BYTES ({MAX_EVENT_BYTES})")
        magic, schema_id = _PREFIX.unpack_from(data)
        if magic != MAGIC_BYTE:
            raise WireFormatError("bad magic byte (expected 0x00)")
        event_type, writer = self._writer(schema_id)
        reader = self._schemas(event_type)
        body = io.BytesIO(data)
        body.seek(PREFIX_BYTES)
        try:
            datum = schemaless_reader(body, writer, None if reader.schema_id == schema_id else reader.parsed)
        except Exception:  # noqa: BLE001 - any decoder failure is a wire format error
            # `from None`: the decoder's message may quote body bytes, i.e. personal data.
            raise WireFormatError(f"undecodable Avro body for schema id {schema_id}") from None
        if body.tell() != len(data):
            raise WireFormatError(f"trailing bytes after the Avro body for schema id {schema_id}")
        if _header_type(datum) != event_type:  # cheap, and routing trusts the type to pick a policy
            raise WireFormatError(f"header.event_type does not match schema id {schema_id}")
        return datum, event_type, reader, schema_id

    @staticmethod
    def _json_form(datum: Any, reader: _TypeSchemas, schema_id: int) -> dict:
        try:
            return reader.walker.to_json_form(datum)
        except (OverflowError, ValueError, TypeError, AttributeError):
            # Only a datum that breaks the rules gets here (e.g. a timestamp beyond year 9999).
            raise WireFormatError(f"undecodable Avro body for schema id {schema_id}") from None


def _header_type(event: Any) -> Any:
    header = event.get("header") if isinstance(event, dict) else None
    return header.get("event_type") if isinstance(header, dict) else None


def _event_id(datum: Any) -> str | None:
    header = datum.get("header") if isinstance(datum, dict) else None
    candidate = header.get("event_id") if isinstance(header, dict) else None
    return candidate if rules.uuid_problem(candidate) is None else None  # the nil UUID identifies nothing


_default: Codec | None = None
_default_lock = threading.Lock()


def default_codec() -> Codec:
    """The process-wide codec over schema_root() (MASB_SCHEMA_ROOT or the package's schemas), created
    on first use; SchemaSourceError (exit 2) if MASB_SCHEMA_ROOT names no schemas directory."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Codec(schema_root())
    return _default


def validate_event(event: dict) -> None:
    """Raise EventValidationError listing every invalid field of the JSON-form event."""
    default_codec().validate(event)


def encode_event(event: dict) -> bytes:
    """Validate, then encode with the latest registered schema of the event's type."""
    return default_codec().encode(event)


def decode_event(data: bytes, *, validate: bool = False) -> dict:
    """Wire bytes -> JSON form resolved to the latest schema of the type. Raises WireFormatError only.

    validate=True also applies the rules of streams.rules to the decoded datum (as
    decode_valid_event does, but failures are then WireFormatErrors naming only the paths).
    """
    return default_codec().decode(data, validate=validate)


def decode_valid_event(data: bytes) -> dict:
    """Wire bytes -> a valid event in JSON form: WireFormatError if undecodable, EventValidationError
    naming each field if it decodes but breaks a rule of streams.rules, the same rules every door
    applies (the router's check on every publication)."""
    return default_codec().decode_valid(data)


def schema_id_of(data: bytes) -> int:
    """The schema id in a message's prefix (WireFormatError if the prefix is malformed)."""
    if len(data) < PREFIX_BYTES or data[0] != MAGIC_BYTE:
        raise WireFormatError("not a wire-format message (short or bad magic byte)")
    return _PREFIX.unpack_from(data)[1]


def schema_ref(event_type: str) -> str:
    """'EVENT_TYPE@<latest schema id>', e.g. 'RISK_ASSESSMENT_COMPLETED@3'."""
    return default_codec().schema_ref(event_type)


def field_paths(event_type: str) -> frozenset[str]:
    """Every dotted path into the JSON form of the latest schema (records recursed; arrays are leaves)."""
    return default_codec().field_paths(event_type)


def get_path(event: dict, path: str) -> Any:
    """Value at a dotted field path; None when an optional value is absent. KeyError if not a field path."""
    event_type = _header_type(event)
    if event_type not in EVENT_TYPES or path not in field_paths(event_type):
        raise KeyError(path)
    value: Any = event
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value
