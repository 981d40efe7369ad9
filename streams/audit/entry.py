"""Audit entries: the records of the exchange log (format in docs/audit.md, "Audit entry").

Entry bytes = one format byte (0x01) followed by the Avro binary encoding of
schemas/audit/audit_entry_v1.avsc. The Merkle leaf is computed over exactly these bytes, so the
encoding must never change for a given format byte; a new entry schema gets a new format byte.
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
_SCHEMA_PATH = schema_file("audit", "audit_entry_v1.avsc")
_SCHEMA = fastavro.schema.load_schema(str(_SCHEMA_PATH))
_FIELD_NAMES = tuple(f["name"] for f in _SCHEMA["fields"])
KINDS = ("DELIVERY", "REFUSAL", "DUPLICATE", "RECEIPT", "POLICY_CHANGE")


class AuditEntryError(CheckFailed, ValueError):
    """Bytes that are not an audit entry of a known format."""


def exchange_id(kind: str, event_id: str | None, agency_id: str | None, policy_version: int | None) -> str:
    material = "|".join([kind, event_id or "", agency_id or "", str(policy_version or "")])
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def make_entry(kind: str, **fields: Any) -> dict[str, Any]:
    """A complete entry dict with defaults filled in; unknown field names are refused."""
    if kind not in KINDS:
        raise ValueError(f"unknown audit entry kind {kind!r}")
    unknown = set(fields) - set(_FIELD_NAMES)
    if unknown:
        raise ValueError(f"unknown audit entry fields: {sorted(unknown)}")
    entry: dict[str, Any] = {name: None for name in _FIELD_NAMES}
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
    buf = io.BytesIO()
    buf.write(bytes([ENTRY_FORMAT_V1]))
    fastavro.schemaless_writer(buf, _SCHEMA, entry)
    return buf.getvalue()


def decode_entry(data: bytes) -> dict[str, Any]:
    if not data or data[0] != ENTRY_FORMAT_V1:
        raise AuditEntryError("not an audit entry of format 0x01")
    buf = io.BytesIO(data[1:])
    try:
        entry = fastavro.schemaless_reader(buf, _SCHEMA)
    except Exception as exc:
        raise AuditEntryError(f"undecodable audit entry: {type(exc).__name__}") from None
    if buf.read(1):
        raise AuditEntryError("trailing bytes after audit entry")
    return entry
