"""The router refuses what it must, on Apache Kafka: every refusal is dead-lettered with its reason
code and recorded as a REFUSAL audit entry, nothing of it is delivered, and the worker goes on.

The deployment is this module's own: its policy (the demo template, edited) registers
hau-herefordshire for CASE_CLOSED only and lists a revoked signing key of hau-shropshire.
Publications that the client library would refuse to build are forged here from the documented
format (docs/envelope.md, docs/wire-format.md), as a hostile or buggy publisher would.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import urllib.request
from collections import Counter
from dataclasses import dataclass

import fastavro
import nacl.public
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from agents.deployment import DEMO_DIR
from streams import codec
from streams.crypto.keys import Keyring, generate_key
from streams.crypto.pseudonym import generate_pseudonym_key, looks_like_pseudonym
from streams.crypto.publication import _SCHEMA as PUBLICATION_SCHEMA
from streams.crypto.publication import (
    SIGNATURE_BYTES,
    _signature_input,
    seal_publication,
)
from streams.kafka import producer
from streams.publisher import prepare
from streams.routing import MAX_DEAD_LETTER_PAYLOAD_BYTES, MAX_PUBLICATION_BYTES
from streams.schema_registry import DEFAULT_SCHEMA_ROOT, Registry
from tests.harness import fixture_event, run, running_deployment

pytestmark = pytest.mark.kafka

REASON_CODES = {"EMPTY_RECORD", "OVERSIZED", "MALFORMED", "UNKNOWN_ROUTER_KEY", "UNKNOWN_UNIT_KEY", "UNSEALED_FAILED",
                "BAD_SIGNATURE", "WIRE_FORMAT", "INVALID_EVENT", "UNIT_MISMATCH", "UNAUTHORISED_PUBLISHER",
                "KEY_MISMATCH", "CONFLICTING_DUPLICATE", "INTERNAL_ERROR"}


@pytest.fixture(scope="module")
def running(kafka, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("refusals")
    text = (DEMO_DIR / "policy.template.yaml").read_text()
    herefordshire = "  - id: hau-herefordshire\n    areas: [herefordshire]\n    event_types: *all_events\n"
    assert herefordshire in text
    text = text.replace(herefordshire, herefordshire.replace("*all_events", "[CASE_CLOSED]"))
    shropshire_key = ('      - {key_id: "{{kid:hau-shropshire:signing}}", public_key: "{{key:hau-shropshire:signing}}", '
                      'status: active}\n')
    assert shropshire_key in text
    text = text.replace(shropshire_key, shropshire_key + (
        '      - {key_id: "{{kid:revoked-shropshire:signing}}", public_key: "{{key:revoked-shropshire:signing}}", '
        'status: revoked}\n'))
    template = workdir / "policy.template.yaml"
    template.write_text(text)
    with running_deployment(kafka, workdir / "deployment", template=template) as deployment:
        yield deployment


# -- forging publications ------------------------------------------------------------------------
def router_key(running):
    return running.policy.router.active_exchange_key


def sealed(running, wire: bytes, unit_id: str, key) -> bytes:
    rk = router_key(running)
    return seal_publication(unit_id=unit_id, unit_signing_key=key, router_key_id=rk.key_id,
                            router_exchange_public=rk.public_key, wire_event=wire)


def publication(unit_id: str, unit_key_id: str, router_key_id: str, sealed_bytes: bytes, version: int = 1) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, PUBLICATION_SCHEMA, {"version": version, "unit_id": unit_id,
                                                        "unit_key_id": unit_key_id, "router_key_id": router_key_id,
                                                        "sealed": sealed_bytes})
    return out.getvalue()


def wire_bypassing_validation(event: dict, change) -> bytes:
    """The event's wire form with its Avro datum changed after validation (as a non-MASB encoder could)."""
    wire = codec.encode_event(event)
    schema = fastavro.parse_schema(Registry(DEFAULT_SCHEMA_ROOT).schema(codec.schema_id_of(wire)))
    datum = fastavro.schemaless_reader(io.BytesIO(wire[5:]), schema, None)
    change(datum)
    out = io.BytesIO()
    out.write(wire[:5])
    fastavro.schemaless_writer(out, schema, datum)
    return out.getvalue()


@dataclass
class Case:
    name: str
    key: bytes | None
    value: bytes | None
    reason_code: str
    unit_id: str | None = None
    event_id: str | None = None

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.value or b"").hexdigest()


def build_cases(running) -> tuple[list[Case], dict]:
    policy = running.policy
    worcs, shrop, heref = (running.unit_key(u) for u in ("hau-worcestershire", "hau-shropshire", "hau-herefordshire"))
    revoked = Keyring.load_dir(running.deployment.keys_dir, "revoked-shropshire", kind="signing").current
    cases: list[Case] = []

    def forged(name, event, unit_id, key, code, kafka_key=None, wire=None):
        header = event["header"]
        value = sealed(running, wire if wire is not None else codec.encode_event(event), unit_id, key)
        known = code not in ("UNKNOWN_UNIT_KEY",)
        cases.append(Case(name, kafka_key or running.pseudonyms.pseudonym(header["case_ref"]), value, code,
                          unit_id if known else None, header["event_id"] if known else None))

    # Unauthorised publishers.
    forged("unit not registered for the type",
           fixture_event("PROTECTION_NOTICE_ISSUED", unit_id="hau-herefordshire", area="herefordshire"),
           "hau-herefordshire", heref, "UNAUTHORISED_PUBLISHER")
    forged("unit not registered for the area", fixture_event("CASE_CLOSED", area="shropshire"),
           "hau-worcestershire", worcs, "UNAUTHORISED_PUBLISHER")
    forged("unknown unit", fixture_event("CASE_CLOSED", unit_id="hau-rogue"),
           "hau-rogue", generate_key("hau-rogue", "signing"), "UNKNOWN_UNIT_KEY")
    forged("unknown signing key of a registered unit", fixture_event("CASE_CLOSED"),
           "hau-worcestershire", generate_key("hau-worcestershire", "signing"), "UNKNOWN_UNIT_KEY")
    forged("revoked signing key", fixture_event("CASE_CLOSED", unit_id="hau-shropshire", area="shropshire"),
           "hau-shropshire", revoked, "UNKNOWN_UNIT_KEY")
    forged("header.unit_id is not the signer", fixture_event("CASE_CLOSED", unit_id="hau-worcestershire"),
           "hau-shropshire", shrop, "UNIT_MISMATCH")

    # Bad input.
    cases.append(Case("garbage bytes", b"junk", b"\x13\x37 not a publication \xff\xfe", "MALFORMED"))
    cases.append(Case("empty value", running.pseudonyms.pseudonym("WM-EMPTY00001"), b"", "EMPTY_RECORD"))
    cases.append(Case("null value (tombstone)", running.pseudonyms.pseudonym("WM-EMPTY00002"), None, "EMPTY_RECORD"))
    cases.append(Case("oversized record", None, b"\x02" * (MAX_PUBLICATION_BYTES + 1), "OVERSIZED"))
    good = sealed(running, codec.encode_event(fixture_event("CASE_CLOSED")), "hau-worcestershire", worcs)
    cases.append(Case("truncated publication", b"WM-7Q2K9D4XJ3", good[:-7], "MALFORMED"))
    cases.append(Case("publication version 2", b"WM-7Q2K9D4XJ3",
                      publication("hau-worcestershire", worcs.key_id, router_key(running).key_id, b"x" * 80, 2),
                      "MALFORMED"))
    stranger = generate_key("masb-router-wm", "exchange")
    cases.append(Case("sealed to an unknown router key", b"WM-7Q2K9D4XJ3", seal_publication(
        unit_id="hau-worcestershire", unit_signing_key=worcs, router_key_id=stranger.key_id,
        router_exchange_public=stranger.public_key, wire_event=codec.encode_event(fixture_event("CASE_CLOSED"))),
        "UNKNOWN_ROUTER_KEY"))
    cases.append(Case("sealed box does not open", b"WM-7Q2K9D4XJ3",
                      publication("hau-worcestershire", worcs.key_id, router_key(running).key_id, b"\x00" * 120),
                      "UNSEALED_FAILED"))
    box = nacl.public.SealedBox(nacl.public.PublicKey(router_key(running).public_key))
    cases.append(Case("sealed payload shorter than a signature", b"WM-7Q2K9D4XJ3",
                      publication("hau-worcestershire", worcs.key_id, router_key(running).key_id,
                                  box.encrypt(b"s" * (SIGNATURE_BYTES - 1))), "MALFORMED"))
    wire = codec.encode_event(fixture_event("CASE_CLOSED"))
    other_signature = shrop.signing_key().sign(_signature_input("hau-worcestershire", wire)).signature
    cases.append(Case("signature by another key", b"WM-7Q2K9D4XJ3",
                      publication("hau-worcestershire", worcs.key_id, router_key(running).key_id,
                                  box.encrypt(other_signature + wire)), "BAD_SIGNATURE"))
    cases.append(Case("signed bytes that are not a wire-format event", b"WM-7Q2K9D4XJ3",
                      sealed(running, b"\x00\x00\x00\x00\x63" + b"\xff" * 20, "hau-worcestershire", worcs),
                      "WIRE_FORMAT", "hau-worcestershire"))
    no_reason = fixture_event("MARAC_REFERRAL")
    forged("valid publication, invalid event (consent reason missing)", no_reason, "hau-worcestershire", worcs,
           "INVALID_EVENT", wire=wire_bypassing_validation(
               no_reason, lambda d: d["header"]["consent"].__setitem__("reason", None)))
    wrong_key = fixture_event("CASE_CLOSED")
    forged("case reference in clear as the Kafka key", wrong_key, "hau-worcestershire", worcs, "KEY_MISMATCH",
           kafka_key=wrong_key["header"]["case_ref"].encode())
    forged("pseudonym of another case", fixture_event("CASE_CLOSED"), "hau-worcestershire", worcs, "KEY_MISMATCH",
           kafka_key=running.pseudonyms.pseudonym("WM-SOMEOTHER01"))
    forged("pseudonym under a key the router does not hold", fixture_event("CASE_CLOSED"), "hau-worcestershire",
           worcs, "KEY_MISMATCH", kafka_key=generate_pseudonym_key().pseudonym(wrong_key["header"]["case_ref"]))

    # A conflicting duplicate: the original is routed, then the same id with other content is refused.
    original = fixture_event("SAFETY_PLAN_UPDATED")
    conflicting = json.loads(json.dumps(original))
    conflicting["plan_version"] = original["plan_version"] + 1
    key, value = prepare(original, policy, worcs, running.pseudonyms)
    forged("conflicting duplicate", conflicting, "hau-worcestershire", worcs, "CONFLICTING_DUPLICATE")
    return cases, {"original": (key, value, original)}


def send(running, records: list[tuple[bytes | None, bytes | None]]) -> None:
    async def go() -> None:
        p = producer(running.bootstrap, max_request_size=2 * 1024 * 1024)
        await p.start()
        try:
            for key, value in records:
                await p.send_and_wait(running.topics.case_events, value=value, key=key)
        finally:
            await p.stop()

    run(go())


@pytest.fixture(scope="module")
def refused(running):
    cases, extra = build_cases(running)
    key, value, original = extra["original"]
    send(running, [(key, value)] + [(c.key, c.value) for c in cases])
    wanted = Counter(c.sha for c in cases)

    def all_dead_lettered():
        letters = running.dead_letters()
        have = Counter(letter["payload_sha256"] for letter in letters)
        return letters if all(have[sha] >= n for sha, n in wanted.items()) else None

    letters = running.wait_for(all_dead_lettered, 45, "every forged record on the dead-letter topic")
    return cases, letters, original


CASE_NAMES = [
    "unit not registered for the type", "unit not registered for the area", "unknown unit",
    "unknown signing key of a registered unit", "revoked signing key", "header.unit_id is not the signer",
    "garbage bytes", "empty value", "null value (tombstone)", "oversized record", "truncated publication",
    "publication version 2", "sealed to an unknown router key", "sealed box does not open",
    "sealed payload shorter than a signature", "signature by another key",
    "signed bytes that are not a wire-format event", "valid publication, invalid event (consent reason missing)",
    "case reference in clear as the Kafka key", "pseudonym of another case",
    "pseudonym under a key the router does not hold", "conflicting duplicate",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_refused_record_is_dead_lettered_and_audited_and_not_delivered(running, refused, name):
    cases, letters, _ = refused
    case = next(c for c in cases if c.name == name)
    # A key is copied into the dead letter (kept forever) only if it has a pseudonym's shape.
    kept_key = case.key if looks_like_pseudonym(case.key) else None
    mine = [letter for letter in letters if (letter["payload_sha256"], letter["original_key"]) == (case.sha, kept_key)]
    assert len(mine) == 1, name
    letter = mine[0]
    assert letter["reason_code"] == case.reason_code, (name, letter["reason"])
    if case.value is not None and len(case.value) > MAX_DEAD_LETTER_PAYLOAD_BYTES:
        # too large to copy: the letter references the original by place and digest instead
        assert letter["payload"] is None and "not copied" in letter["reason"]
        assert letter["payload_sha256"] == hashlib.sha256(case.value).hexdigest()
    else:
        assert letter["payload"] == case.value
    assert (letter["unit_id"], letter["event_id"]) == (case.unit_id, case.event_id)
    assert letter["source_topic"] == running.topics.case_events
    source = f"{letter['source_topic']}/{letter['source_partition']}/{letter['source_offset']}"
    audit = [e for e in running.audit_entries() if e["source"] == source]
    assert [(e["kind"], e["reason_code"]) for e in audit] == [("REFUSAL", case.reason_code)]
    assert audit[0]["reason"] == letter["reason"]
    if case.event_id and case.reason_code != "CONFLICTING_DUPLICATE":
        assert not [e for e in running.audit_entries() if e["kind"] == "DELIVERY" and e["event_id"] == case.event_id]
        for agency in running.policy.agencies:
            assert not [i for i in running.feed(agency.id) if i.ok and i.envelope.event_id == case.event_id]


def test_reasons_name_fields_and_codes_never_values(refused):
    _, letters, _ = refused
    invalid = next(letter for letter in letters if letter["reason_code"] == "INVALID_EVENT")
    assert "header.consent.reason" in invalid["reason"]
    event = fixture_event("MARAC_REFERRAL")
    secrets = [event["victim"]["name"], event["victim"]["nhs_number"], event["victim"]["address"]["postcode"],
               event["perpetrator"]["name"], event["victim"]["date_of_birth"], "not a publication"]
    for letter in letters:
        for secret in secrets:
            assert secret not in letter["reason"]
    unauthorised = [letter["reason"] for letter in letters if letter["reason_code"] == "UNAUTHORISED_PUBLISHER"]
    assert any("PROTECTION_NOTICE_ISSUED for area herefordshire" in r for r in unauthorised)
    assert any("CASE_CLOSED for area shropshire" in r for r in unauthorised)


def test_conflicting_duplicate_keeps_the_original_delivery_only(running, refused):
    _, _, original = refused
    event_id = original["header"]["event_id"]
    item = running.wait_feed("idva-west-mercia", event_id)
    assert item.envelope.fields["plan_version"] == original["plan_version"]
    deliveries = [e for e in running.audit_entries() if e["kind"] == "DELIVERY" and e["event_id"] == event_id]
    assert sorted(e["agency_id"] for e in deliveries) == ["idva-west-mercia", "worcs-childrens-services"]
    versions = [i.envelope.fields["plan_version"] for i in running.feed("worcs-childrens-services")
                if i.ok and i.envelope.event_id == event_id]
    assert versions == [original["plan_version"]]


def test_random_bytes_are_all_dead_lettered_and_the_worker_stays_up(running, refused):
    sent: list[bytes] = []

    @settings(max_examples=30, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=600))
    def collect(value: bytes) -> None:
        sent.append(value)

    collect()
    assert len(sent) == 30
    before = len(running.dead_letters())
    send(running, [(None, value) for value in sent])
    def all_there():
        letters = running.dead_letters()
        return letters if len(letters) >= before + len(sent) else None

    letters = running.wait_for(all_there, 45, "the random records on the dead-letter topic")
    new = letters[before:]
    assert len(new) == len(sent)
    assert Counter(letter["payload_sha256"] for letter in new) == Counter(hashlib.sha256(v).hexdigest() for v in sent)
    for letter in new:
        assert letter["reason_code"] in {"EMPTY_RECORD", "MALFORMED", "UNKNOWN_ROUTER_KEY", "UNKNOWN_UNIT_KEY"}
    # Still healthy, and still routing.
    with urllib.request.urlopen(running.worker.url("/health"), timeout=5) as response:
        assert response.status == 200
    event = fixture_event("CASE_CLOSED")
    running.publish(event)
    running.wait_feed("nhs-worcs-acute", event["header"]["event_id"])


def test_metrics_count_refusals_by_reason_code_with_no_personal_data(running, refused):
    def scrape() -> str:
        with urllib.request.urlopen(running.worker.url("/metrics"), timeout=5) as response:
            return response.read().decode()

    def refusals(text: str) -> Counter:
        return Counter({m.group(1): int(float(m.group(2))) for m in
                        re.finditer(r'^masb_refused_total\{reason_code="([^"]+)"\} (\S+)$', text, re.MULTILINE)})

    def consistent():
        text = scrape()
        expected = Counter(letter["reason_code"] for letter in running.dead_letters())
        return text if refusals(text) == expected else None

    text = running.wait_for(consistent, 20, "masb_refused_total to match the dead-letter topic")
    counted = refusals(text)
    assert counted["UNKNOWN_UNIT_KEY"] >= 3 and counted["UNAUTHORISED_PUBLISHER"] >= 2
    assert {"KEY_MISMATCH", "INVALID_EVENT", "CONFLICTING_DUPLICATE", "OVERSIZED", "EMPTY_RECORD"} <= set(counted)
    allowed = (REASON_CODES | set(codec.EVENT_TYPES) | {a.id for a in running.policy.agencies}
               | {"DELIVERY", "REFUSAL", "DUPLICATE", "RECEIPT", "POLICY_CHANGE"} | running.own_label_values())
    for line in text.splitlines():
        if line.startswith("masb_") and "{" in line:
            for label, value in re.findall(r'(\w+)="([^"]*)"', line):
                if label == "le":
                    continue
                assert value in allowed, f"unexpected metric label {label}={value!r}"
    event = fixture_event("MARAC_REFERRAL")
    for secret in (event["victim"]["name"], event["victim"]["nhs_number"], event["header"]["case_ref"]):
        assert secret not in text


def test_no_dead_letter_keeps_a_case_reference_in_clear(running, refused):
    """The dead-letter topic is kept forever: a publisher's key in clear is not copied into it."""
    cases, _, original = refused
    raw = b"".join((r.key or b"") + (r.value or b"") for r in running.records(running.topics.dead_letter))
    sent_in_clear = {c.key for c in cases if c.key is not None and c.key.startswith(b"WM-")}
    assert original["header"]["case_ref"].encode() in sent_in_clear  # a publisher did key records in clear
    for case_ref in sent_in_clear | {b"WM-SOMEOTHER01", b"WM-EMPTY00001"}:
        assert case_ref not in raw
