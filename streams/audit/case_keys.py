"""Per-case keys for the audit side: crypto-shredding of case references (docs/audit.md, "Case keys").

Audit entries never carry a case reference in clear. For an entry about case ``R`` the router
writes ``case_key_id`` (a random id of the case's key), ``case_tag`` = HMAC-SHA256(case key, R)
(a blind index: with the key, a report finds the case's entries) and ``sealed_case`` =
SecretBox(case key, canonical JSON {"case_ref": R, "event_id": E}). Destroying the key ("shredding",
when retention ends) leaves every entry byte unchanged, so the log still verifies, but nobody can
tell any more which case the entries were about.

The store is a directory of 0600 files, one per case, created on first sight of a case:

    index.key            32 random bytes (raw), the key of the file-name index
    <lookup>.case        JSON {"format": "masb-case-key-v1", "key_id": <32 hex>, "key": <base64 32 bytes>,
                         "created_at": <ISO 8601 UTC>}; lookup = hex HMAC-SHA256(index key, R)[:32]
    shredded/<key_id>    JSON {"format": "masb-case-shred-v1", "key_id": ..., "shredded_at": ...}

The key id is random, not derived from R: once the case file is gone, nothing (not even the index
key) links the entries' key id back to the case reference.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import nacl.exceptions
import nacl.secret

from streams.errors import InvalidInput

KEY_FORMAT = "masb-case-key-v1"
SHRED_FORMAT = "masb-case-shred-v1"
INDEX_FILE = "index.key"
SHREDDED_DIR = "shredded"


class CaseKeyError(InvalidInput, ValueError):
    """A case key file that is unreadable or malformed; messages name files and key ids only."""


@dataclass(frozen=True)
class CaseKey:
    key_id: str
    key: bytes


@dataclass(frozen=True)
class CaseFields:
    """The three entry fields that stand for a case reference."""

    case_key_id: str
    case_tag: str
    sealed_case: bytes

    def as_entry_fields(self) -> dict:
        return {"case_key_id": self.case_key_id, "case_tag": self.case_tag, "sealed_case": self.sealed_case}


def case_tag(key: bytes, case_ref: str) -> str:
    return hmac.new(key, case_ref.encode("utf-8"), hashlib.sha256).hexdigest()


def sealed_plaintext(case_ref: str, event_id: str | None) -> bytes:
    return json.dumps({"case_ref": case_ref, "event_id": event_id}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def seal_case(key: CaseKey, case_ref: str, event_id: str | None) -> CaseFields:
    box = nacl.secret.SecretBox(key.key)
    return CaseFields(key.key_id, case_tag(key.key, case_ref), bytes(box.encrypt(sealed_plaintext(case_ref, event_id))))


def open_sealed_case(key: bytes, sealed: bytes, event_id: str | None) -> str:
    """The case reference inside ``sealed``; refuses a box that fails or belongs to another event."""
    try:
        doc = json.loads(nacl.secret.SecretBox(key).decrypt(sealed))
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise CaseKeyError("sealed_case does not open with this case key") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("case_ref"), str) or doc.get("event_id") != event_id:
        raise CaseKeyError("sealed_case is not bound to this entry's event id")
    return doc["case_ref"]


def _write_new(path: Path, data: bytes) -> bool:
    """Create path (mode 0600) holding data, atomically: readers never see a partial file.
    False if it already exists (another writer won; its content stands)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


CASE_KEYS_DIR = "case-keys"  # where a deployment keeps its case keys, under the router's keys dir
CASE_KEYS_VARIABLE = "MASB_CASE_KEYS_DIR"


def store_dir(keys_dir: str | os.PathLike[str]) -> Path:
    """Where the case key store is: ``MASB_CASE_KEYS_DIR`` if set, else ``<keys_dir>/case-keys``.
    A deployment whose keys directory is mounted read-only (a Kubernetes Secret, a container
    volume) puts the store, which the router writes, on a writable volume of its own."""
    return Path(os.environ.get(CASE_KEYS_VARIABLE) or Path(keys_dir) / CASE_KEYS_DIR)


class CaseKeyStore:
    """The directory of per-case keys. Safe for several processes on one host (files are created
    with O_EXCL); several hosts need a shared directory (see docs/audit.md)."""

    def __init__(self, directory: str | os.PathLike[str], create: bool = True) -> None:
        self.dir = Path(directory)
        if create:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        elif not self.dir.is_dir():
            raise CaseKeyError(f"case key store {self.dir} does not exist")
        self._index_key: bytes | None = None
        self._cache: dict[str, tuple[CaseKey, int]] = {}  # lookup name -> (key, inode of its file)
        self._paths: dict[str, Path] = {}  # case reference -> its file (memory only)

    # -- the index ---------------------------------------------------------------------------
    def _index(self) -> bytes:
        if self._index_key is None:
            path = self.dir / INDEX_FILE
            if not path.exists():
                _write_new(path, secrets.token_bytes(32))
            data = path.read_bytes()
            if len(data) != 32:
                raise CaseKeyError(f"{path}: the index key must be 32 bytes")
            self._index_key = data
        return self._index_key

    def _path(self, case_ref: str) -> Path:
        path = self._paths.get(case_ref)
        if path is None:
            name = hmac.new(self._index(), case_ref.encode("utf-8"), hashlib.sha256).hexdigest()[:32]
            path = self._paths[case_ref] = self.dir / f"{name}.case"
        return path

    @staticmethod
    def _load(path: Path) -> CaseKey:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            key = base64.b64decode(doc["key"], validate=True)
            key_id = doc["key_id"]
            if doc.get("format") != KEY_FORMAT or len(key) != 32 or not isinstance(key_id, str):
                raise ValueError
        except FileNotFoundError:
            raise
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise CaseKeyError(f"{path.name}: not a {KEY_FORMAT} file") from None
        return CaseKey(key_id, key)

    # -- router side -------------------------------------------------------------------------
    def key_for(self, case_ref: str) -> CaseKey:
        """The case's key, created on first sight. A key shredded meanwhile is never reused."""
        path = self._path(case_ref)
        cached = self._cache.get(path.name)
        try:
            inode = path.stat().st_ino
        except FileNotFoundError:
            inode = None
        if cached is not None and inode == cached[1]:
            return cached[0]
        if inode is None:
            key = CaseKey(secrets.token_hex(16), secrets.token_bytes(32))
            doc = {"format": KEY_FORMAT, "key_id": key.key_id, "key": base64.b64encode(key.key).decode(),
                   "created_at": _now()}
            _write_new(path, json.dumps(doc, sort_keys=True).encode())
        key = self._load(path)  # whoever created it first, everyone uses that key
        self._cache[path.name] = (key, path.stat().st_ino)
        return key

    def seal(self, case_ref: str, event_id: str | None, partition: int = 0) -> CaseFields:
        """The entry fields for the case (``partition`` is for the shared store's interface: one
        directory holds every partition's keys)."""
        return seal_case(self.key_for(case_ref), case_ref, event_id)

    # -- auditor side ------------------------------------------------------------------------
    def find(self, case_ref: str) -> CaseKey | None:
        """The case's key if it exists (never creates one)."""
        if not (self.dir / INDEX_FILE).exists():
            return None
        try:
            return self._load(self._path(case_ref))
        except FileNotFoundError:
            return None

    def keys_by_id(self) -> dict[str, bytes]:
        """Every live case key, by key id (for reports that open sealed case references)."""
        out = {}
        for path in sorted(self.dir.glob("*.case")):
            try:
                key = self._load(path)
            except (CaseKeyError, FileNotFoundError):
                continue
            out[key.key_id] = key.key
        return out

    def shredded_ids(self) -> set[str]:
        directory = self.dir / SHREDDED_DIR
        return {p.name for p in directory.iterdir()} if directory.is_dir() else set()

    def shred(self, case_ref: str) -> str | None:
        """Destroy the case's key (retention ended); returns its key id, or None if there is none.

        The key file is overwritten with zeros, synced and removed; a tombstone named by the key id
        (no case reference) records that the key was destroyed on purpose.
        """
        path = self._path(case_ref)
        try:
            key = self._load(path)
        except FileNotFoundError:
            return None
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.write(b"\0" * size)
            f.flush()
            os.fsync(f.fileno())
        path.unlink()
        self._cache.pop(path.name, None)
        tombs = self.dir / SHREDDED_DIR
        tombs.mkdir(exist_ok=True, mode=0o700)
        _write_new(tombs / key.key_id, json.dumps({"format": SHRED_FORMAT, "key_id": key.key_id,
                                                   "shredded_at": _now()}, sort_keys=True).encode())
        return key.key_id
