"""The log's side of the witness protocol: prove each new checkpoint to every witness from the size
that witness last cosigned, and collect the cosignatures that verify under the policy's keys.

ProofWindow keeps memory bounded: the compact range at the smallest size a witness is known to be
at, plus the leaf hashes since then (at most `max_leaves`); a witness further behind is proved to
through a slower path the caller supplies (the checkpointer streams the log from Kafka).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Mapping, MutableMapping, Sequence

from aiohttp import ClientSession

from streams.audit.checkpoint import Checkpoint, CheckpointError, split_note
from streams.audit.cosignature import CosignatureVerifier, parse_cosigner_verifier_key
from streams.audit.merkle import CompactRange, ConsistencyProofBuilder

from .http import submit_checkpoint

log = logging.getLogger("masb.checkpointer")

DEFAULT_MAX_LEAVES = 1 << 18  # 8 MiB of leaf hashes


class ProofWindow:
    """The tree's compact range at `base_size` and every leaf hash after it."""

    def __init__(self, base: CompactRange, max_leaves: int = DEFAULT_MAX_LEAVES) -> None:
        self.base = base.copy()
        self.leaves: list[bytes] = []
        self.max_leaves = max_leaves

    @property
    def base_size(self) -> int:
        return self.base.size

    @property
    def size(self) -> int:
        return self.base.size + len(self.leaves)

    def append(self, leaf: bytes) -> None:
        self.leaves.append(leaf)

    def proof(self, old_size: int, new_size: int) -> list[bytes] | None:
        """PROOF(old_size, D[new_size]), or None when old_size is before the window."""
        if not self.base_size <= old_size <= new_size <= self.size:
            return None
        old = self.base.copy()
        for leaf in self.leaves[: old_size - self.base_size]:
            old.append(leaf)
        builder = ConsistencyProofBuilder(old, new_size)
        builder.add_all(self.leaves[old_size - self.base_size : new_size - self.base_size])
        return builder.proof()

    def advance(self, to_size: int) -> None:
        """Forget the leaves before `to_size` (never past the window's end; never back), and keep at
        most max_leaves: a witness further behind then needs the slow path."""
        to_size = max(self.base_size, min(to_size, self.size), self.size - self.max_leaves)
        drop = to_size - self.base_size
        for leaf in self.leaves[:drop]:
            self.base.append(leaf)
        del self.leaves[:drop]


@dataclass(frozen=True)
class WitnessTarget:
    id: str
    url: str
    verifier: CosignatureVerifier

    @classmethod
    def from_member(cls, member) -> "WitnessTarget":
        """From a streams.policy WitnessMember (id, url, key)."""
        return cls(member.id, member.url, parse_cosigner_verifier_key(member.key))


ProofSource = Callable[[int, int], Awaitable[list[bytes] | None]]


def cosignature_lines(text: str, body: str, verifier: CosignatureVerifier) -> str:
    """The lines of a witness's answer that are valid cosignatures of `text` by `verifier`."""
    try:
        _, signatures = split_note(text + "\n" + body)
    except CheckpointError:
        return ""
    message = text.encode("utf-8")
    return "".join(line for name, raw, line in signatures
                   if (name, raw[:4]) == (verifier.name, verifier.key_id) and verifier.verify(message, raw[4:]))


async def request_cosignature(session: ClientSession, target: WitnessTarget, note: str, checkpoint: Checkpoint,
                              known_sizes: MutableMapping[str, int], default_old: int, proofs: ProofSource,
                              timeout: float) -> str:
    """Submit `note` to one witness from the size it last cosigned (learning it from a 409 answer);
    return its verified cosignature line(s), or "" (the reason is logged by witness id and status)."""
    text = note[: note.rindex("\n\n") + 1]
    old = known_sizes.get(target.id, default_old)
    for _attempt in range(2):
        if old > checkpoint.size:
            log.error("witness %s has cosigned size %d, larger than this checkpoint (%d): the log lost "
                      "checkpoints it had published", target.id, old, checkpoint.size)
            return ""
        proof = [] if old in (0, checkpoint.size) else await proofs(old, checkpoint.size)
        if proof is None:
            log.warning("witness %s: no consistency proof from size %d available", target.id, old)
            return ""
        status, body = await submit_checkpoint(session, target.url, old, proof, note, timeout)
        if status == 409 and body.strip().isdigit():
            old = known_sizes[target.id] = int(body.strip())
            continue
        if status == 200:
            lines = cosignature_lines(text, body, target.verifier)
            if lines:
                known_sizes[target.id] = checkpoint.size
            else:
                log.warning("witness %s answered without a valid cosignature for its policy key", target.id)
            return lines
        log.warning("witness %s refused or failed checkpoint %d (HTTP %s)", target.id, checkpoint.size,
                    status or "unreachable")
        return ""
    return ""


async def collect_cosignatures(session: ClientSession, targets: Sequence[WitnessTarget], note: str,
                               checkpoint: Checkpoint, known_sizes: MutableMapping[str, int], default_old: int,
                               proofs: ProofSource, timeout: float = 10.0) -> Mapping[str, str]:
    """Ask every witness at once; {witness id: cosignature line(s)} of those that cosigned."""
    answers = await asyncio.gather(*(request_cosignature(session, t, note, checkpoint, known_sizes, default_old,
                                                         proofs, timeout) for t in targets))
    return {t.id: lines for t, lines in zip(targets, answers) if lines}
