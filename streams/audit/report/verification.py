"""The head of every report: does the log verify, and against which signed checkpoint?"""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from typing import Sequence

from ..checkpoint import CheckpointError, open_checkpoint
from ..verify import verify_log
from .model import CheckpointInfo, LogVerification


def verify_for_report(entries: Sequence[tuple[int, bytes]], checkpoints: Sequence[str], verifiers: list[str],
                      origin: str, cosigners: Sequence[str] = (), now: datetime | None = None) -> LogVerification:
    """Replay (position, entry bytes) through verify_log and name the checkpoint it verified against:
    the first valid signed checkpoint (in publication order) of the verified size.

    cosigners: names of the witnesses whose cosignatures on that checkpoint verified (none until
    MASB has witnesses); shown as given. Raises CheckpointError for a malformed verifier key.
    """
    check = verify_log(entries, checkpoints, verifiers, origin)
    checkpoint = None
    if check.verified_size:
        for number, note in enumerate(checkpoints, start=1):
            try:
                cp = open_checkpoint(note, verifiers, origin=origin)
            except CheckpointError:
                continue  # verify_log reported it
            if cp.size == check.verified_size:
                checkpoint = CheckpointInfo(number, cp.origin, cp.size, base64.b64encode(cp.root).decode("ascii"),
                                            tuple(cosigners))
                break
    return LogVerification(intact=check.ok, entries=check.entries, verified_size=check.verified_size,
                           uncovered_entries=check.uncovered_entries, problems=tuple(check.problems),
                           checkpoint=checkpoint, checked_at=now or datetime.now(timezone.utc))
