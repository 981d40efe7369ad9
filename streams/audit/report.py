"""Who received what, when and why: reports over the exchange log (docs/audit.md, "Reports").

Pure functions over decoded entries: build_report() selects and dedupes, render_csv/json/html()
format. Each exchange is counted once: a redelivery after a crash repeats the DELIVERY entry with
the same exchange_id, and the report shows it once with the number of repeats. Likewise an input
record read again after a restart may be recorded again as REFUSAL or DUPLICATE: those are counted
once per input record (their `source`, topic/partition/offset).

Case references are shown only when the per-case key is available (case key store): otherwise
"shredded" (the key was destroyed on purpose) or "sealed" (no key at hand).
"""

from __future__ import annotations

import csv
import html
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

from streams.errors import InvalidInput

from .case_keys import CaseKeyError, CaseKeyStore, case_tag, open_sealed_case
from .entry import AuditEntryError, decode_entry

FORMAT = "masb-audit-report"
SHREDDED = "shredded"
SEALED = "sealed"


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
        raise ReportError(f"{what}: not an ISO 8601 date or date-time") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


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
    verification: str | None = None

    def summary(self) -> dict[str, Any]:
        by_agency: dict[str, int] = {}
        for row in self.deliveries:
            by_agency[row["agency"]] = by_agency.get(row["agency"], 0) + 1
        return {"entries_read": self.entries_read, "exchanges": len(self.deliveries),
                "redeliveries_not_counted": self.redeliveries, "replayed_inputs_not_counted": self.replays,
                "refusals": len(self.refusals),
                "policy_changes": len(self.policy_changes), "duplicates_suppressed": self.duplicates_suppressed,
                "exchanges_by_agency": dict(sorted(by_agency.items())),
                "deadlines": {status: sum(1 for r in self.deliveries if r.get("deadline") == status)
                              for status in DEADLINE_STATUSES}}


DEADLINE_STATUSES = ("received on time", "received late", "overdue", "awaiting receipt", "no deadline")


def deadline_status(row: dict[str, Any], judged_at: datetime) -> str:
    """Was the delivery received (the agency's RECEIVED receipt) by its agreed deliver_by time?"""
    if not row["deliver_by"]:
        return "no deadline"
    due = datetime.fromisoformat(row["deliver_by"])
    if row["received_at"]:
        return "received on time" if datetime.fromisoformat(row["received_at"]) <= due else "received late"
    return "overdue" if judged_at > due else "awaiting receipt"


def _iso(value: datetime | None) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value else ""


class _Cases:
    """Resolves an entry's sealed case to its case reference, 'shredded' or 'sealed'."""

    def __init__(self, store: CaseKeyStore | None) -> None:
        self.keys = store.keys_by_id() if store else {}
        self.shredded = store.shredded_ids() if store else set()

    def show(self, entry: dict[str, Any]) -> str:
        key_id = entry.get("case_key_id")
        if not key_id:
            return ""
        key = self.keys.get(key_id)
        if key is None:
            return SHREDDED if key_id in self.shredded else SEALED
        try:
            return open_sealed_case(key, entry.get("sealed_case") or b"", entry.get("event_id"))
        except CaseKeyError:
            return "unreadable"


def build_report(entries: Iterable[tuple[int, bytes]], filters: Filters,
                 store: CaseKeyStore | None = None, as_of: datetime | None = None) -> Report:
    """entries: (position, entry bytes) in log order; as_of: the time deadlines are judged at (now)."""
    report = Report(filters)
    wanted_case = None
    if filters.case_ref is not None:
        if store is None:
            raise ReportError("--case-ref needs the case key store (--keys-dir): case references are sealed")
        key = store.find(filters.case_ref)
        if key is None:
            report.notes.append("no live case key for that case reference: the case is unknown to this "
                                "router, or its key was shredded; nothing can be linked to it")
            wanted_case = ("", "")
        else:
            wanted_case = (key.key_id, case_tag(key.key, filters.case_ref))
    cases = _Cases(store)
    seen: dict[str, dict[str, Any]] = {}
    by_envelope: dict[str, dict[str, Any]] = {}  # envelope hash -> its delivery row, for receipts
    replayed: set[tuple[str, str]] = set()  # (kind, source): an input record handled again after a restart
    for number, (position, data) in enumerate(entries, start=1):
        report.entries_read = number
        try:
            e = decode_entry(data)
        except AuditEntryError as exc:
            report.notes.append(f"entry {number} (position {position}): {exc}; not reported")
            continue
        at = e["recorded_at"]
        if (filters.since and at < filters.since) or (filters.until and at >= filters.until):
            continue
        kind = e["kind"]
        if kind == "POLICY_CHANGE":  # context for everything else: filtered by time only
            report.policy_changes.append({"entry": number, "position": position, "recorded_at": _iso(at),
                                          "policy_version": e["policy_version"], "policy_digest": e["policy_digest"],
                                          "reason": e["reason"] or ""})
            continue
        if kind == "RECEIPT":  # belongs to the delivery it acknowledges, if that one is reported
            status, _, when = (e["reason"] or "").partition(" at ")
            row = by_envelope.get(e["envelope_sha256"])
            if row is not None and status in ("RECEIVED", "ACKNOWLEDGED") and e["agency_id"] == row["agency"]:
                row[f"{status.lower()}_at"] = row[f"{status.lower()}_at"] or when
            continue
        if wanted_case and (e["case_key_id"], e["case_tag"]) != wanted_case:
            continue
        if filters.agency and e["agency_id"] != filters.agency:
            continue
        if filters.event_type and e["event_type"] != filters.event_type:
            continue
        if filters.legal_basis and e["legal_basis"] != filters.legal_basis:
            continue
        if kind == "DELIVERY":
            prior = seen.get(e["exchange_id"])
            if prior is not None:
                prior["redeliveries"] += 1
                report.redeliveries += 1
                continue
            row = {
                "entry": number, "position": position, "recorded_at": _iso(at), "exchange_id": e["exchange_id"],
                "event_id": e["event_id"], "event_type": e["event_type"], "case": cases.show(e),
                "unit": e["unit_id"], "area": e["area"], "agency": e["agency_id"],
                "agreement": f"{e['agreement_id']} v{e['agreement_version']}", "legal_basis": e["legal_basis"],
                "policy_version": e["policy_version"], "fields": list(e["fields"]),
                "deliver_by": _iso(e["deliver_by"]), "envelope_sha256": e["envelope_sha256"],
                "recipient_key_id": e["recipient_key_id"], "redeliveries": 0,
                "received_at": "", "acknowledged_at": "",  # from the agency's receipts, if any
            }
            by_envelope[e["envelope_sha256"]] = row
            seen[e["exchange_id"]] = row
            report.deliveries.append(row)
            # The same input record read again (after a restart or rebalance) is then suppressed as a
            # DUPLICATE: that is a replay of this delivery, not a republication by the unit.
            replayed.add(("DUPLICATE", e["source"] or ""))
        elif kind in ("REFUSAL", "DUPLICATE") and e["source"] and (kind, e["source"]) in replayed:
            report.replays += 1
        elif kind == "REFUSAL":
            replayed.add((kind, e["source"] or ""))
            report.refusals.append({"entry": number, "position": position, "recorded_at": _iso(at),
                                    "reason_code": e["reason_code"], "reason": e["reason"] or "",
                                    "unit": e["unit_id"] or "", "event_id": e["event_id"] or "",
                                    "source": e["source"] or "", "policy_version": e["policy_version"]})
        elif kind == "DUPLICATE":
            replayed.add((kind, e["source"] or ""))
            report.duplicates_suppressed += 1
    judged_at = as_of or filters.until or datetime.now(timezone.utc)
    for row in report.deliveries:
        row["deadline"] = deadline_status(row, judged_at)
    return report


# -- rendering ------------------------------------------------------------------------------------
def render_json(report: Report) -> str:
    return json.dumps({
        "format": FORMAT, "version": 1, "filters": report.filters.describe(), "verification": report.verification,
        "summary": report.summary(), "deliveries": report.deliveries, "refusals": report.refusals,
        "policy_changes": report.policy_changes, "notes": report.notes,
    }, indent=2, sort_keys=False) + "\n"


CSV_COLUMNS = ["section", "entry", "position", "recorded_at", "exchange_id", "event_id", "event_type", "case",
               "unit", "area", "agency", "agreement", "legal_basis", "policy_version", "fields", "deliver_by",
               "redeliveries", "received_at", "acknowledged_at", "deadline", "reason_code", "reason", "source",
               "policy_digest", "envelope_sha256", "recipient_key_id"]


def _csv_safe(value: Any) -> str:
    """Cells that a spreadsheet would run as a formula are prefixed with a quote (CSV injection)."""
    text = ";".join(value) if isinstance(value, list) else ("" if value is None else str(value))
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def render_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for section, rows in (("delivery", report.deliveries), ("refusal", report.refusals),
                          ("policy_change", report.policy_changes)):
        for row in rows:
            writer.writerow({"section": section, **{k: _csv_safe(v) for k, v in row.items()}})
    return out.getvalue()


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0;
font-size:.9em}th,td{border:1px solid #bbb;padding:.3em .5em;text-align:left;vertical-align:top}th{background:#eee}
.muted{color:#666}.marking{font-weight:bold;letter-spacing:.05em}code{font-size:.95em}"""


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    if not rows:
        return '<p class="muted">None.</p>'
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    body = []
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row.get(key)
            text = ", ".join(value) if isinstance(value, list) else ("" if value is None else str(value))
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(report: Report, title: str = "MASB exchange report") -> str:
    s = report.summary()
    filters = report.filters.describe()
    filter_text = ", ".join(f"{k} = {v}" for k, v in filters.items()) or "none (the whole log)"
    agencies = [{"agency": a, "count": str(n)} for a, n in s["exchanges_by_agency"].items()]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        '<p class="marking">OFFICIAL-SENSITIVE</p>', f"<h1>{html.escape(title)}</h1>",
        f"<p>Filters: {html.escape(filter_text)}.</p>",
        f"<p>Log verification: {html.escape(report.verification or 'not checked')}.</p>",
        "<h2>Summary</h2><ul>",
        f"<li>{s['exchanges']} exchanges (each counted once; {s['redeliveries_not_counted']} redeliveries after "
        "a restart not counted again)</li>",
        f"<li>{s['refusals']} refusals, {s['duplicates_suppressed']} republications suppressed as duplicates, "
        f"{s['policy_changes']} policy changes</li>", f"<li>{s['entries_read']} log entries read</li></ul>",
        _table(agencies, [("agency", "Agency"), ("count", "Exchanges")]),
        "<h2>Exchanges: who received what, when, and why</h2>",
        _table(report.deliveries, [("recorded_at", "Sent (UTC)"), ("agency", "Agency"), ("event_type", "Event type"),
                                   ("case", "Case"), ("event_id", "Event id"), ("fields", "Fields received"),
                                   ("agreement", "Agreement"), ("legal_basis", "Legal basis"),
                                   ("policy_version", "Policy version"), ("deliver_by", "Deliver by"),
                                   ("received_at", "Received (receipt)"),
                                   ("acknowledged_at", "Acknowledged (receipt)"), ("deadline", "Deadline"),
                                   ("redeliveries", "Redeliveries"), ("entry", "Log entry")]),
        "<h2>Refusals</h2>",
        _table(report.refusals, [("recorded_at", "When (UTC)"), ("reason_code", "Code"), ("reason", "Reason"),
                                 ("unit", "Unit"), ("event_id", "Event id"), ("source", "Input record"),
                                 ("entry", "Log entry")]),
        "<h2>Policy changes</h2>",
        _table(report.policy_changes, [("recorded_at", "When (UTC)"), ("policy_version", "Version"),
                                       ("reason", "Change"), ("policy_digest", "Policy digest"),
                                       ("entry", "Log entry")]),
    ]
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


RENDERERS = {"csv": render_csv, "json": render_json, "html": render_html}
