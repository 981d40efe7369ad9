"""Field-level encryption envelope: one signed envelope per (event, recipient agency).

Byte-level specification: docs/envelope.md. In short: every shared field value is canonical
JSON encrypted with XChaCha20-Poly1305 under a fresh per-envelope data key (DEK) and an AAD
that binds it to event, recipient, recipient key, field path and schema; the DEK is wrapped
with a cached X25519 ``Box`` (router -> agency); the Avro body is signed with Ed25519 and the
signature is checked over the exact body bytes before the body is decoded.

Version 2 (written by default) also encrypts the case reference under the DEK, so that nothing
on the broker names the case; version-1 envelopes (case reference in clear) are still opened.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from json.encoder import encode_basestring
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Mapping

import fastavro
import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing
import nacl.utils

from streams.errors import CheckFailed
from streams.resources import schema_file

from . import aead
from .keys import Keyring, PrivateKeyRecord, key_id, printable_key_id

ENVELOPE_VERSION = 2          # what the sealer writes
READABLE_VERSIONS = (1, 2)    # what the opener accepts
FIELD_AAD_PREFIX = b"MASB-FIELD-v1"        # unchanged in version 2
CASE_REF_AAD_PREFIX = b"MASB-CASE-REF-v2"
SIGNATURE_PREFIX = b"MASB-ENVELOPE-v1\x00"  # version 1
SIGNATURE_PREFIXES = {1: SIGNATURE_PREFIX, 2: b"MASB-ENVELOPE-v2\x00"}
DEK_BYTES = 32
FIELD_NONCE_BYTES = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
WRAPPED_KEY_BYTES = nacl.public.Box.NONCE_SIZE + DEK_BYTES + 16  # nonce || DEK ciphertext || tag = 72
SIGNATURE_BYTES = 64
_BOX_CACHE_LIMIT = 1024

_SCHEMA_PATH = schema_file("envelope.avsc")
_SCHEMA_V2_PATH = schema_file("envelope_v2.avsc")


def _load_schemas() -> tuple[Any, Any, Any]:
    body, signed = json.loads(_SCHEMA_PATH.read_text("utf-8"))
    body_v2 = json.loads(_SCHEMA_V2_PATH.read_text("utf-8"))
    return fastavro.parse_schema(body), fastavro.parse_schema(signed), fastavro.parse_schema(body_v2)


_BODY_SCHEMA, _SIGNED_SCHEMA, _BODY_V2_SCHEMA = _load_schemas()
_BODY_SCHEMAS = {1: _BODY_SCHEMA, 2: _BODY_V2_SCHEMA}

RandomBytes = Callable[[int], bytes]


# --- errors: messages name the key id or field path that failed, never a value -------------

class EnvelopeError(CheckFailed):
    """Any reason an envelope cannot be opened. Subclasses say which."""


class MalformedEnvelope(EnvelopeError):
    """Not a well-formed version-1 envelope (bad Avro, wrong sizes, unsorted fields, ...)."""


class UnknownSigner(EnvelopeError):
    """Signed (or wrapped) by a router key this agency does not trust."""


class BadSignature(EnvelopeError):
    """The Ed25519 signature does not verify: the bytes were altered or forged."""


class WrongRecipient(EnvelopeError):
    """The envelope is addressed to another agency."""


class UnknownRecipientKey(EnvelopeError):
    """Addressed to a key id that is not in this agency's keyring (rotated away or lost)."""


class KeyUnwrapFailed(EnvelopeError):
    """The wrapped data key does not open with this agency key and the router's exchange key."""


class FieldDecryptionFailed(EnvelopeError):
    """A field ciphertext does not authenticate (moved between envelopes or paths, or altered)."""


# --- byte-level helpers (docs/envelope.md, "AAD") -----------------------------------------------

def lp(text: str) -> bytes:
    """2-byte big-endian length of the UTF-8 encoding, then the bytes."""
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("string too long for a length prefix")
    return len(raw).to_bytes(2, "big") + raw


def field_aad(event_id: str, recipient_agency: str, recipient_key_id: str, path: str, schema_ref: str) -> bytes:
    return (
        FIELD_AAD_PREFIX + lp(event_id) + lp(recipient_agency) + lp(recipient_key_id) + lp(path) + lp(schema_ref)
    )


def case_ref_aad(event_id: str, recipient_agency: str, recipient_key_id: str, schema_ref: str) -> bytes:
    """The AAD of a version-2 envelope's sealed case reference."""
    return (CASE_REF_AAD_PREFIX + lp(event_id) + lp(recipient_agency) + lp(recipient_key_id) + lp(schema_ref))


def _aad_parts(event_id: str, recipient_agency: str, recipient_key_id: str, schema_ref: str) -> tuple[bytes, bytes]:
    """The per-envelope head and tail of every field AAD: aad = head || lp(path) || tail."""
    return FIELD_AAD_PREFIX + lp(event_id) + lp(recipient_agency) + lp(recipient_key_id), lp(schema_ref)


# allow_nan=False: NaN/Infinity are not JSON, another client could not parse them. One encoder for
# every call (json.dumps with options builds a new one each time).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(value: Any) -> bytes:
    """json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    as UTF-8 (docs/envelope.md); a string, the usual field value, is encoded straight."""
    if type(value) is str:
        return encode_basestring(value).encode("utf-8")
    return _CANONICAL.encode(value).encode("utf-8")


@functools.lru_cache(maxsize=4096)
def _lp_path(path: str) -> bytes:
    """lp(path): the few paths of a policy's agreements come back with every envelope."""
    return lp(path)


def envelope_sha256(data: bytes) -> str:
    """Hex SHA-256 of the exact SignedEnvelope bytes: the id the audit log records."""
    return hashlib.sha256(data).hexdigest()


def _avro_encode(schema: Any, record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, record)
    return out.getvalue()


def _avro_decode(schema: Any, data: bytes, what: str) -> dict[str, Any]:
    stream = io.BytesIO(data)
    try:
        record = fastavro.schemaless_reader(stream, schema, None)
    except Exception:  # fastavro raises many types on hostile input; none may escape as-is
        raise MalformedEnvelope(f"{what} is not valid Avro") from None
    if stream.tell() != len(data):
        raise MalformedEnvelope(f"{what} has trailing bytes")
    return record


def _require_aware(name: str, moment: datetime | None) -> None:
    if moment is not None and moment.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")


# --- sealing (router side) --------------------------------------------------------------------

@dataclass(frozen=True)
class RouterKeys:
    """What an agency trusts about one router: its Ed25519 public key and its X25519 public keys."""

    signing_public: bytes
    exchange_public_by_id: dict[str, bytes]


class EnvelopeSealer:
    """Seals envelopes for recipients; caches one precomputed ``Box`` per recipient key.

    ``random_bytes`` exists ONLY so tests can reproduce the known-answer vector; production
    code must leave it at the default (libsodium's CSPRNG).
    """

    def __init__(
        self,
        signing_key_record: PrivateKeyRecord,
        exchange_key_record: PrivateKeyRecord,
        *,
        random_bytes: RandomBytes = nacl.utils.random,
        version: int = ENVELOPE_VERSION,
    ):
        if version not in READABLE_VERSIONS:
            raise ValueError(f"envelope version must be one of {READABLE_VERSIONS}")
        self.version = version
        self._signer = signing_key_record.signing_key()
        self._exchange = exchange_key_record.exchange_key()
        self.signer_key_id = signing_key_record.key_id
        self.exchange_key_id = exchange_key_record.key_id
        self._signing_public = signing_key_record.public_key
        self._exchange_public = exchange_key_record.public_key
        self._random = random_bytes
        # recipient public key -> (its Box, its key id as checked): one X25519 per recipient key
        self._boxes: OrderedDict[bytes, tuple[nacl.public.Box, str]] = OrderedDict()

    def router_keys(self) -> RouterKeys:
        """The trust entry agencies configure for this router."""
        return RouterKeys(self._signing_public, {self.exchange_key_id: self._exchange_public})

    def _box_for(self, recipient_public_key: bytes, recipient_key_id: str) -> nacl.public.Box:
        """The cached Box for a recipient key, after checking the key id names that key."""
        cached = self._boxes.get(recipient_public_key)
        if cached is None:
            if key_id(recipient_public_key) != recipient_key_id:
                raise ValueError(f"recipient public key does not match key id {recipient_key_id}")
            box = nacl.public.Box(self._exchange, nacl.public.PublicKey(recipient_public_key))
            self._boxes[recipient_public_key] = cached = (box, recipient_key_id)
            if len(self._boxes) > _BOX_CACHE_LIMIT:
                self._boxes.popitem(last=False)
        else:
            self._boxes.move_to_end(recipient_public_key)
            if cached[1] != recipient_key_id:
                raise ValueError(f"recipient public key does not match key id {recipient_key_id}")
        return cached[0]

    def seal(
        self,
        *,
        event_id: str,
        case_ref: str,
        event_type: str,
        schema_ref: str,
        recipient_agency: str,
        recipient_key_id: str,
        recipient_public_key: bytes,
        fields: Mapping[str, Any],
        agreement_id: str,
        agreement_version: int,
        policy_version: int,
        legal_basis: str,
        purpose: str,
        protective_marking: str,
        sent_at: datetime,
        deliver_by: datetime | None,
    ) -> bytes:
        """Return the SignedEnvelope bytes (the Kafka record value) for one recipient."""
        box = self._box_for(recipient_public_key, recipient_key_id)
        _require_aware("sent_at", sent_at)
        _require_aware("deliver_by", deliver_by)
        paths = sorted(fields)
        for path in paths:
            if not isinstance(path, str) or not path:
                raise ValueError("field paths must be non-empty strings")

        # The random bytes are drawn in one call and split in a fixed order (docs/envelope.md): DEK,
        # wrap nonce, [v2: case reference nonce], field nonces by sorted path.
        nonces = len(paths) + (1 if self.version == 2 else 0)
        draw = self._random(DEK_BYTES + nacl.public.Box.NONCE_SIZE + FIELD_NONCE_BYTES * nonces)
        dek, at = draw[:DEK_BYTES], DEK_BYTES + nacl.public.Box.NONCE_SIZE
        wrapped_key = bytes(box.encrypt(dek, draw[DEK_BYTES:at]))
        case: dict[str, Any] = {"case_ref": case_ref}
        if self.version == 2:
            nonce, at = draw[at:at + FIELD_NONCE_BYTES], at + FIELD_NONCE_BYTES
            aad = case_ref_aad(event_id, recipient_agency, recipient_key_id, schema_ref)
            case = {"sealed_case_ref": {"nonce": nonce, "ciphertext": aead.encrypt(case_ref.encode("utf-8"), aad,
                                                                                  nonce, dek)}}
        aad_head, aad_tail = _aad_parts(event_id, recipient_agency, recipient_key_id, schema_ref)
        encrypted = []
        for path in paths:
            try:
                plaintext = canonical_json(fields[path])
            except (TypeError, ValueError):
                raise ValueError(f"field {path!r}: value cannot be encoded as canonical JSON") from None
            nonce, at = draw[at:at + FIELD_NONCE_BYTES], at + FIELD_NONCE_BYTES
            ciphertext = aead.encrypt(plaintext, aad_head + _lp_path(path) + aad_tail, nonce, dek)
            encrypted.append({"path": path, "nonce": nonce, "ciphertext": ciphertext})

        body = _avro_encode(
            _BODY_SCHEMAS[self.version],
            {
                "version": self.version,
                "event_id": event_id,
                **case,
                "event_type": event_type,
                "schema_ref": schema_ref,
                "recipient_agency": recipient_agency,
                "recipient_key_id": recipient_key_id,
                "sender_exchange_key_id": self.exchange_key_id,
                "wrapped_key": wrapped_key,
                "agreement_id": agreement_id,
                "agreement_version": agreement_version,
                "policy_version": policy_version,
                "legal_basis": legal_basis,
                "purpose": purpose,
                "protective_marking": protective_marking,
                "sent_at": sent_at,
                "deliver_by": deliver_by,
                "fields": encrypted,
            },
        )
        signature = self._signer.sign(SIGNATURE_PREFIXES[self.version] + body).signature
        return _avro_encode(
            _SIGNED_SCHEMA,
            {"version": self.version, "body": body, "signer_key_id": self.signer_key_id, "signature": signature},
        )


# --- opening (agency side) --------------------------------------------------------------------

@dataclass(frozen=True)
class OpenedEnvelope:
    version: int
    event_id: str
    case_ref: str
    event_type: str
    schema_ref: str
    recipient_agency: str
    recipient_key_id: str
    sender_exchange_key_id: str
    signer_key_id: str
    agreement_id: str
    agreement_version: int
    policy_version: int
    legal_basis: str
    purpose: str
    protective_marking: str
    sent_at: datetime
    deliver_by: datetime | None
    # repr=False: printing or logging an opened envelope must not print personal data.
    fields: dict[str, Any] = field(repr=False)
    envelope_sha256: str



def check_router_signature(verifiers: Mapping[str, nacl.signing.VerifyKey], signed: dict, prefix: bytes,
                           what: str) -> str:
    """The signer key id of a signed record (``signer_key_id``, ``signature``, ``body``) whose Ed25519
    signature over ``prefix + body`` by a trusted router key verifies. UnknownSigner (key not in
    ``verifiers``), MalformedEnvelope (signature not 64 bytes) or BadSignature otherwise; ``what``
    names the record in the last ("notice signature")."""
    signer_id = signed["signer_key_id"]
    verifier = verifiers.get(signer_id)
    if verifier is None:
        raise UnknownSigner(f"signer key {printable_key_id(signer_id)} is not a trusted router key")
    if len(signed["signature"]) != SIGNATURE_BYTES:
        raise MalformedEnvelope("signature must be 64 bytes")
    try:
        verifier.verify(prefix + signed["body"], signed["signature"])
    except nacl.exceptions.BadSignatureError:
        raise BadSignature(f"{what} by router key {signer_id} does not verify") from None
    return signer_id

class EnvelopeOpener:
    """Verifies and decrypts envelopes addressed to ``agency_id`` (verification order: docs/envelope.md)."""

    def __init__(self, agency_id: str, keyring: Keyring, trusted_routers: Mapping[str, RouterKeys]):
        if keyring.owner != agency_id or keyring.kind != "exchange":
            raise ValueError(f"keyring must hold exchange keys of {agency_id}")
        for signer_id, router in trusted_routers.items():
            if key_id(router.signing_public) != signer_id:
                raise ValueError(f"trusted router entry {signer_id} does not match its signing key")
            for exchange_id, public in router.exchange_public_by_id.items():
                if key_id(public) != exchange_id:
                    raise ValueError(f"router exchange key entry {exchange_id} does not match its key")
        self.agency_id = agency_id
        self._keyring = keyring
        self._verifiers = {sid: nacl.signing.VerifyKey(r.signing_public) for sid, r in trusted_routers.items()}
        self._routers = dict(trusted_routers)
        self._boxes: dict[tuple[str, str], nacl.public.Box] = {}

    def _box_for(self, recipient_key_id: str, signer_id: str, sender_exchange_id: str) -> nacl.public.Box:
        cache_key = (recipient_key_id, sender_exchange_id)
        box = self._boxes.get(cache_key)
        if box is not None:
            return box
        rec = self._keyring.get(recipient_key_id)
        if rec is None:
            raise UnknownRecipientKey(
                f"envelope is sealed to key {recipient_key_id}, which is not in the keyring of {self.agency_id}"
            )
        router_public = self._routers[signer_id].exchange_public_by_id.get(sender_exchange_id)
        if router_public is None:
            raise UnknownSigner(f"router exchange key {sender_exchange_id} is not trusted for signer {signer_id}")
        box = nacl.public.Box(rec.exchange_key(), nacl.public.PublicKey(router_public))
        self._boxes[cache_key] = box
        return box

    def open(self, data: bytes) -> OpenedEnvelope:
        signed = _avro_decode(_SIGNED_SCHEMA, data, "signed envelope")
        version = signed["version"]
        if version not in READABLE_VERSIONS:
            raise MalformedEnvelope(f"signed envelope version is not one of {', '.join(map(str, READABLE_VERSIONS))}")
        signer_id = check_router_signature(self._verifiers, signed, SIGNATURE_PREFIXES[version], "signature")
        body_bytes = signed["body"]

        body = _avro_decode(_BODY_SCHEMAS[version], body_bytes, "envelope body")
        if body["version"] != version:
            raise MalformedEnvelope(f"envelope body version {body['version']} in a version {version} envelope")
        if body["recipient_agency"] != self.agency_id:
            raise WrongRecipient(f"envelope is addressed to agency {body['recipient_agency']}, not {self.agency_id}")
        recipient_key_id = body["recipient_key_id"]
        if recipient_key_id not in self._keyring:
            raise UnknownRecipientKey(
                f"envelope is sealed to key {recipient_key_id}, which is not in the keyring of {self.agency_id}"
            )
        if len(body["wrapped_key"]) != WRAPPED_KEY_BYTES:
            raise MalformedEnvelope(f"wrapped_key must be {WRAPPED_KEY_BYTES} bytes")
        box = self._box_for(recipient_key_id, signer_id, body["sender_exchange_key_id"])
        try:
            dek = box.decrypt(body["wrapped_key"])
        except nacl.exceptions.CryptoError:
            raise KeyUnwrapFailed(
                f"data key does not unwrap with key {recipient_key_id} and router key {body['sender_exchange_key_id']}"
            ) from None

        case_ref = body["case_ref"] if version == 1 else self._decrypt_case_ref(body, dek)
        values = self._decrypt_fields(body, dek)
        return OpenedEnvelope(
            version=body["version"],
            event_id=body["event_id"],
            case_ref=case_ref,
            event_type=body["event_type"],
            schema_ref=body["schema_ref"],
            recipient_agency=body["recipient_agency"],
            recipient_key_id=recipient_key_id,
            sender_exchange_key_id=body["sender_exchange_key_id"],
            signer_key_id=signer_id,
            agreement_id=body["agreement_id"],
            agreement_version=body["agreement_version"],
            policy_version=body["policy_version"],
            legal_basis=body["legal_basis"],
            purpose=body["purpose"],
            protective_marking=body["protective_marking"],
            sent_at=body["sent_at"],
            deliver_by=body["deliver_by"],
            fields=values,
            envelope_sha256=envelope_sha256(data),
        )

    @staticmethod
    def _decrypt_case_ref(body: dict[str, Any], dek: bytes) -> str:
        sealed = body["sealed_case_ref"]
        if len(sealed["nonce"]) != FIELD_NONCE_BYTES:
            raise MalformedEnvelope(f"sealed case reference: nonce must be {FIELD_NONCE_BYTES} bytes")
        try:
            aad = case_ref_aad(body["event_id"], body["recipient_agency"], body["recipient_key_id"], body["schema_ref"])
        except ValueError:
            raise MalformedEnvelope("envelope header string too long for the case reference AAD") from None
        try:
            plaintext = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                sealed["ciphertext"], aad, sealed["nonce"], dek)
        except nacl.exceptions.CryptoError:
            raise FieldDecryptionFailed("the sealed case reference does not decrypt for this envelope") from None
        try:
            return plaintext.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedEnvelope("the sealed case reference is not UTF-8") from None

    @staticmethod
    def _decrypt_fields(body: dict[str, Any], dek: bytes) -> dict[str, Any]:
        try:
            aad_head, aad_tail = _aad_parts(
                body["event_id"], body["recipient_agency"], body["recipient_key_id"], body["schema_ref"]
            )
        except ValueError:
            raise MalformedEnvelope("envelope header string too long for the field AAD") from None
        values: dict[str, Any] = {}
        previous: str | None = None
        for item in body["fields"]:
            path = item["path"]
            # Strictly increasing paths: one canonical encoding, no duplicate field.
            if previous is not None and path <= previous:
                raise MalformedEnvelope("field paths are not strictly sorted")
            previous = path
            if len(item["nonce"]) != FIELD_NONCE_BYTES:
                raise MalformedEnvelope(f"field {path!r}: nonce must be {FIELD_NONCE_BYTES} bytes")
            try:
                aad = aad_head + lp(path) + aad_tail
            except ValueError:
                raise MalformedEnvelope(f"field path of {len(path)} characters is too long for the AAD") from None
            try:
                plaintext = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                    item["ciphertext"], aad, item["nonce"], dek
                )
            except nacl.exceptions.CryptoError:
                raise FieldDecryptionFailed(f"field {path!r} does not decrypt for this envelope") from None
            try:
                values[path] = json.loads(plaintext.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise MalformedEnvelope(f"field {path!r}: plaintext is not UTF-8 JSON") from None
        return values


def assemble(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Rebuild a nested dict from dotted paths, e.g. {"victim.name": v} -> {"victim": {"name": v}}."""
    tree: dict[str, Any] = {}
    for path in sorted(fields):
        parts = path.split(".")
        if any(part == "" for part in parts):
            raise ValueError(f"field path {path!r} has an empty segment")
        node = tree
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"field path {path!r} conflicts with {'.'.join(parts[: depth + 1])!r}")
            node = child
        if parts[-1] in node:
            raise ValueError(f"field path {path!r} conflicts with a longer path")
        node[parts[-1]] = _Leaf(fields[path])
    return _unwrap(tree)


class _Leaf:
    """Marks a value placed by a path, so a dict VALUE is never mistaken for a subtree."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


def _unwrap(node: Any) -> Any:
    if isinstance(node, _Leaf):
        return node.value
    return {key: _unwrap(child) for key, child in node.items()}
