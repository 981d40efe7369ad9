"""C2SP tlog-cosignature, Ed25519 "cosignature/v1": a witness's timestamped signature on a checkpoint.

Wire formats (https://c2sp.org/tlog-cosignature; docs/audit.md, "Cosignatures"):
  key ID          SHA-256(name || 0x0A || 0x04 || 32-byte Ed25519 public key)[:4]
  signed message  "cosignature/v1\\ntime <POSIX seconds, decimal>\\n" || checkpoint body (the note text)
  signature line  "\\u2014 <name> base64(key ID[4] || timestamp u64 big-endian || Ed25519 signature[64])\\n"
  verifier key    "<name>+<8 hex key ID>+<base64(0x04 || public key)>"
  signer key      "PRIVATE+KEY+<name>+<8 hex key ID>+<base64(0x04 || 32-byte seed)>"
The key strings are those of github.com/transparency-dev/formats/note (NewSignerForCosignatureV1,
NewVerifierForCosignatureV1), so Go witnesses and verifiers interoperate with ours.
"""

from __future__ import annotations

import base64
import struct
import time
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from .checkpoint import (
    ED25519_TYPE,
    SIG_DASH,
    CheckpointError,
    _check_key_name,
    _check_text,
    _parse_key_fields,
    key_id,
)

__all__ = [
    "COSIGNATURE_V1_TYPE",
    "CosignatureVerifier",
    "CosignatureSigner",
    "cosignature_message",
    "cosigner_key_id",
    "cosigner_verifier_key",
    "parse_cosigner_verifier_key",
    "cosigner_signer_key",
    "parse_cosigner_signer_key",
    "generate_cosigner",
]

COSIGNATURE_V1_TYPE = 0x04
_MAX_TIMESTAMP = 2**63 - 1
_TIMESTAMP = struct.Struct(">Q")


def cosigner_key_id(name: str, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || 0x04 || public key)[:4]."""
    return key_id(name, public_key, COSIGNATURE_V1_TYPE)


def cosignature_message(text: str, timestamp: int) -> bytes:
    """The bytes a cosignature/v1 signs: header line, time line, then the checkpoint body."""
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise ValueError("cosignature timestamp must be an integer in [0, 2^63 - 1]")
    return f"cosignature/v1\ntime {timestamp}\n".encode("ascii") + text.encode("utf-8")


@dataclass(frozen=True)
class CosignatureVerifier:
    """Checks cosignature/v1 lines of one cosigner in a signed note (for open_note_verified)."""

    name: str
    key_id: bytes
    verify_key: nacl.signing.VerifyKey

    def key_string(self) -> str:
        return cosigner_verifier_key(self.name, self.verify_key)

    def verify(self, message: bytes, signature: bytes) -> bool:
        """`message` is the note text; `signature` is timestamp (8 bytes) || Ed25519 signature (64)."""
        if len(signature) != 8 + 64:
            return False
        (timestamp,) = _TIMESTAMP.unpack(signature[:8])
        if timestamp > _MAX_TIMESTAMP or len(message.split(b"\n")) < 3:
            return False
        try:
            self.verify_key.verify(cosignature_message(message.decode("utf-8"), timestamp), signature[8:])
        except (nacl.exceptions.BadSignatureError, UnicodeDecodeError):
            return False
        return True

    @staticmethod
    def timestamp(signature: bytes) -> int:
        """The POSIX time a cosignature (the bytes after the key ID) says it was made."""
        return _TIMESTAMP.unpack(signature[:8])[0]


@dataclass(frozen=True)
class CosignatureSigner:
    name: str
    signing_key: nacl.signing.SigningKey

    @property
    def key_id(self) -> bytes:
        return cosigner_key_id(self.name, bytes(self.signing_key.verify_key))

    def verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier(self.name, self.key_id, self.signing_key.verify_key)

    def key_string(self) -> str:
        """The verifier key to give to logs and auditors (it goes in the policy)."""
        return cosigner_verifier_key(self.name, self.signing_key.verify_key)

    def cosign(self, text: str, timestamp: int | None = None) -> str:
        """The signature line (ending in a newline) cosigning the checkpoint body `text` at `timestamp`
        (POSIX seconds; now when None)."""
        _check_text(text)
        if len(text.split("\n")) < 4:  # origin, size, root, and the final newline's empty tail
            raise ValueError("a cosignature is made over a checkpoint body of at least three lines")
        when = int(time.time()) if timestamp is None else timestamp
        signature = self.signing_key.sign(cosignature_message(text, when)).signature
        raw = self.key_id + _TIMESTAMP.pack(when) + signature
        return f"{SIG_DASH} {self.name} {base64.b64encode(raw).decode('ascii')}\n"


def cosigner_verifier_key(name: str, verify_key: nacl.signing.VerifyKey) -> str:
    _check_key_name(name)
    pub = bytes(verify_key)
    encoded = base64.b64encode(bytes([COSIGNATURE_V1_TYPE]) + pub).decode("ascii")
    return f"{name}+{cosigner_key_id(name, pub).hex()}+{encoded}"


def parse_cosigner_verifier_key(key: str) -> CosignatureVerifier:
    """Parse "<name>+<hex id>+<base64(0x04||pub)>"; the id must be the cosignature/v1 key ID."""
    parts = key.split("+", 2) if isinstance(key, str) else []
    if len(parts) != 3:
        raise CheckpointError("bad_key", "cosigner verifier key must have the form name+keyid+key")
    name, hex_id, b64 = parts
    kid, pub = _parse_key_fields(name, hex_id, b64, "cosigner verifier key", (COSIGNATURE_V1_TYPE,))
    if cosigner_key_id(name, pub) != kid:
        raise CheckpointError("bad_key", f"cosigner verifier key for {name}: key id does not match the key")
    return CosignatureVerifier(name, kid, nacl.signing.VerifyKey(pub))


def cosigner_signer_key(name: str, signing_key: nacl.signing.SigningKey) -> str:
    """Secret key string (type 0x04). Keep it secret."""
    _check_key_name(name)
    kid = cosigner_key_id(name, bytes(signing_key.verify_key))
    encoded = base64.b64encode(bytes([COSIGNATURE_V1_TYPE]) + bytes(signing_key)).decode("ascii")
    return f"PRIVATE+KEY+{name}+{kid.hex()}+{encoded}"


def parse_cosigner_signer_key(key: str) -> CosignatureSigner:
    """Parse a signer key of type 0x04 (or a plain Ed25519 note signer key, type 0x01, which Go's
    NewSignerForCosignatureV1 also accepts); the id must match the key for its type."""
    parts = key.strip().split("+", 4) if isinstance(key, str) else []
    if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
        raise CheckpointError("bad_key", "cosigner signer key must have the form PRIVATE+KEY+name+keyid+key")
    name, hex_id, b64 = parts[2:]
    kid, seed = _parse_key_fields(name, hex_id, b64, "cosigner signer key", (COSIGNATURE_V1_TYPE, ED25519_TYPE))
    signing_key = nacl.signing.SigningKey(seed)
    key_type = base64.b64decode(b64)[0]
    if key_id(name, bytes(signing_key.verify_key), key_type) != kid:
        raise CheckpointError("bad_key", f"cosigner signer key for {name}: key id does not match the key")
    return CosignatureSigner(name, signing_key)


def generate_cosigner(name: str) -> CosignatureSigner:
    _check_key_name(name)
    return CosignatureSigner(name, nacl.signing.SigningKey.generate())
