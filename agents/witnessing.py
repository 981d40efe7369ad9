"""The checkpointer's witnessing (docs/audit.md, "Witnesses"): before a checkpoint is published,
each witness the policy names gets it with a consistency proof from the size that witness last
cosigned, and the cosignatures that verify are appended to the note. A checkpoint short of the
quorum is offered again every checkpoint interval while no newer one supersedes it.

Kept apart from the checkpointer's loop so that loop can be supervised (one active checkpointer
across workers) without touching this.
"""

from __future__ import annotations

import logging
import time

from aiohttp import ClientSession

from agents import metrics
from streams.audit.checkpoint import Checkpoint
from streams.audit.merkle import CompactRange, ConsistencyProofBuilder, leaf_hash
from streams.kafka import read_topic
from streams.witness.cosigning import ProofWindow, WitnessTarget, collect_cosignatures

log = logging.getLogger("masb.checkpointer")


async def proof_from_log(bootstrap: str, topic: str, old_size: int, new_size: int) -> list[bytes] | None:
    """PROOF(old_size, D[new_size]) streamed from the audit partition (leaf i is offset i): for a
    witness behind the in-memory window. O(new_size) reading, O(log n) memory."""
    old = CompactRange()
    builder: ConsistencyProofBuilder | None = None
    index = 0
    async for record in read_topic(bootstrap, topic):
        if record.partition != 0 or record.offset != index:
            return None  # not the contiguous log the checkpoints were signed over
        h = leaf_hash(record.value or b"")
        if index < old_size:
            old.append(h)
        else:
            builder = builder or ConsistencyProofBuilder(old, new_size)
            builder.add(h)
        index += 1
        if index == new_size:
            break
    return builder.proof() if builder is not None and index == new_size else None


class Witnessing:
    """One per checkpointer task: HTTP session, proof window, what each witness last cosigned."""

    def __init__(self, runtime, tree: CompactRange) -> None:
        self.runtime = runtime
        self.window = ProofWindow(tree)
        self.known_sizes: dict[str, int] = {}
        self._session: ClientSession | None = None
        self._pending: tuple[str, Checkpoint, dict[str, str], int] | None = None  # short of the quorum
        self._last_attempt = 0.0

    def targets(self) -> list[WitnessTarget]:
        return [WitnessTarget.from_member(m) for m in self.runtime.policy.witnesses.members]

    def append(self, leaf: bytes) -> None:
        self.window.append(leaf)
        if not self.runtime.policy.witnesses.members:
            self.window.advance(self.window.size)  # nobody to prove to: keep no leaves

    async def cosign(self, note: str, checkpoint: Checkpoint, previous_size: int) -> str:
        """`note` (signed by the log) with the cosignatures of the witnesses that accepted it."""
        self._pending = None
        targets = self.targets()
        if not targets:
            return note
        cosigs = await self._collect(targets, note, checkpoint, previous_size)
        self.window.advance(min(self.known_sizes.get(t.id, previous_size) for t in targets))
        if len(cosigs) < self.runtime.policy.witnesses.quorum:
            log.warning("checkpoint %d cosigned by %d witnesses, quorum %d: offered again every interval",
                        checkpoint.size, len(cosigs), self.runtime.policy.witnesses.quorum)
            self._pending = (note, checkpoint, cosigs, previous_size)
        return self._with(note, targets, cosigs)

    async def retry(self, interval: float) -> str | None:
        """If the last checkpoint is short of the quorum and `interval` passed: ask the witnesses that
        did not cosign it again; the note with the new cosignatures, or None if nothing changed."""
        if self._pending is None or time.monotonic() - self._last_attempt < interval:
            return None
        note, checkpoint, cosigs, previous_size = self._pending
        targets = self.targets()
        missing = [t for t in targets if t.id not in cosigs]
        more = await self._collect(missing, note, checkpoint, previous_size)
        if not more:
            return None
        cosigs.update(more)
        if len(cosigs) >= self.runtime.policy.witnesses.quorum:
            self._pending = None
        return self._with(note, targets, cosigs)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _collect(self, targets, note, checkpoint, previous_size) -> dict[str, str]:
        self._last_attempt = time.monotonic()
        if self._session is None:
            self._session = ClientSession()
        cosigs = await collect_cosignatures(self._session, targets, note, checkpoint, self.known_sizes,
                                            previous_size, self._proof)
        return dict(cosigs)

    async def _proof(self, old_size: int, new_size: int) -> list[bytes] | None:
        proof = self.window.proof(old_size, new_size)
        if proof is None:
            settings = self.runtime.settings
            proof = await proof_from_log(settings.bootstrap, self.runtime.topics.audit, old_size, new_size)
        return proof

    @staticmethod
    def _with(note: str, targets: list[WitnessTarget], cosigs: dict[str, str]) -> str:
        metrics.CHECKPOINT_COSIGNATURES.set(len(cosigs))
        return note + "".join(cosigs[t.id] for t in targets if t.id in cosigs)
