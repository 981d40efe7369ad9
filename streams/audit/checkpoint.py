"""C2SP tlog-checkpoint bodies inside C2SP signed notes, signed with Ed25519 (PyNaCl).

Wire formats (see docs/audit.md, "Checkpoint"):
  checkpoint body  "<origin>\\n<size decimal>\\n<base64 std root>\\n"
  signed note      body + "\\n" + lines "\\u2014 <key name> <base64(key id[4] || signature[64])>\\n"
  key id           SHA-256(name || 0x0A || 0x01 || 32-byte public key)[:4]
  verifier key     "<name>+<8 hex key id>+<base64(0x01 || public key)>"
  signer key       "PRIVATE+KEY+<name>+<8 hex key id>+<base64(0x01 || 32-byte seed)>"
The note and key string formats are those of golang.org/x/mod/sumdb/note, so
Go tooling can check our checkpoints and vice versa.

Error messages name key names and the problem, never note contents.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from streams.errors import CheckFailed

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "NoteVerifier",
    "key_id",
    "verifier_key_string",
    "parse_verifier_key",
    "signer_key_string",
    "parse_signer_key",
    "sign_note",
    "split_note",
    "open_note",
    "open_note_verified",
    "format_checkpoint_body",
    "parse_checkpoint_body",
    "sign_checkpoint",
    "open_checkpoint",
]

ED25519_TYPE = 0x01
SIG_DASH = "\u2014"  # em dash that starts every signature line
# Bounds on untrusted notes. C2SP signed-note: verifiers "MUST accept at least up to 16 signatures"
# and post-quantum signatures "can be up to nearly 5kB". 16 lines of a 255-byte key name and a
# 5,000-byte signature are 16 * (4 + 255 + 1 + 6,676 + 1) = 111,008 bytes; 256 KiB leaves room for
# the body and twice that, and keeps parsing cheap (one linear pass; only known keys cost a
# signature check). 100 lines is golang.org/x/mod/sumdb/note's own limit.
MAX_SIGNATURES = 100
MAX_NOTE_BYTES = 256 * 1024

_DECIMAL = re.compile(r"0|[1-9][0-9]*")


class CheckpointError(CheckFailed, ValueError):
    """A note or checkpoint that must not be trusted.

    `reason` is one of: "malformed", "bad_key", "no_known_signature",
    "bad_signature", "wrong_origin".
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        return format_checkpoint_body(self)


@dataclass(frozen=True)
class NoteVerifier:
    """An Ed25519 signed-note key (signature type 0x01): signs the note text itself.

    Any object with `name`, `key_id` (4 bytes) and `verify(message, signature) -> bool` can be
    given to open_note (streams/audit/cosignature.py has the cosignature/v1 kind)."""

    name: str
    key_id: bytes
    verify_key: nacl.signing.VerifyKey

    def key_string(self) -> str:
        return verifier_key_string(self.name, self.verify_key)

    def verify(self, message: bytes, signature: bytes) -> bool:
        if len(signature) != 64:
            return False
        try:
            self.verify_key.verify(message, signature)
        except nacl.exceptions.BadSignatureError:
            return False
        return True


def _check_key_name(name: str) -> None:
    if not isinstance(name, str) or not name or "+" in name or any(c.isspace() for c in name):
        raise CheckpointError("bad_key", "key name must be non-empty and contain no spaces or '+'")
    if any(ord(c) < 0x20 for c in name):
        raise CheckpointError("bad_key", "key name must not contain control characters")


def key_id(name: str, public_key: bytes, key_type: int = ED25519_TYPE) -> bytes:
    """C2SP signed-note key ID: SHA-256(name || 0x0A || signature type || key)[:4] (type 0x01: Ed25519)."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([key_type]) + public_key).digest()[:4]


def verifier_key_string(name: str, verify_key: nacl.signing.VerifyKey) -> str:
    _check_key_name(name)
    pub = bytes(verify_key)
    return f"{name}+{key_id(name, pub).hex()}+{base64.b64encode(bytes([ED25519_TYPE]) + pub).decode('ascii')}"


def _b64decode(text: str) -> bytes:
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if base64.b64encode(raw).decode("ascii") != text:  # reject non-canonical padding bits
        raise ValueError("non-canonical base64")
    return raw


def _parse_key_fields(name: str, hex_id: str, b64: str, what: str,
                      key_types: tuple[int, ...] = (ED25519_TYPE,)) -> tuple[bytes, bytes]:
    _check_key_name(name)
    if not re.fullmatch(r"[0-9a-f]{8}", hex_id):
        raise CheckpointError("bad_key", f"{what} for {name}: key id must be 8 lowercase hex digits")
    try:
        raw = _b64decode(b64)
    except (ValueError, UnicodeEncodeError, binascii.Error):
        raise CheckpointError("bad_key", f"{what} for {name}: key is not valid base64") from None
    if len(raw) != 33 or raw[0] not in key_types:
        wanted = " or ".join(f"0x{t:02x}" for t in key_types)
        raise CheckpointError("bad_key", f"{what} for {name}: not an Ed25519 key (type {wanted}, 32 bytes)")
    return bytes.fromhex(hex_id), raw[1:]


def parse_verifier_key(key: str) -> NoteVerifier:
    """Parse "<name>+<hex id>+<base64(0x01||pub)>" and check the id matches the key."""
    # base64 may itself contain '+', so only the first two '+' separate fields.
    parts = key.split("+", 2) if isinstance(key, str) else []
    if len(parts) != 3:
        raise CheckpointError("bad_key", "verifier key must have the form name+keyid+key")
    name, hex_id, b64 = parts
    kid, pub = _parse_key_fields(name, hex_id, b64, "verifier key")
    if key_id(name, pub) != kid:
        raise CheckpointError("bad_key", f"verifier key for {name}: key id does not match the key")
    return NoteVerifier(name, kid, nacl.signing.VerifyKey(pub))


def signer_key_string(name: str, signing_key: nacl.signing.SigningKey) -> str:
    """Secret key string compatible with golang.org/x/mod/sumdb/note. Keep it secret."""
    _check_key_name(name)
    kid = key_id(name, bytes(signing_key.verify_key))
    return f"PRIVATE+KEY+{name}+{kid.hex()}+{base64.b64encode(bytes([ED25519_TYPE]) + bytes(signing_key)).decode('ascii')}"


def parse_signer_key(key: str) -> tuple[str, nacl.signing.SigningKey]:
    parts = key.split("+", 4) if isinstance(key, str) else []
    if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
        raise CheckpointError("bad_key", "signer key must have the form PRIVATE+KEY+name+keyid+key")
    name, hex_id, b64 = parts[2:]
    kid, seed = _parse_key_fields(name, hex_id, b64, "signer key")
    signing_key = nacl.signing.SigningKey(seed)
    if key_id(name, bytes(signing_key.verify_key)) != kid:
        raise CheckpointError("bad_key", f"signer key for {name}: key id does not match the key")
    return name, signing_key


# --- signed notes --------------------------------------------------------------


def _check_text(text: str) -> None:
    if not text.endswith("\n") or text.startswith("\n"):
        raise CheckpointError("malformed", "malformed note: text must be non-empty and end with a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise CheckpointError("malformed", "malformed note: control characters other than newline")


def sign_note(text: str, name: str, signing_key: nacl.signing.SigningKey) -> str:
    """Sign `text` (which must end in a newline) and return the signed note."""
    _check_text(text)
    _check_key_name(name)
    kid = key_id(name, bytes(signing_key.verify_key))
    sig = signing_key.sign(text.encode("utf-8")).signature
    return f"{text}\n{SIG_DASH} {name} {base64.b64encode(kid + sig).decode('ascii')}\n"


def _as_verifiers(verifiers) -> dict[tuple[str, bytes], object]:
    known: dict[tuple[str, bytes], object] = {}
    for v in verifiers:
        nv = parse_verifier_key(v) if isinstance(v, str) else v
        known[(nv.name, nv.key_id)] = nv
    return known


_SIG_LINE = re.compile(SIG_DASH + r" (\S+) (\S+)")


def split_note(note: str | bytes) -> tuple[str, list[tuple[str, bytes, str]]]:
    """Parse a signed note's syntax without checking any signature.

    Returns (text, [(key name, decoded signature bytes, the whole line), ...]). Raises
    CheckpointError("malformed") for anything that is not a signed note within the bounds
    (MAX_NOTE_BYTES, MAX_SIGNATURES)."""
    if isinstance(note, (bytes, bytearray)):
        if len(note) > MAX_NOTE_BYTES:
            raise CheckpointError("malformed", "malformed note: too large")
        try:
            note = bytes(note).decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError("malformed", "malformed note: not valid UTF-8") from None
    if not isinstance(note, str):
        raise CheckpointError("malformed", "malformed note: not text")
    if len(note) > MAX_NOTE_BYTES or len(note.encode("utf-8", "surrogatepass")) > MAX_NOTE_BYTES:
        raise CheckpointError("malformed", "malformed note: too large")
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise CheckpointError("malformed", "malformed note: control characters other than newline")
    try:
        note.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError("malformed", "malformed note: not valid UTF-8") from None
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise CheckpointError("malformed", "malformed note: no blank line before the signatures")
    text, sig_block = note[: split + 1], note[split + 2 :]
    _check_text(text)
    lines = sig_block.split("\n")[:-1]  # sig_block ends with "\n"
    if not lines:
        raise CheckpointError("malformed", "malformed note: no signature lines")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError("malformed", "malformed note: too many signatures")
    out = []
    for n, line in enumerate(lines, start=1):
        m = _SIG_LINE.fullmatch(line)
        if not m or "+" in m.group(1):
            raise CheckpointError("malformed", f"malformed note: signature line {n} is not '\u2014 <name> <base64>'")
        try:
            raw = _b64decode(m.group(2))
        except (ValueError, UnicodeEncodeError, binascii.Error):
            raise CheckpointError("malformed", f"malformed note: signature line {n} is not base64") from None
        if len(raw) < 5:
            raise CheckpointError("malformed", f"malformed note: signature line {n} is too short")
        out.append((m.group(1), raw, line + "\n"))
    return text, out


def open_note_verified(note: str | bytes, verifiers) -> tuple[str, list]:
    """Check a signed note; return (text, the verifier objects whose signatures verified).

    `verifiers` are verifier key strings (Ed25519, type 0x01) or verifier objects (`name`,
    `key_id`, `verify(message, signature)`). Signatures from unknown keys are ignored (C2SP: they
    may be witnesses or rotated keys). A signature from a known key that fails rejects the whole
    note; a note with no verified signature is rejected."""
    text, signatures = split_note(note)
    known = _as_verifiers(verifiers)
    message = text.encode("utf-8")
    verified: list = []
    for name, raw, _line in signatures:
        verifier = known.get((name, raw[:4]))
        if verifier is None:
            continue  # unknown key: ignored, as the signed-note spec requires
        if not verifier.verify(message, raw[4:]):
            raise CheckpointError("bad_signature", f"bad signature for key {name}+{raw[:4].hex()}")
        if verifier not in verified:
            verified.append(verifier)
    if not verified:
        raise CheckpointError("no_known_signature", "no signature from a known key")
    return text, verified


def open_note(note: str | bytes, verifiers) -> tuple[str, list[str]]:
    """Check a signed note; return (text, names of the keys whose signatures verified).

    Signatures from unknown keys are ignored (C2SP: they may be witnesses or
    rotated keys). A signature from a known key that fails rejects the whole
    note; a note with no verified signature is rejected.
    """
    text, verified = open_note_verified(note, verifiers)
    names: list[str] = []
    for v in verified:
        if v.name not in names:
            names.append(v.name)
    return text, names


# --- checkpoints -----------------------------------------------------------------


def format_checkpoint_body(cp: Checkpoint) -> str:
    if not isinstance(cp.origin, str) or not cp.origin or "\n" in cp.origin:
        raise ValueError("checkpoint origin must be a non-empty single line")
    if not isinstance(cp.size, int) or isinstance(cp.size, bool) or cp.size < 0:
        raise ValueError("checkpoint size must be a non-negative integer")
    if not isinstance(cp.root, (bytes, bytearray)) or len(cp.root) != 32:
        raise ValueError("checkpoint root must be 32 bytes")
    for ext in cp.extensions:
        if not ext or "\n" in ext:
            raise ValueError("checkpoint extension lines must be non-empty single lines")
    lines = [cp.origin, str(cp.size), base64.b64encode(cp.root).decode("ascii"), *cp.extensions]
    return "\n".join(lines) + "\n"


def parse_checkpoint_body(text: str) -> Checkpoint:
    """Parse a C2SP tlog-checkpoint note text (already signature-checked)."""
    if not text.endswith("\n"):
        raise CheckpointError("malformed", "malformed checkpoint: text must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError("malformed", "malformed checkpoint: needs origin, size and root lines")
    origin, size_text, root_text, *extensions = lines
    if not origin:
        raise CheckpointError("malformed", "malformed checkpoint: empty origin line")
    if not _DECIMAL.fullmatch(size_text):
        raise CheckpointError("malformed", "malformed checkpoint: size is not a decimal without leading zeros")
    try:
        root = _b64decode(root_text)
    except (ValueError, UnicodeEncodeError, binascii.Error):
        raise CheckpointError("malformed", "malformed checkpoint: root is not canonical base64") from None
    if len(root) != 32:
        raise CheckpointError("malformed", "malformed checkpoint: root is not 32 bytes")
    if any(not ext for ext in extensions):
        raise CheckpointError("malformed", "malformed checkpoint: empty extension line")
    return Checkpoint(origin, int(size_text), root, tuple(extensions))


def sign_checkpoint(cp: Checkpoint, name: str, signing_key: nacl.signing.SigningKey) -> str:
    """Signed note for `cp`. C2SP recommends the key name equal the origin."""
    return sign_note(format_checkpoint_body(cp), name, signing_key)


def open_checkpoint(note: str | bytes, verifiers: list[str] | list[NoteVerifier], origin: str | None = None) -> Checkpoint:
    """Verify the note's signature(s), then parse its checkpoint body.

    When `origin` is given the checkpoint must be for that log.
    """
    text, _ = open_note(note, verifiers)
    cp = parse_checkpoint_body(text)
    if origin is not None and cp.origin != origin:
        raise CheckpointError("wrong_origin", "checkpoint is for another log origin")
    return cp
