"""Signed, sealed publication from a harm assessment unit to the router."""

from __future__ import annotations

import io
import json

import fastavro
import nacl.bindings
import nacl.public
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.crypto import OpenedPublication, PublicationError, generate_key, open_publication, seal_publication
from streams.resources import schema_file

SCHEMA = fastavro.parse_schema(json.loads((schema_file("publication.avsc")).read_text()))
WIRE_EVENT = b"\x00\x00\x00\x00\x07" + "Rhiannon Quixote-Testperson, 1 Test Row".encode()

unit_north = generate_key("hau-north", "signing")
unit_south = generate_key("hau-south", "signing")
router_x = generate_key("router-wm", "exchange")
UNIT_KEYS = {("hau-north", unit_north.key_id): unit_north.public_key,
             ("hau-south", unit_south.key_id): unit_south.public_key}


def publish(unit_id="hau-north", unit_key=unit_north, router=router_x, wire_event=WIRE_EVENT) -> bytes:
    return seal_publication(unit_id=unit_id, unit_signing_key=unit_key, router_key_id=router.key_id,
                            router_exchange_public=router.public_key, wire_event=wire_event)


def receive(data: bytes, router_keys=None, unit_keys=UNIT_KEYS) -> OpenedPublication:
    return open_publication(data, router_exchange_keys=router_keys or {router_x.key_id: router_x},
                            unit_verify_key=lambda unit, kid: unit_keys.get((unit, kid)))


def decode(data: bytes) -> dict:
    return fastavro.schemaless_reader(io.BytesIO(data), SCHEMA, None)


def encode(record: dict) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, SCHEMA, record)
    return out.getvalue()


def reason(data: bytes, **kwargs) -> str:
    with pytest.raises(PublicationError) as info:
        receive(data, **kwargs)
    assert "Rhiannon" not in str(info.value)
    return info.value.reason_code


def test_round_trip_and_nothing_in_clear():
    data = publish()
    record = decode(data)
    assert (record["version"], record["unit_id"], record["unit_key_id"], record["router_key_id"]) == (
        1, "hau-north", unit_north.key_id, router_x.key_id)
    assert b"Rhiannon" not in data
    opened = receive(data)
    assert opened == OpenedPublication("hau-north", unit_north.key_id, WIRE_EVENT)
    assert "Rhiannon" not in repr(opened)


def test_empty_event_round_trips():
    assert receive(publish(wire_event=b"")).wire_event == b""


def test_unknown_unit_key():
    assert reason(publish(), unit_keys={}) == "UNKNOWN_UNIT_KEY"
    # a unit may not publish with a key registered to another unit
    assert reason(publish(unit_id="hau-north", unit_key=unit_south)) == "UNKNOWN_UNIT_KEY"


def test_lookup_returning_the_wrong_key_is_not_trusted():
    wrong = {("hau-north", unit_north.key_id): unit_south.public_key}
    assert reason(publish(), unit_keys=wrong) == "UNKNOWN_UNIT_KEY"


def test_claiming_another_units_identity_fails_the_signature():
    # hau-south signs, then relabels the record as hau-north with hau-north's key id
    record = decode(publish(unit_id="hau-south", unit_key=unit_south))
    record.update(unit_id="hau-north", unit_key_id=unit_north.key_id)
    assert reason(encode(record)) == "BAD_SIGNATURE"


def test_resealed_altered_event_fails_the_signature():
    # Anyone can seal to the router's public key: the signature is what proves the unit.
    opened = nacl.public.SealedBox(router_x.exchange_key()).decrypt(decode(publish())["sealed"])
    altered = opened[:64] + opened[64:].replace(b"1 Test Row", b"2 Test Row")
    record = decode(publish())
    record["sealed"] = nacl.public.SealedBox(nacl.public.PublicKey(router_x.public_key)).encrypt(altered)
    assert reason(encode(record)) == "BAD_SIGNATURE"


def test_unknown_router_key_id():
    other = generate_key("router-wm", "exchange")
    assert reason(publish(), router_keys={other.key_id: other}) == "UNKNOWN_ROUTER_KEY"


def test_sealed_to_another_router_key_fails_to_unseal():
    other = generate_key("router-wm", "exchange")
    record = decode(publish(router=other))
    record["router_key_id"] = router_x.key_id
    assert reason(encode(record)) == "UNSEALED_FAILED"


def test_every_tampered_byte_is_refused_with_a_reason_code():
    data = publish(wire_event=b"evt")
    codes = set()
    for position in range(len(data)):
        tampered = bytearray(data)
        tampered[position] ^= 0x01
        codes.add(reason(bytes(tampered)))
    assert codes <= {"MALFORMED", "UNKNOWN_ROUTER_KEY", "UNSEALED_FAILED", "UNKNOWN_UNIT_KEY", "BAD_SIGNATURE"}
    assert "UNSEALED_FAILED" in codes  # flips inside the sealed box


def test_malformed_inputs():
    assert reason(b"") == "MALFORMED"
    assert reason(publish() + b"\x00") == "MALFORMED"
    record = decode(publish())
    record["version"] = 2
    assert reason(encode(record)) == "MALFORMED"
    record = decode(publish())
    record["sealed"] = nacl.public.SealedBox(nacl.public.PublicKey(router_x.public_key)).encrypt(b"short")
    assert reason(encode(record)) == "MALFORMED"


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_raise_only_publication_errors(data):
    with pytest.raises(PublicationError):
        receive(data)


def test_signature_input_matches_the_documented_layout():
    data = publish(wire_event=b"wire")
    plain = nacl.public.SealedBox(router_x.exchange_key()).decrypt(decode(data)["sealed"])
    signature, wire = plain[:64], plain[64:]
    unit = b"hau-north"
    message = b"MASB-PUBLICATION-v1\x00" + len(unit).to_bytes(2, "big") + unit + wire
    assert nacl.bindings.crypto_sign_open(signature + message, unit_north.public_key) == message
