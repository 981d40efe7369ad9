"""Audit entries: the records of the exchange log (format in docs/audit.md, "Audit entry").

Entry bytes = one format byte followed by the Avro binary encoding of the schema that byte names:

    0x01  schemas/audit/audit_entry_v1.avsc   DELIVERY, REFUSAL, DUPLICATE, RECEIPT, POLICY_CHANGE
    0x02  schemas/audit/audit_entry_v2.avsc   ESCALATION, ESCALATION_CLOSED, NON_DELIVERY, REDRIVE

The Merkle leaf is computed over exactly these bytes, so the encoding must never change for a given
format byte. An entry of the five original kinds is still written as 0x01, byte for byte as before:
readers that only know 0x01 keep reading everything they understood. Only the kinds that 0x01 cannot
express use 0x02 (its schema is 0x01's with the enum and three fields appended).
"""

from __future__ import annotations

import hashlib
import io
from datetime import datetime, timezone
from typing import Any

import fastavro

from streams.errors import CheckFailed
from streams.resources import schema_file

ENTRY_FORMAT_V1 = 0x01
ENTRY_FORMAT_V2 = 0x02
_SCHEMAS = {
    ENTRY_FORMAT_V1: fastavro.schema.load_schema(str(schema_file("audit", "audit_entry_v1.avsc"))),
    ENTRY_FORMAT_V2: fastavro.schema.load_schema(str(schema_file("audit", "audit_entry_v2.avsc"))),
}
_FIELDS = {fmt: tuple(f["name"] for f in schema["fields"]) for fmt, schema in _SCHEMAS.items()}
_FIELD_NAMES = _FIELDS[ENTRY_FORMAT_V2]  # every field a decoded entry has, whatever its format
_ALLOWED = {fmt: frozenset(names) for fmt, names in _FIELDS.items()}
_ONLY_V2 = tuple(name for name in _FIELD_NAMES if name not in _ALLOWED[ENTRY_FORMAT_V1])
_FORMAT_BYTE = {fmt: bytes([fmt]) for fmt in _FIELDS}
# 0x02's fields are 0x01's with fields appended: a decoded 0x01 entry gets the rest as None, in order.
_V1_PREFIX_OF_V2 = _FIELD_NAMES[:len(_FIELDS[ENTRY_FORMAT_V1])] == _FIELDS[ENTRY_FORMAT_V1]
_ONLY_V2_NONE = dict.fromkeys(_FIELD_NAMES[len(_FIELDS[ENTRY_FORMAT_V1]):])
V1_KINDS = ("DELIVERY", "REFUSAL", "DUPLICATE", "RECEIPT", "POLICY_CHANGE")
V2_KINDS = ("ESCALATION", "ESCALATION_CLOSED", "NON_DELIVERY", "REDRIVE")
KINDS = V1_KINDS + V2_KINDS


class AuditEntryError(CheckFailed, ValueError):
    """Bytes that are not an audit entry of a known format."""


def exchange_id(kind: str, event_id: str | None, agency_id: str | None, policy_version: int | None) -> str:
    material = "|".join([kind, event_id or "", agency_id or "", str(policy_version or "")])
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def entry_format(kind: str) -> int:
    """The format byte an entry of this kind is written with."""
    return ENTRY_FORMAT_V1 if kind in V1_KINDS else ENTRY_FORMAT_V2


def make_entry(kind: str, **fields: Any) -> dict[str, Any]:
    """A complete entry dict with defaults filled in; unknown field names are refused, and so are the
    0x02 fields (level, action_id, notice_sha256) on a kind written as 0x01."""
    if kind not in KINDS:
        raise ValueError(f"unknown audit entry kind {kind!r}")
    fmt = entry_format(kind)
    unknown = fields.keys() - _ALLOWED[fmt]
    if unknown:
        raise ValueError(f"unknown audit entry fields for {kind}: {sorted(unknown)}")
    entry: dict[str, Any] = dict.fromkeys(_FIELDS[fmt])
    entry["fields"] = []
    entry.update(fields)
    entry["kind"] = kind
    entry["recorded_at"] = entry["recorded_at"] or datetime.now(timezone.utc)
    entry["exchange_id"] = entry["exchange_id"] or exchange_id(
        kind, entry["event_id"], entry["agency_id"], entry["policy_version"]
    )
    entry["fields"] = sorted(entry["fields"])
    return entry


def encode_entry(entry: dict[str, Any]) -> bytes:
    fmt = entry_format(entry["kind"])
    if fmt == ENTRY_FORMAT_V1:  # a 0x02 entry has every field
        dropped = [name for name in _ONLY_V2 if entry.get(name) is not None]
        if dropped:
            raise ValueError(f"a {entry['kind']} entry (format 0x01) has no field {sorted(dropped)}")
    buf = io.BytesIO()
    buf.write(_FORMAT_BYTE[fmt])
    fastavro.schemaless_writer(buf, _SCHEMAS[fmt], {name: entry.get(name) for name in _FIELDS[fmt]})
    return buf.getvalue()


def decode_entry(data: bytes) -> dict[str, Any]:
    """The entry as a dict with every field of the newest format (those its format lacks are None)."""
    schema = _SCHEMAS.get(data[0]) if data else None
    if schema is None:
        raise AuditEntryError("not an audit entry of format 0x01 or 0x02")
    buf = io.BytesIO(data)
    buf.seek(1)
    try:
        decoded = fastavro.schemaless_reader(buf, schema)
    except Exception as exc:
        raise AuditEntryError(f"undecodable audit entry: {type(exc).__name__}") from None
    if buf.tell() != len(data):
        raise AuditEntryError("trailing bytes after audit entry")
    if data[0] == ENTRY_FORMAT_V2:
        if decoded["kind"] in V1_KINDS:
            # One encoding per entry: a kind 0x01 can express is only valid as 0x01.
            raise AuditEntryError(f"a {decoded['kind']} entry must be of format 0x01")
        if tuple(decoded) == _FIELD_NAMES:
            return decoded
    elif _V1_PREFIX_OF_V2 and len(decoded) == len(_FIELDS[ENTRY_FORMAT_V1]):
        decoded.update(_ONLY_V2_NONE)
        return decoded
    entry = dict.fromkeys(_FIELD_NAMES)
    entry.update(decoded)
    return entry
