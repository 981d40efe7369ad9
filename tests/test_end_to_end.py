"""One case event end to end on Apache Kafka: the walking skeleton's promises to its users.

A unit publishes; exactly the subscribed agencies receive; each decrypts exactly its entitled
fields; outsiders get nothing; tampering is refused; no topic holds plaintext personal data; the
audit log records every exchange and `masb audit verify` catches an altered entry.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from streams import codec
from streams.crypto.envelope import EnvelopeError, WrongRecipient, UnknownRecipientKey
from streams.crypto.keys import Keyring
from tests.harness import demo_event

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def routed(deployment_on_kafka):
    """The demo's high-risk Worcestershire DASH assessment (score 16), published once for the module."""
    event = demo_event("01_dash_worcestershire")
    deployment_on_kafka.publish(event)
    shares = deployment_on_kafka.policy.routing("RISK_ASSESSMENT_COMPLETED", "worcestershire")
    received = {s.agency_id: deployment_on_kafka.wait_feed(s.agency_id, event["header"]["event_id"]) for s in shares}
    return event, shares, received


def test_event_reaches_exactly_the_subscribed_agencies(deployment_on_kafka, routed):
    event, shares, received = routed
    assert {s.agency_id for s in shares} == {"nhs-worcs-acute", "idva-west-mercia"}  # the demo agreements
    for agency in deployment_on_kafka.policy.agencies:
        ids = [i.envelope.event_id for i in deployment_on_kafka.feed(agency.id) if i.ok]
        expected = 1 if agency.id in received else 0
        assert ids.count(event["header"]["event_id"]) == expected, agency.id


def test_each_agency_decrypts_exactly_its_entitled_fields(routed):
    event, shares, received = routed
    for share in shares:
        envelope = received[share.agency_id].envelope
        present = {p for p in share.fields if codec.get_path(event, p) is not None}
        assert set(envelope.fields) == present
        for path, value in envelope.fields.items():
            assert value == codec.get_path(event, path)
        assert envelope.policy_version == 1 and envelope.agreement_id == share.agreement_id


def test_another_agencys_key_decrypts_nothing(deployment_on_kafka, routed):
    _, _, received = routed
    raw = deployment_on_kafka.records(deployment_on_kafka.topics.partner("nhs-worcs-acute"))[-1].value
    from streams.partner import opener_for

    # The IDVA's own key cannot open the NHS trust's envelope, whoever it claims to be.
    as_idva = opener_for("idva-west-mercia", deployment_on_kafka.keyring("idva-west-mercia"), deployment_on_kafka.policy)
    with pytest.raises(WrongRecipient):
        as_idva.open(raw)
    # An empty keyring claiming the NHS trust's name holds none of the trust's keys.
    impostor = Keyring("nhs-worcs-acute", [], kind="exchange")
    with pytest.raises(UnknownRecipientKey):
        opener_for("nhs-worcs-acute", impostor, deployment_on_kafka.policy).open(raw)


def test_agency_outside_the_agreement_gets_nothing(deployment_on_kafka, routed):
    # The school covers Worcestershire but has no agreement for risk assessments.
    assert deployment_on_kafka.records(deployment_on_kafka.topics.partner("school-oakfield-primary")) == []
    assert deployment_on_kafka.records(deployment_on_kafka.topics.partner("shropshire-housing")) == []


def test_tampered_envelope_on_the_feed_is_refused(deployment_on_kafka, routed):
    topic = deployment_on_kafka.topics.partner("idva-west-mercia")
    original = deployment_on_kafka.records(topic)[-1].value
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0x01

    deployment_on_kafka.produce(topic, bytes(tampered), key=b"WM-7Q2K9D4XJ3")
    items = deployment_on_kafka.feed("idva-west-mercia")
    refused = [i for i in items if not i.ok]
    assert len(refused) == 1 and isinstance(refused[0].error, EnvelopeError)


def test_no_plaintext_personal_data_in_any_topic(deployment_on_kafka, routed):
    event, _, _ = routed
    victim = event["victim"]
    secrets = [victim["name"], victim["nhs_number"], victim["address"]["postcode"], victim["address"]["line1"],
               victim["safe_contact"]["detail"], victim["date_of_birth"]]
    raw = deployment_on_kafka.all_topic_bytes()
    assert len(raw) > 1000  # the topics really hold the routed records
    for secret in secrets:
        assert secret.encode() not in raw, "plaintext personal data found in Kafka"


def test_audit_log_records_every_exchange_and_verify_detects_alteration(deployment_on_kafka, routed, tmp_path):
    event, shares, _ = routed
    deliveries = deployment_on_kafka.wait_audit(
        lambda e: e["kind"] == "DELIVERY" and e["event_id"] == event["header"]["event_id"])
    assert sorted(e["agency_id"] for e in deliveries) == sorted(s.agency_id for s in shares)
    for entry in deliveries:
        assert entry["fields"] and entry["envelope_sha256"] and entry["legal_basis"] and entry["policy_version"] == 1

    env = deployment_on_kafka.worker
    dep = deployment_on_kafka.deployment
    cli = [sys.executable, "-m", "agents", "audit", "verify", "--bootstrap", deployment_on_kafka.bootstrap,
           "--policy", str(dep.policy_path)]

    def verify(prefix: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, "--topic-prefix", prefix], capture_output=True, text=True, timeout=60)

    def verified_covering_everything():
        env.request_checkpoint()
        result = verify(deployment_on_kafka.topics.prefix)
        return result if result.returncode == 0 and "every entry is covered" in result.stdout else None

    result = deployment_on_kafka.wait_for(verified_covering_everything, what="a checkpoint covering the log")
    assert "audit log intact" in result.stdout

    # An operator with broker access rewrites the log with one entry altered (copied, with the
    # signed checkpoints, to a new prefix): verify must refuse it and say where.
    from tests.audit_tamper import copy_log_with

    bad_prefix = copy_log_with(deployment_on_kafka, "alter", index=1)
    tampered = verify(bad_prefix)
    assert tampered.returncode != 0
    assert "NOT intact" in tampered.stdout and "checkpoint 1" in tampered.stdout
