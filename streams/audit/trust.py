"""What an auditor brings to a verification besides the log: checkpoints it already trusts (given as
files, or remembered from its own earlier verifications in a local state directory, like the Go
checksum database client's cache) and the witnesses whose cosignatures it requires.

Formats and rules: docs/audit.md, "Trusted checkpoints and local state" and "Witness quorum".
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from streams.atomic import atomic_write
from streams.errors import CheckFailed, InvalidInput, why_unreadable

from .checkpoint import (
    MAX_NOTE_BYTES,
    Checkpoint,
    CheckpointError,
    NoteVerifier,
    open_note_verified,
    parse_checkpoint_body,
    parse_verifier_key,
)
from .cosignature import CosignatureVerifier, parse_cosigner_verifier_key

__all__ = [
    "Witnesses",
    "OpenedCheckpoint",
    "TrustedCheckpoint",
    "TrustError",
    "open_witnessed_checkpoint",
    "load_trusted_checkpoint",
    "CheckpointState",
    "default_state_dir",
]


class TrustError(CheckFailed, ValueError):
    """A trusted checkpoint file or the local state cannot be used. Messages name the file."""


@dataclass(frozen=True)
class Witnesses:
    """The witnesses a verifier knows (id and cosignature/v1 verifier) and how many must cosign."""

    quorum: int = 0
    members: tuple[tuple[str, CosignatureVerifier], ...] = ()

    @classmethod
    def from_keys(cls, quorum: int, keys: Sequence[tuple[str, str]]) -> "Witnesses":
        """keys: (witness id, C2SP cosignature/v1 verifier key string)."""
        return cls(quorum, tuple((wid, parse_cosigner_verifier_key(k)) for wid, k in keys))

    def cosigners(self, verified: Sequence[object]) -> list[str]:
        """Ids of the witnesses among the verifiers whose signatures verified, in policy order."""
        return [wid for wid, v in self.members if v in verified]

    def met(self, cosigners: Sequence[str]) -> bool:
        return len(set(cosigners)) >= self.quorum

    def describe(self) -> str:
        return f"quorum {self.quorum} of {len(self.members)}"


@dataclass(frozen=True)
class OpenedCheckpoint:
    checkpoint: Checkpoint
    note: str
    cosigners: tuple[str, ...] = ()  # ids of the witnesses whose cosignatures verified


def open_witnessed_checkpoint(note: str | bytes, log_verifiers: Sequence[str | NoteVerifier], origin: str | None,
                              witnesses: Witnesses | None = None) -> OpenedCheckpoint:
    """Open a checkpoint signed by a log key, and say which known witnesses cosigned it.

    Raises CheckpointError like open_checkpoint; a cosignature from a known witness that does not
    verify rejects the whole note (C2SP signed-note: a failed known signature rejects the note).
    Whether the quorum is met is the caller's decision (Witnesses.met)."""
    logs = [parse_verifier_key(v) if isinstance(v, str) else v for v in log_verifiers]
    known = [*logs, *(v for _, v in (witnesses.members if witnesses else ()))]
    text, verified = open_note_verified(note, known)
    if not any(v in logs for v in verified):
        raise CheckpointError("no_known_signature", "no signature from a known log key")
    cp = parse_checkpoint_body(text)
    if origin is not None and cp.origin != origin:
        raise CheckpointError("wrong_origin", "checkpoint is for another log origin")
    note_text = note.decode("utf-8") if isinstance(note, (bytes, bytearray)) else note
    return OpenedCheckpoint(cp, note_text, tuple(witnesses.cosigners(verified)) if witnesses else ())


@dataclass(frozen=True)
class TrustedCheckpoint:
    """A checkpoint the auditor already relies on; `source` names where it came from in messages."""

    checkpoint: Checkpoint
    note: str
    source: str
    cosigners: tuple[str, ...] = field(default=())


def load_trusted_checkpoint(path: str | os.PathLike[str], log_verifiers: Sequence[str | NoteVerifier],
                            origin: str) -> TrustedCheckpoint:
    """A signed note from a file (e.g. fetched from a witness, or kept from an earlier audit). It
    must be signed by a log key the auditor trusts, for the trusted origin."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_NOTE_BYTES + 1)
    except OSError as exc:
        raise InvalidInput(f"trusted checkpoint {path}: {why_unreadable(exc)}") from None
    try:
        opened = open_witnessed_checkpoint(data, log_verifiers, origin)
    except CheckpointError as exc:
        raise TrustError(f"trusted checkpoint {path}: refused: {exc}") from None
    return TrustedCheckpoint(opened.checkpoint, opened.note, f"trusted checkpoint {path}")


def default_state_dir() -> Path:
    """MASB_STATE_DIR, else $XDG_STATE_HOME/masb, else ~/.local/state/masb (XDG base directories)."""
    explicit = os.environ.get("MASB_STATE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "masb"


class CheckpointState:
    """The newest checkpoint this auditor verified, one file per log origin:

        <state dir>/checkpoints/<lowercase hex SHA-256 of the UTF-8 origin>

    holding the signed note exactly as verified. It only moves forward (a larger size, after the
    new checkpoint was shown consistent with the stored one), and is replaced atomically: a
    temporary file in the same directory, fsync, rename, fsync of the directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, origin: str) -> Path:
        return self.directory / "checkpoints" / hashlib.sha256(origin.encode("utf-8")).hexdigest()

    def load(self, origin: str, log_verifiers: Sequence[str | NoteVerifier]) -> tuple[TrustedCheckpoint | None, str | None]:
        """(the stored checkpoint, None), (None, None) when there is none, or (None, a warning) when
        the stored note does not verify under the current log keys (another deployment with the same
        origin, or a key since revoked): it is then not used, and the next verified checkpoint replaces it."""
        path = self.path(origin)
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_NOTE_BYTES + 1)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            raise TrustError(f"checkpoint state {path}: cannot be read ({type(exc).__name__})") from None
        try:
            opened = open_witnessed_checkpoint(data, log_verifiers, origin)
        except CheckpointError as exc:
            return None, (f"the checkpoint remembered in {path} was not used: {exc} (another log with the same "
                          "origin, or a revoked key); it will be replaced by the next one verified")
        return TrustedCheckpoint(opened.checkpoint, opened.note, f"the checkpoint remembered in {path}"), None

    def advance(self, origin: str, note: str, checkpoint: Checkpoint) -> bool:
        """Remember `note` if it is larger than what is stored (or nothing valid is); True if written.

        The caller has verified the note, and its consistency with the stored checkpoint."""
        path = self.path(origin)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._locked(path.parent):
            current = _stored_size(path, origin)
            if current is not None and current >= checkpoint.size:
                return False
            atomic_write(path, note.encode("utf-8"))
        return True

    @contextlib.contextmanager
    def _locked(self, directory: Path) -> Iterator[None]:
        # Two auditors on one machine: the compare-and-replace above must not interleave.
        with open(directory / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _stored_size(path: Path, origin: str) -> int | None:
    """Size of the stored note's checkpoint (signature not rechecked: only to never move backwards)."""
    try:
        text = path.read_text(encoding="utf-8")
        cp = parse_checkpoint_body(text[: text.rindex("\n\n") + 1])
    except (OSError, ValueError, UnicodeDecodeError, CheckpointError):
        return None
    return cp.size if cp.origin == origin else None
