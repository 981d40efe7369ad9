"""Events/s of the pure routing decision (streams.routing.Router admit + deliver, no Kafka), for
events with 1, 3 and 6 recipients, and where the time goes.

Run: .venv/bin/python bench/bench_router.py [seconds-per-measurement]

The event is the demo MARAC referral (deploy/demo/events/02_marac_worcestershire.json), published by
its unit exactly as `masb publish` does (Avro, signed, sealed to the router). The policy gives it N
recipient agencies, each with one of the demo agreements' MARAC field lists (5 to 10 paths, records
such as `children` included whole). The cost split measures each step on its own:

  unseal+verify   open_publication: X25519 sealed box to the router, Ed25519 signature of the unit
  decode+validate fastavro decode of the wire event and the schema rules check
  seal envelopes  one envelope per recipient: field projection, XChaCha20-Poly1305 per field, data
                  key wrapped with the cached per-recipient Box, Ed25519 signature, Avro encoding
  audit entries   one DELIVERY entry per recipient: the case reference sealed once per event under its
                  case key (the shared case-key store of streams/audit/shared_case_keys.py, its
                  partition loaded, as in the worker), make_entry and Avro encoding of each entry
  crypto floor    the PyNaCl and fastavro calls of all of the above made straight, inputs prepared
                  beforehand (floor_micros): what the decision would cost with no Python logic at all
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams import codec
from streams.audit.shared_case_keys import CaseKeySecrets, SharedCaseKeys
from streams.audit.entry import _FIELDS, _SCHEMAS, ENTRY_FORMAT_V1, decode_entry, encode_entry, make_entry
from streams.crypto.keys import Keyring, generate_key
from streams.crypto.pseudonym import PseudonymKeys, generate_pseudonym_key
from streams.crypto.publication import open_publication
from streams.policy import deliver_by, parse_policy
from streams.publisher import prepare
from streams.routing import Admitted, InputRecord, Router, RouterIdentity
from streams.topics import Topics

V1_FIELDS = set(_FIELDS[ENTRY_FORMAT_V1]) - {"kind"}  # a DELIVERY entry is format 0x01
_ENTRY_SCHEMA = _SCHEMAS[ENTRY_FORMAT_V1]
EVENT_FILE = ROOT / "deploy" / "demo" / "events" / "02_marac_worcestershire.json"
AREA, UNIT, ROUTER_ID = "worcestershire", "hau-worcestershire", "masb-router-bench"
# MARAC field lists of the demo agreements (deploy/demo/policy.template.yaml), cycled over recipients.
FIELD_LISTS = [
    ["header.case_ref", "header.risk_level", "header.consent", "victim.name", "victim.date_of_birth",
     "victim.nhs_number", "victim.pregnant_or_recent_birth", "victim.safe_contact", "risks_and_triggers"],
    ["header", "victim.name", "victim.date_of_birth", "victim.address", "victim.safe_contact",
     "perpetrator", "children", "incidents", "risks_and_triggers"],
    ["header.case_ref", "header.risk_level", "victim.name", "victim.address", "victim.safe_contact"],
    ["header", "dash_score", "victim.name", "victim.date_of_birth", "victim.safe_contact", "perpetrator.name",
     "perpetrator.relationship_to_victim", "children", "incidents", "risks_and_triggers"],
    ["header.case_ref", "header.risk_level", "header.consent", "victim.name", "victim.date_of_birth",
     "victim.nhs_number", "victim.pregnant_or_recent_birth", "victim.safe_contact"],
    ["header.case_ref", "header.risk_level", "victim.name", "victim.safe_contact", "perpetrator.name"],
]


def rate(work: Callable[[], object], seconds: float, rounds: int = 3) -> float:
    """Calls of ``work`` per second: the best of ``rounds`` runs of seconds/rounds each, after one warm-up
    call (the machines here are shared: the best round is the least disturbed one)."""
    work()
    best = 0.0
    for _ in range(rounds):
        count, start = 0, time.perf_counter()
        while True:
            work()
            count += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / rounds:
                break
        best = max(best, count / elapsed)
    return best


def _key_entry(record) -> dict[str, str]:
    return {"key_id": record.key_id, "public_key": base64.b64encode(record.public_key).decode(), "status": "active"}


class Scenario:
    """A router, a unit and N recipient agencies with fresh keys, and one published MARAC referral."""

    def __init__(self, recipients: int):
        router_signing, router_exchange = generate_key(ROUTER_ID, "signing"), generate_key(ROUTER_ID, "exchange")
        self.unit_key = generate_key(UNIT, "signing")
        agencies = [generate_key(f"agency-{i}", "exchange") for i in range(recipients)]
        self.policy = parse_policy({
            "policy_version": 1, "effective_from": "2026-11-01",
            "router": {"id": ROUTER_ID, "signing_keys": [_key_entry(router_signing)],
                       "exchange_keys": [_key_entry(router_exchange)]},
            "units": [{"id": UNIT, "areas": [AREA], "event_types": ["MARAC_REFERRAL"],
                       "signing_keys": [_key_entry(self.unit_key)]}],
            "agencies": [{"id": a.owner, "name": f"Agency {i}", "kind": "health", "areas": [AREA],
                          "exchange_keys": [_key_entry(a)]} for i, a in enumerate(agencies)],
            "agreements": [{"id": f"isa-{i}", "version": 1, "agency": a.owner, "purpose": "safeguarding",
                            "legal_basis": "UK_GDPR_6_1_E_9_2_G_DPA_SCH1_18", "retention": "P6Y",
                            "deadline": "PT2H", "shares": {"MARAC_REFERRAL": FIELD_LISTS[i % len(FIELD_LISTS)]}}
                           for i, a in enumerate(agencies)],
        })
        self._case_dir = tempfile.TemporaryDirectory(prefix="masb-bench-case-keys-")
        identity = RouterIdentity(exchange=Keyring(ROUTER_ID, [router_exchange], kind="exchange"),
                                  signing=Keyring(ROUTER_ID, [router_signing], kind="signing"),
                                  case_keys=SharedCaseKeys("unused", "bench.case-keys",
                                                           CaseKeySecrets.create(self._case_dir.name), {0: {}}),
                                  pseudonyms=PseudonymKeys([generate_pseudonym_key()]))
        self.identity = identity
        self.router = Router(self.policy, identity, Topics("bench."))
        self.sealer = identity.sealer()
        self.router_keys = {router_exchange.key_id: router_exchange}
        self.event = json.loads(EVENT_FILE.read_text())
        key, value = prepare(self.event, self.policy, self.unit_key, identity.pseudonyms)
        self.record = InputRecord("bench.case-events", 0, 0, key, value)
        self.wire = codec.encode_event(self.event)
        self.shares = self.policy.routing("MARAC_REFERRAL", AREA)
        assert len(self.shares) == recipients
        self.admitted = self.router.admit(self.record)
        assert isinstance(self.admitted, Admitted), self.admitted
        deliveries = self.router.deliver(self.admitted)
        self.envelope_bytes = sum(len(d.envelope) for d in deliveries) // recipients
        self.entries = [{k: v for k, v in decode_entry(d.audit_entry).items() if k in V1_FIELDS | {"kind"}}
                        for d in deliveries]

    # -- the whole decision ---------------------------------------------------------------------
    def route(self) -> None:
        self.router.deliver(self.router.admit(self.record))

    # -- its parts --------------------------------------------------------------------------------
    def unseal_verify(self) -> None:
        open_publication(self.record.value, router_exchange_keys=self.router_keys,
                         unit_verify_key=self.policy.unit_verify_key)

    def decode_validate(self) -> None:
        codec.decode_valid_event(self.wire)  # what Router.admit does

    def _envelopes(self, sent_at: datetime) -> list[bytes]:
        header = self.event["header"]
        out = []
        for share in self.shares:
            fields = {p: v for p in share.fields if (v := _get(self.event, p)) is not None}
            out.append(self.sealer.seal(
                event_id=header["event_id"], case_ref=header["case_ref"], event_type=header["event_type"],
                schema_ref=codec.schema_ref(header["event_type"]), recipient_agency=share.agency_id,
                recipient_key_id=share.recipient_key_id, recipient_public_key=share.recipient_public_key,
                fields=fields, agreement_id=share.agreement_id, agreement_version=share.agreement_version,
                policy_version=self.policy.version, legal_basis=share.legal_basis, purpose=share.purpose,
                protective_marking=header["protective_marking"], sent_at=sent_at,
                deliver_by=deliver_by(share, sent_at)))
        return out

    def seal(self) -> None:
        self._envelopes(datetime.now(UTC))

    def audit(self) -> None:
        header = self.event["header"]
        self.identity.case_fields(header["case_ref"], header["event_id"])
        for fields in self.entries:
            encode_entry(make_entry("DELIVERY", **{k: v for k, v in fields.items() if k != "kind"}))


def _get(event: dict, path: str):
    try:
        return codec.get_path(event, path)
    except KeyError:
        return None


def floor_micros(s: Scenario, seconds: float) -> float:
    """Microseconds per event of the library calls the decision cannot avoid, made straight, with
    every input prepared beforehand (no Python logic of MASB's): PyNaCl to unseal the publication,
    verify the unit's signature, and per recipient draw the random bytes, wrap the data key, encrypt
    the case reference and each field (XChaCha20-Poly1305), sign the body and hash the envelope; the
    case seal and tag of the audit entries; fastavro to decode the publication and the event and to
    encode each envelope body, signed envelope and audit entry."""
    import hashlib
    import hmac
    import io

    import fastavro
    import nacl.bindings as sodium
    import nacl.public
    import nacl.secret
    import nacl.signing
    import nacl.utils

    from streams.crypto import envelope as env
    from streams.crypto import publication as pub

    router_key = next(iter(s.router_keys.values()))
    unseal = nacl.public.SealedBox(router_key.exchange_key())
    verify_key = nacl.signing.VerifyKey(s.unit_key.public_key)
    publication = pub._decode(s.record.value)
    opened = unseal.decrypt(publication["sealed"])
    signature, wire = opened[:64], opened[64:]
    signed_input = pub._signature_input(UNIT, wire)
    writer = codec.default_codec()._writer(codec.schema_id_of(wire))[1]
    signer = s.identity.signing.current.signing_key()
    sealer = s.sealer
    header = s.event["header"]
    schema_ref = codec.schema_ref(header["event_type"])
    per_recipient = []
    for share, entry in zip(s.shares, s.entries):
        fields = {p: v for p in share.fields if (v := _get(s.event, p)) is not None}
        aad_head, aad_tail = env._aad_parts(header["event_id"], share.agency_id, share.recipient_key_id, schema_ref)
        plain = [(env.canonical_json(fields[p]), aad_head + env.lp(p) + aad_tail) for p in sorted(fields)]
        case_aad = env.case_ref_aad(header["event_id"], share.agency_id, share.recipient_key_id, schema_ref)
        box = sealer._box_for(share.recipient_public_key, share.recipient_key_id)
        body = env._avro_decode(env._BODY_V2_SCHEMA, env._avro_decode(
            env._SIGNED_SCHEMA, s.router.deliver(s.admitted)[0].envelope, "e")["body"], "b")
        per_recipient.append((plain, case_aad, box, body, entry))
    case_key = nacl.utils.random(32)
    case_box = nacl.secret.SecretBox(case_key)
    sealed_case = json.dumps({"case_ref": header["case_ref"], "event_id": header["event_id"]}).encode()
    entry_schema = _ENTRY_SCHEMA

    def one_event() -> None:
        pub._decode(s.record.value)
        data = unseal.decrypt(publication["sealed"])
        verify_key.verify(signed_input, signature)
        hashlib.sha256(data).digest()
        fastavro.schemaless_reader(io.BytesIO(wire[5:]), writer, None)
        case_box.encrypt(sealed_case)  # the case reference, sealed once for the event's entries
        hmac.new(case_key, header["case_ref"].encode(), hashlib.sha256).digest()
        for plain, case_aad, box, body, entry in per_recipient:
            dek = nacl.utils.random(32)
            box.encrypt(dek, nacl.utils.random(24))
            sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(header["case_ref"].encode(), case_aad,
                                                              nacl.utils.random(24), dek)
            for plaintext, aad in plain:
                sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nacl.utils.random(24), dek)
            out = io.BytesIO()
            fastavro.schemaless_writer(out, env._BODY_V2_SCHEMA, body)
            signed = signer.sign(b"MASB-ENVELOPE-v2\x00" + out.getvalue()).signature
            out2 = io.BytesIO()
            fastavro.schemaless_writer(out2, env._SIGNED_SCHEMA, {"version": 2, "body": out.getvalue(),
                                                                  "signer_key_id": "k", "signature": signed})
            hashlib.sha256(out2.getvalue()).digest()
            out3 = io.BytesIO()
            fastavro.schemaless_writer(out3, entry_schema, entry)

    return 1e6 / rate(one_event, seconds)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    counts = (1, 3, 6)
    scenarios = {n: Scenario(n) for n in counts}
    print(f"Router admit+deliver, no Kafka: demo MARAC referral ({len(scenarios[1].wire)} B Avro, "
          f"{len(scenarios[1].record.value)} B sealed publication); {seconds:.1f} s per figure, one core")
    header = f"{'':<24}" + "".join(f"{f'{n} recipient' + ('s' if n > 1 else ''):>16}" for n in counts)
    print(header)
    routed = {n: rate(scenarios[n].route, seconds) for n in counts}
    print(f"{'events/s':<24}" + "".join(f"{routed[n]:>16,.0f}" for n in counts))
    print(f"{'envelopes/s':<24}" + "".join(f"{routed[n] * n:>16,.0f}" for n in counts))
    print(f"{'bytes per envelope':<24}" + "".join(f"{scenarios[n].envelope_bytes:>16,}" for n in counts))
    print("cost split, microseconds per event (share of the measured admit+deliver time):")
    parts = {label: {n: 1e6 / rate(getattr(scenarios[n], method), seconds) for n in counts}
             for label, method in (("unseal+verify", "unseal_verify"), ("decode+validate", "decode_validate"),
                                   ("seal envelopes", "seal"), ("audit entries", "audit"))}
    parts["sum of the parts"] = {n: sum(p[n] for p in parts.values()) for n in counts}
    parts["crypto floor"] = {n: floor_micros(scenarios[n], seconds) for n in counts}
    for label, micros in [*parts.items(), ("admit+deliver", {n: 1e6 / routed[n] for n in counts})]:
        print(f"  {label:<22}" + "".join(f"{micros[n]:>8.0f} ({micros[n] * routed[n] / 1e4:>3.0f}%)".rjust(16)
                                         for n in counts))

if __name__ == "__main__":
    main()
