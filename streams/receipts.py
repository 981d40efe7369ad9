"""Receipts: a partner agency tells the router it received (and later acknowledged) an envelope.

Like MESH, the transport receipt (RECEIVED: verified and decrypted) is separate from the business
acknowledgement (ACKNOWLEDGED: taken into the agency's case work). Every valid receipt becomes a
RECEIPT entry of the exchange log; an invalid one a REFUSAL entry. Format: docs/receipts.md.

A receipt is authenticated with the keys the agency already has: it is a NaCl Box from the
agency's X25519 key to the router's, so only the router can read it and only the holder of the
agency's key (or the router itself) can have made it.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import fastavro
import nacl.exceptions
import nacl.public

from streams import rules
from streams.crypto.keys import PrivateKeyRecord
from streams.errors import InvalidInput
from streams.jsonform import strip_logical_types
from streams.resources import schema_file

STATUSES = ("RECEIVED", "ACKNOWLEDGED")
_SCHEMAS = fastavro.schema.load_schema(str(schema_file("receipt.avsc")))
_BODY, _RECEIPT = (next(s for s in _SCHEMAS if s["name"] == f"masb.receipt.{n}") for n in ("ReceiptBody", "Receipt"))
# The body as it is on the wire (``at`` as int milliseconds): its range is checked before any
# conversion, so no value can make the decoder fail on a date beyond what datetime holds.
_BODY_WIRE = fastavro.parse_schema(strip_logical_types(
    json.loads(schema_file("receipt.avsc").read_text("utf-8"))[0]))
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class ReceiptError(InvalidInput, ValueError):
    """A receipt the router cannot accept; the message names ids and the problem, nothing else."""


@dataclass(frozen=True)
class OpenedReceipt:
    agency_id: str
    agency_key_id: str
    event_id: str
    envelope_sha256: str
    status: str
    at: datetime


def _encode(schema, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def _decode(schema, data: bytes, what: str) -> dict[str, Any]:
    buf = io.BytesIO(data)
    try:
        record = fastavro.schemaless_reader(buf, schema)
    except Exception:  # noqa: BLE001 - any decoder failure means a malformed record
        raise ReceiptError(f"{what} is not valid Avro") from None
    if buf.read(1):
        raise ReceiptError(f"{what} has trailing bytes")
    return record


_SHA256_HEX = re.compile(r"[0-9a-f]{64}", re.ASCII)


def body_problems(event_id: Any, envelope_sha256: Any, status: Any, at: Any) -> list[str]:
    """Why a receipt body is not acceptable (empty if it is): the one rule set for receipts,
    applied by the partner before sealing and by the router after opening. Names fields only."""
    problems = []
    uuid_problem = rules.uuid_problem(event_id)
    if uuid_problem:
        problems.append(f"event_id: {uuid_problem}")
    if not isinstance(envelope_sha256, str) or not _SHA256_HEX.fullmatch(envelope_sha256):
        problems.append("envelope_sha256: is not 64 lower-case hexadecimal digits")
    if status not in STATUSES:
        problems.append(f"status: is not one of {', '.join(STATUSES)}")
    if not isinstance(at, datetime) or at.tzinfo is None:
        problems.append("at: is not a timezone-aware time")
    elif not rules.EARLIEST <= at <= rules.LATEST:
        problems.append("at: is outside the accepted range 1900-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z")
    return problems


def seal_receipt(*, agency_key: PrivateKeyRecord, router_key_id: str, router_exchange_public: bytes,
                 event_id: str, envelope_sha256: str, status: str = "RECEIVED",
                 at: datetime | None = None) -> bytes:
    """The receipts-topic record value for one envelope; ReceiptError if the body breaks a rule."""
    at = at or datetime.now(timezone.utc)
    problems = body_problems(event_id, envelope_sha256, status, at)
    if problems:
        raise ReceiptError("receipt not sealed: " + "; ".join(problems))
    body = _encode(_BODY, {"version": 1, "event_id": event_id, "envelope_sha256": envelope_sha256,
                           "status": status, "at": at})
    box = nacl.public.Box(agency_key.exchange_key(), nacl.public.PublicKey(router_exchange_public))
    return _encode(_RECEIPT, {"version": 1, "agency_id": agency_key.owner, "agency_key_id": agency_key.key_id,
                              "router_key_id": router_key_id, "sealed": bytes(box.encrypt(body))})


def open_receipt(data: bytes, *, router_exchange_keys: Callable[[str], PrivateKeyRecord | None],
                 agency_public_key: Callable[[str, str], bytes | None]) -> OpenedReceipt:
    """Check and read a receipt: known router key, known (not revoked) agency key, authentic body
    that passes body_problems.

    ReceiptError messages never repeat what the sender wrote: the agency is named only once its
    key was found in the policy (``agency_public_key`` answered), never a version, key id or text
    from the record.
    """
    receipt = _decode(_RECEIPT, data, "receipt")
    if receipt["version"] != 1:
        raise ReceiptError("receipt version is not 1")
    router_key = router_exchange_keys(receipt["router_key_id"])
    if router_key is None:
        raise ReceiptError("receipt is sealed to a router key this router does not hold")
    agency_id = receipt["agency_id"]
    agency_public = agency_public_key(agency_id, receipt["agency_key_id"])
    if agency_public is None:
        raise ReceiptError("receipt names an agency exchange key the policy does not trust "
                           "(unknown agency or key, or a revoked key)")
    # From here on agency_id names an agency of the policy, one of MASB's own identifiers.
    box = nacl.public.Box(router_key.exchange_key(), nacl.public.PublicKey(agency_public))
    try:
        plain = box.decrypt(receipt["sealed"])
    except nacl.exceptions.CryptoError:
        raise ReceiptError(f"receipt from agency {agency_id} does not authenticate") from None
    body = _decode(_BODY_WIRE, plain, f"receipt body from agency {agency_id}")
    if body["version"] != 1:
        raise ReceiptError(f"receipt body from agency {agency_id}: version is not 1")
    at_ms = body["at"]
    if rules.timestamp_problem(at_ms):
        raise ReceiptError(f"receipt body from agency {agency_id}: at: is outside the accepted range "
                           "1900-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z")
    at = _EPOCH + timedelta(milliseconds=at_ms)
    problems = body_problems(body["event_id"], body["envelope_sha256"], body["status"], at)
    if problems:
        raise ReceiptError(f"receipt body from agency {agency_id}: " + "; ".join(problems))
    return OpenedReceipt(agency_id, receipt["agency_key_id"], body["event_id"], body["envelope_sha256"],
                         body["status"], at)
