"""Deadlines that act, as pure functions over the exchange log (no Kafka): docs/deadlines.md.

A `DeadlineBook` holds one `Tracking` per delivery (event id, agency id) still open. It is a fold of
the exchange log: DELIVERY opens a tracking, RECEIPT records the agency's receipts, and the book's
own actions, written back to the log as ESCALATION, ESCALATION_CLOSED and NON_DELIVERY entries,
record that they happened. `due_actions(now)` says what must happen at a time; the actions are
not applied to the book directly, only by folding their entries when they come back from the log,
so the book is always what the log says and an action is never taken twice.

    book.apply(position, entry, policy, now) -> Folded      state changes and the notices they cause
    book.due_actions(now)                    -> [Action]    escalate, close, expire (entries + notices)
    book.due_drops(now)                      -> [key]       trackings that end without an entry
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from typing import Any

from streams.audit.entry import make_entry
from streams.policy import Policy
from streams.policy.durations import check_fixed_duration
from streams.policy.model import ACKNOWLEDGED, RECEIVED

ESCALATION = "ESCALATION"
ESCALATION_CLOSED = "ESCALATION_CLOSED"
NON_DELIVERY = "NON_DELIVERY"
# Notice kinds (schemas/notice.avsc): one per thing that happens to a delivery.
DELIVERED, ESCALATED = "DELIVERED", "ESCALATED"
NOTICE_KINDS = (DELIVERED, RECEIVED, ACKNOWLEDGED, ESCALATED, ESCALATION_CLOSED, NON_DELIVERY)
_NOTICE_KIND_OF_ACTION = {ESCALATION: ESCALATED, ESCALATION_CLOSED: ESCALATION_CLOSED, NON_DELIVERY: NON_DELIVERY}
STATE_FORMAT = "masb-deadline-state-v1"


def deterministic_id(*parts: object) -> str:
    """First 32 hex of SHA-256 of the parts joined by "|": the same action always gets the same id."""
    return hashlib.sha256("|".join(str(p) for p in parts).encode("utf-8")).hexdigest()[:32]


def action_id(kind: str, event_id: str, agency_id: str, level: int) -> str:
    return deterministic_id("MASB-DEADLINE", kind, event_id, agency_id, level)


def notice_id(kind: str, event_id: str, agency_id: str, level: int) -> str:
    return deterministic_id("MASB-NOTICE", kind, event_id, agency_id, level)


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if moment else None


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def human_duration(seconds: float) -> str:
    """e.g. 22201 -> "6 h 10 min 1 s"; for reasons and CLI output (never personal data)."""
    seconds = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size} {unit}")
            seconds %= size
    if seconds or not parts:
        parts.append(f"{seconds} s")
    return " ".join(parts)


@dataclass
class Tracking:
    """One delivery (or, until its DELIVERY entry is read, a receipt for it) and what happened since."""

    event_id: str
    agency_id: str
    exchange_id: str | None = None       # of the DELIVERY entry; None while only a receipt is known
    unit_id: str | None = None
    event_type: str | None = None
    area: str | None = None
    agreement_id: str | None = None
    agreement_version: int | None = None
    legal_basis: str | None = None
    envelope_sha256: str | None = None
    recipient_key_id: str | None = None
    delivery_entry: int | None = None    # offset of the DELIVERY entry in the audit partition
    delivered_at: datetime | None = None
    deliver_by: datetime | None = None
    required_receipt: str = RECEIVED
    second_at: datetime | None = None    # level 2 threshold, if the agreement names one
    expires_at: datetime | None = None
    received_at: datetime | None = None  # when the router recorded the first RECEIVED/ACKNOWLEDGED
    acknowledged_at: datetime | None = None
    escalations: dict[int, datetime] = field(default_factory=dict)  # level -> when recorded
    closed_at: datetime | None = None
    ended_at: datetime | None = None     # NON_DELIVERY recorded
    orphan_since: datetime | None = None  # a receipt read before its DELIVERY entry

    @property
    def key(self) -> str:
        return tracking_key(self.event_id, self.agency_id)

    @property
    def delivered(self) -> bool:
        return self.exchange_id is not None

    @property
    def satisfied(self) -> bool:
        """The receipt the agreement asks for has come."""
        return (self.acknowledged_at if self.required_receipt == ACKNOWLEDGED else self.received_at) is not None

    @property
    def satisfied_at(self) -> datetime | None:
        return self.acknowledged_at if self.required_receipt == ACKNOWLEDGED else self.received_at

    @property
    def level(self) -> int:
        return max(self.escalations, default=0)

    @property
    def finished(self) -> bool:
        """Nothing more can happen to it: acknowledged (every receipt in) and any escalation closed,
        or expired (NON_DELIVERY)."""
        if not self.delivered:
            return False
        return self.ended_at is not None or (
            self.acknowledged_at is not None and (not self.escalations or self.closed_at is not None))

    def overdue(self, now: datetime) -> bool:
        return self.delivered and not self.satisfied and self.deliver_by is not None and now >= self.deliver_by

    # -- the state record (docs/deadlines.md, "State") ---------------------------------------------
    def to_json(self) -> bytes:
        doc = {}
        for name in _TRACKING_FIELDS:  # as dataclasses.asdict, without its deep copies
            value = getattr(self, name)
            doc[name] = _iso(value) if isinstance(value, datetime) else value
        doc["escalations"] = {str(level): _iso(at) for level, at in sorted(self.escalations.items())}
        doc["format"] = STATE_FORMAT
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> "Tracking":
        doc = json.loads(data)
        if doc.pop("format", None) != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} record")
        for name in ("delivered_at", "deliver_by", "second_at", "expires_at", "received_at", "acknowledged_at",
                     "closed_at", "ended_at", "orphan_since"):
            doc[name] = _time(doc.get(name))
        doc["escalations"] = {int(level): _time(at) for level, at in doc.get("escalations", {}).items()}
        return cls(**doc)


_TRACKING_FIELDS = tuple(f.name for f in fields(Tracking))


def tracking_key(event_id: str, agency_id: str) -> str:
    return f"{event_id}/{agency_id}"


@dataclass(frozen=True)
class NoticeRequest:
    """A notice the unit that published the event must get (sealed by the caller, who has the keys)."""

    kind: str
    tracking: Tracking
    at: datetime
    level: int = 0

    @property
    def notice_id(self) -> str:
        return notice_id(self.kind, self.tracking.event_id, self.tracking.agency_id, self.level)

    def content(self) -> dict[str, Any]:
        """The NoticeContent record (schemas/notice.avsc) without its version."""
        t = self.tracking
        reference = t.satisfied_at if self.kind == ESCALATION_CLOSED else self.at
        overdue = None
        if t.deliver_by is not None and reference is not None and reference > t.deliver_by:
            overdue = int((reference - t.deliver_by).total_seconds())
        return {"notice_id": self.notice_id, "kind": self.kind, "event_id": t.event_id,
                "event_type": t.event_type or "", "agency_id": t.agency_id, "agreement_id": t.agreement_id or "",
                "agreement_version": t.agreement_version or 0, "required_receipt": t.required_receipt,
                "level": self.level, "at": self.at, "delivered_at": t.delivered_at, "deliver_by": t.deliver_by,
                "overdue_seconds": overdue, "received_at": t.received_at, "acknowledged_at": t.acknowledged_at,
                "delivery_entry": t.delivery_entry if t.delivery_entry is not None else -1}


@dataclass(frozen=True)
class Action:
    """Something the deadline agent must write to the log (and tell the unit) now."""

    kind: str            # ESCALATION, ESCALATION_CLOSED, NON_DELIVERY
    tracking: Tracking
    level: int
    at: datetime

    @property
    def action_id(self) -> str:
        return action_id(self.kind, self.tracking.event_id, self.tracking.agency_id, self.level)

    @property
    def reason_code(self) -> str:
        required = self.tracking.required_receipt
        return f"{required}_LATE" if self.kind == ESCALATION_CLOSED else f"NOT_{required}"

    def notice(self) -> NoticeRequest:
        return NoticeRequest(_NOTICE_KIND_OF_ACTION[self.kind], self.tracking, self.at, self.level)

    def reason(self) -> str:
        t = self.tracking
        due = t.second_at if self.kind == ESCALATION and self.level == 2 else t.deliver_by
        if self.kind == ESCALATION:
            what = "deadline" if self.level == 1 else "second threshold"
            return (f"no {t.required_receipt} receipt from {t.agency_id} {human_duration((self.at - due).total_seconds())} "
                    f"after the {what} {_iso(due)} (level {self.level})")
        if self.kind == ESCALATION_CLOSED:
            late = (t.satisfied_at - t.deliver_by).total_seconds() if t.deliver_by and t.satisfied_at else 0
            return (f"{t.required_receipt} receipt from {t.agency_id} recorded at {_iso(t.satisfied_at)}, "
                    f"{human_duration(late)} after the deadline; escalation level {self.level} closed")
        return (f"no {t.required_receipt} receipt from {t.agency_id} by {_iso(t.expires_at)}: not delivered "
                f"(expired), tracking ended")

    def entry(self, policy: Policy, audit_topic: str, notice_sha256: str | None) -> dict[str, Any]:
        """The audit entry (format 0x02) recording this action."""
        t = self.tracking
        return make_entry(
            self.kind, recorded_at=self.at, exchange_id=t.exchange_id, event_id=t.event_id,
            event_type=t.event_type, unit_id=t.unit_id, area=t.area, agency_id=t.agency_id,
            agreement_id=t.agreement_id, agreement_version=t.agreement_version, policy_version=policy.version,
            policy_digest=policy.digest, legal_basis=t.legal_basis, envelope_sha256=t.envelope_sha256,
            recipient_key_id=t.recipient_key_id,
            deliver_by=t.second_at if self.kind == ESCALATION and self.level == 2 else t.deliver_by,
            reason_code=self.reason_code, reason=self.reason(), source=f"{audit_topic}/0/{t.delivery_entry}",
            level=self.level, action_id=self.action_id, notice_sha256=notice_sha256,
        )


@dataclass
class Folded:
    """What folding one entry changed: keys to write (value or None = removed) and notices to send."""

    changed: dict[str, Tracking | None] = field(default_factory=dict)
    notices: list[NoticeRequest] = field(default_factory=list)


def _receipt_status(entry: dict[str, Any]) -> tuple[str | None, str]:
    status, _, _ = (entry.get("reason") or "").partition(" at ")
    return (status if status in (RECEIVED, ACKNOWLEDGED) else None), status


def next_due(t: Tracking) -> datetime | None:
    """The earliest time at which `due_actions` or `due_drops` can return something for `t` (None:
    never, until the tracking changes). Stores index trackings by it, so a look at the clock reads
    only what may be due."""
    if not t.delivered:
        return t.orphan_since  # dropped once its receipt waited an expiry for the delivery
    if t.satisfied:
        if t.escalations and t.closed_at is None:
            return _EPOCH  # the escalation is closed at the next look
        return t.expires_at  # dropped then
    pending = [at for level, at in ((1, t.deliver_by), (2, t.second_at)) if at is not None and level not in t.escalations]
    if t.ended_at is None and t.expires_at is not None:
        pending.append(t.expires_at)  # NON_DELIVERY
    return min(pending, default=None)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def open_escalation(t: Tracking) -> bool:
    """Escalated, and neither closed by a late receipt nor ended."""
    return bool(t.escalations) and t.closed_at is None and t.ended_at is None


class MemoryTrackings:
    """The book's trackings in a dict: for tests, tools and small books (every look scans them all).
    The worker keeps its book in RocksDB (streams.deadline_store.RocksTrackings), which answers the
    same questions from indexes, in memory that does not grow with the number of open deliveries."""

    def __init__(self, trackings: dict[str, Tracking] | None = None) -> None:
        self.items: dict[str, Tracking] = dict(trackings or {})

    def get(self, key: str) -> Tracking | None:
        return self.items.get(key)

    def put(self, t: Tracking) -> None:
        self.items[t.key] = t

    def delete(self, key: str) -> None:
        self.items.pop(key, None)

    def __len__(self) -> int:
        return len(self.items)

    def mapping(self) -> dict[str, Tracking]:
        return self.items

    def due(self, now: datetime) -> list[Tracking]:
        """Trackings whose `next_due` has come, sorted by key."""
        return sorted((t for t in self.items.values() if (at := next_due(t)) is not None and at <= now),
                      key=lambda t: t.key)

    def overdue_by_agency(self, now: datetime) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.items.values():
            if t.overdue(now):
                counts[t.agency_id] = counts.get(t.agency_id, 0) + 1
        return counts

    def open_escalations_by_agency(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.items.values():
            if open_escalation(t):
                counts[t.agency_id] = counts.get(t.agency_id, 0) + 1
        return counts


class DeadlineBook:
    def __init__(self, trackings: dict[str, Tracking] | None = None, store=None) -> None:
        """``store``: where the trackings are kept (a MemoryTrackings holding ``trackings`` by
        default, or a streams.deadline_store.RocksTrackings)."""
        self.store = store if store is not None else MemoryTrackings(trackings)

    @property
    def trackings(self) -> dict[str, Tracking]:
        """Every tracking by key (for a MemoryTrackings the dict itself)."""
        return self.store.mapping()

    def __len__(self) -> int:
        return len(self.store)

    def drop(self, key: str) -> None:
        """Forget a tracking `due_drops` returned (the caller deletes its state record)."""
        self.store.delete(key)

    # -- folding the log -------------------------------------------------------------------------
    def apply(self, position: int, entry: dict[str, Any], policy: Policy, now: datetime) -> Folded:
        """Fold one audit entry (at `position` in the audit partition) into the book.

        Idempotent: folding an entry the book already reflects changes nothing, so the book may be
        ahead of the consumer's committed offset after a crash."""
        out = Folded()
        kind, event_id, agency_id = entry["kind"], entry.get("event_id"), entry.get("agency_id")
        if not event_id or not agency_id:
            return out
        key = tracking_key(event_id, agency_id)
        t = self.store.get(key)
        at = entry["recorded_at"]
        if kind == "DELIVERY":
            if t is not None and t.delivered:
                return out  # a redelivery after a crash: the same exchange, already tracked
            opened = self._open(entry, position, policy, t)
            if t is None and opened.expires_at <= now:
                return out  # older than its expiry when first seen: nothing left to do for it
            t = opened
            out.notices.append(NoticeRequest(DELIVERED, t, at))
            if t.received_at is not None:  # receipts read before the delivery: tell the unit now
                out.notices.append(NoticeRequest(RECEIVED, t, t.received_at))
            if t.acknowledged_at is not None:
                out.notices.append(NoticeRequest(ACKNOWLEDGED, t, t.acknowledged_at))
        elif kind == "RECEIPT":
            status, _ = _receipt_status(entry)
            if status is None:
                return out
            if t is None:
                t = Tracking(event_id, agency_id, orphan_since=at)
            newly_received = t.received_at is None
            newly_acknowledged = status == ACKNOWLEDGED and t.acknowledged_at is None
            if not (newly_received or newly_acknowledged):
                return out
            if newly_received:
                t.received_at = at
            if newly_acknowledged:
                t.acknowledged_at = at
            if t.delivered:
                if newly_received and status == RECEIVED:
                    out.notices.append(NoticeRequest(RECEIVED, t, at))
                if newly_acknowledged:
                    out.notices.append(NoticeRequest(ACKNOWLEDGED, t, at))
        elif kind == ESCALATION and t is not None:
            level = entry.get("level") or 1
            if level in t.escalations:
                return out
            t.escalations[level] = at
        elif kind == ESCALATION_CLOSED and t is not None:
            if t.closed_at is not None:
                return out
            t.closed_at = at
        elif kind == NON_DELIVERY and t is not None:
            if t.ended_at is not None:
                return out
            t.ended_at = at
        else:
            return out
        if t.finished:
            self.store.delete(key)
            out.changed[key] = None
        else:
            self.store.put(t)
            out.changed[key] = t
        return out

    @staticmethod
    def _open(entry: dict[str, Any], position: int, policy: Policy, orphan: Tracking | None) -> Tracking:
        """A tracking for a DELIVERY entry, with the terms of its agreement in the policy in force."""
        agreement = policy.agreement(entry["agreement_id"] or "")
        required = agreement.required_receipt if agreement is not None else RECEIVED
        delivered_at, deliver_by = entry["recorded_at"], entry["deliver_by"]
        second_at = None
        if agreement is not None and agreement.escalate_again_after and deliver_by is not None:
            second_at = deliver_by + check_fixed_duration(agreement.escalate_again_after)
        expiry = check_fixed_duration(policy.deadlines.expiry)
        # Never expire before the escalations are due (a "next school day" across a long holiday).
        expires_at = max(t for t in (delivered_at + expiry, deliver_by, second_at) if t is not None)
        t = Tracking(
            entry["event_id"], entry["agency_id"], exchange_id=entry["exchange_id"], unit_id=entry["unit_id"],
            event_type=entry["event_type"], area=entry["area"], agreement_id=entry["agreement_id"],
            agreement_version=entry["agreement_version"], legal_basis=entry["legal_basis"],
            envelope_sha256=entry["envelope_sha256"], recipient_key_id=entry["recipient_key_id"],
            delivery_entry=position, delivered_at=delivered_at, deliver_by=deliver_by, required_receipt=required,
            second_at=second_at, expires_at=expires_at)
        if orphan is not None:
            t.received_at, t.acknowledged_at = orphan.received_at, orphan.acknowledged_at
        return t

    # -- what is due -----------------------------------------------------------------------------
    def due_actions(self, now: datetime) -> list[Action]:
        """Escalations, closures and expiries due at `now` that the log does not record yet."""
        actions = []
        for t in self.store.due(now):
            if not t.delivered:
                continue
            if t.satisfied:
                if t.escalations and t.closed_at is None:
                    actions.append(Action(ESCALATION_CLOSED, t, t.level, now))
                continue
            escalations = [Action(ESCALATION, t, level, now) for level, threshold in ((1, t.deliver_by), (2, t.second_at))
                           if threshold is not None and now >= threshold and level not in t.escalations]
            if escalations:  # every threshold that passed is escalated first; expiry comes after them
                actions += escalations
            elif t.ended_at is None and t.expires_at is not None and now >= t.expires_at:
                actions.append(Action(NON_DELIVERY, t, t.level, now))
        return actions

    def due_drops(self, now: datetime, expiry: timedelta) -> list[str]:
        """Trackings that end without an entry: a delivery whose required receipt came but whose
        acknowledgement did not by its expiry, and receipts whose DELIVERY never showed up."""
        keys = []
        for t in self.store.due(now):
            key = t.key
            if t.delivered and t.satisfied and (not t.escalations or t.closed_at) and now >= t.expires_at:
                keys.append(key)
            elif not t.delivered and t.orphan_since is not None and now >= t.orphan_since + expiry:
                keys.append(key)
        return sorted(keys)

    def overdue_by_agency(self, now: datetime) -> dict[str, int]:
        return self.store.overdue_by_agency(now)

    def open_escalations_by_agency(self) -> dict[str, int]:
        return self.store.open_escalations_by_agency()
