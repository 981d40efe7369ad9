"""The shared case-key store: every worker uses the same key for a case, and shredding reaches them all.

Per-case keys (crypto-shredding, see streams/audit/case_keys.py) live in the compacted Kafka topic
``<prefix>audit.case-keys``, wrapped under a key-encryption key, never in clear. A case's key record
is in the partition of ``case-events`` that carries the case (the topics are co-partitioned), so the
one worker that routes the case is the one that creates, reads and destroys its key. Format
(docs/audit.md, "Case keys"):

    key   b"case:" + lookup        lookup = hex(HMAC-SHA256(index key, UTF-8 case reference))[:32]
    value UTF-8 JSON {"format": "masb-case-key-v2", "key_id": <32 hex>, "wrap_key_id": <16 hex>,
                      "wrapped": base64(NaCl SecretBox(wrap key).encrypt(32-byte case key)),
                      "created_at": <ISO 8601 UTC>}
          or null (a tombstone): the key was destroyed
    key   b"shredded:" + key id
    value UTF-8 JSON {"format": "masb-case-shred-v1", "key_id": <32 hex>, "shredded_at": <ISO 8601 UTC>}

The two secrets, ``index.key`` and ``wrap.key`` (32 random bytes each, mode 0600), are made once
(`masb keys case-secrets`) and copied to every worker host and to the auditors who open case
references; neither is ever in Kafka.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import nacl.exceptions
import nacl.secret

from streams.audit.case_keys import INDEX_FILE, SHRED_FORMAT, CaseFields, CaseKey, CaseKeyError, seal_case

KEY_RECORD_FORMAT = "masb-case-key-v2"
WRAP_FILE = "wrap.key"
CASE_PREFIX = b"case:"
SHREDDED_PREFIX = b"shredded:"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_secret(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CaseKeyError(f"{path} is missing",
                           hint=f"run `masb keys case-secrets --out {path.parent.parent}` once, then copy "
                                f"{path.parent}/*.key to every worker host") from None
    if len(data) != 32:
        raise CaseKeyError(f"{path}: must hold exactly 32 bytes")
    if path.stat().st_mode & 0o077:
        raise CaseKeyError(f"{path} is readable by others: chmod 600 {path}")
    return data


@dataclass(frozen=True)
class CaseKeySecrets:
    """The index key (lookup names) and the wrap key (keys at rest) of a deployment's case keys."""

    index_key: bytes
    wrap_key: bytes

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "CaseKeySecrets":
        directory = Path(directory)
        return cls(_read_secret(directory / INDEX_FILE), _read_secret(directory / WRAP_FILE))

    @classmethod
    def create(cls, directory: str | os.PathLike) -> "CaseKeySecrets":
        """Make both secrets (0600), refusing to replace existing ones: that would orphan every key."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in (INDEX_FILE, WRAP_FILE):
            path = directory / name
            if path.exists():
                continue  # an existing secret is kept: the other one may still be missing
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, secrets.token_bytes(32))
                os.fsync(fd)
            finally:
                os.close(fd)
        return cls.load(directory)

    @property
    def wrap_key_id(self) -> str:
        return hashlib.sha256(b"masb-case-wrap-key\x00" + self.wrap_key).hexdigest()[:16]

    def lookup(self, case_ref: str) -> str:
        return hmac.new(self.index_key, case_ref.encode("utf-8"), hashlib.sha256).hexdigest()[:32]

    def wrap(self, key: CaseKey) -> bytes:
        return json.dumps({
            "format": KEY_RECORD_FORMAT, "key_id": key.key_id, "wrap_key_id": self.wrap_key_id,
            "wrapped": base64.b64encode(bytes(nacl.secret.SecretBox(self.wrap_key).encrypt(key.key))).decode(),
            "created_at": _now(),
        }, sort_keys=True).encode()

    def unwrap(self, value: bytes) -> CaseKey:
        try:
            doc = json.loads(value)
            if doc.get("format") != KEY_RECORD_FORMAT:
                raise ValueError
            key = nacl.secret.SecretBox(self.wrap_key).decrypt(base64.b64decode(doc["wrapped"], validate=True))
            key_id = doc["key_id"]
        except nacl.exceptions.CryptoError:
            raise CaseKeyError("a case key record does not open with this wrap key (another deployment's "
                               "wrap.key?)") from None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise CaseKeyError(f"a record of the case-key topic is not a {KEY_RECORD_FORMAT} record") from None
        if len(key) != 32 or not isinstance(key_id, str):
            raise CaseKeyError(f"a record of the case-key topic is not a {KEY_RECORD_FORMAT} record")
        return CaseKey(key_id, key)


def shred_marker(key_id: str) -> tuple[bytes, bytes]:
    """The record that says, forever, that a key id was destroyed on purpose (no case reference)."""
    return SHREDDED_PREFIX + key_id.encode(), json.dumps(
        {"format": SHRED_FORMAT, "key_id": key_id, "shredded_at": _now()}, sort_keys=True).encode()


@dataclass(frozen=True)
class KeyRecord:
    """A record to write to the case-key topic, in the partition of the case."""

    partition: int
    key: bytes
    value: bytes | None


@dataclass
class SharedCaseKeys:
    """The router's view: the keys of the cases in the case-events partitions this worker routes.

    ``load(partitions)`` reads those partitions of the case-key topic (once per assignment; the
    router starts it as soon as partitions are assigned, so the first batch does not wait for it);
    ``seal`` uses a case's key, making a new one when the case is new; the records of new keys
    (``new_records()``) must be acknowledged by the broker before any audit entry sealed with them is
    sent, so that every worker that later routes the case finds the same key.
    """

    bootstrap: str
    topic: str
    secrets: CaseKeySecrets
    _keys: dict[int, dict[str, CaseKey]] = field(default_factory=dict)  # partition -> lookup -> key
    _new: list[tuple[KeyRecord, str]] = field(default_factory=list)      # (record, lookup) not yet sent
    _revocations: dict[int, int] = field(default_factory=dict)  # partition -> times revoked
    _reading: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def load(self, partitions: set[int]) -> None:
        """Read the keys of those of ``partitions`` not loaded yet. One read at a time: a load
        already under way (the prefetch started on assignment) is waited for, not repeated."""
        from streams.kafka import read_topic

        if all(p in self._keys for p in partitions):
            return
        async with self._reading:
            missing = sorted(p for p in partitions if p not in self._keys)
            if not missing:
                return
            revocations = {p: self._revocations.get(p, 0) for p in missing}
            found: dict[int, dict[str, CaseKey]] = {p: {} for p in missing}
            async for record in read_topic(self.bootstrap, self.topic, partitions=missing):
                key = record.key or b""
                if not key.startswith(CASE_PREFIX):
                    continue
                lookup = key[len(CASE_PREFIX):].decode("ascii", "replace")
                if record.value is None:
                    found[record.partition].pop(lookup, None)
                else:
                    found[record.partition][lookup] = self.secrets.unwrap(record.value)
            # A partition revoked while it was read may have new keys from its next owner: the
            # keys read are stale, and the next assignment reads them again.
            self._keys.update({p: keys for p, keys in found.items() if self._revocations.get(p, 0) == revocations[p]})

    def revoke(self, partitions: set[int]) -> None:
        """Another worker routes these partitions now: forget their keys."""
        for p in partitions:
            self._keys.pop(p, None)
            self._revocations[p] = self._revocations.get(p, 0) + 1

    def seal(self, case_ref: str, event_id: str | None, partition: int = 0) -> CaseFields:
        if partition not in self._keys:
            raise CaseKeyError(f"case keys of partition {partition} are not loaded")
        lookup = self.secrets.lookup(case_ref)
        keys = self._keys[partition]
        key = keys.get(lookup)
        if key is None:
            key = keys[lookup] = CaseKey(secrets.token_hex(16), secrets.token_bytes(32))
            self._new.append((KeyRecord(partition, CASE_PREFIX + lookup.encode(), self.secrets.wrap(key)), lookup))
        return seal_case(key, case_ref, event_id)

    def new_records(self) -> list[KeyRecord]:
        """The records of keys made since the last confirm_new() or discard_new()."""
        return [record for record, _ in self._new]

    def confirm_new(self) -> None:
        """The broker acknowledged the new keys' records."""
        self._new = []

    def discard_new(self) -> None:
        """The batch that made these keys was abandoned: forget them, as if never made."""
        for record, lookup in self._new:
            self._keys.get(record.partition, {}).pop(lookup, None)
        self._new = []

    def shred(self, partition: int, lookup: str) -> list[KeyRecord]:
        """The records that destroy the case's key (a tombstone and a marker); [] if there is none."""
        key = self._keys.get(partition, {}).get(lookup)
        if key is None:
            return []
        marker_key, marker_value = shred_marker(key.key_id)
        return [KeyRecord(partition, CASE_PREFIX + lookup.encode(), None),
                KeyRecord(partition, marker_key, marker_value)]

    def forget(self, partition: int, lookup: str) -> None:
        self._keys.get(partition, {}).pop(lookup, None)


@dataclass
class CaseKeyView:
    """An auditor's snapshot of the shared store: the same questions as the file store answers."""

    secrets: CaseKeySecrets
    by_lookup: dict[str, tuple[int, bytes]]  # lookup -> (partition, wrapped record)
    shredded: set[str]

    @classmethod
    async def read(cls, bootstrap: str, topic: str, secrets: CaseKeySecrets) -> "CaseKeyView":
        from streams.kafka import read_topic

        by_lookup: dict[str, tuple[int, bytes]] = {}
        shredded: set[str] = set()
        async for record in read_topic(bootstrap, topic):
            key = record.key or b""
            if key.startswith(CASE_PREFIX):
                lookup = key[len(CASE_PREFIX):].decode("ascii", "replace")
                if record.value is None:
                    by_lookup.pop(lookup, None)
                else:
                    by_lookup[lookup] = (record.partition, record.value)
            elif key.startswith(SHREDDED_PREFIX):
                shredded.add(key[len(SHREDDED_PREFIX):].decode("ascii", "replace"))
        return cls(secrets, by_lookup, shredded)

    def find(self, case_ref: str) -> CaseKey | None:
        found = self.by_lookup.get(self.secrets.lookup(case_ref))
        return self.secrets.unwrap(found[1]) if found else None

    def partition_of(self, case_ref: str) -> int | None:
        found = self.by_lookup.get(self.secrets.lookup(case_ref))
        return found[0] if found else None

    def keys_by_id(self) -> dict[str, bytes]:
        keys = (self.secrets.unwrap(value) for _, value in self.by_lookup.values())
        return {key.key_id: key.key for key in keys}

    def shredded_ids(self) -> set[str]:
        return set(self.shredded)
