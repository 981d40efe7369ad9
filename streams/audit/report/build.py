"""Who received what, when and why: build_report() selects and dedupes the log's entries.

Each exchange is counted once: a redelivery after a crash repeats the DELIVERY entry with the same
exchange_id, and the report shows it once with the number of repeats. Likewise an input record read
again after a restart may be recorded again as REFUSAL or DUPLICATE: those are counted once per
input record (their `source`, topic/partition/offset).

Case references are shown only when the per-case key is available (case key store): otherwise
"shredded" (the key was destroyed on purpose) or "sealed" (no key at hand).
"""

from __future__ import annotations

from contextlib import closing
from datetime import datetime
from typing import Any, Iterable, Sequence

from streams.policy.legal_basis_labels import legal_basis_label

from ..case_keys import CaseKeyError, CaseKeyStore, case_tag, open_sealed_case
from ..decoding import decode_entries
from ..entry import AuditEntryError
from .model import SEALED, SHREDDED, Filters, Report, ReportError, deadline_status, iso

DEADLINE_ACTIONS = ("ESCALATION", "ESCALATION_CLOSED", "NON_DELIVERY")


class _Cases:
    """Resolves an entry's sealed case to its case reference, 'shredded' or 'sealed'."""

    def __init__(self, store: CaseKeyStore | None) -> None:
        self.keys = store.keys_by_id() if store else {}
        self.shredded = store.shredded_ids() if store else set()
        # The router seals a case once per event and writes the same box in each of the event's
        # deliveries, which follow one another: the last answer is reused for the same inputs.
        self._last: tuple[tuple[Any, Any, Any], str] | None = None

    def show(self, entry: dict[str, Any]) -> str:
        key_id = entry.get("case_key_id")
        if not key_id:
            return ""
        key = self.keys.get(key_id)
        if key is None:
            return SHREDDED if key_id in self.shredded else SEALED
        inputs = (key_id, entry.get("sealed_case") or b"", entry.get("event_id"))
        if self._last is not None and self._last[0] == inputs:
            return self._last[1]
        try:
            shown = open_sealed_case(key, inputs[1], inputs[2])
        except CaseKeyError:
            shown = "unreadable"
        self._last = (inputs, shown)
        return shown


def build_report(entries: Iterable[tuple[int, bytes]], filters: Filters,
                 store: CaseKeyStore | None = None, as_of: datetime | None = None,
                 workers: int | None = None) -> Report:
    """entries: (position, entry bytes) in log order; as_of: the time deadlines are judged at (now);
    workers: processes that decode the entries (None: one per core for a large log, streams/audit/
    decoding.py; 1: all in this process). The report is the same whatever the number."""
    entries = entries if isinstance(entries, Sequence) else list(entries)
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
    by_delivery: dict[tuple[str, str], dict[str, Any]] = {}  # (event id, agency) -> row, for deadline actions
    by_source: dict[str, dict[str, Any]] = {}  # refused input record -> its refusal row, for redrives
    replayed: set[tuple[str, str]] = set()  # (kind, source): an input record handled again after a restart
    # Closed at the end, also on an error: the decoding processes (if any) stop with it.
    with closing(decode_entries([data for _, data in entries], workers)) as decoded:
        for number, ((position, _), e) in enumerate(zip(entries, decoded), start=1):
            report.entries_read = number
            if isinstance(e, AuditEntryError):
                report.notes.append(f"entry {number} (position {position}): {e}; not reported")
                continue
            at = e["recorded_at"]
            report.first_recorded_at = report.first_recorded_at or at
            report.last_recorded_at = at
            if (filters.since and at < filters.since) or (filters.until and at >= filters.until):
                continue
            kind = e["kind"]
            if kind == "POLICY_CHANGE":  # context for everything else: filtered by time only
                report.policy_changes.append({"entry": number, "position": position, "recorded_at": iso(at),
                                              "policy_version": e["policy_version"], "policy_digest": e["policy_digest"],
                                              "reason": e["reason"] or ""})
                continue
            if kind == "RECEIPT":  # belongs to the delivery it acknowledges, if that one is reported
                status, _, when = (e["reason"] or "").partition(" at ")
                row = by_envelope.get(e["envelope_sha256"])
                if row is not None and status in ("RECEIVED", "ACKNOWLEDGED") and e["agency_id"] == row["agency"]:
                    row[f"{status.lower()}_at"] = row[f"{status.lower()}_at"] or when
                continue
            if kind in DEADLINE_ACTIONS:  # like receipts: belongs to the delivery it is about
                _attach_deadline_action(by_delivery.get((e["event_id"] or "", e["agency_id"] or "")), e)
                continue
            if kind == "REDRIVE":
                refusal = by_source.get(e["source"] or "")
                if refusal is not None:
                    refusal["redriven_at"] = refusal["redriven_at"] or iso(at)
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
                    "entry": number, "position": position, "recorded_at": iso(at), "exchange_id": e["exchange_id"],
                    "event_id": e["event_id"], "event_type": e["event_type"], "case": cases.show(e),
                    "unit": e["unit_id"], "area": e["area"], "agency": e["agency_id"],
                    "agreement": f"{e['agreement_id']} v{e['agreement_version']}", "legal_basis": e["legal_basis"],
                    "policy_version": e["policy_version"], "fields": list(e["fields"]),
                    "deliver_by": iso(e["deliver_by"]), "envelope_sha256": e["envelope_sha256"],
                    "recipient_key_id": e["recipient_key_id"], "redeliveries": 0,
                    "received_at": "", "acknowledged_at": "",  # from the agency's receipts, if any
                    # Keys added in version 1 of the format (new keys only, for readers of the old ones):
                    "agreement_id": e["agreement_id"], "agreement_version": e["agreement_version"],
                    "legal_basis_label": legal_basis_label(e["legal_basis"]),
                    # From the deadline agent's entries about this delivery (docs/deadlines.md).
                    "escalated_at": "", "escalation_level": 0, "escalation_closed_at": "", "non_delivery_at": "",
                }
                by_envelope[e["envelope_sha256"]] = row
                by_delivery[(e["event_id"] or "", e["agency_id"] or "")] = row
                seen[e["exchange_id"]] = row
                report.deliveries.append(row)
                # The same input record read again (after a restart or rebalance) is then suppressed as a
                # DUPLICATE: that is a replay of this delivery, not a republication by the unit.
                replayed.add(("DUPLICATE", e["source"] or ""))
            elif kind in ("REFUSAL", "DUPLICATE") and e["source"] and (kind, e["source"]) in replayed:
                report.replays += 1
            elif kind == "REFUSAL":
                replayed.add((kind, e["source"] or ""))
                row = {"entry": number, "position": position, "recorded_at": iso(at),
                       "reason_code": e["reason_code"], "reason": e["reason"] or "",
                       "unit": e["unit_id"] or "", "event_id": e["event_id"] or "",
                       "source": e["source"] or "", "policy_version": e["policy_version"],
                       "redriven_at": ""}  # added: the first REDRIVE of its dead letter
                report.refusals.append(row)
                by_source.setdefault(e["source"] or "", row)
            elif kind == "DUPLICATE":
                replayed.add((kind, e["source"] or ""))
                report.duplicates_suppressed += 1
    judged_at = as_of or filters.until or report.generated_at
    report.deadlines_judged_at = judged_at
    for row in report.deliveries:
        row["deadline"] = deadline_status(row, judged_at)
    return report


def _attach_deadline_action(row: dict[str, Any] | None, e: dict[str, Any]) -> None:
    """An ESCALATION, ESCALATION_CLOSED or NON_DELIVERY entry on its delivery's row; an action
    recorded again (same action id, after a restart) changes nothing."""
    if row is None:
        return
    at = iso(e["recorded_at"])
    if e["kind"] == "ESCALATION":
        row["escalated_at"] = row["escalated_at"] or at
        row["escalation_level"] = max(row["escalation_level"], e["level"] or 1)
    elif e["kind"] == "ESCALATION_CLOSED":
        row["escalation_closed_at"] = row["escalation_closed_at"] or at
    else:
        row["non_delivery_at"] = row["non_delivery_at"] or at
