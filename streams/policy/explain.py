"""Human-readable answer to "who receives what of this event type in this area, and why"."""
from __future__ import annotations

from streams.codec import EVENT_TYPES

from .model import Policy, Share
from .vocab import AREAS, LEGAL_BASES


def explain(policy: Policy, event_type: str, area: str) -> str:
    """A plain-text report: each recipient with agreement, legal basis, purpose, deadline and fields, a
    field-by-recipient matrix, and the agencies covering the area that receive nothing of this type."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    if area not in AREAS:
        raise ValueError(f"unknown area {area!r}")
    shares = policy.routing(event_type, area)
    publishers = policy.publishers(event_type, area)
    lines = [
        f"{event_type} in {area}: policy v{policy.version} (effective {policy.effective_from.isoformat()}, "
        f"digest {policy.digest[:16]})",
        f"Publishers allowed: {', '.join(publishers) if publishers else 'none (no unit may publish this)'}",
        "",
        f"Recipients ({len(shares)}):" if shares else "Recipients: none",
    ]
    for number, share in enumerate(shares, start=1):
        agency = policy.agency(share.agency_id)
        name = agency.name if agency is not None else ""
        lines += [
            f"  [{number}] {share.agency_id}: {name} ({share.agency_kind})",
            f"      agreement   {share.agreement_id} v{share.agreement_version}",
            f"      legal basis {share.legal_basis}: {LEGAL_BASES.get(share.legal_basis, '')}",
            f"      purpose     {share.purpose}",
            f"      deadline    {share.deadline}    retention {share.retention}",
            f"      sealed to   exchange key {share.recipient_key_id}",
            f"      fields      {', '.join(share.fields)}",
        ]
    if shares:
        lines += ["", *_field_matrix(shares)]
    silent = [a for a in policy.agencies
              if area in a.areas and a.id not in {s.agency_id for s in shares}]
    lines += ["", f"Covering {area} but receiving nothing of {event_type} ({len(silent)}):"]
    lines += [f"  {a.id}: {a.name} ({a.kind})" for a in silent] or ["  none"]
    return "\n".join(lines) + "\n"


def _field_matrix(shares: tuple[Share, ...]) -> list[str]:
    """Rows are field paths, columns the numbered recipients, 'x' where the recipient gets the field."""
    fields = sorted({f for s in shares for f in s.fields})
    width = max(len("field"), *(len(f) for f in fields))
    columns = [f"[{n}]" for n in range(1, len(shares) + 1)]
    rows = ["  " + "field".ljust(width) + "  " + " ".join(columns)]
    for path in fields:
        marks = [("x" if path in s.fields else ".").center(len(col)) for s, col in zip(shares, columns)]
        rows.append(("  " + path.ljust(width) + "  " + " ".join(marks)).rstrip())
    return rows
