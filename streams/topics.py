"""Topic names and their settings: one place, so publishers, partners, auditors and workers agree.

Every name takes an optional prefix (``MASB_TOPIC_PREFIX``) so several deployments, or several
tests, can share one Kafka cluster without seeing each other's records.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_AGENCY_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
# Kafka's legal topic characters; the longest name MASB derives adds about 60 characters to the
# prefix, and Kafka allows 249.
_PREFIX = re.compile(r"^[A-Za-z0-9._-]{0,180}$")

# Audit and dead-letter topics keep records forever: they are evidence. Case topics keep them
# for the agreed delivery window only; partners are expected to have consumed within it.
FOREVER = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}
# A state topic keeps the latest record per key (tombstones remove it): a snapshot, not a history.
# Segments roll hourly and are cleaned once a tenth is superseded, so a new owner reading the topic
# reads roughly the live records, not months of history waiting in an open segment.
COMPACTED = {"cleanup.policy": "compact", "segment.ms": "3600000", "min.cleanable.dirty.ratio": "0.1",
             "delete.retention.ms": "86400000"}

# The worker's faust tables (agents/): each has a changelog topic <worker app id>-<table>-changelog
# that MASB provisions up front, with the ACLs the worker needs (streams/acl.py), so the worker
# needs no CREATE right. A new table must be listed here.
WORKER_TABLES = ("seen-events",)


@dataclass(frozen=True)
class Topics:
    prefix: str = ""

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.prefix):
            from streams.errors import InvalidInput, shown

            raise InvalidInput(f"topic prefix {shown(self.prefix)!r} (--topic-prefix or MASB_TOPIC_PREFIX): Kafka topic names "
                               "allow only ASCII letters, digits, '.', '_' and '-' (at most 180 here)")

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

    @property
    def worker_app_id(self) -> str:
        """The worker's faust application id: its consumer group and the prefix of its own topics."""
        return f"{self.prefix}masb-router"

    @property
    def checkpointer_lease(self) -> str:
        """The consumer group whose one member signs checkpoints, and its producer's transactional id."""
        return f"{self.worker_app_id}-checkpointer"

    def changelog(self, table: str) -> str:
        """faust's changelog topic of one of the worker's tables."""
        return f"{self.worker_app_id}-{table}-changelog"

    @property
    def assignor_leader(self) -> str:
        """faust's partition assignor topic (its leader election)."""
        return f"{self.worker_app_id}-__assignor-__leader"

    def partner_group(self, agency_id: str) -> str:
        """The consumer group an agency's own systems may use on its feed (same name as the feed)."""
        return self.partner(agency_id)

    @property
    def deadline_group(self) -> str:
        """The consumer group whose one member runs the deadline agent (docs/deadlines.md)."""
        return f"{self.prefix}masb-deadlines"

    @property
    def deadline_state(self) -> str:
        """The deadline agent's state (compacted): one record per open delivery (docs/deadlines.md)."""
        return f"{self.prefix}deadlines.state"

    @property
    def redrive_requests(self) -> str:
        """Operators' requests to send dead letters back through the router (docs/deadlines.md)."""
        return f"{self.prefix}case-events.dlq.redrive"

    def unit(self, unit_id: str) -> str:
        """One notice feed per originating unit: what happened to the events it published."""
        if not _AGENCY_ID.match(unit_id):
            raise ValueError("unit id must be 2-63 lowercase letters, digits or '-'")
        return f"{self.prefix}unit.{unit_id}"

    def partner(self, agency_id: str) -> str:
        """One feed per agency: only envelopes addressed to it."""
        if not _AGENCY_ID.match(agency_id):
            raise ValueError("agency id must be 2-63 lowercase letters, digits or '-'")
        return f"{self.prefix}partner.{agency_id}"
