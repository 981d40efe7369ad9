"""Offline audit tools: proof files, reports and the case key store, on logs built in memory."""

from __future__ import annotations

import base64
import csv
import io
import json
import stat
from datetime import datetime, timedelta, timezone

import nacl.signing
import pytest

from streams.audit.case_keys import CaseKeyError, CaseKeyStore, open_sealed_case
from streams.audit.checkpoint import Checkpoint, sign_checkpoint, verifier_key_string
from streams.audit.entry import decode_entry, encode_entry, make_entry
from streams.audit.merkle import CompactRange, leaf_hash
from streams.audit.proof import ProofError, check_proof, make_consistency_proof, make_inclusion_proof, \
    parse_proof_file
from streams.audit.report import Filters, ReportError, build_report, render_csv, render_html, render_json, \
    report_document, verify_for_report
from streams.audit.report.aggregate import buckets_for, counts_over_time, top_series
from streams.audit.verify import verify_log

ORIGIN = "masb.example/audit/offline"
KEY = nacl.signing.SigningKey(bytes(range(7, 39)))
VKEYS = [verifier_key_string(ORIGIN, KEY.verify_key)]
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)
CASES = ["WM-AAAA111111", "WM-BBBB222222"]


def delivery(store: CaseKeyStore | None, n: int, case: str, agency: str, **extra) -> bytes:
    event_id = f"00000000-0000-4000-8000-{n:012d}"
    fields = store.seal(case, event_id).as_entry_fields() if store else {}
    values = dict(recorded_at=T0 + timedelta(hours=n), event_id=event_id, event_type="MARAC_REFERRAL",
                  unit_id="hau-worcestershire", area="worcestershire", agency_id=agency, agreement_id=f"isa-{agency}",
                  agreement_version=2, policy_version=1, policy_digest="ab" * 32,
                  legal_basis="CHILDREN_ACT_2004" if agency == "childrens" else "UK_GDPR_6_1_E_9_2_G_DPA_SCH1_18",
                  fields=["victim.name", "header.case_ref"], envelope_sha256="cd" * 32, recipient_key_id="k1")
    values.update(extra)
    return encode_entry(make_entry("DELIVERY", **fields, **values))


@pytest.fixture
def store(tmp_path) -> CaseKeyStore:
    return CaseKeyStore(tmp_path / "case-keys")


@pytest.fixture
def log(store):
    """12 entries: a policy change, 10 deliveries over two cases, a refusal; checkpoints at 4 and 8."""
    entries = [encode_entry(make_entry("POLICY_CHANGE", recorded_at=T0, policy_version=1,
                                       reason="policy in force changed from none to version 1"))]
    for n in range(1, 11):
        entries.append(delivery(store, n, CASES[n % 2], ["health", "idva", "childrens"][n % 3]))
    entries.append(encode_entry(make_entry("REFUSAL", recorded_at=T0 + timedelta(hours=11), reason_code="MALFORMED",
                                           reason="publication is not valid <Avro>", source="case-events/0/9")))
    notes, cr = [], CompactRange()
    for e in entries:
        cr.append(leaf_hash(e))
        if cr.size in (4, 8, 12):
            notes.append(sign_checkpoint(Checkpoint(ORIGIN, cr.size, cr.root()), ORIGIN, KEY))
    return entries, notes


# -- proofs -----------------------------------------------------------------------------------------
def test_inclusion_proof_round_trip_uses_latest_covering_checkpoint(log) -> None:
    entries, notes = log
    doc = json.loads(json.dumps(make_inclusion_proof(entries, notes[:2], VKEYS, ORIGIN, [2, 5])))
    assert doc["tree_size"] == 8 and [i["index"] for i in doc["inclusions"]] == [2, 5]
    checked = check_proof(parse_proof_file(json.dumps(doc)), VKEYS, ORIGIN)
    assert [e["agency_id"] for _, e in checked.entries] == [decode_entry(entries[i])["agency_id"] for i in (2, 5)]
    assert checked.checkpoint.size == 8


def test_inclusion_proof_needs_a_covering_checkpoint(log) -> None:
    entries, notes = log
    with pytest.raises(ProofError, match="entry 10 is not yet covered"):
        make_inclusion_proof(entries, notes[:2], VKEYS, ORIGIN, [9])


def test_inclusion_proof_refuses_a_log_that_does_not_match_its_checkpoints(log) -> None:
    entries, notes = log
    changed = list(entries)
    changed[1] = delivery(None, 99, CASES[0], "health")
    with pytest.raises(ProofError, match="no signed checkpoint that the log matches"):
        make_inclusion_proof(changed, notes, VKEYS, ORIGIN, [2])


def _mutations(doc: dict):
    inc = doc["inclusions"][0]
    other = delivery(None, 1, CASES[0], "someone-else")
    yield "entry replaced", {**doc, "inclusions": [{**inc, "entry": base64.b64encode(other).decode()}]}
    yield "index moved", {**doc, "inclusions": [{**inc, "index": inc["index"] + 1}]}
    h = bytearray(base64.b64decode(inc["proof"][0]))
    h[0] ^= 1
    yield "hash flipped", {**doc, "inclusions": [{**inc, "proof": [base64.b64encode(h).decode()] + inc["proof"][1:]}]}
    yield "hash dropped", {**doc, "inclusions": [{**inc, "proof": inc["proof"][:-1]}]}
    yield "size changed", {**doc, "tree_size": doc["tree_size"] + 1}
    sig_line = doc["checkpoint"].rstrip("\n").rsplit("\n", 1)[1]
    yield "root changed", {**doc, "checkpoint": doc["checkpoint"].replace(
        doc["checkpoint"].split("\n")[2], base64.b64encode(bytes(32)).decode())}
    yield "unsigned", {**doc, "checkpoint": doc["checkpoint"].replace(sig_line, "")}
    yield "wrong type", {**doc, "type": "consistency"}


def test_every_mutation_of_an_inclusion_proof_is_refused(log) -> None:
    entries, notes = log
    doc = make_inclusion_proof(entries, notes, VKEYS, ORIGIN, [3])
    check_proof(doc, VKEYS, ORIGIN)
    for what, bad in _mutations(doc):
        with pytest.raises(ProofError):
            check_proof(json.loads(json.dumps(bad)), VKEYS, ORIGIN)
            pytest.fail(f"accepted a proof with {what}")


def test_proof_signed_by_another_key_is_refused(log) -> None:
    entries, notes = log
    doc = make_inclusion_proof(entries, notes, VKEYS, ORIGIN, [3])
    other = [verifier_key_string(ORIGIN, nacl.signing.SigningKey(bytes(32)).verify_key)]
    with pytest.raises(ProofError, match="checkpoint: refused"):
        check_proof(doc, other, ORIGIN)


def test_consistency_proof_round_trip_and_refusals(log) -> None:
    entries, notes = log
    doc = make_consistency_proof(entries, notes, VKEYS, ORIGIN, 4, 12)
    checked = check_proof(json.loads(json.dumps(doc)), VKEYS, ORIGIN)
    assert (checked.old_checkpoint.size, checked.checkpoint.size) == (4, 12)
    swapped = {**doc, "old_checkpoint": notes[1], "old_size": 8}  # proof made for 4 -> 12
    with pytest.raises(ProofError, match="does not verify"):
        check_proof(swapped, VKEYS, ORIGIN)
    with pytest.raises(ProofError, match="no signed checkpoint of size 5"):
        make_consistency_proof(entries, notes, VKEYS, ORIGIN, 5, 12)


def test_proof_file_must_be_a_masb_proof() -> None:
    for text in ("[]", "{}", '{"format": "masb-audit-proof", "version": 2}', "not json"):
        with pytest.raises(ProofError):
            parse_proof_file(text)


# -- reports ----------------------------------------------------------------------------------------
def test_report_counts_each_exchange_once_and_keeps_sections(log, store) -> None:
    entries, _ = log
    redelivered = decode_entry(entries[3])
    redelivered["recorded_at"] += timedelta(minutes=5)  # the router re-sent after a crash
    replayed = decode_entry(entries[-1])
    replayed["recorded_at"] += timedelta(minutes=5)  # the same input record refused again after a restart
    more = [encode_entry(redelivered), encode_entry(replayed)]
    report = build_report(list(enumerate(entries + more)), Filters(), store)
    assert len(report.deliveries) == 10 and report.redeliveries == 1 and report.replays == 1
    assert next(r for r in report.deliveries if r["entry"] == 4)["redeliveries"] == 1
    assert [r["reason_code"] for r in report.refusals] == ["MALFORMED"]
    assert [r["policy_version"] for r in report.policy_changes] == [1]
    assert {r["case"] for r in report.deliveries} == set(CASES)


def test_a_sealed_case_copied_onto_the_next_entry_of_another_event_is_not_shown(store) -> None:
    original = decode_entry(delivery(store, 1, CASES[0], "health"))
    copied = dict(original, event_id="00000000-0000-4000-8000-000000000002", agency_id="idva")
    copied["exchange_id"] = "ef" * 16
    same_event = dict(original, agency_id="childrens", exchange_id="12" * 16)
    entries = [encode_entry(e) for e in (original, copied, same_event)]
    report = build_report(list(enumerate(entries)), Filters(), store)
    assert [r["case"] for r in report.deliveries] == [CASES[0], "unreadable", CASES[0]]


def test_a_large_log_decoded_in_worker_processes_gives_the_same_report(store) -> None:
    from streams.audit.decoding import CHUNK, _fork

    assert _fork() is not None  # on Linux, with no other thread: the workers really run
    entries = [delivery(store, n, CASES[n % 2], ["health", "idva", "childrens"][n % 3]) for n in range(2 * CHUNK + 99)]
    entries.insert(CHUNK + 7, b"\x01not avro")  # in the second chunk: the note names its place
    pairs = list(enumerate(entries, start=1000))
    here, workers = (build_report(pairs, Filters(), store, workers=n) for n in (1, 2))
    assert render_csv(workers) == render_csv(here) and len(here.deliveries) == 2 * CHUNK + 99
    assert workers.notes == here.notes and len(here.notes) == 1
    assert here.notes[0].startswith(f"entry {CHUNK + 8} (position {CHUNK + 1007}): undecodable audit entry")
    assert workers.summary() == here.summary()


def test_report_filters(log, store) -> None:
    entries, _ = log
    pairs = list(enumerate(entries))

    def rows(**f):
        return build_report(pairs, Filters(**f), store).deliveries

    assert {r["agency"] for r in rows(agency="idva")} == {"idva"} and len(rows(agency="idva")) == 4
    assert {r["case"] for r in rows(case_ref=CASES[0])} == {CASES[0]} and len(rows(case_ref=CASES[0])) == 5
    assert len(rows(legal_basis="CHILDREN_ACT_2004")) == 3
    assert rows(event_type="CASE_CLOSED") == []
    window = rows(since=T0 + timedelta(hours=3), until=T0 + timedelta(hours=5))
    assert [r["entry"] for r in window] == [4, 5]  # since inclusive, until exclusive
    assert build_report(pairs, Filters(agency="idva"), store).refusals == []
    with pytest.raises(ReportError, match="needs the case key store"):
        build_report(pairs, Filters(case_ref=CASES[0]), None)


def test_report_formats_escape_everything(log, store) -> None:
    entries, _ = log
    hostile = delivery(store, 20, CASES[0], "<script>alert(1)</script>", fields=["=cmd|' /C calc'!A0"])
    report = build_report(list(enumerate(entries + [hostile])), Filters(), store)
    page = render_html(report)
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page and "not valid &lt;Avro&gt;" in page
    assert page.count("<script") == 1  # the page's own, allowed by its hash in the Content-Security-Policy
    assert page.startswith("<!DOCTYPE html>") and "Refusals" in page and "Policy changes" in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert {r["section"] for r in rows} == {"delivery", "refusal", "policy_change"}
    assert next(r for r in rows if r["entry"] == "13")["fields"].startswith("'=")  # no spreadsheet formula
    doc = json.loads(render_json(report))
    assert doc["summary"]["exchanges"] == 11 and doc["format"] == "masb-audit-report"
    assert render_json(report) == json.dumps(report_document(report), indent=2) + "\n"  # the documented layout


def receipt(n: int, agency: str, after: timedelta, status: str = "RECEIVED") -> bytes:
    """The agency's receipt for delivery n (same envelope hash), `after` the delivery."""
    at = T0 + timedelta(hours=n) + after
    return encode_entry(make_entry("RECEIPT", recorded_at=at, event_id=f"00000000-0000-4000-8000-{n:012d}",
                                   agency_id=agency, policy_version=1, envelope_sha256=f"{n:02d}" * 32,
                                   recipient_key_id="k2", reason=f"{status} at {at.isoformat()}"))


def test_report_json_keeps_every_version_1_key_and_csv_its_columns(log, store) -> None:
    entries, notes = log
    pairs = list(enumerate(entries))
    report = build_report(pairs, Filters(), store)
    report.set_verification(verify_for_report(pairs, notes, VKEYS, ORIGIN))
    doc = json.loads(render_json(report))
    assert list(doc)[:9] == ["format", "version", "filters", "verification", "summary", "deliveries", "refusals",
                             "policy_changes", "notes"] and doc["version"] == 1
    assert doc["verification"].startswith("intact: 12 entries, 12 covered by signed checkpoints at ")
    first = {"entry", "position", "recorded_at", "exchange_id", "event_id", "event_type", "case", "unit", "area",
             "agency", "agreement", "legal_basis", "policy_version", "fields", "deliver_by", "envelope_sha256",
             "recipient_key_id", "redeliveries", "received_at", "acknowledged_at", "deadline"}
    assert all(first <= set(row) for row in doc["deliveries"])
    assert doc["deliveries"][0]["agreement"] == "isa-idva v2" and doc["deliveries"][0]["agreement_id"] == "isa-idva"
    assert set(doc["summary"]["deadlines"]) == {"received on time", "received late", "overdue", "escalated",
                                                "awaiting receipt", "no deadline"}
    assert doc["summary"]["deadlines"]["escalated"] == 0  # this log has no ESCALATION entries
    assert doc["summary"]["deadlines_by_agency"]["idva"]["no deadline"] == 4
    assert doc["summary"]["refusals_by_reason"] == {"MALFORMED": 1}
    assert doc["log"]["checkpoint"]["size"] == 12 and doc["log"]["checkpoint"]["cosigners"] == []
    assert doc["period"] == {"from": "2025-03-01T09:00:00Z", "to": "2025-03-01T20:00:00Z"}
    assert doc["legal_bases"]["CHILDREN_ACT_2004"].startswith("Children Act 2004")
    assert doc["case_timeline"] is None and doc["masb_version"]
    header = render_csv(report).split("\r\n")[0]
    assert header == ("section,entry,position,recorded_at,exchange_id,event_id,event_type,case,unit,area,agency,"
                      "agreement,legal_basis,policy_version,fields,deliver_by,redeliveries,received_at,"
                      "acknowledged_at,deadline,reason_code,reason,source,policy_digest,envelope_sha256,"
                      "recipient_key_id")


def test_report_names_the_checkpoint_and_the_witnesses_it_verified_against(log) -> None:
    entries, notes = log
    pairs = list(enumerate(entries))
    checked = verify_for_report(pairs, notes, VKEYS, ORIGIN, cosigners=["witness.example/a", "witness.example/b"])
    root = base64.b64encode(_root(entries)).decode()
    assert checked.intact and (checked.checkpoint.number, checked.checkpoint.size) == (3, 12)
    assert checked.checkpoint.root == root and checked.checkpoint.origin == ORIGIN
    report = build_report(pairs, Filters())
    report.set_verification(checked)
    page = render_html(report)
    assert '<p class="verdict">Log verified: intact</p>' in page and root in page
    assert "witness.example/a" in page and "witness.example/b" in page
    assert "Log verified: intact against checkpoint 3 (size 12" in page  # printed on every page (@page)

    shorter = verify_for_report(pairs[:10], notes, VKEYS, ORIGIN)  # entries 11 and 12 deleted
    assert not shorter.intact and shorter.checkpoint.size == 8 and shorter.problems
    report.set_verification(shorter)
    page = render_html(report)
    assert 'class="banner bad"' in page and "Log NOT verified" in page and "entries 11..12 are missing" in page
    assert json.loads(render_json(report))["log"]["intact"] is False


def _root(entries: list[bytes]) -> bytes:
    cr = CompactRange()
    for e in entries:
        cr.append(leaf_hash(e))
    return cr.root()


def test_report_html_shows_only_what_the_filters_select(log, store) -> None:
    entries, _ = log
    page = render_html(build_report(list(enumerate(entries)), Filters(agency="idva"), store))
    assert page.count('<tr data-agency="idva"') == 4 and "<tr data-agency=" not in page.replace(
        '<tr data-agency="idva"', "")
    assert "isa-health" not in page and "isa-childrens" not in page  # not in the table, the charts or a filter
    assert "MALFORMED" not in page  # a refusal has no agency: excluded by the agency filter
    assert "victim.name" in page and "Children Act" not in page


def test_case_timeline_runs_in_time_order_from_routing_to_receipts(log, store) -> None:
    entries, _ = log
    more = [receipt(1, "idva", timedelta(minutes=30)), receipt(1, "idva", timedelta(minutes=90), "ACKNOWLEDGED")]
    entries = [delivery(store, n, CASES[n % 2], ["health", "idva", "childrens"][n % 3],
                        envelope_sha256=f"{n:02d}" * 32, deliver_by=T0 + timedelta(hours=n, minutes=45))
               for n in range(1, 11)] + more
    report = build_report(list(enumerate(entries)), Filters(case_ref=CASES[1]), store)
    doc = json.loads(render_json(report))
    steps = doc["case_timeline"]
    assert [s["at"] for s in steps] == sorted(s["at"] for s in steps)
    assert [s["step"] for s in steps[:4]] == ["routed", "delivered", "received", "acknowledged"]
    assert steps[1]["agency"] == "idva" and steps[1]["fields"] == ["header.case_ref", "victim.name"]
    assert steps[1]["legal_basis_label"].startswith("UK GDPR") and steps[1]["deadline"] == "received on time"
    assert {s["event_id"] for s in steps} == {f"00000000-0000-4000-8000-{n:012d}" for n in (1, 3, 5, 7, 9)}
    page = render_html(report)
    assert page.index('<li data-step="routed"') < page.index('<li data-step="delivered"') \
        < page.index('<li data-step="received"')
    assert "Case WM-BBBB222222: timeline" in page


def test_charts_count_into_calendar_buckets() -> None:
    t = datetime(2025, 3, 5, 10, 17, 30, tzinfo=timezone.utc)  # a Wednesday
    assert buckets_for(t, t + timedelta(minutes=30)).unit == "minute"
    assert buckets_for(t, t + timedelta(hours=20)).unit == "hour"
    assert buckets_for(t, t + timedelta(days=30)).unit == "day"
    weeks = buckets_for(t, t + timedelta(days=200))
    assert weeks.unit == "week" and weeks.starts[0] == datetime(2025, 3, 3, tzinfo=timezone.utc)
    months = buckets_for(t, t + timedelta(days=800))
    assert months.unit == "month" and months.starts[:2] == (datetime(2025, 3, 1, tzinfo=timezone.utc),
                                                            datetime(2025, 4, 1, tzinfo=timezone.utc))
    assert buckets_for(t, t + timedelta(days=365 * 20)).unit == "year"
    hours = buckets_for(t, t + timedelta(hours=3))
    rows = [{"recorded_at": (t + timedelta(minutes=m)).isoformat(), "agency": a}
            for m, a in ((0, "idva"), (50, "idva"), (110, "health"), (170, "idva"))]
    assert hours.unit == "hour" and len(hours.starts) == 4
    assert counts_over_time(rows, lambda r: r["agency"], hours) == {"idva": [1, 1, 0, 1], "health": [0, 0, 1, 0]}
    series = {f"a{i}": [i] for i in range(12)}
    assert top_series(series, 9, "other") == {**{f"a{i}": [i] for i in range(9)}, "other": [9 + 10 + 11]}


def test_charts_draw_any_label_as_plain_escaped_text(log, store) -> None:
    entries, _ = log
    odd = [delivery(store, 12, CASES[0], "$\\alpha$ & <b>co</b>"), delivery(store, 13, CASES[0], "{{x}} %s \\n")]
    page = render_html(build_report(list(enumerate(entries + odd)), Filters(), store))
    charts = page[page.index('<section id="charts">'):page.index('<section id="exchanges">')]
    assert charts.count("<svg") == 4 and "$\\alpha$ &amp; &lt;b&gt;co&lt;/b&gt;" in charts
    assert "<b>co</b>" not in page and "http" not in charts


# -- case keys --------------------------------------------------------------------------------------
def test_case_keys_are_0600_files_that_do_not_name_the_case(store) -> None:
    fields = store.seal(CASES[0], "e1")
    assert store.seal(CASES[0], "e2").case_key_id == fields.case_key_id  # one key per case
    assert store.seal(CASES[1], "e3").case_key_id != fields.case_key_id
    for path in store.dir.iterdir():
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
            assert CASES[0].encode() not in path.read_bytes() and CASES[0] not in path.name
    assert CASES[0].encode() not in fields.sealed_case


def test_sealed_case_is_bound_to_its_event(store) -> None:
    fields = store.seal(CASES[0], "e1")
    key = store.keys_by_id()[fields.case_key_id]
    assert open_sealed_case(key, fields.sealed_case, "e1") == CASES[0]
    with pytest.raises(CaseKeyError):
        open_sealed_case(key, fields.sealed_case, "e2")  # copied onto another event's entry


def test_shredding_keeps_the_log_verifiable_and_the_case_unlinkable(log, store) -> None:
    entries, notes = log
    pairs = list(enumerate(entries))
    before = build_report(pairs, Filters(case_ref=CASES[0]), store)
    assert len(before.deliveries) == 5
    key_id = store.shred(CASES[0])
    assert key_id and store.shred(CASES[0]) is None
    assert verify_log(pairs, notes, VKEYS, ORIGIN).ok  # not one entry byte changed
    after = build_report(pairs, Filters(), store)
    assert {r["case"] for r in after.deliveries} == {"shredded", CASES[1]}
    assert build_report(pairs, Filters(case_ref=CASES[0]), store).deliveries == []
    assert key_id not in store.keys_by_id() and key_id in store.shredded_ids()
    assert not any(CASES[0].encode() in p.read_bytes() for p in store.dir.rglob("*") if p.is_file())
    # The same case reference seen again gets a new key: the shredded entries stay unlinked.
    assert store.seal(CASES[0], "later").case_key_id != key_id


def test_a_second_process_uses_the_key_the_first_created(tmp_path) -> None:
    a, b = CaseKeyStore(tmp_path / "ck"), CaseKeyStore(tmp_path / "ck")
    first = a.key_for(CASES[0])
    assert b.key_for(CASES[0]) == first
    a.shred(CASES[0])
    renewed = b.key_for(CASES[0])  # b had it cached: it notices the file is gone
    assert renewed.key_id != first.key_id and a.key_for(CASES[0]) == renewed
