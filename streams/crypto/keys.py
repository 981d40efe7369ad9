"""Key records, key files and keyrings for MASB parties (format: docs/keys.md).

Every party holds an Ed25519 *signing* key and/or an X25519 *exchange* key. Keys are
named by ``key_id`` (first 8 bytes of SHA-256 of the raw public key, lowercase hex) so
that envelopes, publications and audit records can say which key was used without
carrying the key itself.
"""

from __future__ import annotations

import base64
import binascii
import glob
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Literal

import nacl.public
import nacl.signing

from streams import jsonin
from streams.errors import InvalidInput
from streams.private_files import too_open

KeyKind = Literal["signing", "exchange"]

PRIVATE_FORMAT = "masb-private-key-v1"
PUBLIC_FORMAT = "masb-public-key-v1"
ALG_BY_KIND: dict[str, str] = {"signing": "ed25519", "exchange": "x25519"}
KEY_BYTES = 32


class KeyFileError(InvalidInput):
    """A key file or key record is missing, malformed, inconsistent or unsafe."""


def key_id(public_key: bytes) -> str:
    """Lowercase hex of SHA-256(public_key)[:8]: 16 characters."""
    return hashlib.sha256(public_key).digest()[:8].hex()


def printable_key_id(text: str) -> str:
    """``text`` if it has the shape of a key id, else a placeholder.

    For echoing UNVERIFIED input in error messages: nothing but a key id can leak that way.
    """
    if len(text) == 16 and all(c in "0123456789abcdef" for c in text):
        return text
    return "(not a key id)"


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds, e.g. ``2025-03-01T09:30:00.000000Z``."""
    if moment.tzinfo is None:
        raise ValueError("created_at must be timezone-aware")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("timestamp has no UTC offset")
    return moment.astimezone(timezone.utc)


def derive_public_key(kind: str, private_key: bytes) -> bytes:
    """The public half of a raw 32-byte private key (Ed25519 seed or X25519 scalar)."""
    if kind == "signing":
        return bytes(nacl.signing.SigningKey(private_key).verify_key)
    if kind == "exchange":
        return bytes(nacl.public.PrivateKey(private_key).public_key)
    raise ValueError("kind must be 'signing' or 'exchange'")


@dataclass(frozen=True)
class PublicKeyRecord:
    owner: str
    kind: KeyKind
    alg: str
    key_id: str
    created_at: datetime
    public_key: bytes


@dataclass(frozen=True)
class PrivateKeyRecord:
    owner: str
    kind: KeyKind
    alg: str
    key_id: str
    created_at: datetime
    # repr=False: a record printed in a log line must never reveal the secret.
    private_key: bytes = field(repr=False)
    public_key: bytes

    def signing_key(self) -> nacl.signing.SigningKey:
        _require_kind(self, "signing")
        return nacl.signing.SigningKey(self.private_key)

    def exchange_key(self) -> nacl.public.PrivateKey:
        _require_kind(self, "exchange")
        return nacl.public.PrivateKey(self.private_key)


def _require_kind(rec: PrivateKeyRecord, kind: str) -> None:
    if rec.kind != kind:
        raise ValueError(f"key {rec.key_id} is {kind_phrase(rec.kind)} key, {kind_phrase(kind)} key is needed")


def kind_phrase(kind: str) -> str:
    """"a signing", "an exchange": the key kind with its article, for messages."""
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind}"


def _check_owner(owner: str) -> None:
    # The owner is a party id (e.g. "housing-telford"); it becomes part of a file name.
    if not owner or len(owner) > 128 or "/" in owner or "\\" in owner or owner.startswith("."):
        raise ValueError("owner must be a non-empty party id without path separators")


def import_private_key(
    owner: str, kind: KeyKind, private_key: bytes, created_at: datetime
) -> PrivateKeyRecord:
    """Build a record from raw key bytes (used for known-answer vectors and migrations)."""
    _check_owner(owner)
    if kind not in ALG_BY_KIND:
        raise ValueError("kind must be 'signing' or 'exchange'")
    if len(private_key) != KEY_BYTES:
        raise ValueError(f"private key must be {KEY_BYTES} bytes")
    public = derive_public_key(kind, private_key)
    return PrivateKeyRecord(
        owner=owner,
        kind=kind,
        alg=ALG_BY_KIND[kind],
        key_id=key_id(public),
        created_at=parse_timestamp(format_timestamp(created_at)),
        private_key=bytes(private_key),
        public_key=public,
    )


def generate_key(owner: str, kind: KeyKind, *, created_at: datetime | None = None) -> PrivateKeyRecord:
    """A fresh key from the OS CSPRNG (via libsodium)."""
    if kind == "signing":
        secret = bytes(nacl.signing.SigningKey.generate())
    elif kind == "exchange":
        secret = bytes(nacl.public.PrivateKey.generate())
    else:
        raise ValueError("kind must be 'signing' or 'exchange'")
    return import_private_key(owner, kind, secret, created_at or datetime.now(timezone.utc))


def public_record(rec: PrivateKeyRecord | PublicKeyRecord) -> dict[str, str]:
    """The shareable JSON object (format masb-public-key-v1) for a key."""
    return {
        "format": PUBLIC_FORMAT,
        "owner": rec.owner,
        "kind": rec.kind,
        "alg": rec.alg,
        "key_id": rec.key_id,
        "created_at": format_timestamp(rec.created_at),
        "public_key": base64.b64encode(rec.public_key).decode("ascii"),
    }


def private_record_json(rec: PrivateKeyRecord) -> dict[str, str]:
    obj = public_record(rec)
    obj["format"] = PRIVATE_FORMAT
    obj["private_key"] = base64.b64encode(rec.private_key).decode("ascii")
    return obj


def write_new_file(path: str | os.PathLike[str], document: dict[str, str], mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (never briefly readable), refusing to overwrite."""
    data = (json.dumps(document, indent=2) + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key file") from None
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_key(path: str | os.PathLike[str], rec: PrivateKeyRecord) -> None:
    """Create ``path`` with mode 0600; refuses to overwrite an existing file."""
    write_new_file(path, private_record_json(rec), 0o600)


def write_public_key(path: str | os.PathLike[str], rec: PrivateKeyRecord | PublicKeyRecord) -> None:
    """Write the public export (mode 0644 is fine: nothing secret); refuses to overwrite."""
    write_new_file(path, public_record(rec), 0o644)


def _b64_key(obj: dict[str, Any], name: str, where: str) -> bytes:
    value = obj.get(name)
    if not isinstance(value, str):
        raise KeyFileError(f"{where}: '{name}' is missing or not a string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{where}: '{name}' is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise KeyFileError(f"{where}: '{name}' must decode to {KEY_BYTES} bytes")
    return raw


def _parse_common(obj: Any, expected_format: str, where: str) -> tuple[str, KeyKind, datetime]:
    if not isinstance(obj, dict):
        raise KeyFileError(f"{where}: not a JSON object")
    if obj.get("format") != expected_format:
        raise KeyFileError(f"{where}: format is not {expected_format}")
    owner, kind, alg = obj.get("owner"), obj.get("kind"), obj.get("alg")
    if not isinstance(owner, str):
        raise KeyFileError(f"{where}: 'owner' is missing")
    try:
        _check_owner(owner)
    except ValueError as exc:
        raise KeyFileError(f"{where}: {exc}") from None
    if kind not in ALG_BY_KIND or alg != ALG_BY_KIND[kind]:
        raise KeyFileError(f"{where}: kind/alg must be signing/ed25519 or exchange/x25519")
    try:
        created = parse_timestamp(str(obj.get("created_at")))
    except ValueError:
        raise KeyFileError(f"{where}: 'created_at' is not an RFC 3339 timestamp with offset") from None
    return owner, kind, created


def parse_public_record(obj: Any, where: str = "public key") -> PublicKeyRecord:
    """Validate a masb-public-key-v1 object; its key_id must match its public_key."""
    owner, kind, created = _parse_common(obj, PUBLIC_FORMAT, where)
    public = _b64_key(obj, "public_key", where)
    if obj.get("key_id") != key_id(public):
        raise KeyFileError(f"{where}: key_id does not match public_key")
    return PublicKeyRecord(owner, kind, ALG_BY_KIND[kind], key_id(public), created, public)


def _parse_private_record(obj: Any, where: str) -> PrivateKeyRecord:
    owner, kind, created = _parse_common(obj, PRIVATE_FORMAT, where)
    private = _b64_key(obj, "private_key", where)
    public = _b64_key(obj, "public_key", where)
    if derive_public_key(kind, private) != public:
        raise KeyFileError(f"{where}: public_key does not belong to private_key")
    if obj.get("key_id") != key_id(public):
        raise KeyFileError(f"{where}: key_id does not match public_key")
    return PrivateKeyRecord(owner, kind, ALG_BY_KIND[kind], key_id(public), created, private, public)


def read_private_file(path: str | os.PathLike[str], max_bytes: int = 64 * 1024) -> bytes:
    """The bytes of a secret file; refuses files readable or writable by group/others (like ssh)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open key file ({exc.strerror})") from None
    try:
        # fstat on the opened descriptor: the checked file is the file we read.
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise KeyFileError(f"{path}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes)
        if mode & 0o077:
            if not data.lstrip().startswith(b"{"):  # not a key file at all: no advice to chmod it
                raise KeyFileError(f"{path}: not a MASB key file (a key file is a JSON document)")
            raise KeyFileError(too_open(path, mode))
        return data
    finally:
        os.close(fd)


def read_json_file(path: str | os.PathLike[str]) -> Any:
    """A private key file's JSON document (checked as by :func:`read_private_file`)."""
    raw = read_private_file(path)
    try:
        return jsonin.loads(raw)  # strict: a repeated key would make the file mean two things
    except jsonin.JsonInputError as exc:
        raise KeyFileError(f"{path}: not strict UTF-8 JSON: " + "; ".join(str(p) for p in exc.problems)) from None


def load_private_key(path: str | os.PathLike[str]) -> PrivateKeyRecord:
    """Load a private key file; refuses files readable or writable by group/others (like ssh)."""
    return _parse_private_record(read_json_file(path), str(path))


class Keyring:
    """The private keys of one kind held by one owner, by key_id (current plus rotated ones).

    Rotation adds a key with a newer ``created_at``; the newest is ``current`` and is the one
    to publish. Older keys stay so that data sealed to them remains readable; removing a key
    file makes that data unreadable here (the opener reports UnknownRecipientKey).
    """

    def __init__(self, owner: str, records: Iterable[PrivateKeyRecord] = (), kind: KeyKind = "exchange"):
        _check_owner(owner)
        if kind not in ALG_BY_KIND:
            raise ValueError("kind must be 'signing' or 'exchange'")
        self.owner = owner
        self.kind: KeyKind = kind
        self._by_id: dict[str, PrivateKeyRecord] = {}
        for rec in records:
            self.add(rec)

    def add(self, rec: PrivateKeyRecord) -> None:
        if rec.owner != self.owner or rec.kind != self.kind:
            raise ValueError(f"key {rec.key_id} is not {kind_phrase(self.kind)} key of owner {self.owner}")
        if rec.key_id in self._by_id:
            raise ValueError(f"key {rec.key_id} is already in the keyring")
        self._by_id[rec.key_id] = rec

    def get(self, kid: str) -> PrivateKeyRecord | None:
        return self._by_id.get(kid)

    def __contains__(self, kid: object) -> bool:
        return kid in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def key_ids(self) -> list[str]:
        """Newest first; ties on created_at are broken by key_id so the order is total."""
        ordered = sorted(self._by_id.values(), key=lambda r: (r.created_at, r.key_id), reverse=True)
        return [r.key_id for r in ordered]

    @property
    def current(self) -> PrivateKeyRecord:
        if not self._by_id:
            raise KeyFileError(f"keyring of {self.owner} holds no {self.kind} key")
        return self._by_id[self.key_ids[0]]

    @classmethod
    def load_dir(cls, directory: str | os.PathLike[str], owner: str, kind: KeyKind = "exchange") -> "Keyring":
        """Load every ``<owner>*.key`` file in ``directory`` whose record has this owner and kind.

        The glob is only a prefilter: ``housing*.key`` also matches ``housing-assoc.key``, so
        records of other owners (and keys of the other kind) are skipped, not loaded.
        """
        _check_owner(owner)
        ring = cls(owner, kind=kind)
        pattern = os.path.join(glob.escape(os.fspath(directory)), glob.escape(owner) + "*.key")
        for path in sorted(glob.glob(pattern)):
            rec = load_private_key(Path(path))
            if rec.owner == owner and rec.kind == kind:
                ring.add(rec)
        if not ring:
            raise KeyFileError(f"{directory}: no {kind} key files for owner {owner}")
        return ring
