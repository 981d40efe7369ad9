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
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import fastavro
import nacl.exceptions
import nacl.public

from streams.crypto.keys import PrivateKeyRecord
from streams.errors import InvalidInput
from streams.resources import schema_file

STATUSES = ("RECEIVED", "ACKNOWLEDGED")
_SCHEMAS = fastavro.schema.load_schema(str(schema_file("receipt.avsc")))
_BODY, _RECEIPT = (next(s for s in _SCHEMAS if s["name"] == f"masb.receipt.{n}") for n in ("ReceiptBody", "Receipt"))


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


def seal_receipt(*, agency_key: PrivateKeyRecord, router_key_id: str, router_exchange_public: bytes,
                 event_id: str, envelope_sha256: str, status: str = "RECEIVED",
                 at: datetime | None = None) -> bytes:
    """The receipts-topic record value for one envelope."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}")
    body = _encode(_BODY, {"version": 1, "event_id": event_id, "envelope_sha256": envelope_sha256,
                           "status": status, "at": at or datetime.now(timezone.utc)})
    box = nacl.public.Box(agency_key.exchange_key(), nacl.public.PublicKey(router_exchange_public))
    return _encode(_RECEIPT, {"version": 1, "agency_id": agency_key.owner, "agency_key_id": agency_key.key_id,
                              "router_key_id": router_key_id, "sealed": bytes(box.encrypt(body))})


def open_receipt(data: bytes, *, router_exchange_keys: Callable[[str], PrivateKeyRecord | None],
                 agency_public_key: Callable[[str, str], bytes | None]) -> OpenedReceipt:
    """Check and read a receipt: known router key, known (not revoked) agency key, authentic body."""
    receipt = _decode(_RECEIPT, data, "receipt")
    if receipt["version"] != 1:
        raise ReceiptError(f"unknown receipt version {receipt['version']}")
    router_key = router_exchange_keys(receipt["router_key_id"])
    if router_key is None:
        raise ReceiptError("receipt is sealed to a router key this router does not hold")
    agency_public = agency_public_key(receipt["agency_id"], receipt["agency_key_id"])
    if agency_public is None:
        raise ReceiptError(f"receipt from {receipt['agency_id']} names a key the policy does not trust")
    box = nacl.public.Box(router_key.exchange_key(), nacl.public.PublicKey(agency_public))
    try:
        body = _decode(_BODY, box.decrypt(receipt["sealed"]), "receipt body")
    except nacl.exceptions.CryptoError:
        raise ReceiptError(f"receipt from {receipt['agency_id']} does not authenticate") from None
    return OpenedReceipt(receipt["agency_id"], receipt["agency_key_id"], body["event_id"],
                         body["envelope_sha256"], body["status"], body["at"])
