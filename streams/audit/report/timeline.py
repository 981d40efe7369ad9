"""The life of one case in time order: each event routed, each delivery, receipt and escalation.

Built from a report's delivery rows (so the report's filters apply). The log does not record when a
unit published, only when the router handled the publication: an event's `routed` step is the time
of its first delivery. A shredded case has no timeline by design: once its key is destroyed
nothing links its entries to the case reference (docs/audit.md, "Case keys and shredding").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from .model import iso, parse_iso

# Order of steps recorded at the same instant.
STEPS = ("routed", "delivered", "received", "acknowledged", "escalated")


@dataclass(frozen=True)
class TimelineStep:
    at: datetime
    step: str  # one of STEPS
    event_id: str
    event_type: str
    agency: str = ""  # empty for `routed`
    recipients: int = 0  # `routed`: how many agencies the event went to (in this report)
    unit: str = ""
    area: str = ""
    fields: tuple[str, ...] = ()  # `delivered`: field names the agency received (never values)
    agreement: str = ""
    legal_basis: str = ""
    legal_basis_label: str = ""
    deliver_by: str = ""
    deadline: str = ""
    entry: int | None = None  # log entry number of the delivery

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["at"] = iso(self.at)
        out["fields"] = list(self.fields)
        return out


def case_timeline(deliveries: list[dict[str, Any]]) -> list[TimelineStep]:
    """Steps in time order (ties in STEPS order, then by agency) from a report's delivery rows."""
    steps: list[TimelineStep] = []
    first: dict[str, dict[str, Any]] = {}
    recipients: dict[str, int] = {}
    for row in deliveries:
        event = row["event_id"]
        recipients[event] = recipients.get(event, 0) + 1
        if event not in first or row["recorded_at"] < first[event]["recorded_at"]:
            first[event] = row
        common = {"event_id": event, "event_type": row["event_type"], "agency": row["agency"],
                  "agreement": row["agreement"], "legal_basis": row["legal_basis"] or "",
                  "legal_basis_label": row["legal_basis_label"], "entry": row["entry"]}
        steps.append(TimelineStep(parse_iso(row["recorded_at"]), "delivered", fields=tuple(row["fields"]),
                                  deliver_by=row["deliver_by"], deadline=row["deadline"], **common))
        for step in ("received", "acknowledged", "escalated"):
            if row.get(f"{step}_at"):
                steps.append(TimelineStep(parse_iso(row[f"{step}_at"]), step, **common))
    for event, row in first.items():
        steps.append(TimelineStep(parse_iso(row["recorded_at"]), "routed", event, row["event_type"],
                                  recipients=recipients[event], unit=row["unit"] or "", area=row["area"] or ""))
    steps.sort(key=lambda s: (s.at, STEPS.index(s.step), s.agency, s.event_id))
    return steps
