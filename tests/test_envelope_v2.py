"""Envelope version 2 (docs/envelope.md, section 3a): the case reference is encrypted and
authenticated under the envelope's data key, so no envelope byte names the case; version-1
envelopes (tests/test_envelope.py) are still opened."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from pathlib import Path

import fastavro
import nacl.bindings
import pytest

from streams.crypto import (
    BadSignature,
    EnvelopeError,
    EnvelopeOpener,
    EnvelopeSealer,
    FieldDecryptionFailed,
    Keyring,
    MalformedEnvelope,
    envelope_sha256,
)
from streams.crypto.keys import import_private_key
from streams.resources import schema_file
from tests.test_envelope import SEALER, SIGNED_SCHEMA, agency_keys, opener_for, router_sign, router_x, seal

ROOT = Path(__file__).resolve().parents[1]
VECTOR = json.loads((ROOT / "tests" / "vectors" / "envelope_v2.json").read_text("utf-8"))
# Parsed from the .avsc file, as another team would: not from the module under test.
BODY_V2 = fastavro.parse_schema(json.loads(schema_file("envelope_v2.avsc").read_text()))
V2 = EnvelopeSealer(router_sign, router_x)  # the default version
CASE_REF = "HAU-N-2025-000123"


def decode(data: bytes) -> tuple[dict, dict]:
    signed = fastavro.schemaless_reader(io.BytesIO(data), SIGNED_SCHEMA, None)
    return signed, fastavro.schemaless_reader(io.BytesIO(signed["body"]), BODY_V2, None)


def resign(data: bytes, mutate, prefix: bytes = b"MASB-ENVELOPE-v2\x00") -> bytes:
    signed, body = decode(data)
    mutate(body)
    out = io.BytesIO()
    fastavro.schemaless_writer(out, BODY_V2, body)
    signed.update(body=out.getvalue(), signature=router_sign.signing_key().sign(prefix + out.getvalue()).signature)
    out = io.BytesIO()
    fastavro.schemaless_writer(out, SIGNED_SCHEMA, signed)
    return out.getvalue()


def test_version_2_is_written_and_holds_no_case_reference_in_clear():
    data = seal(sealer=V2)
    signed, body = decode(data)
    assert signed["version"] == body["version"] == 2
    assert CASE_REF.encode() not in data
    opened = opener_for("housing-telford").open(data)
    assert (opened.version, opened.case_ref) == (2, CASE_REF)


def test_version_1_and_2_envelopes_are_both_opened():
    opener = opener_for("housing-telford")
    assert opener.open(seal(sealer=SEALER)).case_ref == opener.open(seal(sealer=V2)).case_ref == CASE_REF
    assert CASE_REF.encode() in seal(sealer=SEALER)  # why version 2 exists


def test_a_case_reference_moved_from_another_envelope_does_not_decrypt():
    other = decode(seal("health-wvt", sealer=V2, case_ref="HAU-N-2025-999999"))[1]["sealed_case_ref"]
    moved = resign(seal(sealer=V2), lambda body: body.update(sealed_case_ref=other))
    with pytest.raises(FieldDecryptionFailed, match="case reference"):
        opener_for("housing-telford").open(moved)


def test_the_case_reference_is_bound_to_the_event_id():
    altered = resign(seal(sealer=V2), lambda body: body.update(event_id="evt-2"))
    with pytest.raises(FieldDecryptionFailed, match="case reference"):
        opener_for("housing-telford").open(altered)


def test_a_version_2_body_signed_as_version_1_is_refused():
    cross = resign(seal(sealer=V2), lambda body: None, prefix=b"MASB-ENVELOPE-v1\x00")
    with pytest.raises(BadSignature):
        opener_for("housing-telford").open(cross)


def test_a_body_version_unlike_the_signed_version_is_refused():
    with pytest.raises(MalformedEnvelope, match="version"):
        opener_for("housing-telford").open(resign(seal(sealer=V2), lambda body: body.update(version=1)))


def test_flipping_any_single_byte_is_detected():
    data = seal(sealer=V2, fields={"n": 1})
    opener = opener_for("housing-telford")
    for position in range(len(data)):
        tampered = bytearray(data)
        tampered[position] ^= 0x01
        with pytest.raises(EnvelopeError):
            opener.open(bytes(tampered))


def test_each_agency_opens_only_its_own():
    for agency in agency_keys:
        assert opener_for(agency).open(seal(agency, sealer=V2)).recipient_agency == agency


# --- known-answer vector ----------------------------------------------------------------------

def _vector_parties():
    keys, t = VECTOR["keys"], datetime(2025, 1, 1, tzinfo=timezone.utc)
    sign = import_private_key("router-wm", "signing", bytes.fromhex(keys["router_signing_seed_hex"]), t)
    xkey = import_private_key("router-wm", "exchange", bytes.fromhex(keys["router_exchange_private_hex"]), t)
    agency = import_private_key(VECTOR["input"]["recipient_agency"], "exchange",
                                bytes.fromhex(keys["recipient_exchange_private_hex"]), t)
    return sign, xkey, agency


def test_known_answer_vector_reproduces_byte_for_byte():
    sign, xkey, agency = _vector_parties()
    # The draws in the documented order, as one stream: the sealer may take them in one call or several.
    stream = bytearray(b"".join(bytes.fromhex(d) for d in VECTOR["random_draws_hex"]))

    def rng(n: int) -> bytes:
        assert len(stream) >= n
        draw = bytes(stream[:n])
        del stream[:n]
        return draw

    sealer = EnvelopeSealer(sign, xkey, random_bytes=rng)
    args = dict(VECTOR["input"])
    args["sent_at"] = datetime.fromisoformat(args["sent_at"])
    args["deliver_by"] = datetime.fromisoformat(args["deliver_by"])
    data = sealer.seal(recipient_public_key=agency.public_key, **args)
    assert not stream
    assert data.hex() == VECTOR["expected"]["envelope_hex"]
    assert envelope_sha256(data) == VECTOR["expected"]["envelope_sha256"]
    opened = EnvelopeOpener(agency.owner, Keyring(agency.owner, [agency]), {sign.key_id: sealer.router_keys()}).open(data)
    assert (opened.case_ref, opened.fields) == (VECTOR["input"]["case_ref"], VECTOR["input"]["fields"])


def test_known_answer_vector_opens_with_raw_primitives_following_the_doc():
    """An independent reading of docs/envelope.md: only libsodium calls and hand-built AADs."""
    keys, inter = VECTOR["keys"], VECTOR["intermediate"]
    data = bytes.fromhex(VECTOR["expected"]["envelope_hex"])
    signed, body = decode(data)
    nacl.bindings.crypto_sign_open(signed["signature"] + b"MASB-ENVELOPE-v2\x00" + signed["body"],
                                   bytes.fromhex(keys["router_signing_public_hex"]))
    assert signed["body"].hex() == inter["body_hex"] and signed["version"] == body["version"] == 2
    shared = nacl.bindings.crypto_box_beforenm(bytes.fromhex(keys["router_exchange_public_hex"]),
                                               bytes.fromhex(keys["recipient_exchange_private_hex"]))
    dek = nacl.bindings.crypto_box_open_afternm(body["wrapped_key"][24:], body["wrapped_key"][:24], shared)
    assert dek.hex() == inter["dek_hex"]

    def lp(s: str) -> bytes:
        return len(s.encode()).to_bytes(2, "big") + s.encode()

    tail = lp(body["event_id"]) + lp(body["recipient_agency"]) + lp(body["recipient_key_id"])
    aad = b"MASB-CASE-REF-v2" + tail + lp(body["schema_ref"])
    assert aad.hex() == inter["case_ref"]["aad_hex"]
    sealed = body["sealed_case_ref"]
    case_ref = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(sealed["ciphertext"], aad, sealed["nonce"], dek)
    assert case_ref.decode() == VECTOR["input"]["case_ref"]
    for item, expected in zip(body["fields"], inter["fields"]):
        aad = b"MASB-FIELD-v1" + tail + lp(item["path"]) + lp(body["schema_ref"])
        plain = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(item["ciphertext"], aad, item["nonce"], dek)
        assert plain.decode() == expected["canonical_json"]


def test_schema_file_is_valid_for_the_reference_avro_library():
    import avro.schema

    avro.schema.parse(schema_file("envelope_v2.avsc").read_text())
