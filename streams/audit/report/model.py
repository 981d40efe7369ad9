"""What a report holds: its filters, its rows, the deadline status of each exchange, and where it
comes from (which log, verified against which signed checkpoint, made when, by which MASB version).

Formats: docs/audit.md, "Reports". Rows are plain dicts so that the JSON and CSV formats are the
rows themselves; times in rows are ISO 8601 UTC strings ending in "Z".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from streams.errors import InvalidInput

FORMAT = "masb-audit-report"
SHREDDED = "shredded"
SEALED = "sealed"

# Every status a delivery's deadline can have, in the order charts and tables show them.
# "escalated": no RECEIVED receipt and an ESCALATION entry names the delivery (`escalated_at`),
# written by the deadline agent (docs/deadlines.md).
RECEIVED_ON_TIME = "received on time"
RECEIVED_LATE = "received late"
OVERDUE = "overdue"
ESCALATED = "escalated"
AWAITING_RECEIPT = "awaiting receipt"
NO_DEADLINE = "no deadline"
DEADLINE_STATUSES = (RECEIVED_ON_TIME, RECEIVED_LATE, OVERDUE, ESCALATED, AWAITING_RECEIPT, NO_DEADLINE)


class ReportError(InvalidInput, ValueError):
    """A report that cannot be made as asked (bad filter, missing key store)."""


@dataclass(frozen=True)
class Filters:
    case_ref: str | None = None
    agency: str | None = None
    event_type: str | None = None
    legal_basis: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive

    def describe(self) -> dict[str, str]:
        out = {}
        for name in ("case_ref", "agency", "event_type", "legal_basis", "since", "until"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.isoformat() if isinstance(value, datetime) else value
        return out


def parse_time(text: str, what: str) -> datetime:
    """ISO 8601 date or date-time; without a zone it is UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ReportError(f"{what} {text}: not an ISO 8601 date or date-time (such as 2026-03-01 or "
                          "2026-03-01T09:00:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def iso(value: datetime | None) -> str:
    """ISO 8601 in UTC with a "Z" ("" for None): the one time format of every report."""
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value else ""


def parse_iso(text: str) -> datetime:
    """A report time (or a receipt's) back to an aware datetime; no zone means UTC."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def deadline_status(row: dict[str, Any], judged_at: datetime) -> str:
    """Was the delivery received (the agency's RECEIVED receipt) by its agreed deliver_by time?

    row: a delivery row (`deliver_by`, `received_at`, optionally `escalated_at`, ISO 8601 or "").
    A receipt decides; without one, an escalation recorded in the log; without that, the clock.
    """
    if not row["deliver_by"]:
        return NO_DEADLINE
    due = parse_iso(row["deliver_by"])
    if row["received_at"]:
        return RECEIVED_ON_TIME if parse_iso(row["received_at"]) <= due else RECEIVED_LATE
    if row.get("escalated_at"):
        return ESCALATED
    return OVERDUE if judged_at > due else AWAITING_RECEIPT


def deadlines_by(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, int]]:
    """{group: {status: count}} over delivery rows grouped by row[key]; every status present."""
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        counts = out.get(row[key])
        if counts is None:
            counts = out[row[key]] = dict.fromkeys(DEADLINE_STATUSES, 0)
        counts[row["deadline"]] += 1
    return dict(sorted(out.items()))


def masb_version() -> str:
    """The installed MASB package version (importlib.metadata), or "unknown" from a bare checkout."""
    try:
        return version("masb")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class CheckpointInfo:
    """The signed checkpoint a report's log was verified against (docs/audit.md, "Checkpoint")."""

    number: int  # 1-based, in publication order
    origin: str
    size: int
    root: str  # base64 of the 32-byte root hash, as in the signed note
    # Names of the witnesses whose cosignatures on this checkpoint verified. Witnessing is not part
    # of MASB yet: callers pass the names once it is, and every format shows them as given.
    cosigners: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"number": self.number, "origin": self.origin, "size": self.size, "root": self.root,
                "cosigners": list(self.cosigners)}


@dataclass(frozen=True)
class LogVerification:
    """The result of replaying the log behind a report through verify_log."""

    intact: bool
    entries: int
    verified_size: int  # largest signed checkpoint size whose root the entries reproduce
    uncovered_entries: int  # entries after the largest signed checkpoint
    problems: tuple[str, ...]
    checkpoint: CheckpointInfo | None  # the checkpoint of verified_size; None if nothing verified
    checked_at: datetime

    def describe(self) -> str:
        """One line, the report's `verification` value (unchanged since version 1 of the format)."""
        if self.intact:
            return (f"intact: {self.entries} entries, {self.verified_size} covered by signed checkpoints "
                    f"at {iso(self.checked_at)}")
        return (f"NOT intact ({len(self.problems)} problems; run `masb audit verify`): this report may not "
                "reflect the log as signed")

    def as_dict(self) -> dict[str, Any]:
        return {"intact": self.intact, "entries": self.entries, "verified_size": self.verified_size,
                "uncovered_entries": self.uncovered_entries, "problems": list(self.problems),
                "checked_at": iso(self.checked_at),
                "checkpoint": self.checkpoint.as_dict() if self.checkpoint else None}


@dataclass
class Report:
    filters: Filters
    entries_read: int = 0
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    policy_changes: list[dict[str, Any]] = field(default_factory=list)
    duplicates_suppressed: int = 0
    redeliveries: int = 0
    replays: int = 0  # refusals/duplicates recorded again for the same input record (at-least-once)
    notes: list[str] = field(default_factory=list)
    verification: str | None = None  # one line; set with set_verification()
    log: LogVerification | None = None
    generated_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    deadlines_judged_at: datetime | None = None
    first_recorded_at: datetime | None = None  # of the first and last entries read, whatever the filters
    last_recorded_at: datetime | None = None

    def set_verification(self, log: LogVerification) -> None:
        self.log = log
        self.verification = log.describe()

    def period(self) -> tuple[datetime | None, datetime | None]:
        """The time the report covers: the filters' since/until, else the log's first/last entry."""
        return (self.filters.since or self.first_recorded_at, self.filters.until or self.last_recorded_at)

    def legal_bases(self) -> dict[str, str]:
        """{code: human name} of every legal basis in the report's exchanges."""
        return {row["legal_basis"]: row["legal_basis_label"]
                for row in sorted(self.deliveries, key=lambda r: r["legal_basis"] or "") if row["legal_basis"]}

    def summary(self) -> dict[str, Any]:
        by_agency: dict[str, int] = {}
        for row in self.deliveries:
            by_agency[row["agency"]] = by_agency.get(row["agency"], 0) + 1
        by_reason: dict[str, int] = {}
        for row in self.refusals:
            by_reason[row["reason_code"]] = by_reason.get(row["reason_code"], 0) + 1
        return {"entries_read": self.entries_read, "exchanges": len(self.deliveries),
                "redeliveries_not_counted": self.redeliveries, "replayed_inputs_not_counted": self.replays,
                "refusals": len(self.refusals),
                "policy_changes": len(self.policy_changes), "duplicates_suppressed": self.duplicates_suppressed,
                "exchanges_by_agency": dict(sorted(by_agency.items())),
                "deadlines": {status: sum(1 for r in self.deliveries if r.get("deadline") == status)
                              for status in DEADLINE_STATUSES},
                "deadlines_by_agency": deadlines_by(self.deliveries, "agency"),
                # added with the deadline agent (docs/deadlines.md): deliveries escalated, by highest
                # level reached; deliveries expired without their receipt; refusals redriven
                "escalations_by_level": {str(level): sum(1 for r in self.deliveries
                                                         if r.get("escalation_level") == level) for level in (1, 2)},
                "non_deliveries": sum(1 for r in self.deliveries if r.get("non_delivery_at")),
                "refusals_redriven": sum(1 for r in self.refusals if r.get("redriven_at")),
                "deadlines_by_agreement": deadlines_by(self.deliveries, "agreement_id"),
                "refusals_by_reason": dict(sorted(by_reason.items()))}
