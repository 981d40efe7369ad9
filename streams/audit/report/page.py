"""The report as one self-contained HTML page for people (docs/audit.md, "Reports").

No network: styles, the charts (matplotlib SVG) and a small script are inline, and a
Content-Security-Policy forbids every load (the script is allowed by its hash only). Every value
is HTML-escaped. Printed (A4 landscape), each page carries the protective marking and the
verification result. Without JavaScript the exchange table is a plain, complete table.
"""

from __future__ import annotations

import base64
import hashlib
import html
from importlib.resources import files
from typing import Any, Iterable

from streams.policy.vocab import LEGAL_BASES

from .aggregate import buckets_for, counts_over_time, top_series
from .model import DEADLINE_STATUSES, Report, iso, masb_version, parse_iso
from .palette import STATUS_COLOURS
from .timeline import case_timeline

MARKING = "OFFICIAL-SENSITIVE"
TITLE = "MASB exchange report"
_ASSETS = files("streams.audit.report") / "assets"
MAX_SERIES = 9  # agencies or reasons drawn one by one; the rest are summed as "other ..."


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _code(value: Any) -> str:
    """An identifier in capitals and underscores, escaped, that may wrap after each underscore."""
    return _e(value).replace("_", "_<wbr>")


def _when(text: str) -> str:
    """An ISO 8601 UTC time as people read it: "2025-03-01 09:00:00" (the UTC is in the header)."""
    if not text:
        return ""
    return iso(parse_iso(text).replace(microsecond=0)).replace("T", " ").removesuffix("Z")


def _time(text: str) -> str:
    return f'<time datetime="{_e(text)}">{_e(_when(text))}</time>' if text else ""


def _css_string(text: str) -> str:
    """A CSS string literal that cannot end the string, the rule or the <style> element."""
    out = []
    for ch in text:
        out.append(ch if ch.isalnum() or ch in " .,:;()-_/+=#" else f"\\{ord(ch):x} ")
    return '"' + "".join(out) + '"'


# -- the head of the report: verification and scope ------------------------------------------------
def _verdict(report: Report) -> tuple[str, str, str]:
    """(banner class, headline, the short line printed on every page)."""
    log = report.log
    if log is None:
        return "unchecked", "Log not verified: no verification was run for this report", "Log not verified"
    if not log.intact:
        return ("bad", f"Log NOT verified: {len(log.problems)} problems; this report may not reflect the log "
                "as signed", "Log NOT verified: see the first page")
    cp = log.checkpoint
    where = f"checkpoint {cp.number} (size {cp.size}, root {cp.root[:12]}...)" if cp else "no checkpoint"
    return "ok", "Log verified: intact", f"Log verified: intact against {where}"


def _verification(report: Report) -> str:
    kind, headline, _ = _verdict(report)
    log = report.log
    facts: list[tuple[str, str]] = []
    if log is not None:
        cp = log.checkpoint
        if cp is not None:
            facts.append(("Signed checkpoint", f"number {cp.number} of log <code>{_e(cp.origin)}</code>: "
                          f"size <strong>{cp.size}</strong>, root <code>{_e(cp.root)}</code>"))
            cosigned = (", ".join(f"<strong>{_e(n)}</strong>" for n in cp.cosigners) if cp.cosigners else
                        "none recorded (no witnesses cosign this log's checkpoints yet)")
            facts.append(("Witness cosignatures", cosigned))
        else:
            facts.append(("Signed checkpoint", "none verified"))
        covered = (f"all {log.entries} covered by the checkpoint" if not log.uncovered_entries else
                   f"{log.verified_size} covered by the checkpoint; the {log.uncovered_entries} newer entries "
                   "await the next checkpoint")
        facts.append(("Log entries", f"{log.entries}: {covered}"))
        facts.append(("Verified at", _e(_when(iso(log.checked_at))) + " UTC"))
    problems = ""
    if log is not None and log.problems:
        problems = ('<ul class="problems">' + "".join(f"<li>{_e(p)}</li>" for p in log.problems) + "</ul>")
    return (f'<section id="verification" class="banner {kind}" aria-label="Log verification">'
            f'<p class="verdict">{_e(headline)}</p>{_facts(facts)}{problems}</section>')


def _facts(items: Iterable[tuple[str, str]]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _scope(report: Report) -> str:
    since, until = report.period()
    period = (f"{_e(_when(iso(since))) or 'start of the log'} to {_e(_when(iso(until))) or 'now'} UTC"
              + (" (the whole log)" if not (report.filters.since or report.filters.until) else ""))
    filters = report.filters.describe()
    shown = ", ".join(f"{_e(k.replace('_', ' '))} = <strong>{_e(v)}</strong>" for k, v in filters.items())
    return '<section class="scope" aria-label="Scope">' + _facts([
        ("Period", period),
        ("Filters", shown or "none: every exchange, refusal and policy change in the period"),
        ("Deadlines judged at", _e(_when(iso(report.deadlines_judged_at))) + " UTC"),
        ("Generated", f"{_e(_when(iso(report.generated_at)))} UTC by MASB {_e(masb_version())}"),
        ("Log entries read", _e(report.entries_read)),
    ]) + "</section>"


def _key_figures(report: Report) -> str:
    s = report.summary()
    d = s["deadlines"]
    items = [(s["exchanges"], "exchanges"), (len(s["exchanges_by_agency"]), "agencies"),
             (d["received on time"], "received on time"), (d["received late"], "received late"),
             (d["overdue"], "overdue"), (d["escalated"], "escalated"), (d["awaiting receipt"], "awaiting receipt"),
             (s["refusals"], "refusals"), (s["duplicates_suppressed"], "republications suppressed"),
             (s["policy_changes"], "policy changes")]
    cards = "".join(f'<div class="figure"><span class="n">{n}</span><span class="t">{_e(t)}</span></div>'
                    for n, t in items)
    notes = (f'<p class="small">Each exchange is counted once: {s["redeliveries_not_counted"]} redeliveries after a '
             f'restart and {s["replayed_inputs_not_counted"]} inputs re-read after a restart are not counted '
             "again.</p>")
    return f'<section id="summary"><h2>Summary</h2><div class="figures">{cards}</div>{notes}</section>'


# -- charts ------------------------------------------------------------------------------------------
def _chart(chart_id: str, svg: str | None, caption: str, empty: str) -> str:
    body = svg if svg else f'<p class="no-data">{_e(empty)}</p>'
    return (f'<figure class="chart" id="chart-{chart_id}" data-chart="{chart_id}">{body}'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _charts(report: Report) -> str:
    from . import charts  # matplotlib takes about a second to import; CSV and JSON do not need it

    since, until = report.period()
    times = [parse_iso(r["recorded_at"]) for r in (report.deliveries + report.refusals)]
    first = since or (min(times) if times else None)
    last = until or (max(times) if times else None)
    parts = ['<section id="charts"><h2>At a glance</h2>']
    if first is not None and last is not None:
        buckets = buckets_for(first, last)
        per_agency = top_series(counts_over_time(report.deliveries, lambda r: r["agency"], buckets),
                                MAX_SERIES, "other agencies")
        per_reason = top_series(counts_over_time(report.refusals, lambda r: r["reason_code"] or "", buckets),
                                MAX_SERIES, "other reasons")
    else:
        buckets = per_agency = per_reason = None
    summary = report.summary()
    parts.append(_chart(
        "exchanges", buckets and charts.stacked_over_time(
            "exchanges", "Exchanges per agency over time", per_agency, buckets, "exchanges",
            {"other agencies": "#999999"}),
        "Each exchange counted once, by the time the router recorded the delivery.",
        "No exchanges in this period."))
    parts.append(_chart(
        "deadlines-agency", charts.deadline_compliance(
            "deadlines-agency", "Deadline compliance per agency", summary["deadlines_by_agency"]),
        "Receipt against the agreed deadline: on time, late, overdue (no receipt and the deadline passed), "
        "escalated, awaiting receipt, no deadline.", "No exchanges in this period."))
    parts.append(_chart(
        "deadlines-agreement", charts.deadline_compliance(
            "deadlines-agreement", "Deadline compliance per agreement", summary["deadlines_by_agreement"]),
        "The same, per information sharing agreement (all its versions together).",
        "No exchanges in this period."))
    parts.append(_chart(
        "refusals", buckets and charts.stacked_over_time(
            "refusals", "Refusals by reason over time", per_reason, buckets, "refusals",
            {"other reasons": "#999999"}),
        "Inputs the router refused, by reason code (docs/routing.md); each input record counted once.",
        "No refusals in this period."))
    parts.append("</section>")
    return "".join(parts)


# -- the case view -----------------------------------------------------------------------------------
_STEP_NAMES = {"routed": "Routed", "delivered": "Delivered", "received": "Received",
               "acknowledged": "Acknowledged", "escalated": "Escalated"}


def _basis(code: str, label: str) -> str:
    if not code:
        return ""
    if label and label != code:
        return f"{_e(label)} <code>{_code(code)}</code>"
    return f"<code>{_code(code)}</code>"


def _case_view(report: Report) -> str:
    if report.filters.case_ref is None:
        return ""
    steps = case_timeline(report.deliveries)
    items = []
    for s in steps:
        if s.step == "routed":
            what = (f"{_code(s.event_type)} published by <strong>{_e(s.unit)}</strong> ({_e(s.area)}), "
                    f"routed to {s.recipients} {'agency' if s.recipients == 1 else 'agencies'}")
            details = f'<div class="small mono">event {_e(s.event_id)}</div>'
        elif s.step == "delivered":
            what = f"{_code(s.event_type)} to <strong>{_e(s.agency)}</strong>"
            details = (f'<div class="small">Fields received: {_e(", ".join(s.fields)) or "none"}</div>'
                       f'<div class="small">Agreement {_e(s.agreement)}; legal basis '
                       f"{_basis(s.legal_basis, s.legal_basis_label)}</div>"
                       f'<div class="small">Deliver by {_e(_when(s.deliver_by)) or "-"}: '
                       f"{_badge(s.deadline)} (log entry {s.entry})</div>")
        else:
            what = f"{_code(s.event_type)} by <strong>{_e(s.agency)}</strong>"
            details = ""
        items.append(f'<li data-step="{_e(s.step)}" data-event="{_e(s.event_id)}">{_time(iso(s.at))}'
                     f'<span class="step-name">{_STEP_NAMES[s.step]}</span>: {what}{details}</li>')
    body = ('<ol class="timeline" id="case-timeline-steps">' + "".join(items) + "</ol>" if items else
            '<p class="no-data">Nothing in the log can be linked to this case reference.</p>')
    return (f'<section id="case-timeline"><h2>Case {_e(report.filters.case_ref)}: timeline</h2>'
            '<p class="small">Times in UTC. "Routed" is when the router handled the publication (the log does '
            "not record when the unit sent it). Receipts are the agencies' own. When the case's key is shredded "
            "at the end of retention this timeline can no longer be made: the entries stay in the log, "
            f"unlinked.</p>{body}</section>")


# -- tables ------------------------------------------------------------------------------------------
def _badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#999999")
    return f'<span class="badge" style="border-left-color:{colour}">{_e(status)}</span>'


def _select(name: str, label: str, options: Iterable[tuple[str, str]]) -> str:
    opts = "".join(f'<option value="{_e(v)}">{_e(t)}</option>' for v, t in options)
    return (f'<label>{_e(label)}<select data-filter="{name}" id="filter-{name}">'
            f'<option value="">all</option>{opts}</select></label>')


def _exchange_table(report: Report) -> str:
    rows = report.deliveries
    head = (f'<section id="exchanges"><h2>Exchanges: who received what, when, and why</h2>'
            f'<p class="small">One row per exchange. Field names only, never values. {len(rows)} exchanges.</p>')
    if not rows:
        return head + '<p class="no-data">None.</p></section>'
    agencies = sorted({r["agency"] for r in rows})
    types = sorted({r["event_type"] or "" for r in rows})
    bases = sorted({(r["legal_basis"] or "", r["legal_basis_label"]) for r in rows})
    statuses = [s for s in DEADLINE_STATUSES if any(r["deadline"] == s for r in rows)]
    controls = ('<div class="controls" id="exchange-controls" role="search" aria-label="Filter the exchanges" hidden>'
                + _select("agency", "Agency", ((a, a) for a in agencies))
                + _select("event-type", "Event type", ((t, t) for t in types))
                + _select("legal-basis", "Legal basis", ((c, f"{lbl} ({c})" if lbl != c else c) for c, lbl in bases))
                + _select("deadline", "Deadline", ((s, s) for s in statuses))
                + '<label>Search<input type="search" id="filter-text" placeholder="any text"></label>'
                + '<button type="reset">Show all</button></div>'
                + f'<p class="count" id="exchange-count" aria-live="polite">{len(rows)} exchanges</p>')
    columns = [("sent", "Sent (UTC)", "text", 10), ("agency", "Agency", "text", 11), ("event", "Event", "text", 14),
               ("case", "Case", "text", 9), ("fields", "Fields received", "text", 19),
               ("basis", "Agreement and legal basis", "text", 18), ("deadline", "Deadline (UTC)", "text", 12),
               ("entry", "Log entry", "number", 7)]
    colgroup = "".join(f'<col style="width:{w}%">' for *_, w in columns)
    thead = "".join(f'<th scope="col" data-sort="{kind}" data-column="{key}">{_e(title)}</th>'
                    for key, title, kind, _ in columns)
    body = []
    for r in rows:
        received = [f"deliver by {_e(_when(r['deliver_by'])) or '-'}"]
        for what in ("received", "acknowledged", "escalated"):
            if r.get(f"{what}_at"):
                received.append(f"{what} {_e(_when(r[f'{what}_at']))}")
        if r.get("escalation_level", 0) > 1:
            received.append(f"escalation level {r['escalation_level']}")
        for key, what in (("escalation_closed_at", "escalation closed"), ("non_delivery_at", "not delivered")):
            if r.get(key):
                received.append(f"{what} {_e(_when(r[key]))}")
        extra = f"; {r['redeliveries']} redeliveries" if r["redeliveries"] else ""
        cells = [
            f'<td data-sort="{_e(r["recorded_at"])}">{_time(r["recorded_at"])}</td>',
            f"<td>{_e(r['agency'])}</td>",
            f'<td data-sort="{_e(r["event_type"])}">{_code(r["event_type"])}'
            f'<span class="small mono">{_e(r["event_id"])}</span></td>',
            f"<td>{_e(r['case'])}</td>",
            f"<td>{_e(', '.join(r['fields']))}</td>",
            f'<td data-sort="{_e(r["agreement"])}">{_e(r["agreement"])}'
            f'<span class="small">{_basis(r["legal_basis"] or "", r["legal_basis_label"])}</span></td>',
            f'<td data-sort="{_e(r["deadline"])}">{_badge(r["deadline"])}'
            f'<span class="small">{"<br>".join(received)}</span></td>',
            f'<td data-sort="{r["entry"]}">{r["entry"]}<span class="small">policy v{_e(r["policy_version"])}'
            f"{_e(extra)}</span></td>",
        ]
        body.append(f'<tr data-agency="{_e(r["agency"])}" data-event-type="{_e(r["event_type"])}" '
                    f'data-legal-basis="{_e(r["legal_basis"])}" data-deadline="{_e(r["deadline"])}">'
                    + "".join(cells) + "</tr>")
    table = (f'<table id="exchange-table"><colgroup>{colgroup}</colgroup><thead><tr>{thead}</tr></thead>'
             f'<tbody>{"".join(body)}</tbody></table>')
    return head + controls + table + "</section>"


def _table(table_id: str, rows: list[dict[str, Any]], columns: list[tuple[str, str, int]]) -> str:
    if not rows:
        return '<p class="no-data">None.</p>'
    colgroup = "".join(f'<col style="width:{w}%">' for *_, w in columns)
    head = "".join(f'<th scope="col">{_e(title)}</th>' for _, title, _ in columns)
    body = []
    for row in rows:
        cells = []
        for key, _, _ in columns:
            value = row.get(key)
            if key == "recorded_at":
                cells.append(f"<td>{_time(value)}</td>")
            else:
                cells.append(f"<td>{_e(', '.join(value) if isinstance(value, list) else value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table id="{table_id}"><colgroup>{colgroup}</colgroup><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _other_sections(report: Report) -> str:
    bases = report.legal_bases()
    basis_rows = [{"code": c, "label": lbl, "statute": LEGAL_BASES.get(c, "")} for c, lbl in bases.items()]
    parts = [
        '<section id="refusals"><h2>Refusals</h2>',
        _table("refusal-table", report.refusals, [
            ("recorded_at", "When (UTC)", 12), ("reason_code", "Code", 14), ("reason", "Reason", 34),
            ("unit", "Unit", 12), ("event_id", "Event id", 13), ("source", "Input record", 9),
            ("entry", "Log entry", 6)]),
        '</section><section id="policy-changes"><h2>Policy changes</h2>',
        _table("policy-table", report.policy_changes, [
            ("recorded_at", "When (UTC)", 14), ("policy_version", "Version", 8), ("reason", "Change", 40),
            ("policy_digest", "Policy digest", 30), ("entry", "Log entry", 8)]),
        '</section><section id="legal-bases"><h2>Legal bases in this report</h2>',
        _table("legal-basis-table", basis_rows, [("code", "Code", 28), ("label", "Name", 36),
                                                 ("statute", "What it covers", 36)]),
        "</section>",
    ]
    if report.notes:
        parts.append('<section id="notes"><h2>Notes</h2><ul>'
                     + "".join(f"<li>{_e(n)}</li>" for n in report.notes) + "</ul></section>")
    return "".join(parts)


# -- the page ----------------------------------------------------------------------------------------
def _print_rules(report: Report) -> str:
    _, _, line = _verdict(report)
    return ("@page { size: A4 landscape; margin: 16mm 10mm 14mm;"
            f" @top-center {{ content: {_css_string(MARKING)}; font: 700 10pt sans-serif; letter-spacing: .12em; }}"
            f" @top-right {{ content: {_css_string(TITLE)}; font: 8pt sans-serif; color: #555; }}"
            f" @bottom-left {{ content: {_css_string(line)}; font: 8pt sans-serif; }}"
            f" @bottom-center {{ content: {_css_string(MARKING)}; font: 700 10pt sans-serif; letter-spacing: .12em; }}"
            ' @bottom-right { content: "Page " counter(page) " of " counter(pages); font: 8pt sans-serif; } }')


def render_html(report: Report, title: str = TITLE) -> str:
    """The whole page as text (UTF-8 when written)."""
    script = (_ASSETS / "report.js").read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    csp = f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'"
    style = (_ASSETS / "report.css").read_text(encoding="utf-8") + "\n" + _print_rules(report)
    subtitle = (f"Case {report.filters.case_ref}" if report.filters.case_ref is not None else
                "Who received which fields of what, when, under which agreement and legal basis")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(MARKING)}: {_e(title)}</title><style>{style}</style></head><body>",
        f'<div class="marking" role="note">{_e(MARKING)}</div><main>',
        f'<h1>{_e(title)}</h1><p class="muted">{_e(subtitle)}</p>',
        _verification(report), _scope(report), _key_figures(report), _charts(report), _case_view(report),
        _exchange_table(report), _other_sections(report),
        f"</main><script>{script}</script></body></html>",
        "",
    ])

