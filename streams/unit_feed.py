"""The originating unit's client: read its notice feed, verify and open each notice, and see the life
of what it published, per agency (docs/deadlines.md).

    feed = UnitFeed(bootstrap, unit_opener(unit_id, keyring, policy))
    async for item in feed.items():
        if item.ok: item.notice.content["kind"], ...        # DELIVERED, RECEIVED, ESCALATED, ...
    status = event_status(notices, event_id)               # {agency id: AgencyStatus}

Notices may repeat after a worker crash (at least once); the feed yields each notice id once.
Nothing in a notice is personal data: ids, times, codes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from streams.crypto.envelope import EnvelopeError
from streams.crypto.keys import Keyring
from streams.crypto.notice import NoticeOpener, OpenedNotice
from streams.kafka import read_topic
from streams.partner import trusted_routers
from streams.policy import Policy
from streams.topics import Topics


def unit_opener(unit_id: str, keyring: Keyring, policy: Policy) -> NoticeOpener:
    """Opens notices to `unit_id` with its exchange keys, trusting the router keys the policy lists."""
    return NoticeOpener(unit_id, keyring, trusted_routers(policy))


@dataclass(frozen=True)
class NoticeItem:
    offset: int
    notice: OpenedNotice | None = None
    error: EnvelopeError | None = None

    @property
    def ok(self) -> bool:
        return self.notice is not None


class UnitFeed:
    def __init__(self, bootstrap: str, opener: NoticeOpener, topics: Topics | None = None) -> None:
        self.bootstrap = bootstrap
        self.opener = opener
        self.topics = topics or Topics.from_env()
        self._seen: set[str] = set()

    async def items(self, *, follow: bool = False, idle_timeout: float | None = None) -> AsyncIterator[NoticeItem]:
        topic = self.topics.unit(self.opener.unit_id)
        async for record in read_topic(self.bootstrap, topic, follow=follow, idle_timeout=idle_timeout):
            try:
                notice = self.opener.open(record.value or b"")
            except EnvelopeError as exc:
                yield NoticeItem(record.offset, error=exc)
                continue
            if notice.notice_id in self._seen:
                continue
            self._seen.add(notice.notice_id)
            yield NoticeItem(record.offset, notice=notice)


@dataclass
class AgencyStatus:
    """What the unit knows about one delivery of one of its events, from its notices."""

    agency_id: str
    event_type: str = ""
    agreement: str = ""
    required_receipt: str = "RECEIVED"
    delivered_at: datetime | None = None
    deliver_by: datetime | None = None
    received_at: datetime | None = None
    acknowledged_at: datetime | None = None
    escalations: dict[int, datetime] = field(default_factory=dict)
    escalation_closed_at: datetime | None = None
    non_delivery_at: datetime | None = None

    @property
    def satisfied_at(self) -> datetime | None:
        return self.acknowledged_at if self.required_receipt == "ACKNOWLEDGED" else self.received_at

    def overdue_since(self, now: datetime) -> datetime | None:
        """The deadline, if it has passed without the required receipt (judged at `now`)."""
        if self.deliver_by is None:
            return None
        satisfied = self.satisfied_at
        if satisfied is not None:
            return self.deliver_by if satisfied > self.deliver_by else None
        return self.deliver_by if now >= self.deliver_by else None

    def state(self, now: datetime) -> str:
        """One word: not delivered, escalated, overdue, acknowledged, received, delivered."""
        if self.non_delivery_at is not None:
            return "not delivered"
        if self.escalations and self.escalation_closed_at is None:
            return f"escalated (level {max(self.escalations)})"
        if self.satisfied_at is None and self.overdue_since(now) is not None:
            return "overdue"
        if self.acknowledged_at is not None:
            return "acknowledged"
        if self.received_at is not None:
            return "received"
        return "delivered" if self.delivered_at is not None else "unknown"

    def as_json(self, now: datetime) -> dict:
        def iso(moment: datetime | None) -> str | None:
            return moment.isoformat().replace("+00:00", "Z") if moment else None

        return {"agency": self.agency_id, "state": self.state(now), "event_type": self.event_type,
                "agreement": self.agreement, "required_receipt": self.required_receipt,
                "delivered_at": iso(self.delivered_at), "deliver_by": iso(self.deliver_by),
                "received_at": iso(self.received_at), "acknowledged_at": iso(self.acknowledged_at),
                "overdue_since": iso(self.overdue_since(now)),
                "escalated_at": {str(level): iso(at) for level, at in sorted(self.escalations.items())},
                "escalation_closed_at": iso(self.escalation_closed_at), "non_delivery_at": iso(self.non_delivery_at)}


def event_status(notices: Iterable[OpenedNotice], event_id: str) -> dict[str, AgencyStatus]:
    """Per agency, what the unit's notices say about one event (empty if none names it)."""
    statuses: dict[str, AgencyStatus] = {}
    for notice in notices:
        c = notice.content
        if c["event_id"] != event_id:
            continue
        s = statuses.setdefault(c["agency_id"], AgencyStatus(c["agency_id"]))
        s.event_type = c["event_type"]
        s.agreement = f"{c['agreement_id']} v{c['agreement_version']}"
        s.required_receipt = c["required_receipt"]
        s.delivered_at = s.delivered_at or c["delivered_at"]
        s.deliver_by = s.deliver_by or c["deliver_by"]
        s.received_at = s.received_at or c["received_at"]
        s.acknowledged_at = s.acknowledged_at or c["acknowledged_at"]
        kind = c["kind"]
        if kind == "ESCALATED":
            s.escalations.setdefault(c["level"], c["at"])
        elif kind == "ESCALATION_CLOSED":
            s.escalation_closed_at = s.escalation_closed_at or c["at"]
        elif kind == "NON_DELIVERY":
            s.non_delivery_at = s.non_delivery_at or c["at"]
    return dict(sorted(statuses.items()))
