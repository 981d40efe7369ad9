"""Policy change while the worker runs, on Apache Kafka: the next event follows the new version,
the one before keeps the old one, the audit log records the change between them, nothing is lost or
repeated; an invalid edit is refused and the version in force keeps routing."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams import codec
from tests.harness import demo_event, replace_file, running_deployment

pytestmark = pytest.mark.kafka

NHS, IDVA = "nhs-worcs-acute", "idva-west-mercia"
OLD_NHS_DASH = ("RISK_ASSESSMENT_COMPLETED: [header.case_ref, header.risk_level, victim.name, victim.date_of_birth,\n"
                "                                  victim.nhs_number, victim.pregnant_or_recent_birth, victim.safe_contact]")
NEW_NHS_DASH = ("RISK_ASSESSMENT_COMPLETED: [header.case_ref, header.risk_level, victim.name, victim.date_of_birth,\n"
                "                                  victim.nhs_number, victim.pregnant_or_recent_birth, victim.safe_contact,\n"
                "                                  score]")


@pytest.fixture(scope="module")
def live(kafka, tmp_path_factory):
    with running_deployment(kafka, tmp_path_factory.mktemp("policy-live")) as running:
        yield running


def metric(live, name: str, **labels: str) -> float | None:
    with urllib.request.urlopen(live.worker.url("/metrics"), timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def deliveries_of(entries: list[dict], event_id: str) -> list[int]:
    return [i for i, e in enumerate(entries) if e["kind"] == "DELIVERY" and e["event_id"] == event_id]


def test_policy_change_mid_stream(live):
    path = live.deployment.policy_path
    a = demo_event("01_dash_worcestershire")
    live.publish(a)
    a_nhs = live.wait_feed(NHS, a["header"]["event_id"]).envelope

    text = path.read_text()
    assert text.count(OLD_NHS_DASH) == 1
    text = text.replace(OLD_NHS_DASH, NEW_NHS_DASH).replace("policy_version: 1", "policy_version: 2")
    text = text.replace("  - id: isa-wm-health-acute\n    version: 3", "  - id: isa-wm-health-acute\n    version: 4")
    replace_file(path, text)
    live.wait_for(lambda: live.health()["policy_version"] == 2, 20, "policy version 2 in force")

    b = demo_event("01_dash_worcestershire")
    live.publish(b)
    b_nhs = live.wait_feed(NHS, b["header"]["event_id"]).envelope

    # A was routed under the old agreement, B under the new one: the added field only in B.
    assert (a_nhs.policy_version, a_nhs.agreement_version) == (1, 3)
    assert (b_nhs.policy_version, b_nhs.agreement_version) == (2, 4)
    assert "score" not in a_nhs.fields
    assert b_nhs.fields["score"] == codec.get_path(b, "score") == 16
    assert set(b_nhs.fields) - set(a_nhs.fields) == {"score"}
    # The IDVA's agreement did not change; its envelopes carry the policy version in force.
    a_idva = live.wait_feed(IDVA, a["header"]["event_id"]).envelope
    b_idva = live.wait_feed(IDVA, b["header"]["event_id"]).envelope
    assert (a_idva.policy_version, b_idva.policy_version) == (1, 2)
    assert set(a_idva.fields) == set(b_idva.fields)

    # The audit log: A's deliveries, then the POLICY_CHANGE to version 2, then B's deliveries.
    entries = live.wait_audit(lambda e: e["kind"] == "DELIVERY" and e["event_id"] == b["header"]["event_id"])
    entries = live.audit_entries()
    changes = [i for i, e in enumerate(entries) if e["kind"] == "POLICY_CHANGE"]
    assert [entries[i]["policy_version"] for i in changes] == [1, 2]
    a_at, b_at = deliveries_of(entries, a["header"]["event_id"]), deliveries_of(entries, b["header"]["event_id"])
    assert len(a_at) == len(b_at) == 2  # one per recipient, none repeated
    assert max(a_at) < changes[1] < min(b_at)
    assert {entries[i]["policy_version"] for i in b_at} == {2}
    assert not [e for e in entries if e["kind"] in ("DUPLICATE", "REFUSAL")]
    # Nothing lost or repeated on the feeds: exactly one envelope per event per recipient.
    for agency in (NHS, IDVA):
        ids = [item.envelope.event_id for item in live.feed(agency) if item.ok]
        assert len(live.records(live.topics.partner(agency))) == 2
        assert sorted(ids) == sorted([a["header"]["event_id"], b["header"]["event_id"]])


def test_invalid_policy_edit_is_refused_and_the_old_version_keeps_routing(live):
    path = live.deployment.policy_path
    live.wait_for(lambda: live.health()["policy_version"] == 2, 20, "policy version 2 in force")
    failures = metric(live, "masb_policy_reload_failures_total") or 0.0
    good = path.read_text()
    bad = good.replace("policy_version: 2", "policy_version: 3").replace("score]", "score, victim.shoe_size]")
    assert bad.count("victim.shoe_size") == 1
    replace_file(path, bad)
    live.wait_for(lambda: metric(live, "masb_policy_reload_failures_total") == failures + 1, 20,
                  "the reload failure to be counted")

    c = demo_event("01_dash_worcestershire")
    live.publish(c)
    c_nhs = live.wait_feed(NHS, c["header"]["event_id"]).envelope
    assert (c_nhs.policy_version, c_nhs.agreement_version) == (2, 4)
    assert "score" in c_nhs.fields
    assert live.health()["policy_version"] == 2
    assert metric(live, "masb_policy_version") == 2
    assert not [e for e in live.audit_entries() if e["kind"] == "POLICY_CHANGE" and e["policy_version"] == 3]
    # The worker's log names the problem by field path, never a value from an event.
    log = (live.deployment.workdir / "worker.log").read_text(errors="replace")
    assert "victim.shoe_size" in log
    assert "Alex Example" not in log and c["header"]["case_ref"] not in log

    # Fixing the file brings the next version in force.
    replace_file(path, bad.replace(", victim.shoe_size]", "]"))
    live.wait_for(lambda: live.health()["policy_version"] == 3, 20, "policy version 3 in force")
    d = demo_event("01_dash_worcestershire")
    live.publish(d)
    assert live.wait_feed(NHS, d["header"]["event_id"]).envelope.policy_version == 3
