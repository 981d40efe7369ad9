"""Signed, sealed publication: how a harm assessment unit hands an event to the router.

The unit signs the wire event with its Ed25519 key (binding its unit id), then seals
signature || event to the router's X25519 key with a libsodium sealed box, so the input
topic never holds plaintext and only the router can read it. Spec: docs/envelope.md.
"""

from __future__ import annotations

import functools
import io
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

import fastavro
import nacl.exceptions
import nacl.public
import nacl.signing

from streams.errors import CheckFailed
from streams.resources import schema_file

from .envelope import lp
from .keys import PrivateKeyRecord, key_id

PUBLICATION_VERSION = 1
PUBLICATION_SIGNATURE_PREFIX = b"MASB-PUBLICATION-v1\x00"
SIGNATURE_BYTES = 64

_SCHEMA_PATH = schema_file("publication.avsc")
_SCHEMA = fastavro.parse_schema(json.loads(_SCHEMA_PATH.read_text("utf-8")))

ReasonCode = Literal["MALFORMED", "UNKNOWN_ROUTER_KEY", "UNSEALED_FAILED", "UNKNOWN_UNIT_KEY", "BAD_SIGNATURE"]


class PublicationError(CheckFailed):
    """A publication was refused; ``reason_code`` is stable and safe to use as a metric label."""

    def __init__(self, reason_code: ReasonCode, message: str):
        super().__init__(f"{reason_code}: {message}")
        self.reason_code: ReasonCode = reason_code
        self.message = message  # the explanation alone, for records that carry the code separately


@dataclass(frozen=True)
class OpenedPublication:
    unit_id: str
    unit_key_id: str
    # repr=False: the wire event carries personal data and must not end up in a log line.
    wire_event: bytes = field(repr=False)


# Deriving a key object from its record costs a scalar multiplication; a router or unit uses the
# same few records for every publication, so keep the derived objects.
@functools.lru_cache(maxsize=32)
def _signing_key(rec: PrivateKeyRecord) -> nacl.signing.SigningKey:
    return rec.signing_key()


@functools.lru_cache(maxsize=32)
def _unsealer(rec: PrivateKeyRecord) -> nacl.public.SealedBox:
    return nacl.public.SealedBox(rec.exchange_key())


def _signature_input(unit_id: str, wire_event: bytes) -> bytes:
    return PUBLICATION_SIGNATURE_PREFIX + lp(unit_id) + wire_event


def seal_publication(
    *,
    unit_id: str,
    unit_signing_key: PrivateKeyRecord,
    router_key_id: str,
    router_exchange_public: bytes,
    wire_event: bytes,
) -> bytes:
    """Return the Publication bytes to produce to the input topic."""
    if key_id(router_exchange_public) != router_key_id:
        raise ValueError(f"router public key does not match key id {router_key_id}")
    signature = _signing_key(unit_signing_key).sign(_signature_input(unit_id, wire_event)).signature
    sealed = nacl.public.SealedBox(nacl.public.PublicKey(router_exchange_public)).encrypt(signature + wire_event)
    out = io.BytesIO()
    fastavro.schemaless_writer(
        out,
        _SCHEMA,
        {
            "version": PUBLICATION_VERSION,
            "unit_id": unit_id,
            "unit_key_id": unit_signing_key.key_id,
            "router_key_id": router_key_id,
            "sealed": sealed,
        },
    )
    return out.getvalue()


def _decode(data: bytes) -> dict[str, Any]:
    stream = io.BytesIO(data)
    try:
        record = fastavro.schemaless_reader(stream, _SCHEMA, None)
    except Exception:  # hostile input makes fastavro raise many types; map them all
        raise PublicationError("MALFORMED", "publication is not valid Avro") from None
    if stream.tell() != len(data):
        raise PublicationError("MALFORMED", "publication has trailing bytes")
    if record["version"] != PUBLICATION_VERSION:
        raise PublicationError("MALFORMED", f"publication version is not {PUBLICATION_VERSION}")
    if len(record["unit_id"].encode("utf-8")) > 0xFFFF:
        raise PublicationError("MALFORMED", "unit_id is too long")
    return record


def open_publication(
    data: bytes,
    *,
    router_exchange_keys: Mapping[str, PrivateKeyRecord],
    unit_verify_key: Callable[[str, str], bytes | None],
) -> OpenedPublication:
    """Unseal and verify. Checks run cheapest first: decode, router key, unit key, unseal, signature.

    ``unit_verify_key(unit_id, unit_key_id)`` returns the unit's Ed25519 public key or None
    when that unit/key pair is not (or no longer) authorised to publish.
    """
    record = _decode(data)
    unit_id, unit_key_id, router_key_id = record["unit_id"], record["unit_key_id"], record["router_key_id"]

    router_key = router_exchange_keys.get(router_key_id)
    if router_key is None:
        raise PublicationError("UNKNOWN_ROUTER_KEY", "publication is sealed to a router key id not held here")
    verify_public = unit_verify_key(unit_id, unit_key_id)
    # The key id check catches a lookup that returned some other key of the unit.
    if verify_public is None or key_id(verify_public) != unit_key_id:
        # Neither the unit id nor the key id is known to the policy: repeat neither (docs/routing.md).
        raise PublicationError("UNKNOWN_UNIT_KEY", "the publication's unit and signing key are not an authorised "
                                                   "pair in the policy in force (unknown unit or key, or a revoked key)")

    try:
        opened = _unsealer(router_key).decrypt(record["sealed"])
    except nacl.exceptions.CryptoError:
        raise PublicationError("UNSEALED_FAILED", f"sealed payload does not open with router key {router_key_id}") from None
    if len(opened) < SIGNATURE_BYTES:
        raise PublicationError("MALFORMED", "sealed payload is shorter than a signature")
    signature, wire_event = opened[:SIGNATURE_BYTES], opened[SIGNATURE_BYTES:]
    try:
        nacl.signing.VerifyKey(verify_public).verify(_signature_input(unit_id, wire_event), signature)
    except (nacl.exceptions.BadSignatureError, ValueError):
        raise PublicationError("BAD_SIGNATURE", f"signature by unit key {unit_key_id} does not verify") from None
    return OpenedPublication(unit_id=unit_id, unit_key_id=unit_key_id, wire_event=wire_event)
