"""The report for other tools: JSON (format masb-audit-report, version 1) and CSV (RFC 4180).

Both are documented in docs/audit.md, "Reports". Version 1 only ever gains keys: readers of the
first keys keep working. The CSV columns are fixed.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from .model import FORMAT, Report, iso, masb_version
from .timeline import case_timeline


def report_document(report: Report) -> dict[str, Any]:
    """The JSON document as a dict."""
    since, until = report.period()
    return {
        "format": FORMAT, "version": 1, "filters": report.filters.describe(), "verification": report.verification,
        "summary": report.summary(), "deliveries": report.deliveries, "refusals": report.refusals,
        "policy_changes": report.policy_changes, "notes": report.notes,
        # Added keys (still version 1):
        "generated_at": iso(report.generated_at), "masb_version": masb_version(),
        "deadlines_judged_at": iso(report.deadlines_judged_at),
        "period": {"from": iso(since) or None, "to": iso(until) or None},
        "log": report.log.as_dict() if report.log else None,
        "legal_bases": report.legal_bases(),
        "case_timeline": ([s.as_dict() for s in case_timeline(report.deliveries)]
                          if report.filters.case_ref is not None else None),
    }


def render_json(report: Report) -> str:
    return json.dumps(report_document(report), indent=2, sort_keys=False) + "\n"


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
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    columns = CSV_COLUMNS[1:]
    for section, rows in (("delivery", report.deliveries), ("refusal", report.refusals),
                          ("policy_change", report.policy_changes)):
        # One list per row in column order (a column the row lacks is empty); no dict per row.
        writer.writerows([section, *[_csv_safe(row[c]) if c in row else "" for c in columns]] for row in rows)
    return out.getvalue()
