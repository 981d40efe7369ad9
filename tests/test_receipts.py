"""Partner receipts: authenticated by the agency's key, recorded in the exchange log, forgeries refused."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from streams.crypto.keys import generate_key
from streams.partner import ReceiptSender
from streams.receipts import ReceiptError, open_receipt, seal_receipt
from tests.harness import demo_event, run

ROUTER = generate_key("masb-router", "exchange")
AGENCY = generate_key("nhs-worcs-acute", "exchange")
ENVELOPE_SHA = "ab" * 32


def seal(agency=AGENCY, router=ROUTER, **kw) -> bytes:
    return seal_receipt(agency_key=agency, router_key_id=router.key_id, router_exchange_public=router.public_key,
                        event_id="3f0c1b2a-9d4e-4c1a-8f00-5b7e2d9a6c10", envelope_sha256=ENVELOPE_SHA, **kw)


def open_(data: bytes, trusted: dict | None = None):
    trusted = trusted if trusted is not None else {("nhs-worcs-acute", AGENCY.key_id): AGENCY.public_key}
    return open_receipt(data, router_exchange_keys={ROUTER.key_id: ROUTER}.get,
                        agency_public_key=lambda agency, kid: trusted.get((agency, kid)))


def test_receipt_round_trip_names_event_envelope_and_status():
    opened = open_(seal(status="ACKNOWLEDGED"))
    assert (opened.agency_id, opened.agency_key_id, opened.envelope_sha256, opened.status) == \
        ("nhs-worcs-acute", AGENCY.key_id, ENVELOPE_SHA, "ACKNOWLEDGED")


def test_receipt_from_a_key_the_policy_does_not_trust_is_refused():
    impostor = generate_key("nhs-worcs-acute", "exchange")  # claims the trust's name, holds another key
    with pytest.raises(ReceiptError, match="does not trust"):
        open_(seal(agency=impostor))


def test_receipt_with_a_substituted_key_id_does_not_authenticate():
    impostor = generate_key("nhs-worcs-acute", "exchange")
    forged = seal(agency=impostor).replace(impostor.key_id.encode(), AGENCY.key_id.encode())
    with pytest.raises(ReceiptError, match="does not authenticate"):
        open_(forged)


def test_receipt_sealed_to_another_router_key_is_refused():
    with pytest.raises(ReceiptError, match="router key"):
        open_(seal(router=generate_key("masb-router", "exchange")))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_receipt_error(data):
    with pytest.raises(ReceiptError):
        open_(data)


def test_every_flipped_byte_is_refused():
    data = seal()
    for i in range(len(data)):
        tampered = bytearray(data)
        tampered[i] ^= 0x40
        with pytest.raises(ReceiptError):
            open_(bytes(tampered))


# -- live, on Apache Kafka ------------------------------------------------------------------------
@pytest.mark.kafka
def test_receipts_become_audit_entries_bound_to_the_delivered_envelope(deployment_on_kafka):
    running = deployment_on_kafka
    event = demo_event("03_child_notification_worcestershire")
    running.publish(event)
    event_id = event["header"]["event_id"]
    delivered = running.wait_feed("school-oakfield-primary", event_id).envelope
    agency_key = running.keyring("school-oakfield-primary").current

    async def acknowledge() -> None:
        async with ReceiptSender(running.bootstrap, running.policy, agency_key, running.topics) as receipts:
            await receipts.send(delivered, "RECEIVED")
            await receipts.send(delivered, "ACKNOWLEDGED")

    run(acknowledge())
    def both_receipts():
        found = [e for e in running.audit_entries() if e["kind"] == "RECEIPT" and e["event_id"] == event_id]
        return found if len(found) == 2 else None

    entries = running.wait_for(both_receipts, what="two receipts in the audit log")
    delivery = next(e for e in running.audit_entries()
                    if e["kind"] == "DELIVERY" and e["event_id"] == event_id and e["agency_id"] == "school-oakfield-primary")
    assert {e["agency_id"] for e in entries} == {"school-oakfield-primary"}
    assert {e["envelope_sha256"] for e in entries} == {delivery["envelope_sha256"]}
    assert sorted(e["reason"].split(" ")[0] for e in entries) == ["ACKNOWLEDGED", "RECEIVED"]

    # The auditor's report shows, against the delivery, when the school received and acknowledged it.
    from streams.audit.report import Filters, build_report

    report = build_report([(r.offset, r.value) for r in running.records(running.topics.audit)],
                          Filters(agency="school-oakfield-primary"))
    row = next(r for r in report.deliveries if r["event_id"] == event_id)
    assert row["received_at"] and row["acknowledged_at"]
    assert row["deadline"] == "received on time"  # before the next school day's 08:00


def _row(deliver_by: str, received_at: str = "") -> dict:
    return {"deliver_by": deliver_by, "received_at": received_at}


def test_deadline_status_of_a_delivery():
    from datetime import datetime, timezone

    from streams.audit.report import deadline_status

    noon = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
    assert deadline_status(_row("2026-11-24T10:00:00Z", "2026-11-24T09:59:00+00:00"), noon) == "received on time"
    assert deadline_status(_row("2026-11-24T10:00:00Z", "2026-11-24T10:01:00+00:00"), noon) == "received late"
    assert deadline_status(_row("2026-11-24T10:00:00Z"), noon) == "overdue"
    assert deadline_status(_row("2026-11-24T14:00:00Z"), noon) == "awaiting receipt"
    assert deadline_status(_row(""), noon) == "no deadline"


@pytest.mark.kafka
def test_forged_receipt_is_refused_and_recorded(deployment_on_kafka):
    running = deployment_on_kafka
    impostor = generate_key("nhs-worcs-acute", "exchange")
    router_key = running.policy.router.active_exchange_key
    forged = seal_receipt(agency_key=impostor, router_key_id=router_key.key_id,
                          router_exchange_public=router_key.public_key,
                          event_id="3f0c1b2a-9d4e-4c1a-8f00-5b7e2d9a6c10", envelope_sha256=ENVELOPE_SHA)

    running.produce(running.topics.receipts, forged, key=b"forged")
    refusals = running.wait_audit(lambda e: e["kind"] == "REFUSAL" and e["reason_code"] == "RECEIPT_INVALID")
    assert "does not trust" in refusals[0]["reason"]
    assert any(d["reason_code"] == "RECEIPT_INVALID" and d["payload"] == forged for d in running.dead_letters())
    assert not [e for e in running.audit_entries() if e["kind"] == "RECEIPT" and e["envelope_sha256"] == ENVELOPE_SHA]


@pytest.mark.kafka
def test_masb_consume_ack_sends_a_receipt_per_event(deployment_on_kafka):
    running = deployment_on_kafka
    event = demo_event("04_protection_notice_shropshire")
    running.publish(event)
    event_id = event["header"]["event_id"]
    running.wait_feed("shropshire-housing", event_id)
    key_file = next(running.deployment.keys_dir.glob("shropshire-housing.exchange.*.key"))
    result = subprocess.run(
        [sys.executable, "-m", "agents", "consume", "--agency", "shropshire-housing", "--key", str(key_file),
         "--ack", "--bootstrap", running.bootstrap, "--topic-prefix", running.topics.prefix,
         "--policy", str(running.deployment.policy_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert event_id in result.stdout
    running.wait_audit(lambda e: e["kind"] == "RECEIPT" and e["event_id"] == event_id
                       and e["agency_id"] == "shropshire-housing")


def test_an_escalated_delivery_is_escalated_until_its_receipt_comes():
    from datetime import datetime, timezone

    from streams.audit.report import deadline_status

    noon = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
    escalated = {**_row("2026-11-24T10:00:00Z"), "escalated_at": "2026-11-24T10:00:05Z"}
    assert deadline_status(escalated, noon) == "escalated"
    assert deadline_status({**escalated, "received_at": "2026-11-24T11:00:00Z"}, noon) == "received late"
