"""Topic names and their settings: one place, so publishers, partners, auditors and workers agree.

Every name takes an optional prefix (``MASB_TOPIC_PREFIX``) so several deployments, or several
tests, can share one Kafka cluster without seeing each other's records.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_AGENCY_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")

# Audit and dead-letter topics keep records forever: they are evidence. Case topics keep them
# for the agreed delivery window only; partners are expected to have consumed within it.
FOREVER = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}


@dataclass(frozen=True)
class Topics:
    prefix: str = ""

    @classmethod
    def from_env(cls) -> "Topics":
        return cls(os.environ.get("MASB_TOPIC_PREFIX", ""))

    @property
    def case_events(self) -> str:
        """Unit publications (sealed to the router): key = pseudonymous case ref."""
        return f"{self.prefix}case-events"

    @property
    def dead_letter(self) -> str:
        """Refused input with a reason code; the original bytes are kept (still sealed)."""
        return f"{self.prefix}case-events.dlq"

    @property
    def audit(self) -> str:
        """The exchange log: one partition, so that its order is the Merkle tree's order."""
        return f"{self.prefix}audit.exchange"

    @property
    def checkpoints(self) -> str:
        """Signed checkpoints (C2SP signed notes) of the exchange log."""
        return f"{self.prefix}audit.checkpoints"

    @property
    def case_keys(self) -> str:
        """The shared case-key store: wrapped per-case audit keys, compacted, co-partitioned with
        case-events (docs/audit.md, "Case keys")."""
        return f"{self.prefix}audit.case-keys"

    @property
    def case_key_shreds(self) -> str:
        """Requests to destroy a case's key, carried out by the worker that owns the case."""
        return f"{self.prefix}audit.case-key-shreds"

    @property
    def receipts(self) -> str:
        return f"{self.prefix}receipts"

    def partner(self, agency_id: str) -> str:
        """One feed per agency: only envelopes addressed to it."""
        if not _AGENCY_ID.match(agency_id):
            raise ValueError("agency id must be 2-63 lowercase letters, digits or '-'")
        return f"{self.prefix}partner.{agency_id}"
