"""Notices to originating units (docs/deadlines.md, "Notice format"): the known-answer vector, an
independent opening with raw libsodium calls, and every way a notice must be refused."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import fastavro
import nacl.bindings
import pytest

from streams.crypto.envelope import (
    BadSignature,
    EnvelopeError,
    KeyUnwrapFailed,
    RouterKeys,
    UnknownRecipientKey,
    UnknownSigner,
    WrongRecipient,
)
from streams.crypto.keys import Keyring, generate_key, import_private_key
from streams.crypto.notice import NoticeOpener, NoticeSealer, notice_sha256
from streams.resources import schema_file

VECTOR = json.loads((Path(__file__).parent / "vectors" / "notice_v1.json").read_text("utf-8"))
KEYS = VECTOR["keys"]
T = datetime(2025, 1, 1, tzinfo=timezone.utc)
SIGN = import_private_key("masb-router-wm", "signing", bytes.fromhex(KEYS["router_signing_seed_hex"]), T)
XKEY = import_private_key("masb-router-wm", "exchange", bytes.fromhex(KEYS["router_exchange_private_hex"]), T)
UNIT = import_private_key(KEYS["unit_id"], "exchange", bytes.fromhex(KEYS["unit_exchange_private_hex"]), T)
ROUTERS = {SIGN.key_id: RouterKeys(SIGN.public_key, {XKEY.key_id: XKEY.public_key})}
SCHEMAS = [fastavro.parse_schema(s) for s in json.loads(schema_file("notice.avsc").read_text())]


def content(**overrides):
    c = dict(VECTOR["input"]["content"], **overrides)
    for name in ("at", "delivered_at", "deliver_by", "received_at", "acknowledged_at"):
        if c[name]:
            c[name] = datetime.fromisoformat(c[name])
    return c


def seal(sealer=None, unit=UNIT, **overrides) -> bytes:
    sealer = sealer or NoticeSealer(SIGN, XKEY)
    return sealer.seal(unit_id=unit.owner, unit_key_id=unit.key_id, unit_public_key=unit.public_key,
                       content=content(**overrides), created_at=datetime.fromisoformat(VECTOR["input"]["created_at"]))


def opener(unit=UNIT, routers=ROUTERS) -> NoticeOpener:
    return NoticeOpener(unit.owner, Keyring(unit.owner, [unit]), routers)


def test_known_answer_vector_reproduces_byte_for_byte():
    nonce = bytes.fromhex(VECTOR["nonce_hex"])
    assert (SIGN.key_id, XKEY.key_id, UNIT.key_id) == (KEYS["router_signing_key_id"], KEYS["router_exchange_key_id"],
                                                       KEYS["unit_key_id"])
    data = seal(NoticeSealer(SIGN, XKEY, random_bytes=lambda n: nonce[:n]))
    assert data.hex() == VECTOR["expected"]["notice_hex"]
    assert notice_sha256(data) == VECTOR["expected"]["notice_sha256"]
    opened = opener().open(data)
    assert opened.content == {"version": 1, **content()}
    assert opened.notice_id == VECTOR["input"]["content"]["notice_id"] and opened.unit_id == "hau-shropshire"


def test_known_answer_vector_opens_with_raw_primitives_following_the_doc():
    """An independent reading of docs/deadlines.md: Avro records, then only libsodium calls."""
    data = bytes.fromhex(VECTOR["expected"]["notice_hex"])
    signed = fastavro.schemaless_reader(io.BytesIO(data), SCHEMAS[2])
    assert signed["version"] == 1 and signed["signer_key_id"] == KEYS["router_signing_key_id"]
    nacl.bindings.crypto_sign_open(signed["signature"] + b"MASB-NOTICE-v1\x00" + signed["body"],
                                   bytes.fromhex(KEYS["router_signing_public_hex"]))
    assert signed["body"].hex() == VECTOR["intermediate"]["body_hex"]
    body = fastavro.schemaless_reader(io.BytesIO(signed["body"]), SCHEMAS[1])
    assert (body["unit_id"], body["recipient_key_id"]) == ("hau-shropshire", KEYS["unit_key_id"])
    sealed = body["sealed"]
    assert sealed[:24].hex() == VECTOR["nonce_hex"]
    plain = nacl.bindings.crypto_box_open(sealed[24:], sealed[:24], bytes.fromhex(KEYS["router_exchange_public_hex"]),
                                          bytes.fromhex(KEYS["unit_exchange_private_hex"]))
    assert plain.hex() == VECTOR["intermediate"]["content_hex"]
    decoded = fastavro.schemaless_reader(io.BytesIO(plain), SCHEMAS[0])
    assert decoded["agency_id"] == "shropshire-housing" and decoded["overdue_seconds"] == 1


def test_nothing_about_the_delivery_is_in_clear():
    data = seal()
    for text in ("shropshire-housing", VECTOR["input"]["content"]["event_id"], "MARAC_REFERRAL", "isa-wm-housing",
                 "ESCALATED"):
        assert text.encode() not in data


def test_another_unit_or_another_key_cannot_open_it():
    data = seal()
    other = generate_key("hau-worcestershire", "exchange")
    with pytest.raises(WrongRecipient):
        opener(other).open(data)
    with pytest.raises(UnknownRecipientKey):
        opener(generate_key("hau-shropshire", "exchange")).open(data)
    impostor = replace(generate_key("hau-shropshire", "exchange"), key_id=UNIT.key_id, public_key=UNIT.public_key)
    with pytest.raises(KeyUnwrapFailed):
        opener(impostor).open(data)


def test_a_notice_signed_by_a_key_the_policy_does_not_trust_is_refused():
    rogue = generate_key("masb-router-wm", "signing")
    with pytest.raises(UnknownSigner):
        opener().open(seal(NoticeSealer(rogue, XKEY)))
    pretending = {rogue.key_id: ROUTERS[SIGN.key_id]}  # a trusted entry named by the rogue id, the real key
    with pytest.raises(BadSignature):
        opener(routers={**ROUTERS, **pretending}).open(seal(NoticeSealer(rogue, XKEY)))


def test_every_flipped_byte_is_refused():
    data = seal()
    for i in range(len(data)):
        tampered = bytearray(data)
        tampered[i] ^= 0x01
        with pytest.raises(EnvelopeError):
            opener().open(bytes(tampered))


def test_sealing_refuses_a_key_that_does_not_match_its_id():
    with pytest.raises(ValueError, match="does not match"):
        NoticeSealer(SIGN, XKEY).seal(unit_id="hau-shropshire", unit_key_id="0" * 16, unit_public_key=UNIT.public_key,
                                      content=content(), created_at=T)


def test_sealing_refuses_a_mismatched_key_id_after_the_key_was_used_with_its_own():
    sealer = NoticeSealer(SIGN, XKEY)
    seal(sealer)  # the unit's Box is now cached under its key id
    with pytest.raises(ValueError, match="does not match"):
        sealer.seal(unit_id="hau-shropshire", unit_key_id="0" * 16, unit_public_key=UNIT.public_key,
                    content=content(), created_at=T)
    opener().open(seal(sealer))


def test_schema_is_valid_for_the_reference_avro_library():
    import avro.schema

    avro.schema.parse(schema_file("notice.avsc").read_text())
