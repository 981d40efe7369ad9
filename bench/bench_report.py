"""Exchange report cost on synthetic logs: build (decode, dedupe, receipts), verify, and each format
(CSV, JSON, HTML with its four matplotlib charts). Pure CPU, no Kafka.

  .venv/bin/python bench/bench_report.py [--events 200 2000 20000] [--html FILE --case-ref REF]

The log: events over two weeks from the West Mercia demo's units, each to 2-5 agencies under their
agreements' legal bases, most received on time, some late, some never; a few refusals. With --html
the page for the first size is written to FILE (docs/report-screenshot.png is made from it).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import nacl.signing

from streams.audit.case_keys import CaseKeyStore
from streams.audit.checkpoint import Checkpoint, sign_checkpoint, verifier_key_string
from streams.audit.entry import encode_entry, make_entry
from streams.audit.merkle import CompactRange, leaf_hash
from streams.audit.report import Filters, build_report, render_csv, render_html, render_json, verify_for_report

ORIGIN = "masb.example/audit/bench"
KEY = nacl.signing.SigningKey(bytes(range(32)))
T0 = datetime(2025, 3, 3, 8, 0, tzinfo=timezone.utc)
AGENCIES = (("nhs-worcs-acute", "UK_GDPR_6_1_E_9_2_G_DPA_SCH1_18", 6),
            ("worcs-housing", "UK_GDPR_6_1_E_9_2_G_DPA_SCH1_18", 24),
            ("worcs-childrens-services", "CHILDREN_ACT_2004", 6),
            ("idva-west-mercia", "CRIME_AND_DISORDER_ACT_1998_S115", 2),
            ("probation-west-mercia", "DPA_2018_PART_3", 24),
            ("school-oakfield-primary", "CHILDREN_ACT_2004", 12))
EVENT_TYPES = ("RISK_ASSESSMENT_COMPLETED", "MARAC_REFERRAL", "CHILD_NOTIFICATION", "PROTECTION_NOTICE_ISSUED")
FIELDS = ("header.case_ref", "risk.level", "victim.name", "victim.date_of_birth", "perpetrator.name")
REFUSALS = ("MALFORMED", "UNKNOWN_SCHEMA", "BAD_SIGNATURE", "UNIT_NOT_ALLOWED")


def synthetic_log(events: int, store: CaseKeyStore, seed: int = 7) -> tuple[list[bytes], list[str]]:
    """The entries of ``events`` events (about 6.3 entries each) and a checkpoint every 1,000 entries,
    signed by KEY for ORIGIN. ``store``: anything with ``seal(case_ref, event_id)`` (the file store, or
    the shared one: bench_audit_commands.py)."""
    entries = synthetic_entries(events, store, seed)
    return entries, [note for note, _ in signed_checkpoints(entries, ORIGIN, KEY)]


def synthetic_entries(events: int, store, seed: int = 7) -> list[bytes]:
    rnd = random.Random(seed)
    step = timedelta(days=14) / events
    entries = [encode_entry(make_entry("POLICY_CHANGE", recorded_at=T0, policy_version=1, policy_digest="ab" * 32,
                                       reason="policy in force changed from none to version 1"))]
    for n in range(events):
        at = T0 + step * n
        if rnd.random() < 0.04:
            entries.append(encode_entry(make_entry("REFUSAL", recorded_at=at, reason_code=rnd.choice(REFUSALS),
                                                   reason="refused", source=f"case-events/0/{n}", policy_version=1)))
            continue
        event_id = f"00000000-0000-4000-8000-{n:012d}"
        case = store.seal(f"WM-{n % max(1, events // 3):010d}", event_id).as_entry_fields()
        event_type = rnd.choice(EVENT_TYPES)
        for agency, basis, hours in rnd.sample(AGENCIES, rnd.randint(2, 5)):
            envelope = f"{n:040x}{AGENCIES.index((agency, basis, hours)):024x}"
            due = at + timedelta(hours=hours)
            entries.append(encode_entry(make_entry(
                "DELIVERY", **case, recorded_at=at, event_id=event_id, event_type=event_type,
                unit_id="hau-worcestershire", area="worcestershire", agency_id=agency, agreement_id=f"isa-{agency}",
                agreement_version=2, policy_version=1, policy_digest="ab" * 32, legal_basis=basis,
                fields=rnd.sample(FIELDS, rnd.randint(2, 5)), envelope_sha256=envelope, recipient_key_id="k1",
                deliver_by=due, source=f"case-events/0/{n}")))
            luck = rnd.random()
            if luck < 0.85:
                when = at + timedelta(hours=hours) * (rnd.random() * 0.9 if luck < 0.75 else 1.2)
                entries.append(encode_entry(make_entry(
                    "RECEIPT", recorded_at=when, event_id=event_id, agency_id=agency, policy_version=1,
                    envelope_sha256=envelope, recipient_key_id="k2", reason=f"RECEIVED at {when.isoformat()}")))
    return entries


def signed_checkpoints(entries: list[bytes], origin: str, key: nacl.signing.SigningKey,
                       every: int = 1000) -> Iterator[tuple[str, CompactRange]]:
    """(signed note, the tree at its size) every ``every`` entries and at the end. The tree is the
    live one: use it before taking the next item."""
    cr = CompactRange()
    for entry in entries:
        cr.append(leaf_hash(entry))
        if cr.size % every == 0 or cr.size == len(entries):
            yield sign_checkpoint(Checkpoint(origin, cr.size, cr.root()), origin, key), cr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, nargs="+", default=[200, 2000, 20000])
    ap.add_argument("--html", help="write the HTML report of the first size here")
    ap.add_argument("--case-ref", help="with --html: the case view of this case reference instead")
    args = ap.parse_args()
    verifiers = [verifier_key_string(ORIGIN, KEY.verify_key)]
    print(f"{'events':>7} {'entries':>8} {'exchanges':>9} {'build s':>8} {'verify s':>8} {'csv s':>6} "
          f"{'json s':>6} {'html s':>6} {'html MB':>7}")
    for size_number, events in enumerate(args.events):
        with tempfile.TemporaryDirectory() as tmp:
            store = CaseKeyStore(f"{tmp}/case-keys")
            entries, notes = synthetic_log(events, store)
            pairs = list(enumerate(entries))
            case = args.case_ref if args.html and size_number == 0 else None
            t0 = time.perf_counter()
            report = build_report(pairs, Filters(case_ref=case), store,
                                  as_of=T0 + timedelta(days=14, hours=2))
            t1 = time.perf_counter()
            report.set_verification(verify_for_report(pairs, notes, verifiers, ORIGIN))
            t2 = time.perf_counter()
            render_csv(report)
            t3 = time.perf_counter()
            render_json(report)
            t4 = time.perf_counter()
            page = render_html(report)
            t5 = time.perf_counter()
            print(f"{events:>7} {len(entries):>8} {len(report.deliveries):>9} {t1 - t0:>8.2f} {t2 - t1:>8.2f} "
                  f"{t3 - t2:>6.2f} {t4 - t3:>6.2f} {t5 - t4:>6.2f} {len(page.encode()) / 1e6:>7.1f}", flush=True)
            if args.html and size_number == 0:
                with open(args.html, "w", encoding="utf-8") as f:
                    f.write(page)


if __name__ == "__main__":
    main()
