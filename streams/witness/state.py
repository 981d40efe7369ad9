"""A witness's persistent state: per log origin, the latest checkpoint it cosigned; and the
evidence it keeps when the log signed two checkpoints of one size with different roots (a fork).

Layout of the state directory (docs/audit.md, "Witness state"):

    lock                                   held (flock) by the one witness process using the directory
    logs/<sha256 hex of the origin>.json   {"format": "masb-witness-state-v1", "origin", "size", "root",
                                            "note", "updated_at"}; replaced atomically
    evidence/<time>-fork-<id>.json         {"format": "masb-witness-evidence-v2", "kind": "fork", "origin",
                                            "recorded_at", "detail", "cosigned": {"size", "root", "note"},
                                            "submitted": {"size", "root", "note"}}; one file per fork
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from streams.atomic import atomic_write
from streams.errors import InvalidInput

log = logging.getLogger("masb.witness")

STATE_FORMAT = "masb-witness-state-v1"
EVIDENCE_FORMAT = "masb-witness-evidence-v2"  # v1 also kept unprovable "inconsistent" files
MAX_EVIDENCE_FILES = 1000  # a misbehaving log cannot fill the disk through us


class WitnessStateError(InvalidInput, RuntimeError):
    """The state directory cannot be used (locked by another witness, unreadable, corrupt)."""


@dataclass(frozen=True)
class LogState:
    origin: str
    size: int
    root: bytes
    note: str  # the checkpoint as cosigned: body, the log's signature(s), our cosignature


def origin_hash(origin: str) -> str:
    """Lowercase hex SHA-256 of the origin: names its state file and its monitoring URL."""
    return hashlib.sha256(origin.encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class WitnessState:
    """Open (and lock) a state directory; one witness process per directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        for sub in ("", "logs", "evidence"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = open(self.directory / "lock", "a+b")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise WitnessStateError(f"witness state {self.directory}: in use by another witness process") from None

    def close(self) -> None:
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def _path(self, origin: str) -> Path:
        return self.directory / "logs" / f"{origin_hash(origin)}.json"

    def latest(self, origin: str) -> LogState | None:
        """The latest cosigned checkpoint of that log, or None if the witness never cosigned one."""
        return self.latest_by_hash(origin_hash(origin), origin)

    def latest_by_hash(self, hex_hash: str, origin: str | None = None) -> LogState | None:
        path = self.directory / "logs" / f"{hex_hash}.json"
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise WitnessStateError(f"witness state {path}: unreadable ({type(exc).__name__})") from None
        try:
            state = LogState(doc["origin"], int(doc["size"]), base64.b64decode(doc["root"], validate=True), doc["note"])
        except (KeyError, TypeError, ValueError) as exc:
            raise WitnessStateError(f"witness state {path}: not a {STATE_FORMAT} file ({exc})") from None
        if doc.get("format") != STATE_FORMAT or (origin is not None and state.origin != origin) \
                or len(state.root) != 32 or state.size < 0:
            raise WitnessStateError(f"witness state {path}: not a {STATE_FORMAT} file for this origin")
        return state

    def store(self, state: LogState) -> None:
        """Persist atomically (the caller checked the old size under its lock)."""
        doc = {"format": STATE_FORMAT, "origin": state.origin, "size": state.size,
               "root": base64.b64encode(state.root).decode("ascii"), "note": state.note, "updated_at": _now()}
        atomic_write(self._path(state.origin), (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())

    def keep_fork(self, cosigned: LogState, submitted_note: str, submitted_root: bytes) -> Path | None:
        """Keep a fork: the stored checkpoint and a second one the log signed at the same size with
        another root (submitted_note: with only the log's verified signatures). One file per fork
        (origin, size and the two roots), however often it is shown. The file's path (the one kept
        before for this fork), or None when the evidence folder is full."""
        roots = sorted((cosigned.root, submitted_root))
        identity = f"{cosigned.origin}\n{cosigned.size}\n" + "\n".join(r.hex() for r in roots)
        digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:32]
        folder = self.directory / "evidence"
        for earlier in folder.glob(f"*-fork-{digest}.json"):
            return earlier
        if sum(1 for _ in folder.iterdir()) >= MAX_EVIDENCE_FILES:
            log.error("evidence not kept: %s already holds %d files", folder, MAX_EVIDENCE_FILES)
            return None
        doc = {
            "format": EVIDENCE_FORMAT, "kind": "fork", "origin": cosigned.origin, "recorded_at": _now(),
            "detail": f"two checkpoints of size {cosigned.size} with different roots",
            "cosigned": {"size": cosigned.size, "root": base64.b64encode(cosigned.root).decode("ascii"),
                         "note": cosigned.note},
            "submitted": {"size": cosigned.size, "root": base64.b64encode(submitted_root).decode("ascii"),
                          "note": submitted_note},
        }
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = folder / f"{stamp}-fork-{digest}.json"
        atomic_write(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
        return path
