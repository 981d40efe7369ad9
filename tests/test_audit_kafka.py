"""The exchange log on Apache Kafka, as auditors use it: `masb audit verify` finds every kind of
tampering and says where; proofs are checked offline and a changed proof is refused; reports say
who received what, under which agreement; shredding a case keeps the log verifiable and makes the
case unlinkable; a worker restart leaves no gap, fork or double entry."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agents.cli import main
from agents.deployment import WorkerProcess, worker_env
from streams.audit.checkpoint import open_checkpoint
from streams.audit.checkpoint_record import note_of
from streams.auditing import DEFAULT_ORIGIN, checkpoint_verifiers
from tests.audit_tamper import copy_log_with
from tests.harness import demo_event, running_deployment

pytestmark = pytest.mark.kafka

SHROPSHIRE_CASE = "WM-3HX8P2LQ7N"


@pytest.fixture(scope="module")
def audited(kafka, tmp_path_factory):
    """A deployment that routed the demo's DASH, MARAC and protection notice events, a garbage record
    and a republication, with two signed checkpoints (before and after the last two)."""
    with running_deployment(kafka, tmp_path_factory.mktemp("audit")) as running:
        dash, marac, notice = (demo_event(n) for n in ("01_dash_worcestershire", "02_marac_worcestershire",
                                                         "04_protection_notice_shropshire"))
        running.publish(dash, marac)
        running.publish(notice)
        running.wait_audit(lambda e: e["kind"] == "DELIVERY" and e["event_id"] == notice["header"]["event_id"])
        first = wait_covered(running)
        running.send_raw(b"k", b"not a publication")
        running.publish(dash)  # the same event again: suppressed as a duplicate
        running.wait_audit(lambda e: e["kind"] == "DUPLICATE")
        second = wait_covered(running, more_than=first)
        yield running, {"dash": dash, "marac": marac, "notice": notice, "sizes": (first, second)}


def checkpoint_sizes(running) -> list[int]:
    verifiers = checkpoint_verifiers(running.policy, DEFAULT_ORIGIN)
    return [open_checkpoint(note_of(r.value), verifiers, DEFAULT_ORIGIN).size
            for r in running.records(running.topics.checkpoints)]


def wait_covered(running, more_than: int = 0) -> int:
    """Ask for a checkpoint until one covers every entry of the log; return its size."""
    def covered():
        running.worker.request_checkpoint()
        sizes = checkpoint_sizes(running)
        n = len(running.records(running.topics.audit))
        return n if sizes and sizes[-1] == n and n > more_than else None

    return running.wait_for(covered, what="a checkpoint covering the log")


def masb(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().out


def audit_args(running, *args: str, prefix: str | None = None) -> list[str]:
    return ["audit", *args, "--bootstrap", running.bootstrap, "--topic-prefix", prefix or running.topics.prefix,
            "--policy", str(running.deployment.policy_path)]


# -- tampering ------------------------------------------------------------------------------------
@pytest.mark.parametrize("how, index, expected", [
    ("alter", 5, ["root mismatch", "altered, reordered or truncated at or before entry"]),
    ("delete", 5, ["root mismatch"]),
    ("insert", 5, ["root mismatch"]),
    ("reorder", 5, ["root mismatch"]),
    ("truncate", 3, ["the log has only 3 entries", "entries 4.."]),
    ("forge", 1, ["checkpoint 2: bad signature for key"]),
])
def test_verify_finds_each_tampering_and_names_the_place(audited, capsys, how, index, expected) -> None:
    running, _ = audited
    code, out = masb(capsys, *audit_args(running, "verify", prefix=copy_log_with(running, how, index)))
    assert code == 1 and "NOT intact" in out, out
    for text in expected:
        assert text in out, out


def test_untouched_log_verifies_from_kafka_and_from_an_export(audited, capsys, tmp_path) -> None:
    running, _ = audited
    code, out = masb(capsys, *audit_args(running, "verify"))
    assert code == 0 and "audit log intact" in out, out
    code, out = masb(capsys, *audit_args(running, "export", str(tmp_path / "bundle")))
    assert code == 0 and "checkpoints to" in out
    # The bundle verifies with Kafka gone (a bootstrap nobody listens on).
    code, out = masb(capsys, "audit", "verify", "--from-export", str(tmp_path / "bundle"), "--bootstrap",
                     "127.0.0.1:1", "--policy", str(running.deployment.policy_path))
    assert code == 0 and "audit log intact" in out, out
    entries = tmp_path / "bundle" / "entries.bin"
    data = bytearray(entries.read_bytes())
    data[-5] ^= 1
    entries.write_bytes(bytes(data))
    code, out = masb(capsys, "audit", "verify", "--from-export", str(tmp_path / "bundle"),
                     "--policy", str(running.deployment.policy_path))
    assert code == 1 and "entries.bin" in out, out


# -- proofs ---------------------------------------------------------------------------------------
def test_prove_and_check_proof_offline_round_trip(audited, capsys, tmp_path) -> None:
    running, events = audited
    event_id = events["marac"]["header"]["event_id"]
    proof = tmp_path / "marac.proof.json"
    code, _ = masb(capsys, *audit_args(running, "prove", event_id, "--out", str(proof)))
    assert code == 0
    doc = json.loads(proof.read_text())
    shares = running.policy.routing("MARAC_REFERRAL", "worcestershire")
    assert len(doc["inclusions"]) == len(shares) and doc["tree_size"] in audited[1]["sizes"]
    # Offline: a separate process with no Kafka settings at all.
    result = subprocess.run([sys.executable, "-m", "agents", "audit", "check-proof", str(proof),
                             "--policy", str(running.deployment.policy_path)],
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "MASB_STATE_DIR": str(tmp_path / "state")})
    assert result.returncode == 0, result.stdout + result.stderr
    for share in shares:
        assert f"to {share.agency_id}" in result.stdout
        assert f"agreement {share.agreement_id} v{share.agreement_version}, legal basis {share.legal_basis}" \
            in result.stdout
    assert "victim.name" in result.stdout and events["marac"]["victim"]["name"] not in result.stdout

    code, _ = masb(capsys, *audit_args(running, "prove", event_id, "--agency", "nhs-worcs-acute",
                                       "--out", str(tmp_path / "one.json")))
    assert code == 0 and len(json.loads((tmp_path / "one.json").read_text())["inclusions"]) == 1

    doc["inclusions"][0]["index"] += 1  # claims the entry sits elsewhere in the log
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    code, out = masb(capsys, "audit", "check-proof", str(tmp_path / "bad.json"),
                     "--policy", str(running.deployment.policy_path))
    assert code == 1 and "REFUSED" in out and "inclusion 1" in out


def test_prove_unknown_event_is_a_clear_error(audited, capsys) -> None:
    running, _ = audited
    code = main(audit_args(running, "prove", "00000000-0000-4000-8000-000000000000"))
    assert code == 1 and "no delivery of event" in capsys.readouterr().err


def test_consistency_proof_between_the_two_checkpoints(audited, capsys, tmp_path) -> None:
    running, events = audited
    old, new = events["sizes"]
    out_file = tmp_path / "consistency.json"
    code, _ = masb(capsys, *audit_args(running, "consistency", str(old), str(new), "--out", str(out_file)))
    assert code == 0
    code, out = masb(capsys, "audit", "check-proof", str(out_file), "--policy", str(running.deployment.policy_path))
    assert code == 0 and f"size {new} is an append-only extension of the signed checkpoint of size {old}" in out
    doc = json.loads(out_file.read_text())
    doc["proof"] = doc["proof"][::-1] if len(doc["proof"]) > 1 else []
    out_file.write_text(json.dumps(doc))
    code, out = masb(capsys, "audit", "check-proof", str(out_file), "--policy", str(running.deployment.policy_path))
    assert code == 1 and "REFUSED" in out


# -- reports --------------------------------------------------------------------------------------
def report(running, capsys, *args: str) -> dict:
    code, out = masb(capsys, *audit_args(running, "report", "--format", "json",
                                         "--keys-dir", str(running.deployment.keys_dir), *args))
    assert code == 0, out
    return json.loads(out)


def test_report_says_who_received_what_under_which_agreement(audited, capsys, tmp_path) -> None:
    running, events = audited
    doc = report(running, capsys)
    expected = {(e["header"]["event_id"], s.agency_id, s.agreement_id, s.legal_basis)
                for name in ("dash", "marac", "notice") for e in [events[name]]
                for s in running.policy.routing(e["header"]["event_type"], e["header"]["area"])}
    got = {(r["event_id"], r["agency"], r["agreement"].split(" v")[0], r["legal_basis"]) for r in doc["deliveries"]}
    assert got == expected  # the republication is not a second exchange
    assert doc["summary"]["duplicates_suppressed"] == 1 and len(doc["refusals"]) == 1
    assert doc["policy_changes"] and doc["verification"].startswith("intact")
    assert {r["case"] for r in doc["deliveries"]} == {e["header"]["case_ref"] for e in events.values()
                                                      if isinstance(e, dict)}

    housing = report(running, capsys, "--agency", "shropshire-housing")
    assert [r["event_type"] for r in housing["deliveries"]] == ["PROTECTION_NOTICE_ISSUED"]
    assert housing["refusals"] == []
    by_case = report(running, capsys, "--case-ref", events["dash"]["header"]["case_ref"],
                     "--event-type", "MARAC_REFERRAL")
    assert {r["event_id"] for r in by_case["deliveries"]} == {events["marac"]["header"]["event_id"]}
    basis = report(running, capsys, "--legal-basis", "CHILDREN_ACT_2004")
    assert {r["agency"] for r in basis["deliveries"]} == {"worcs-childrens-services"}
    assert report(running, capsys, "--since", "2999-01-01")["deliveries"] == []

    code, _ = masb(capsys, *audit_args(running, "report", "--format", "html", "--out", str(tmp_path / "r.html")))
    page = (tmp_path / "r.html").read_text()
    assert code == 0 and "<h2>Refusals</h2>" in page and "shropshire-housing" in page
    code, out = masb(capsys, *audit_args(running, "report", "--format", "csv"))
    assert code == 0 and out.splitlines()[0].startswith("section,entry,position,recorded_at")


# -- crypto-shredding -----------------------------------------------------------------------------
def test_no_case_reference_in_clear_in_the_audit_topics(audited) -> None:
    running, events = audited
    raw = b"".join((r.value or b"") for t in (running.topics.audit, running.topics.checkpoints)
                   for r in running.records(t))
    for name in ("dash", "notice"):
        assert events[name]["header"]["case_ref"].encode() not in raw


def test_shredding_a_case_keeps_verify_green_and_unlinks_the_case(audited, capsys) -> None:
    running, events = audited
    keys = str(running.deployment.keys_dir)
    assert len(report(running, capsys, "--case-ref", SHROPSHIRE_CASE)["deliveries"]) == 2
    kafka = ["--bootstrap", running.bootstrap, "--topic-prefix", running.topics.prefix]
    code, out = masb(capsys, "audit", "shred", SHROPSHIRE_CASE, "--keys-dir", keys, *kafka)
    assert code == 0 and "destroyed" in out and SHROPSHIRE_CASE not in out
    code, out = masb(capsys, *audit_args(running, "verify"))
    assert code == 0 and "audit log intact" in out
    after = report(running, capsys)
    notice_id = events["notice"]["header"]["event_id"]
    assert {r["case"] for r in after["deliveries"] if r["event_id"] == notice_id} == {"shredded"}
    assert {r["case"] for r in after["deliveries"] if r["event_id"] != notice_id} == {"WM-7Q2K9D4XJ3"}
    capsys.readouterr()
    code = main(audit_args(running, "report", "--format", "csv", "--keys-dir", keys, "--case-ref", SHROPSHIRE_CASE))
    captured = capsys.readouterr()
    assert code == 0 and SHROPSHIRE_CASE not in captured.out + captured.err
    assert "masb: note: no live case key for that case reference" in captured.err  # said, not only inside the report
    gone = report(running, capsys, "--case-ref", SHROPSHIRE_CASE)
    assert gone["deliveries"] == [] and "no live case key" in gone["notes"][0]
    assert main(["audit", "shred", SHROPSHIRE_CASE, "--keys-dir", keys, *kafka]) == 1  # nothing left to destroy


# -- restart (last: replaces the module's worker) -------------------------------------------------
def test_worker_restart_leaves_no_gap_fork_or_double_entry(audited, capsys, tmp_path) -> None:
    running, _ = audited
    routed_before = demo_event("04_protection_notice_shropshire")
    running.publish(routed_before)
    running.wait_audit(lambda e: e["kind"] == "DELIVERY" and e["event_id"] == routed_before["header"]["event_id"])
    before = len(running.records(running.topics.audit))
    running.worker.stop()
    worker = WorkerProcess(worker_env(running.deployment, running.bootstrap, running.topics.prefix),
                           tmp_path / "worker2.log")
    running.worker = worker
    try:
        worker.wait_healthy()
        event = demo_event("05_dash_herefordshire")
        running.publish(event)
        running.wait_audit(lambda e: e["kind"] == "DELIVERY" and e["event_id"] == event["header"]["event_id"])
        assert b"Error in recovery" not in (tmp_path / "worker2.log").read_bytes()
        # The dedupe table came back from its changelog: an event routed before the restart,
        # published again, is recorded as a duplicate and not delivered a second time.
        running.publish(routed_before)
        running.wait_audit(lambda e: e["kind"] == "DUPLICATE" and e["event_id"] == routed_before["header"]["event_id"])
        deliveries = [e for e in running.audit_entries()
                      if e["kind"] == "DELIVERY" and e["event_id"] == routed_before["header"]["event_id"]]
        assert len(deliveries) == len(running.policy.routing("PROTECTION_NOTICE_ISSUED", "shropshire"))
        wait_covered(running, more_than=before)
    finally:
        worker.stop()
    sizes = checkpoint_sizes(running)
    assert all(a < b for a, b in zip(sizes, sizes[1:])), sizes  # resumed from its last checkpoint
    entries = running.audit_entries()
    deliveries = [e["exchange_id"] for e in entries if e["kind"] == "DELIVERY"]
    assert len(deliveries) == len(set(deliveries))  # no exchange routed twice
    shares = running.policy.routing("RISK_ASSESSMENT_COMPLETED", "herefordshire")
    new = entries[before:]
    assert sorted(e["kind"] for e in new if e["kind"] in ("DELIVERY", "POLICY_CHANGE")) == \
        sorted(["POLICY_CHANGE"] + ["DELIVERY"] * len(shares))
    # At-least-once: input not yet committed when a worker stops, or when a rebalance moves its
    # partition, is read again. It is then recorded as a suppressed duplicate of a delivered event
    # (or as the same refusal), never delivered a second time.
    delivered = {e["event_id"] for e in entries if e["kind"] == "DELIVERY"}
    assert all(e["event_id"] in delivered for e in new if e["kind"] == "DUPLICATE")
    refused_before = {e["source"] for e in entries[:before] if e["kind"] == "REFUSAL"}
    assert all(e["source"] in refused_before for e in new if e["kind"] == "REFUSAL")
    summary = report(running, capsys)["summary"]
    # Two republications by units: the module's earlier one and the one after the restart above;
    # inputs re-read after the restart or a rebalance are replays, not republications.
    assert summary["duplicates_suppressed"] == 2 and summary["refusals"] == 1
    code, out = masb(capsys, *audit_args(running, "verify"))
    assert code == 0 and "every entry is covered" in out, out
