"""Offline verification of an audit log against its signed checkpoints.

Pure functions over data already read (from Kafka or an export bundle): no I/O.
verify_log() makes one streaming pass over the entries, keeping only a
CompactRange (O(log n) hashes) and the parsed checkpoints, so a log of any
length is checked in constant memory.

Numbering in reports: checkpoints are numbered 1, 2, ... in publication order;
entries are numbered 1, 2, ... in log order ("entry 1200" is the 1200th entry,
the last one covered by a checkpoint of size 1200) and also named by the
position (e.g. Kafka offset) the caller gave. Messages never contain entry
contents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from .checkpoint import (
    Checkpoint,
    CheckpointError,
    NoteVerifier,
    parse_verifier_key,
)
from .merkle import EMPTY_ROOT, CompactRange, leaf_hash, verify_consistency
from .trust import OpenedCheckpoint, TrustedCheckpoint, Witnesses, open_witnessed_checkpoint

__all__ = ["VerifyReport", "verify_log", "check_checkpoint_chain", "find_divergence"]

PROGRESS_EVERY = 10_000
_MAX_POSITION_PROBLEMS = 10


@dataclass
class VerifyReport:
    ok: bool
    entries: int
    checkpoints_checked: int  # checkpoint notes examined
    problems: list[str]
    first_bad_checkpoint: int | None  # 1-based number of the earliest checkpoint with a problem
    checkpoints_verified: int = 0  # valid signature and root matching the entries (or proof chain)
    verified_size: int = 0  # largest checkpoint size fully verified
    uncovered_entries: int = 0  # entries after the largest signed checkpoint size
    notes: list[str] = field(default_factory=list)  # informational, not failures
    # With a witness quorum: the largest verified checkpoint cosigned by a quorum (without one, the
    # largest verified checkpoint). `relied_on` is that checkpoint: what an auditor may remember.
    witnessed_size: int = 0
    relied_on: OpenedCheckpoint | None = None
    trusted_checked: list[str] = field(default_factory=list)  # sources of the trusted checkpoints held against the log


class _Problems:
    """Collects problems, sorted at the end by the checkpoint they concern."""

    def __init__(self) -> None:
        self._items: list[tuple[int, int, str]] = []
        self.first_bad: int | None = None

    def add(self, message: str, checkpoint: int | None = None) -> None:
        self._items.append((checkpoint or 0, len(self._items), message))
        if checkpoint is not None and (self.first_bad is None or checkpoint < self.first_bad):
            self.first_bad = checkpoint

    def sorted(self) -> list[str]:
        return [m for _, _, m in sorted(self._items)]


_REASONS = {
    "no_known_signature": "no signature from a trusted log key",
    "wrong_origin": "checkpoint is for another log",
}


def _open_all(
    checkpoints: Iterable[str], verifiers: Sequence[NoteVerifier], origin: str, problems: _Problems,
    witnesses: Witnesses | None = None, opened: dict[int, OpenedCheckpoint] | None = None,
) -> tuple[int, list[tuple[int, Checkpoint]]]:
    """Open every note; report signature, size-order and fork problems in publication order.
    `opened` (if given) receives each valid checkpoint with the witnesses that cosigned it."""
    valid: list[tuple[int, Checkpoint]] = []
    by_size: dict[int, tuple[int, bytes]] = {}
    largest: tuple[int, int] | None = None  # (size, number) of the largest valid checkpoint so far
    count = 0
    for number, note in enumerate(checkpoints, start=1):
        count = number
        try:
            item = open_witnessed_checkpoint(note, verifiers, origin, witnesses)
            cp = item.checkpoint
            if opened is not None:
                opened[number] = item
        except CheckpointError as e:
            detail = _REASONS.get(e.reason, str(e))  # bad_signature keeps its key name
            problems.add(f"checkpoint {number}: {detail}", number)
            continue
        tag = f"checkpoint {number} (size {cp.size})"
        if largest is not None and cp.size < largest[0]:
            problems.add(
                f"{tag}: size decreased from {largest[0]} (checkpoint {largest[1]}); a log never shrinks, "
                "so the log was rolled back or the checkpoints were reordered",
                number,
            )
        earlier = by_size.get(cp.size)
        if earlier is not None and earlier[1] != cp.root:
            problems.add(
                f"{tag}: fork: checkpoint {earlier[0]} has the same size but a different root; "
                "the log key signed two different histories",
                number,
            )
        by_size.setdefault(cp.size, (number, cp.root))
        if largest is None or cp.size >= largest[0]:
            largest = (cp.size, number)
        valid.append((number, cp))
    return count, valid


def _parse_verifiers(verifiers: Sequence[str | NoteVerifier]) -> list[NoteVerifier]:
    # A bad verifier key is a configuration error of the auditor: raise, do not report.
    return [v if isinstance(v, NoteVerifier) else parse_verifier_key(v) for v in verifiers]


def verify_log(
    entries: Iterable[tuple[int, bytes]],
    checkpoints: Iterable[str],
    verifiers: list[str],
    origin: str,
    progress: Callable[[int], None] | None = None,
    trusted: Sequence[TrustedCheckpoint] = (),
    witnesses: Witnesses | None = None,
) -> VerifyReport:
    """Check that the entries, in order, hash to every signed checkpoint.

    entries: (position, entry bytes) in log order; positions must increase.
    checkpoints: signed notes in publication order.
    trusted: checkpoints the auditor already holds (files, its local state): the log must be at
      least as long as each and its first entries must hash to each one's root.
    witnesses: the witnesses and quorum the auditor requires: only a checkpoint cosigned by a
      quorum counts as the one the log is verified against (`witnessed_size`, `relied_on`).
    """
    problems = _Problems()
    keys = _parse_verifiers(verifiers)
    opened: dict[int, OpenedCheckpoint] = {}
    examined, valid = _open_all(checkpoints, keys, origin, problems, witnesses, opened)
    if not valid:
        problems.add("no valid signed checkpoint: nothing in the log could be verified")
    held = _TrustedTargets(trusted)
    relied: list[OpenedCheckpoint] = []  # verified checkpoints, to pick the one relied on

    targets = sorted(valid, key=lambda nc: (nc[1].size, nc[0]))
    max_size = max((cp.size for _, cp in valid), default=0)
    t = 0  # next target to compare
    verified = 0
    good_size, good_number = 0, 0  # largest size whose root matched, and its checkpoint
    window_first_pos: int | None = None  # position of entry good_size + 1
    uncovered_first_pos: int | None = None  # position of entry max_size + 1
    position_problems = 0

    def compare(number: int, cp: Checkpoint, root: bytes, last_pos: int | None) -> None:
        nonlocal verified, good_size, good_number
        if root == cp.root:
            verified += 1
            relied.append(opened[number])
            if cp.size >= good_size:
                good_size, good_number = cp.size, number
            return
        msg = (
            f"checkpoint {number} (size {cp.size}): root mismatch: the first {cp.size} entries do not hash "
            f"to the signed root; the log was altered, reordered or truncated at or before entry {cp.size}"
        )
        if good_size > 0 and good_size < cp.size:
            msg += (
                f"; entries 1..{good_size} match checkpoint {good_number}, so the first change is in entries "
                f"{good_size + 1}..{cp.size} (positions {window_first_pos}..{last_pos})"
            )
        problems.add(msg, number)

    cr = CompactRange()
    while t < len(targets) and targets[t][1].size == 0:
        compare(targets[t][0], targets[t][1], EMPTY_ROOT, None)
        t += 1
    held.check(0, EMPTY_ROOT, problems)

    prev_pos: int | None = None
    for pos, entry in entries:
        if prev_pos is not None and pos <= prev_pos:
            position_problems += 1
            if position_problems <= _MAX_POSITION_PROBLEMS:
                problems.add(
                    f"entry {cr.size + 1} (position {pos}): position is not after the previous entry's "
                    f"position {prev_pos}; entries are duplicated or out of order"
                )
        prev_pos = pos
        cr.append(leaf_hash(entry))
        n = cr.size
        if n == good_size + 1:
            window_first_pos = pos
        if n == max_size + 1:
            uncovered_first_pos = pos
        if t < len(targets) and targets[t][1].size == n:
            root = cr.root()
            while t < len(targets) and targets[t][1].size == n:
                compare(targets[t][0], targets[t][1], root, pos)
                t += 1
        if n in held.sizes:
            held.check(n, cr.root(), problems)
        if progress is not None and n % PROGRESS_EVERY == 0:
            progress(n)

    n = cr.size
    if progress is not None and n % PROGRESS_EVERY != 0:
        progress(n)
    if position_problems > _MAX_POSITION_PROBLEMS:
        problems.add(f"{position_problems - _MAX_POSITION_PROBLEMS} more entries with positions out of order")
    for number, cp in targets[t:]:
        problems.add(
            f"checkpoint {number} (size {cp.size}): the log has only {n} entries but this checkpoint signed "
            f"{cp.size}; entries {n + 1}..{cp.size} are missing (the log was truncated or entries deleted)",
            number,
        )

    held.missing(n, max_size, problems)

    notes: list[str] = []
    uncovered = max(0, n - max_size) if valid else n
    if valid and uncovered:
        notes.append(
            f"entries {max_size + 1}..{n} (positions {uncovered_first_pos}..{prev_pos}) are not yet covered "
            "by a signed checkpoint"
        )
    relied_on = _relied_on(relied, witnesses, problems, notes, good_size)
    found = problems.sorted()
    return VerifyReport(
        ok=not found,
        entries=n,
        checkpoints_checked=examined,
        problems=found,
        first_bad_checkpoint=problems.first_bad,
        checkpoints_verified=verified,
        verified_size=good_size,
        uncovered_entries=uncovered,
        notes=notes,
        witnessed_size=relied_on.checkpoint.size if relied_on else 0,
        relied_on=relied_on,
        trusted_checked=[t.source for t in trusted],
    )


class _TrustedTargets:
    """Checkpoints the auditor already trusts, held against the log's entries as they are hashed."""

    def __init__(self, trusted: Sequence[TrustedCheckpoint]) -> None:
        self.trusted = list(trusted)
        self.sizes = {t.checkpoint.size for t in self.trusted}

    def check(self, n: int, root: bytes, problems: _Problems) -> None:
        for t in self.trusted:
            if t.checkpoint.size == n and t.checkpoint.root != root:
                problems.add(
                    f"{t.source} (size {n}): the log's first {n} entries do not hash to its root: this log "
                    "is not the history that checkpoint signed (entries altered, or a different history "
                    "shown to someone else: a fork)"
                )

    def missing(self, n: int, max_signed: int, problems: _Problems) -> None:
        for t in self.trusted:
            if t.checkpoint.size > n:
                problems.add(
                    f"{t.source} (size {t.checkpoint.size}) is larger than this log: the log has only {n} "
                    f"entries (signed checkpoints up to size {max_signed}), so entries {n + 1}.."
                    f"{t.checkpoint.size} that it covers are missing: the log was truncated or rolled back"
                )


def _relied_on(verified: list[OpenedCheckpoint], witnesses: Witnesses | None, problems: _Problems,
               notes: list[str], good_size: int) -> OpenedCheckpoint | None:
    """The largest verified checkpoint meeting the witness quorum (the most cosigned at that size)."""
    quorum = witnesses.quorum if witnesses else 0
    eligible = [o for o in verified if witnesses is None or witnesses.met(o.cosigners)]
    if not eligible:
        if verified and quorum:
            best = max(verified, key=lambda o: (len(o.cosigners), o.checkpoint.size))
            seen = ", ".join(best.cosigners) or "none"
            problems.add(
                f"no checkpoint whose root matches the log is cosigned by a quorum of witnesses "
                f"({witnesses.describe()}); the most cosigned (size {best.checkpoint.size}) has "
                f"{len(best.cosigners)} (witnesses: {seen})"
            )
        return None
    chosen = max(eligible, key=lambda o: (o.checkpoint.size, len(o.cosigners)))
    if quorum and chosen.checkpoint.size < good_size:
        notes.append(
            f"checkpoints above size {chosen.checkpoint.size} (up to {good_size}) are not yet cosigned by a "
            f"quorum of witnesses ({witnesses.describe()}); entries {chosen.checkpoint.size + 1}..{good_size} "
            "match the log's own signature only"
        )
    return chosen


def check_checkpoint_chain(
    checkpoints: Sequence[str],
    proofs: Sequence[Sequence[bytes]],
    verifiers: list[str],
    origin: str,
) -> VerifyReport:
    """For auditors holding only checkpoints: proofs[k] is the RFC 9162 consistency
    proof from checkpoint k+1 to checkpoint k+2 (1-based, publication order)."""
    problems = _Problems()
    keys = _parse_verifiers(verifiers)
    notes = list(checkpoints)
    if len(proofs) != max(0, len(notes) - 1):
        problems.add(f"expected {max(0, len(notes) - 1)} consistency proofs (one per successive pair), got {len(proofs)}")
    examined, valid = _open_all(notes, keys, origin, problems)
    if not valid:
        problems.add("no valid signed checkpoint: nothing could be verified")
    by_number = dict(valid)
    for k in range(min(len(proofs), len(notes) - 1)):
        a, b = k + 1, k + 2
        if a not in by_number or b not in by_number:
            continue  # already reported as invalid; the proof cannot be checked
        old, new = by_number[a], by_number[b]
        if new.size < old.size:
            continue  # reported as a decrease by _open_all
        if not verify_consistency(old.size, new.size, old.root, new.root, proofs[k]):
            problems.add(
                f"checkpoints {a} -> {b} (sizes {old.size} -> {new.size}): consistency proof does not verify; "
                f"checkpoint {b} is not shown to be an append-only extension of checkpoint {a}",
                b,
            )
    found = problems.sorted()
    first_bad = problems.first_bad
    # Only the unbroken prefix of the chain before the first bad checkpoint counts as verified.
    good = [n for n, _ in valid if first_bad is None or n < first_bad]
    return VerifyReport(
        ok=not found,
        entries=0,
        checkpoints_checked=examined,
        problems=found,
        first_bad_checkpoint=first_bad,
        checkpoints_verified=len(good),
        verified_size=max((by_number[n].size for n in good), default=0),
    )


def find_divergence(trusted: Iterable[bytes], current: Iterable[bytes]) -> int | None:
    """0-based index of the first leaf hash where `current` departs from a trusted
    earlier copy; None if `current` starts with all of `trusted` (append-only).
    If `current` is shorter, the index of its first missing entry is returned."""
    it = iter(current)
    for index, expected in enumerate(trusted):
        got = next(it, None)
        if got is None or got != expected:
            return index
    return None
