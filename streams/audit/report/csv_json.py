"""The report for other tools: JSON (format masb-audit-report, version 1) and CSV (RFC 4180).

Both are documented in docs/audit.md, "Reports". Version 1 only ever gains keys: readers of the
first keys keep working. The CSV columns are fixed.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
from json.encoder import encode_basestring_ascii as _string
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


ROW_LISTS = ("deliveries", "refusals", "policy_changes")


def render_json(report: Report) -> str:
    """``json.dumps(report_document(report), indent=2)`` byte for byte, with the row lists (all
    but a few lines of a large report) written by _rows: json's indenting encoder is pure Python."""
    doc = report_document(report)
    marks = {name: f"masb-rows-{secrets.token_hex(16)}" for name in ROW_LISTS}  # unguessable: never in a value
    text = json.dumps({k: marks.get(k, v) for k, v in doc.items()}, indent=2, sort_keys=False)
    for name, mark in marks.items():
        text = text.replace(json.dumps(mark), _rows(doc[name]), 1)
    return text + "\n"


def _rows(rows: list[dict[str, Any]]) -> str:
    """A list of row dicts as json.dumps(indent=2) writes it two levels deep (a top-level key's value)."""
    if not rows:
        return "[]"
    return "[\n" + ",\n".join("    " + _row(row) for row in rows) + "\n  ]"


def _row(row: dict[str, Any]) -> str:
    """One row three levels deep. Strings, ints, None and lists of strings are written here as
    json.dumps writes them; any other row goes through json.dumps itself."""
    parts = []
    for key, value in row.items():
        kind = type(value)
        if type(key) is not str:
            return json.dumps(row, indent=2).replace("\n", "\n    ")
        if kind is str:
            text = _string(value)
        elif kind is int:
            text = int.__repr__(value)
        elif value is None:
            text = "null"
        elif kind is list and all(type(item) is str for item in value):
            text = ("[\n" + ",\n".join("        " + _string(item) for item in value) + "\n      ]") if value else "[]"
        else:
            return json.dumps(row, indent=2).replace("\n", "\n    ")
        parts.append(f"      {_string(key)}: {text}")
    return "{\n" + ",\n".join(parts) + "\n    }" if parts else "{}"


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
