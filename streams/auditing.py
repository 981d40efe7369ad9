"""The auditor's client: replay the exchange log and its checkpoints from Kafka and verify them.

Verification itself is pure (streams/audit/verify.py); this module only reads Kafka and knows
which keys may sign checkpoints (the router signing keys the policy trusts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import nacl.signing

from streams.audit.checkpoint import verifier_key_string
from streams.audit.checkpoint_record import CheckpointRecordError, note_of
from streams.audit.trust import Witnesses
from streams.kafka import read_topic
from streams.kafka_security import KafkaSecurity
from streams.policy import Policy
from streams.topics import Topics

DEFAULT_ORIGIN = "masb.local/exchange-log"


def checkpoint_verifiers(policy: Policy, origin: str) -> list[str]:
    """Verifier keys (C2SP note format) for every router signing key that is not revoked."""
    return [
        verifier_key_string(origin, nacl.signing.VerifyKey(key.public_key))
        for key in policy.router.signing_keys
        if key.status != "revoked"
    ]


def witness_quorum(policy: Policy) -> Witnesses:
    """The witnesses the policy names (id, cosignature/v1 key) and the quorum it requires."""
    return Witnesses.from_keys(policy.witnesses.quorum, [(m.id, m.key) for m in policy.witnesses.members])


@dataclass
class LogSnapshot:
    entries: list[tuple[int, bytes]]
    checkpoints: list[str]
    malformed_checkpoint_offsets: list[int]


async def read_log(bootstrap: str, topics: Topics, progress: Callable[[int], None] | None = None, *,
                   security: KafkaSecurity | None = None) -> LogSnapshot:
    """Checkpoints first, then entries: every checkpoint read then covers entries that exist.
    ``security``: how to connect (None: the environment's settings, docs/security.md)."""
    checkpoints, malformed = [], []
    async for record in read_topic(bootstrap, topics.checkpoints, security=security, committed_only=True):
        try:
            checkpoints.append(note_of(record.value or b""))
        except CheckpointRecordError:
            malformed.append(record.offset)
    entries = []
    async for record in read_topic(bootstrap, topics.audit, security=security):
        entries.append((record.offset, record.value or b""))
        if progress is not None:
            progress(len(entries))
    return LogSnapshot(entries, checkpoints, malformed)
