"""Field-level encryption envelope: what agencies and auditors rely on."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import fastavro
import nacl.bindings
import nacl.public
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.crypto import (
    BadSignature,
    EnvelopeError,
    EnvelopeOpener,
    EnvelopeSealer,
    FieldDecryptionFailed,
    Keyring,
    MalformedEnvelope,
    RouterKeys,
    UnknownRecipientKey,
    UnknownSigner,
    WrongRecipient,
    assemble,
    envelope_sha256,
    generate_key,
)
from streams.crypto import aead
from streams.crypto.envelope import canonical_json
from streams.crypto.keys import import_private_key
from streams.resources import schema_file

ROOT = Path(__file__).resolve().parents[1]
VECTOR = json.loads((ROOT / "tests" / "vectors" / "envelope_v1.json").read_text("utf-8"))
# Parsed from the .avsc files, as another team would: not from the module under test.
BODY_SCHEMA, SIGNED_SCHEMA = (fastavro.parse_schema(s) for s in json.loads((schema_file("envelope.avsc")).read_text()))
SENT = datetime(2025, 6, 2, 14, 30, 5, 123000, tzinfo=timezone.utc)
SECRET_NAME = "Rhiannon Quixote-Testperson"

router_sign = generate_key("router-wm", "signing")
router_x = generate_key("router-wm", "exchange")
# This module tests version 1 (still opened by every partner); version 2: tests/test_envelope_v2.py.
SEALER = EnvelopeSealer(router_sign, router_x, version=1)
TRUST = {router_sign.key_id: SEALER.router_keys()}
agency_keys = {a: generate_key(a, "exchange") for a in ("housing-telford", "health-wvt", "school-0042")}


def opener_for(agency: str, *keys, trust: dict[str, RouterKeys] | None = None) -> EnvelopeOpener:
    ring = Keyring(agency, keys or [agency_keys[agency]])
    return EnvelopeOpener(agency, ring, TRUST if trust is None else trust)


def seal(agency: str = "housing-telford", *, sealer: EnvelopeSealer = SEALER, key=None, **overrides: Any) -> bytes:
    key = key or agency_keys[agency]
    args: dict[str, Any] = dict(
        event_id="evt-1", case_ref="HAU-N-2025-000123", event_type="protection_notice.issued",
        schema_ref="masb.events.ProtectionNoticeIssued:3", recipient_agency=agency,
        recipient_key_id=key.key_id, recipient_public_key=key.public_key,
        fields={"victim.name": SECRET_NAME, "victim.address": {"line1": "1 Test Row", "postcode": "ZZ99 9ZZ"},
                "notice.expires_hours": 48},
        agreement_id="ISA-WM-HOUSING", agreement_version=4, policy_version=17,
        legal_basis="UK GDPR 6(1)(e), 9(2)(g)", purpose="safeguarding", protective_marking="OFFICIAL-SENSITIVE",
        sent_at=SENT, deliver_by=SENT + timedelta(hours=2),
    )
    args.update(overrides)
    return sealer.seal(**args)


def decode(data: bytes) -> tuple[dict, dict]:
    signed = fastavro.schemaless_reader(io.BytesIO(data), SIGNED_SCHEMA, None)
    return signed, fastavro.schemaless_reader(io.BytesIO(signed["body"]), BODY_SCHEMA, None)


def resign(data: bytes, mutate: Callable[[dict], None], signer=router_sign) -> bytes:
    """Alter the body and sign it again with the router key: isolates the checks behind the signature."""
    signed, body = decode(data)
    mutate(body)
    out = io.BytesIO()
    fastavro.schemaless_writer(out, BODY_SCHEMA, body)
    body_bytes = out.getvalue()
    signed.update(body=body_bytes, signature=signer.signing_key().sign(b"MASB-ENVELOPE-v1\x00" + body_bytes).signature)
    out = io.BytesIO()
    fastavro.schemaless_writer(out, SIGNED_SCHEMA, signed)
    return out.getvalue()


# --- round trip and addressing ----------------------------------------------------------------

def test_round_trip_returns_metadata_and_values():
    data = seal()
    opened = opener_for("housing-telford").open(data)
    assert opened.fields == {"victim.name": SECRET_NAME, "notice.expires_hours": 48,
                             "victim.address": {"line1": "1 Test Row", "postcode": "ZZ99 9ZZ"}}
    assert (opened.event_id, opened.recipient_agency, opened.agreement_version, opened.policy_version) == (
        "evt-1", "housing-telford", 4, 17)
    assert opened.sent_at == SENT and opened.deliver_by == SENT + timedelta(hours=2)
    assert opened.signer_key_id == router_sign.key_id and opened.sender_exchange_key_id == router_x.key_id
    assert opened.envelope_sha256 == hashlib.sha256(data).hexdigest() == envelope_sha256(data)


def test_no_value_is_in_clear_and_opened_repr_hides_values():
    data = seal()
    for value in (SECRET_NAME, "1 Test Row", "ZZ99 9ZZ"):
        assert value.encode() not in data
    assert SECRET_NAME not in repr(opener_for("housing-telford").open(data))


def test_deliver_by_may_be_absent():
    assert opener_for("housing-telford").open(seal(deliver_by=None)).deliver_by is None


def test_each_agency_opens_only_its_own_envelope():
    envelopes = {a: seal(a, fields={"who": a}) for a in agency_keys}
    for agency, data in envelopes.items():
        opener = opener_for(agency)
        assert opener.open(data).fields == {"who": agency}
        for other, other_data in envelopes.items():
            if other != agency:
                with pytest.raises(WrongRecipient, match=f"addressed to agency {other}"):
                    opener.open(other_data)


def test_keyring_without_the_addressed_key_reports_unknown_recipient_key():
    stranger_key = generate_key("housing-telford", "exchange")
    with pytest.raises(UnknownRecipientKey, match=agency_keys["housing-telford"].key_id):
        opener_for("housing-telford", stranger_key).open(seal())


def test_rotation_old_envelopes_still_open_new_ones_use_new_key():
    old = generate_key("health-wvt", "exchange", created_at=SENT - timedelta(days=400))
    new = generate_key("health-wvt", "exchange", created_at=SENT)
    ring = Keyring("health-wvt", [old, new])
    old_env = seal("health-wvt", key=old)
    new_env = seal("health-wvt", key=ring.current)
    opener = EnvelopeOpener("health-wvt", ring, TRUST)
    assert opener.open(old_env).recipient_key_id == old.key_id
    assert opener.open(new_env).recipient_key_id == new.key_id
    with pytest.raises(UnknownRecipientKey):  # the old key was destroyed: its data is gone
        EnvelopeOpener("health-wvt", Keyring("health-wvt", [new]), TRUST).open(old_env)


def test_router_exchange_key_rotation_is_followed_through_trusted_ids():
    new_x = generate_key("router-wm", "exchange")
    sealer2 = EnvelopeSealer(router_sign, new_x, version=1)
    data = seal(sealer=sealer2)
    with pytest.raises(UnknownSigner, match=new_x.key_id):
        opener_for("housing-telford").open(data)
    both = RouterKeys(router_sign.public_key, {router_x.key_id: router_x.public_key, new_x.key_id: new_x.public_key})
    assert opener_for("housing-telford", trust={router_sign.key_id: both}).open(data).fields


# --- authenticity and integrity ---------------------------------------------------------------

def test_unknown_router_signer_is_refused():
    rogue = EnvelopeSealer(generate_key("rogue", "signing"), generate_key("rogue", "exchange"), version=1)
    with pytest.raises(UnknownSigner):
        opener_for("housing-telford").open(seal(sealer=rogue))


def test_forged_signature_claiming_a_trusted_signer_id_is_refused():
    forged = resign(seal(), lambda body: None, signer=generate_key("rogue", "signing"))
    with pytest.raises(BadSignature):
        opener_for("housing-telford").open(forged)


def test_flipping_any_single_byte_is_detected():
    data = seal(fields={"n": SECRET_NAME})
    opener = opener_for("housing-telford")
    for position in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            tampered = bytearray(data)
            tampered[position] ^= mask
            with pytest.raises(EnvelopeError):
                opener.open(bytes(tampered))


def test_every_truncation_and_extension_is_detected():
    data = seal(fields={"n": 1})
    opener = opener_for("housing-telford")
    for length in range(len(data)):
        with pytest.raises(EnvelopeError):
            opener.open(data[:length])
    with pytest.raises(MalformedEnvelope, match="trailing"):
        opener.open(data + b"\x00")


def test_ciphertext_moved_between_paths_fails_even_if_re_signed():
    def swap(body: dict) -> None:
        a, b = body["fields"][0], body["fields"][1]
        a["nonce"], b["nonce"] = b["nonce"], a["nonce"]
        a["ciphertext"], b["ciphertext"] = b["ciphertext"], a["ciphertext"]

    with pytest.raises(FieldDecryptionFailed, match="field 'notice.expires_hours'") as info:
        opener_for("housing-telford").open(resign(seal(), swap))
    assert SECRET_NAME not in str(info.value)


@pytest.mark.parametrize("what", ["field", "field_and_wrapped_key"])
def test_ciphertext_moved_between_envelopes_fails_even_if_re_signed(what):
    _, donor = decode(seal(event_id="evt-2", fields={"victim.name": SECRET_NAME}))

    def transplant(body: dict) -> None:
        body["fields"] = donor["fields"]
        if what == "field_and_wrapped_key":
            body["wrapped_key"] = donor["wrapped_key"]  # the DEK now matches: only the AAD catches it

    target = seal(event_id="evt-1", fields={"victim.name": "someone else"})
    with pytest.raises(FieldDecryptionFailed, match="victim.name"):
        opener_for("housing-telford").open(resign(target, transplant))


def test_transplant_without_re_signing_breaks_the_signature():
    _, donor = decode(seal(event_id="evt-2"))
    signed, body = decode(seal())
    body["fields"] = donor["fields"]
    out = io.BytesIO()
    fastavro.schemaless_writer(out, BODY_SCHEMA, body)
    signed["body"] = out.getvalue()
    out = io.BytesIO()
    fastavro.schemaless_writer(out, SIGNED_SCHEMA, signed)
    with pytest.raises(BadSignature):
        opener_for("housing-telford").open(out.getvalue())


def test_unsorted_or_duplicate_paths_are_malformed():
    def duplicate(body: dict) -> None:
        body["fields"] = [body["fields"][0], body["fields"][0]]

    with pytest.raises(MalformedEnvelope, match="sorted"):
        opener_for("housing-telford").open(resign(seal(), duplicate))


@given(st.binary(max_size=600))
@settings(max_examples=400, deadline=None)
def test_open_on_arbitrary_bytes_raises_only_envelope_errors(data):
    with pytest.raises(EnvelopeError):
        opener_for("housing-telford").open(data)


_VALID = seal(fields={"a": 1, "b": "x"})


@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(0, len(_VALID)))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_open_on_mutated_envelopes_raises_only_envelope_errors(edits, cut):
    data = bytearray(_VALID)
    for position, value in edits:
        data[position] = value
    data = bytes(data[:cut])
    if data == _VALID:
        return
    with pytest.raises(EnvelopeError):
        opener_for("housing-telford").open(data)


# --- sealing contract -------------------------------------------------------------------------

def test_box_is_computed_once_per_recipient_not_per_event(monkeypatch):
    calls = []
    real = nacl.bindings.crypto_box_beforenm
    monkeypatch.setattr(nacl.bindings, "crypto_box_beforenm", lambda pk, sk: calls.append(pk) or real(pk, sk))
    sealer = EnvelopeSealer(router_sign, router_x, version=1)
    for event in range(5):
        for agency in agency_keys:
            seal(agency, sealer=sealer, event_id=f"evt-{event}")
    assert len(calls) == len(agency_keys)


def test_seal_refuses_a_mismatched_key_id_after_the_key_was_used_with_its_own():
    sealer = EnvelopeSealer(router_sign, router_x, version=1)
    seal(sealer=sealer)  # the recipient's Box is now cached under its key id
    with pytest.raises(ValueError, match="does not match key id"):
        seal(sealer=sealer, recipient_key_id="0" * 16)
    assert opener_for("housing-telford").open(seal(sealer=sealer)).fields["notice.expires_hours"] == 48


def test_seal_refuses_mismatched_key_id_naive_times_and_non_json_values():
    key = agency_keys["housing-telford"]
    with pytest.raises(ValueError, match="does not match key id"):
        seal(recipient_key_id="0" * 16)
    with pytest.raises(ValueError, match="timezone-aware"):
        seal(sent_at=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="field 'victim.dob'") as info:
        seal(fields={"victim.dob": datetime(1990, 1, 2)})
    assert "1990" not in str(info.value)
    with pytest.raises(ValueError, match="non-empty"):
        seal(fields={"": "x"})
    with pytest.raises(ValueError, match="field 'score'"):
        seal(fields={"score": float("nan")})
    assert key  # fixture used


def test_assemble_nests_dotted_paths_and_refuses_conflicts():
    assert assemble({"victim.name": "A", "victim.address.town": "T", "children": [{"name": "B"}]}) == {
        "victim": {"name": "A", "address": {"town": "T"}}, "children": [{"name": "B"}]}
    assert assemble({"x": {"k": 1}}) == {"x": {"k": 1}}
    with pytest.raises(ValueError, match="conflicts"):
        assemble({"victim": "A", "victim.name": "B"})
    with pytest.raises(ValueError, match="empty segment"):
        assemble({"victim..name": "A"})


# --- known-answer vector ----------------------------------------------------------------------

def _vector_sealer() -> tuple[EnvelopeSealer, Any, Any]:
    keys = VECTOR["keys"]
    t = datetime(2025, 1, 1, tzinfo=timezone.utc)
    sign = import_private_key("router-wm", "signing", bytes.fromhex(keys["router_signing_seed_hex"]), t)
    xkey = import_private_key("router-wm", "exchange", bytes.fromhex(keys["router_exchange_private_hex"]), t)
    agency = import_private_key(VECTOR["input"]["recipient_agency"], "exchange",
                                bytes.fromhex(keys["recipient_exchange_private_hex"]), t)
    # The draws in the documented order, as one stream: the sealer may take them in one call or several.
    stream = bytearray(b"".join(bytes.fromhex(d) for d in VECTOR["random_draws_hex"]))

    def rng(n: int) -> bytes:
        assert len(stream) >= n
        draw = bytes(stream[:n])
        del stream[:n]
        return draw

    assert (sign.key_id, xkey.key_id, agency.key_id) == (
        keys["router_signing_key_id"], keys["router_exchange_key_id"], keys["recipient_key_id"])
    return EnvelopeSealer(sign, xkey, random_bytes=rng, version=1), sign, agency


def test_known_answer_vector_reproduces_byte_for_byte():
    sealer, sign, agency = _vector_sealer()
    args = dict(VECTOR["input"])
    args["sent_at"] = datetime.fromisoformat(args["sent_at"])
    args["deliver_by"] = datetime.fromisoformat(args["deliver_by"])
    data = sealer.seal(recipient_public_key=agency.public_key, **args)
    assert data.hex() == VECTOR["expected"]["envelope_hex"]
    assert envelope_sha256(data) == VECTOR["expected"]["envelope_sha256"]
    opened = EnvelopeOpener(agency.owner, Keyring(agency.owner, [agency]), {sign.key_id: sealer.router_keys()}).open(data)
    assert opened.fields == VECTOR["input"]["fields"]


def test_known_answer_vector_opens_with_raw_primitives_following_the_doc():
    """An independent reading of docs/envelope.md: only libsodium calls, hand-built AAD."""
    keys, inter = VECTOR["keys"], VECTOR["intermediate"]
    data = bytes.fromhex(VECTOR["expected"]["envelope_hex"])
    signed, body = decode(data)
    assert signed["signer_key_id"] == keys["router_signing_key_id"]
    nacl.bindings.crypto_sign_open(signed["signature"] + b"MASB-ENVELOPE-v1\x00" + signed["body"],
                                   bytes.fromhex(keys["router_signing_public_hex"]))
    assert signed["body"].hex() == inter["body_hex"]
    shared = nacl.bindings.crypto_box_beforenm(bytes.fromhex(keys["router_exchange_public_hex"]),
                                               bytes.fromhex(keys["recipient_exchange_private_hex"]))
    wrapped = body["wrapped_key"]
    dek = nacl.bindings.crypto_box_open_afternm(wrapped[24:], wrapped[:24], shared)
    assert dek.hex() == inter["dek_hex"]

    def lp(s: str) -> bytes:
        return len(s.encode()).to_bytes(2, "big") + s.encode()

    assert [f["path"] for f in body["fields"]] == sorted(VECTOR["input"]["fields"])
    for item, expected in zip(body["fields"], inter["fields"]):
        aad = (b"MASB-FIELD-v1" + lp(body["event_id"]) + lp(body["recipient_agency"]) + lp(body["recipient_key_id"])
               + lp(item["path"]) + lp(body["schema_ref"]))
        assert aad.hex() == expected["aad_hex"]
        plain = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(item["ciphertext"], aad, item["nonce"], dek)
        assert plain.decode() == expected["canonical_json"]
        assert json.loads(plain) == VECTOR["input"]["fields"][item["path"]]
    sent_millis = int(datetime.fromisoformat(VECTOR["input"]["sent_at"]).timestamp() * 1000)
    assert body["sent_at"] == datetime.fromtimestamp(sent_millis / 1000, timezone.utc)


def test_schema_files_are_valid_for_the_reference_avro_library():
    import avro.schema

    for name in ("envelope.avsc", "publication.avsc"):
        avro.schema.parse((schema_file(name)).read_text())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.text(min_size=1, max_size=30), json_values, max_size=6))
@settings(max_examples=150, deadline=None)
def test_any_json_field_values_round_trip(fields):
    assert opener_for("school-0042").open(seal("school-0042", fields=fields)).fields == fields


@given(message=st.binary(max_size=300), aad=st.binary(max_size=100), nonce=st.binary(min_size=24, max_size=24),
       key=st.binary(min_size=32, max_size=32))
@settings(max_examples=300, deadline=None)
def test_direct_libsodium_encryption_equals_pynacls_public_function(message, aad, nonce, key):
    # streams/crypto/aead.py calls libsodium through PyNaCl's own cffi binding; its output must be
    # exactly what PyNaCl's public binding returns for the same inputs.
    assert aead.encrypt(message, aad, nonce, key) == nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        message, aad, nonce, key)


@pytest.mark.parametrize("args", [
    (bytearray(b"m"), b"", bytes(24), bytes(32)),
    (b"m", "aad", bytes(24), bytes(32)),
    (b"m", b"", bytes(23), bytes(32)),
    (b"m", b"", bytes(24), bytes(31)),
    (b"m", b"", bytes(25), bytes(33)),
])
def test_direct_libsodium_encryption_refuses_what_pynacl_refuses(args):
    with pytest.raises(TypeError):
        nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(*args)
    with pytest.raises(TypeError):
        aead.encrypt(*args)


@given(json_values)
@settings(max_examples=300, deadline=None)
def test_canonical_json_is_json_dumps_with_the_documented_options(value):
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        expected_bytes = expected.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: neither can encode it
        with pytest.raises(ValueError):
            canonical_json(value)
        return
    assert canonical_json(value) == expected_bytes
