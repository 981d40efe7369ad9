"""Case pseudonyms: the Kafka record key of a case's records, instead of its case reference.

Format: docs/keys.md ("Case pseudonym keys"). In short, under a 32-byte secret key held by the
harm assessment units and the router (never by agencies or the broker's operator):

    pseudonym(case_ref) = key_id || "." || lowercase_hex(HMAC-SHA256(key, "MASB-CASE-PSEUDONYM-v1" || 0x00 || UTF-8(case_ref))[0:16])
    key_id              = lowercase_hex(SHA-256("MASB-PSEUDONYM-KEY-ID-v1" || 0x00 || key)[0:8])

49 ASCII bytes. The same case gives the same key under one pseudonym key, so Kafka still puts all
its records on one partition (ordering, co-partitioning); without the key nobody can tell which
case a pseudonym stands for, nor test a guessed case reference. Rotation: a new key (newer
``created_at``) is used for new records; the router accepts the pseudonym of any key it holds
(current or retired); deleting a key file retires it for good.
"""

from __future__ import annotations

import base64
import binascii
import glob
import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import nacl.utils

from .keys import KeyFileError, format_timestamp, parse_timestamp, read_json_file, write_new_file

FORMAT = "masb-pseudonym-key-v1"
ALG = "hmac-sha256"
KEY_BYTES = 32
FILE_SUFFIX = ".secret"
PSEUDONYM_LABEL = b"MASB-CASE-PSEUDONYM-v1\x00"
KEY_ID_LABEL = b"MASB-PSEUDONYM-KEY-ID-v1\x00"
DIGEST_BYTES = 16
PSEUDONYM_PATTERN = re.compile(rb"^[0-9a-f]{16}\.[0-9a-f]{32}$")


def pseudonym_key_id(secret: bytes) -> str:
    return hashlib.sha256(KEY_ID_LABEL + secret).digest()[:8].hex()


def looks_like_pseudonym(key: bytes | None) -> bool:
    """Whether a record key has the shape of a case pseudonym (not whether it is a valid one)."""
    return key is not None and PSEUDONYM_PATTERN.match(key) is not None


@dataclass(frozen=True)
class PseudonymKey:
    key_id: str
    created_at: datetime
    # repr=False: a key printed in a log line must never reveal the secret.
    secret: bytes = field(repr=False)

    def pseudonym(self, case_ref: str) -> bytes:
        digest = hmac.new(self.secret, PSEUDONYM_LABEL + case_ref.encode("utf-8"), hashlib.sha256).digest()
        return f"{self.key_id}.{digest[:DIGEST_BYTES].hex()}".encode("ascii")


def import_pseudonym_key(secret: bytes, created_at: datetime) -> PseudonymKey:
    if len(secret) != KEY_BYTES:
        raise ValueError(f"a pseudonym key is {KEY_BYTES} bytes")
    return PseudonymKey(pseudonym_key_id(secret), parse_timestamp(format_timestamp(created_at)), bytes(secret))


def generate_pseudonym_key(*, created_at: datetime | None = None) -> PseudonymKey:
    """A fresh key from libsodium's CSPRNG."""
    return import_pseudonym_key(nacl.utils.random(KEY_BYTES), created_at or datetime.now(timezone.utc))


def pseudonym_key_json(key: PseudonymKey) -> dict[str, str]:
    return {"format": FORMAT, "kind": "pseudonym", "alg": ALG, "key_id": key.key_id,
            "created_at": format_timestamp(key.created_at),
            "secret_key": base64.b64encode(key.secret).decode("ascii")}


def write_pseudonym_key(path: str | os.PathLike[str], key: PseudonymKey) -> None:
    """Create ``path`` with mode 0600; refuses to overwrite an existing file."""
    write_new_file(path, pseudonym_key_json(key), 0o600)


def parse_pseudonym_key(obj: Any, where: str) -> PseudonymKey:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise KeyFileError(f"{where}: format is not {FORMAT}")
    if obj.get("kind") != "pseudonym" or obj.get("alg") != ALG:
        raise KeyFileError(f"{where}: kind/alg must be pseudonym/{ALG}")
    try:
        secret = base64.b64decode(str(obj.get("secret_key")), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{where}: 'secret_key' is not valid base64") from None
    if len(secret) != KEY_BYTES:
        raise KeyFileError(f"{where}: 'secret_key' must decode to {KEY_BYTES} bytes")
    if obj.get("key_id") != pseudonym_key_id(secret):
        raise KeyFileError(f"{where}: key_id does not match secret_key")
    try:
        created = parse_timestamp(str(obj.get("created_at")))
    except ValueError:
        raise KeyFileError(f"{where}: 'created_at' is not an RFC 3339 timestamp with offset") from None
    return PseudonymKey(pseudonym_key_id(secret), created, secret)


def load_pseudonym_key(path: str | os.PathLike[str]) -> PseudonymKey:
    """Load a pseudonym key file (mode 0600, like every private key file)."""
    return parse_pseudonym_key(read_json_file(path), str(path))


class PseudonymKeys:
    """The pseudonym keys a party holds, by key id: ``current`` names new records, every key is
    accepted when checking one (rotation)."""

    def __init__(self, keys: Iterable[PseudonymKey] = ()) -> None:
        self._by_id: dict[str, PseudonymKey] = {}
        for key in keys:
            if key.key_id in self._by_id:
                raise ValueError(f"pseudonym key {key.key_id} is given twice")
            self._by_id[key.key_id] = key

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, kid: object) -> bool:
        return kid in self._by_id

    @property
    def key_ids(self) -> list[str]:
        """Newest first (ties broken by key id)."""
        ordered = sorted(self._by_id.values(), key=lambda k: (k.created_at, k.key_id), reverse=True)
        return [k.key_id for k in ordered]

    @property
    def current(self) -> PseudonymKey:
        if not self._by_id:
            raise KeyFileError("no case pseudonym key is loaded")
        return self._by_id[self.key_ids[0]]

    def pseudonym(self, case_ref: str) -> bytes:
        """The record key for a case under the current key."""
        return self.current.pseudonym(case_ref)

    def matches(self, record_key: bytes | None, case_ref: str) -> bool:
        """Whether ``record_key`` is the pseudonym of ``case_ref`` under one of these keys."""
        if not looks_like_pseudonym(record_key):
            return False
        key = self._by_id.get(record_key[:16].decode("ascii"))
        return key is not None and hmac.compare_digest(key.pseudonym(case_ref), record_key)

    @classmethod
    def load_dir(cls, directory: str | os.PathLike[str]) -> "PseudonymKeys":
        """Every ``*.secret`` pseudonym key file in ``directory``; KeyFileError if there is none."""
        pattern = os.path.join(glob.escape(os.fspath(directory)), "*" + FILE_SUFFIX)
        keys = cls(load_pseudonym_key(Path(p)) for p in sorted(glob.glob(pattern)))
        if not keys:
            raise KeyFileError(f"{directory}: no case pseudonym key (*{FILE_SUFFIX})",
                               hint="generate one with `masb keys generate --kind pseudonym --out DIR` and give "
                                    "every unit and the router a copy (docs/keys.md)")
        return keys

    @classmethod
    def load_files(cls, paths: Iterable[str | os.PathLike[str]]) -> "PseudonymKeys":
        return cls(load_pseudonym_key(p) for p in paths)


def file_name(key: PseudonymKey) -> str:
    """Suggested file name: pseudonym.<key id>.secret."""
    return f"pseudonym.{key.key_id}{FILE_SUFFIX}"
