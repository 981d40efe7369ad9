"""Every case event type end to end on Apache Kafka with the demo policy.

A unit publishes each of the 7 types; every agency the policy routes it to decrypts exactly its
entitled fields, nobody else gets anything, and the audit log has one DELIVERY per agency. An
event the policy routes to nobody is processed without any delivery. Publishing the same event
id again delivers nothing more and is recorded as a DUPLICATE.
"""

from __future__ import annotations

import urllib.request

import pytest

from streams import codec
from streams.crypto.envelope import EnvelopeError
from streams.partner import opener_for
from tests.harness import fixture_event

pytestmark = pytest.mark.kafka

# Who the demo agreements (deploy/demo/policy.template.yaml) route each type to in Worcestershire:
# written out, so that a routing bug cannot hide behind the policy's own answer.
EXPECTED = {
    "RISK_ASSESSMENT_COMPLETED": {"nhs-worcs-acute", "idva-west-mercia"},
    "MARAC_REFERRAL": {"nhs-worcs-acute", "worcs-childrens-services", "idva-west-mercia"},
    "PROTECTION_NOTICE_ISSUED": {"worcs-childrens-services", "idva-west-mercia"},
    "PROTECTION_ORDER_GRANTED": {"worcs-childrens-services", "idva-west-mercia"},
    "CHILD_NOTIFICATION": {"worcs-childrens-services", "school-oakfield-primary"},
    "SAFETY_PLAN_UPDATED": {"worcs-childrens-services", "idva-west-mercia"},
    "CASE_CLOSED": {"nhs-worcs-acute", "worcs-childrens-services", "idva-west-mercia"},
}


def envelopes_for(running, agency_id: str, event_id: str) -> int:
    """How many valid envelopes of this event are on the agency's topic (raw: no feed dedupe)."""
    opener = opener_for(agency_id, running.keyring(agency_id), running.policy)
    count = 0
    for record in running.records(running.topics.partner(agency_id)):
        try:
            count += opener.open(record.value or b"").event_id == event_id
        except EnvelopeError:
            pass
    return count


@pytest.fixture(scope="module")
def published(deployment_on_kafka):
    """One event per type, after an event that the demo policy routes to nobody (same partition: in order)."""
    running = deployment_on_kafka
    nobody = fixture_event("CHILD_NOTIFICATION", unit_id="hau-herefordshire", area="herefordshire",
                           case_ref="WM-HEREFORD0001")
    running.publish(nobody)
    events = {t: fixture_event(t) for t in codec.EVENT_TYPES}
    running.publish(*events.values())
    for event_type, event in events.items():
        for agency in EXPECTED[event_type]:
            running.wait_feed(agency, event["header"]["event_id"])
    return events, nobody


@pytest.mark.parametrize("event_type", codec.EVENT_TYPES)
def test_each_type_reaches_exactly_its_agencies_with_exactly_their_fields(deployment_on_kafka, published, event_type):
    running = deployment_on_kafka
    event = published[0][event_type]
    event_id = event["header"]["event_id"]
    shares = running.policy.routing(event_type, "worcestershire")
    assert {s.agency_id for s in shares} == EXPECTED[event_type]
    for share in shares:
        feed = [i for i in running.feed(share.agency_id) if i.ok and i.envelope.event_id == event_id]
        assert len(feed) == 1, share.agency_id
        envelope = feed[0].envelope
        present = {p for p in share.fields if codec.get_path(event, p) is not None}
        assert present and set(envelope.fields) == present, share.agency_id
        for path, value in envelope.fields.items():
            assert value == codec.get_path(event, path), (share.agency_id, path)
        assert (envelope.event_type, envelope.agreement_id) == (event_type, share.agreement_id)
        assert envelope.legal_basis == share.legal_basis and envelope.case_ref == event["header"]["case_ref"]
    for agency in running.policy.agencies:
        if agency.id not in EXPECTED[event_type]:
            assert envelopes_for(running, agency.id, event_id) == 0, agency.id
    deliveries = [e for e in running.audit_entries() if e["kind"] == "DELIVERY" and e["event_id"] == event_id]
    assert sorted(e["agency_id"] for e in deliveries) == sorted(EXPECTED[event_type])
    by_agency = {s.agency_id: s for s in shares}
    for entry in deliveries:
        share = by_agency[entry["agency_id"]]
        assert entry["fields"] == sorted(p for p in share.fields if codec.get_path(event, p) is not None)
        assert entry["event_type"] == event_type and entry["unit_id"] == "hau-worcestershire"


def test_the_school_never_sees_who_was_involved(deployment_on_kafka, published):
    event = published[0]["CHILD_NOTIFICATION"]
    item = deployment_on_kafka.wait_feed("school-oakfield-primary", event["header"]["event_id"])
    assert set(item.envelope.fields) == {"child.name", "child.date_of_birth", "incident_at", "child_present",
                                         "police_reference"}
    assert not any(p.startswith("header") for p in item.envelope.fields)


def test_event_routed_to_nobody_is_processed_without_any_delivery(deployment_on_kafka, published):
    running = deployment_on_kafka
    _, nobody = published
    event_id = nobody["header"]["event_id"]
    assert running.policy.routing("CHILD_NOTIFICATION", "herefordshire") == ()
    # The later events were delivered, so this earlier one on the same partition was handled.
    entries = running.audit_entries()
    assert not [e for e in entries if e["event_id"] == event_id]
    for agency in running.policy.agencies:
        assert envelopes_for(running, agency.id, event_id) == 0, agency.id
    # It was routed (to nobody) and remembered: publishing it again is recognised as a repeat.
    running.publish(nobody)
    duplicate = running.wait_audit(lambda e: e["kind"] == "DUPLICATE" and e["event_id"] == event_id)
    assert len(duplicate) == 1
    assert not [e for e in running.audit_entries() if e["kind"] == "DELIVERY" and e["event_id"] == event_id]


def test_same_event_id_twice_is_delivered_once_and_audited_as_duplicate(deployment_on_kafka, published):
    running = deployment_on_kafka
    event = published[0]["MARAC_REFERRAL"]
    event_id = event["header"]["event_id"]
    running.publish(event)  # the unit's retry: same id, same content
    entries = running.wait_audit(lambda e: e["kind"] == "DUPLICATE" and e["event_id"] == event_id)
    assert len(entries) == 1 and entries[0]["unit_id"] == "hau-worcestershire"
    assert "not delivered again" in entries[0]["reason"]
    for agency in EXPECTED["MARAC_REFERRAL"]:
        assert envelopes_for(running, agency, event_id) == 1, agency
    deliveries = [e for e in running.audit_entries() if e["kind"] == "DELIVERY" and e["event_id"] == event_id]
    assert len(deliveries) == len(EXPECTED["MARAC_REFERRAL"])
    with urllib.request.urlopen(running.worker.url("/health"), timeout=5) as response:
        assert response.status == 200
