"""Notices: what the router tells an originating unit about its events, sealed to the unit and signed.

Byte-level specification: docs/deadlines.md, "Notice format". The same construction as the
envelope's key wrap and signature (docs/envelope.md), for one small record to one recipient:

    content = Avro NoticeContent                      (schemas/notice.avsc)
    sealed  = nonce (24) || crypto_box(content, nonce, unit exchange public, router exchange private)
    body    = Avro NoticeBody {version, notice_id, unit_id, recipient_key_id, sender_exchange_key_id,
                               created_at, sealed}
    value   = Avro SignedNotice {version, body, signer_key_id,
                                 Ed25519(router signing key, "MASB-NOTICE-v1\\0" || body)}

Only ids and key ids are in clear; which agency, which event, which deadline and how late are
inside the box. Errors reuse the envelope's error classes (a notice is an envelope to a unit).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Mapping

import fastavro
import nacl.exceptions
import nacl.public
import nacl.signing
import nacl.utils

from streams.resources import schema_file

from .envelope import (
    check_router_signature,
    KeyUnwrapFailed,
    MalformedEnvelope,
    RouterKeys,
    UnknownRecipientKey,
    UnknownSigner,
    WrongRecipient,
    _avro_decode,
    _avro_encode,
)
from .keys import Keyring, PrivateKeyRecord, key_id, printable_key_id

NOTICE_VERSION = 1
NOTICE_SIGNATURE_PREFIX = b"MASB-NOTICE-v1\x00"
NONCE_BYTES = nacl.public.Box.NONCE_SIZE  # 24
_BOX_CACHE_LIMIT = 1024


def _load_schemas() -> tuple[Any, Any, Any]:
    content, body, signed = json.loads(schema_file("notice.avsc").read_text("utf-8"))
    return fastavro.parse_schema(content), fastavro.parse_schema(body), fastavro.parse_schema(signed)


_CONTENT_SCHEMA, _BODY_SCHEMA, _SIGNED_SCHEMA = _load_schemas()
CONTENT_FIELDS = tuple(f["name"] for f in json.loads(schema_file("notice.avsc").read_text("utf-8"))[0]["fields"])


def notice_sha256(data: bytes) -> str:
    """Hex SHA-256 of the exact SignedNotice bytes: what the audit entry of the action records."""
    return hashlib.sha256(data).hexdigest()


class NoticeSealer:
    """The router's side: seals and signs notices; caches one ``Box`` per unit key.

    ``random_bytes`` exists ONLY so tests can reproduce the known-answer vector.
    """

    def __init__(self, signing_key_record: PrivateKeyRecord, exchange_key_record: PrivateKeyRecord, *,
                 random_bytes: Callable[[int], bytes] = nacl.utils.random) -> None:
        self._signer = signing_key_record.signing_key()
        self._exchange = exchange_key_record.exchange_key()
        self.signer_key_id = signing_key_record.key_id
        self.exchange_key_id = exchange_key_record.key_id
        self._random = random_bytes
        self._boxes: OrderedDict[bytes, tuple[nacl.public.Box, str]] = OrderedDict()  # key -> (Box, its key id)

    def _box_for(self, public_key: bytes, unit_key_id: str) -> nacl.public.Box:
        """The cached Box for a unit key, after checking the key id names that key."""
        cached = self._boxes.get(public_key)
        if cached is None:
            if key_id(public_key) != unit_key_id:
                raise ValueError(f"unit public key does not match key id {unit_key_id}")
            cached = self._boxes[public_key] = (nacl.public.Box(self._exchange, nacl.public.PublicKey(public_key)),
                                                unit_key_id)
            if len(self._boxes) > _BOX_CACHE_LIMIT:
                self._boxes.popitem(last=False)
        elif cached[1] != unit_key_id:
            raise ValueError(f"unit public key does not match key id {unit_key_id}")
        return cached[0]

    def seal(self, *, unit_id: str, unit_key_id: str, unit_public_key: bytes, content: Mapping[str, Any],
             created_at: datetime) -> bytes:
        """The SignedNotice bytes (the record value on unit.<unit_id>) for one NoticeContent."""
        box = self._box_for(unit_public_key, unit_key_id)
        if created_at.tzinfo is None:
            raise ValueError("created_at must be timezone-aware")
        plaintext = _avro_encode(_CONTENT_SCHEMA, {"version": NOTICE_VERSION, **content})
        sealed = bytes(box.encrypt(plaintext, self._random(NONCE_BYTES)))
        body = _avro_encode(_BODY_SCHEMA, {
            "version": NOTICE_VERSION, "notice_id": content["notice_id"], "unit_id": unit_id,
            "recipient_key_id": unit_key_id, "sender_exchange_key_id": self.exchange_key_id,
            "created_at": created_at, "sealed": sealed,
        })
        signature = self._signer.sign(NOTICE_SIGNATURE_PREFIX + body).signature
        return _avro_encode(_SIGNED_SCHEMA, {"version": NOTICE_VERSION, "body": body,
                                             "signer_key_id": self.signer_key_id, "signature": signature})


@dataclass(frozen=True)
class OpenedNotice:
    notice_id: str
    unit_id: str
    recipient_key_id: str
    sender_exchange_key_id: str
    signer_key_id: str
    created_at: datetime
    content: dict[str, Any]  # NoticeContent: ids, times and codes only, nothing personal
    notice_sha256: str


class NoticeOpener:
    """The unit's side: verifies the router's signature, then opens notices addressed to ``unit_id``."""

    def __init__(self, unit_id: str, keyring: Keyring, trusted_routers: Mapping[str, RouterKeys]) -> None:
        if keyring.owner != unit_id or keyring.kind != "exchange":
            raise ValueError(f"keyring must hold exchange keys of {unit_id}")
        self.unit_id = unit_id
        self._keyring = keyring
        self._verifiers = {sid: nacl.signing.VerifyKey(r.signing_public) for sid, r in trusted_routers.items()}
        self._routers = dict(trusted_routers)

    def open(self, data: bytes) -> OpenedNotice:
        signed = _avro_decode(_SIGNED_SCHEMA, data, "signed notice")
        if signed["version"] != NOTICE_VERSION:
            raise MalformedEnvelope(f"unsupported signed notice version {signed['version']}")
        signer_id = check_router_signature(self._verifiers, signed, NOTICE_SIGNATURE_PREFIX, "notice signature")
        body = _avro_decode(_BODY_SCHEMA, signed["body"], "notice body")
        if body["version"] != NOTICE_VERSION:
            raise MalformedEnvelope(f"unsupported notice body version {body['version']}")
        if body["unit_id"] != self.unit_id:
            raise WrongRecipient(f"notice is addressed to unit {body['unit_id']}, not {self.unit_id}")
        record = self._keyring.get(body["recipient_key_id"])
        if record is None:
            raise UnknownRecipientKey(f"notice is sealed to key {printable_key_id(body['recipient_key_id'])}, "
                                      f"which is not in the keyring of {self.unit_id}")
        router_public = self._routers[signer_id].exchange_public_by_id.get(body["sender_exchange_key_id"])
        if router_public is None:
            raise UnknownSigner(f"router exchange key {printable_key_id(body['sender_exchange_key_id'])} is not "
                                f"trusted for signer {signer_id}")
        box = nacl.public.Box(record.exchange_key(), nacl.public.PublicKey(router_public))
        try:
            plaintext = box.decrypt(body["sealed"])
        except nacl.exceptions.CryptoError:
            raise KeyUnwrapFailed(f"notice does not open with key {body['recipient_key_id']} and router key "
                                  f"{body['sender_exchange_key_id']}") from None
        content = _avro_decode(_CONTENT_SCHEMA, plaintext, "notice content")
        if content["version"] != NOTICE_VERSION:
            raise MalformedEnvelope(f"unsupported notice content version {content['version']}")
        if content["notice_id"] != body["notice_id"]:
            raise MalformedEnvelope("notice content belongs to another notice id")
        return OpenedNotice(body["notice_id"], body["unit_id"], body["recipient_key_id"],
                            body["sender_exchange_key_id"], signer_id, body["created_at"], content,
                            notice_sha256(data))
