"""A refusal never repeats what the sender wrote: reasons are built from codes, field paths and MASB's
own identifiers (ids in the policy, key ids the policy lists), on every input topic.

Hostile text (hypothesis-generated, around a made-up name) goes into every field a sender controls,
authenticated or not, on case-events and on receipts; it must not appear in the refusal reason, the
REFUSAL audit entry (which can never be erased), the dead letter's record fields, or the worker log.
The dead letter's `payload` and `original_key` are the refused record itself, kept verbatim so it
can be investigated and re-submitted (docs/routing.md); they are not reasons.
"""

from __future__ import annotations

import io
import logging
import types

import fastavro
import nacl.public
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.app import load_identity
from agents.deployment import prepare_deployment
from agents.router import BatchRouter
from streams import codec
from streams.audit.entry import decode_entry
from streams.crypto.keys import Keyring, generate_key
from streams.crypto.publication import _SCHEMA as PUBLICATION_SCHEMA
from streams.crypto.publication import seal_publication
from streams.receipts import _BODY, _RECEIPT, seal_receipt
from streams.routing import InputRecord, Refusal, Router, decode_dead_letter
from streams.topics import Topics
from tests.harness import fixture_event

UNIT, AGENCY = "hau-worcestershire", "nhs-worcs-acute"
HOSTILE = st.text(min_size=1, max_size=40).map(lambda text: f"Morgan Testperson, 12 Sample St {text}")
# caplog is cleared for every example (refuse_logged), so sharing the fixture between examples is safe.
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    deployment = prepare_deployment(tmp_path_factory.mktemp("reasons"))
    router = Router(deployment.policy, load_identity(deployment.policy, deployment.keys_dir), Topics("r."))
    unit_key = Keyring.load_dir(deployment.keys_dir, UNIT, kind="signing").current
    agency_key = Keyring.load_dir(deployment.keys_dir, AGENCY, kind="exchange").current
    return types.SimpleNamespace(deployment=deployment, policy=deployment.policy, router=router, unit_key=unit_key,
                                 agency_key=agency_key, router_key=deployment.policy.router.active_exchange_key)


def _avro(schema, record: dict) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, record)
    return out.getvalue()


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def assert_not_repeated(refusal, hostile: str, caplog=None) -> None:
    assert isinstance(refusal, Refusal), refusal
    assert hostile not in refusal.reason
    assert hostile.encode("utf-8", "surrogatepass") not in refusal.audit_entry
    assert not any(hostile in s for s in _strings(decode_entry(refusal.audit_entry)))
    letter = decode_dead_letter(refusal.dead_letter)
    assert not any(hostile in s for s in _strings({k: v for k, v in letter.items()
                                                   if k not in ("payload", "original_key")}))
    if caplog is not None:
        assert hostile not in caplog.text


def refuse_logged(world, record: InputRecord, caplog) -> Refusal:
    """Decide the record as the router agent does (agents/router.py BatchRouter), logging included."""
    runtime = types.SimpleNamespace(router=world.router, topics=world.router.topics)
    batch = BatchRouter(runtime, seen={})
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="masb"):
        batch.decide_safely(record)
    refusal = world.router.admit(record)
    assert [m for m in batch.messages if m.topic == runtime.topics.dead_letter], "not refused"
    assert f"refused {refusal.reason_code}" in caplog.text  # what the worker logs for it
    return refusal


# -- case-events ------------------------------------------------------------------------------------
def _publication(world, **fields) -> bytes:
    record = {"version": 1, "unit_id": UNIT, "unit_key_id": world.unit_key.key_id,
              "router_key_id": world.router_key.key_id, "sealed": b"\x00" * 120}
    record.update(fields)
    return _avro(PUBLICATION_SCHEMA, record)


@SETTINGS
@given(hostile=HOSTILE, field=st.sampled_from(["unit_id", "unit_key_id", "router_key_id"]))
def test_unauthenticated_publication_fields_are_never_repeated(world, caplog, hostile, field):
    value = _publication(world, **{field: hostile})
    record = InputRecord("r.case-events", 0, 1, hostile.encode("utf-8", "surrogatepass"), value)
    assert_not_repeated(refuse_logged(world, record, caplog), hostile, caplog)


@SETTINGS
@given(hostile=HOSTILE)
def test_a_registered_unit_with_another_units_or_unknown_key_is_not_repeated(world, caplog, hostile):
    stranger = generate_key(UNIT, "signing")
    value = _avro(PUBLICATION_SCHEMA, {"version": 1, "unit_id": UNIT, "unit_key_id": stranger.key_id,
                                       "router_key_id": world.router_key.key_id, "sealed": hostile.encode("utf-8", "surrogatepass")})
    refusal = refuse_logged(world, InputRecord("r.case-events", 0, 2, b"WM-7Q2K9D4XJ3", value), caplog)
    assert refusal.reason_code == "UNKNOWN_UNIT_KEY" and stranger.key_id not in refusal.reason
    assert_not_repeated(refusal, hostile, caplog)


def _signed(world, wire: bytes) -> bytes:
    return seal_publication(unit_id=UNIT, unit_signing_key=world.unit_key, router_key_id=world.router_key.key_id,
                            router_exchange_public=world.router_key.public_key, wire_event=wire)


def _wire(event: dict, edit) -> bytes:
    """The event's Avro datum, edited after the door (as a publisher without MASB's door could)."""
    schemas = codec.default_codec()._schemas(event["header"]["event_type"])
    datum = schemas.walker.to_datum(event, [])
    edit(datum)
    out = io.BytesIO()
    out.write(codec._PREFIX.pack(0, schemas.schema_id))
    fastavro.schemaless_writer(out, schemas.parsed, datum)
    return out.getvalue()


@SETTINGS
@given(hostile=HOSTILE, where=st.sampled_from(["case_ref", "unit_id", "nhs_number", "postcode", "name", "town"]))
def test_authenticated_event_values_are_never_repeated(world, caplog, hostile, where):
    event = fixture_event("RISK_ASSESSMENT_COMPLETED")

    def edit(datum):
        if where in ("case_ref", "unit_id"):
            datum["header"][where] = hostile
        elif where in ("postcode", "town"):
            datum["victim"]["address"][where] = hostile
        else:
            datum["victim"][where] = hostile
        datum["header"]["consent"]["reason"] = None  # and one more rule broken, so the event is refused

    wire = _wire(event, edit)
    record = InputRecord("r.case-events", 0, 3, hostile.encode("utf-8", "surrogatepass"), _signed(world, wire))
    refusal = refuse_logged(world, record, caplog)
    assert refusal.reason_code in ("INVALID_EVENT", "WIRE_FORMAT", "UNIT_MISMATCH")
    assert_not_repeated(refusal, hostile, caplog)


# -- receipts ----------------------------------------------------------------------------------------
def _receipt(world, **outer) -> bytes:
    fields = {"version": 1, "agency_id": AGENCY, "agency_key_id": world.agency_key.key_id,
              "router_key_id": world.router_key.key_id, "sealed": b"\x00" * 64}
    fields.update(outer)
    return _avro(_RECEIPT, fields)


@SETTINGS
@given(hostile=HOSTILE, field=st.sampled_from(["agency_id", "agency_key_id", "router_key_id"]))
def test_unauthenticated_receipt_fields_are_never_repeated(world, hostile, field):
    # The field case: free text in the unauthenticated agency_id was copied into the reason.
    refusal = world.router.receipt(InputRecord("r.receipts", 0, 4, b"key", _receipt(world, **{field: hostile})))
    assert refusal.reason_code == "RECEIPT_INVALID"
    assert_not_repeated(refusal, hostile)


@SETTINGS
@given(hostile=HOSTILE, field=st.sampled_from(["event_id", "envelope_sha256"]))
def test_authenticated_receipt_body_values_are_never_repeated(world, hostile, field):
    body = {"version": 1, "event_id": "3f0c1b2a-9d4e-4c1a-8f00-5b7e2d9a6c10", "envelope_sha256": "ab" * 32,
            "status": "RECEIVED", "at": 1795254300000}
    body[field] = hostile
    box = nacl.public.Box(world.agency_key.exchange_key(), nacl.public.PublicKey(world.router_key.public_key))
    sealed = bytes(box.encrypt(_avro(_BODY, body)))
    refusal = world.router.receipt(InputRecord("r.receipts", 0, 5, b"key", _receipt(world, sealed=sealed)))
    assert refusal.reason_code == "RECEIPT_INVALID" and f"{field}:" in refusal.reason
    assert AGENCY in refusal.reason  # authenticated: the policy's own id may be named
    assert_not_repeated(refusal, hostile)


def test_receipt_timestamps_outside_the_range_are_refused_not_crashed(world):
    for at in (-62135596800001, 253402300800000, 2**62):
        body = {"version": 1, "event_id": "3f0c1b2a-9d4e-4c1a-8f00-5b7e2d9a6c10", "envelope_sha256": "ab" * 32,
                "status": "RECEIVED", "at": at}
        box = nacl.public.Box(world.agency_key.exchange_key(), nacl.public.PublicKey(world.router_key.public_key))
        sealed = bytes(box.encrypt(_avro(_BODY, body)))
        refusal = world.router.receipt(InputRecord("r.receipts", 0, 6, b"key", _receipt(world, sealed=sealed)))
        assert isinstance(refusal, Refusal) and "at:" in refusal.reason


def test_the_partner_door_refuses_a_receipt_the_router_would_refuse(world):
    from streams.receipts import ReceiptError

    with pytest.raises(ReceiptError, match="event_id"):
        seal_receipt(agency_key=world.agency_key, router_key_id=world.router_key.key_id,
                     router_exchange_public=world.router_key.public_key, event_id="Morgan Testperson",
                     envelope_sha256="ab" * 32)
    with pytest.raises(ReceiptError, match="envelope_sha256"):
        seal_receipt(agency_key=world.agency_key, router_key_id=world.router_key.key_id,
                     router_exchange_public=world.router_key.public_key,
                     event_id="3f0c1b2a-9d4e-4c1a-8f00-5b7e2d9a6c10", envelope_sha256="AB" * 32)


def test_a_valid_receipt_is_still_recorded(world):
    value = seal_receipt(agency_key=world.agency_key, router_key_id=world.router_key.key_id,
                         router_exchange_public=world.router_key.public_key,
                         event_id="3f0c1b2a-9d4e-4c1a-8f00-5b7e2d9a6c10", envelope_sha256="ab" * 32)
    entry = decode_entry(world.router.receipt(InputRecord("r.receipts", 0, 7, b"key", value)))
    assert (entry["kind"], entry["agency_id"]) == ("RECEIPT", AGENCY)


# -- on Apache Kafka: the worker's own log, dead letters and audit log ------------------------------
@pytest.mark.kafka
def test_hostile_text_on_every_input_topic_stays_out_of_the_worker_log_and_the_audit_log(deployment_on_kafka):
    running = deployment_on_kafka
    hostile = "Morgan Testperson lives at 12 Sample Street WR1 2AB"
    router_key = running.policy.router.active_exchange_key
    world = types.SimpleNamespace(unit_key=running.unit_key(UNIT), router_key=router_key,
                                  agency_key=running.keyring(AGENCY).current)
    running.produce(running.topics.receipts, _receipt(world, agency_id=hostile), key=b"receipt")
    running.produce(running.topics.case_events, _publication(world, unit_id=hostile), key=b"WM-HOSTILE0001")
    event = fixture_event("CASE_CLOSED", case_ref="WM-HOSTILE0002")
    wire = _wire(event, lambda d: d.update(transferred_to=hostile + "\x00"))
    running.produce(running.topics.case_events, _signed(world, wire), key=b"WM-HOSTILE0002")

    def three_refusals():
        found = [e for e in running.audit_entries() if e["kind"] == "REFUSAL"
                 and e["reason_code"] in ("RECEIPT_INVALID", "UNKNOWN_UNIT_KEY", "INVALID_EVENT")]
        return found if {e["reason_code"] for e in found} >= {"RECEIPT_INVALID", "UNKNOWN_UNIT_KEY",
                                                                 "INVALID_EVENT"} else None

    running.wait_for(three_refusals, what="the three refusals in the audit log")
    assert hostile.encode() not in b"".join(r.value for r in running.records(running.topics.audit))
    for letter in running.dead_letters():
        assert not any(hostile in s for s in _strings({k: v for k, v in letter.items()
                                                       if k not in ("payload", "original_key")}))
    log = open(running.worker.log.name, encoding="utf-8", errors="replace").read()
    assert "refused receipt RECEIPT_INVALID" in log and "refused INVALID_EVENT" in log  # the refusals were logged...
    assert hostile not in log  # ...without the sender's text
