"""Envelope seal/open rates against a naive per-field key-agreement design.

Run: .venv/bin/python bench/bench_envelope.py [seconds-per-measurement]

An "event" is one protection-notice-sized record (6 fields, about 300 bytes of canonical JSON)
shared with N recipient agencies: sealing an event = N envelopes, opening = each of the N
agencies opening its own envelope. Both designs sign every envelope with Ed25519; the naive
one replaces the cached Box + per-field XChaCha20-Poly1305 with one SealedBox (an X25519 key
agreement) per field per recipient, which is the cost ANCHORS.md warns about.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nacl.public  # noqa: E402
import nacl.signing  # noqa: E402

from streams.crypto import EnvelopeOpener, EnvelopeSealer, Keyring, generate_key  # noqa: E402
from streams.crypto.envelope import canonical_json  # noqa: E402

FIELDS = {
    "victim.name": "Alex Example-Person",
    "victim.date_of_birth": "1990-01-02",
    "victim.address": {"line1": "12 Sample Street", "town": "Telford", "postcode": "ZZ99 9ZZ"},
    "victim.safe_contact": "Mobile only, text first, not before 10:00; do not leave voicemail",
    "notice.conditions": "Not to enter the street or contact the person directly or indirectly",
    "notice.expires_at": "2025-06-04T14:30:00Z",
}
SENT = datetime(2025, 6, 2, 14, 30, tzinfo=timezone.utc)


def rate(work: Callable[[], None], seconds: float) -> float:
    """Calls of ``work`` per second, measured over at least ``seconds``."""
    work()  # warm caches (Box precomputation happens here, as in a long-running router)
    count, start = 0, time.perf_counter()
    while True:
        work()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed


class Scenario:
    def __init__(self, recipients: int):
        self.router_sign = generate_key("router", "signing")
        sealer = EnvelopeSealer(self.router_sign, generate_key("router", "exchange"))
        self.sealer = sealer
        trust = {self.router_sign.key_id: sealer.router_keys()}
        self.agencies = [generate_key(f"agency-{i}", "exchange") for i in range(recipients)]
        self.openers = [EnvelopeOpener(a.owner, Keyring(a.owner, [a]), trust) for a in self.agencies]
        self.event = 0
        self.envelopes = self.seal_event()
        self.naive_signer = self.router_sign.signing_key()
        self.naive_verify = nacl.signing.VerifyKey(self.router_sign.public_key)
        self.naive_boxes = [nacl.public.SealedBox(nacl.public.PublicKey(a.public_key)) for a in self.agencies]
        self.naive_unseal = [nacl.public.SealedBox(a.exchange_key()) for a in self.agencies]
        self.naive_envelopes = self.naive_seal_event()

    def seal_event(self) -> list[bytes]:
        self.event += 1
        return [
            self.sealer.seal(
                event_id=f"evt-{self.event}", case_ref="HAU-N-2025-000123", event_type="protection_notice.issued",
                schema_ref="masb.events.ProtectionNoticeIssued:3", recipient_agency=a.owner,
                recipient_key_id=a.key_id, recipient_public_key=a.public_key, fields=FIELDS,
                agreement_id="ISA-WM-HOUSING", agreement_version=4, policy_version=17,
                legal_basis="UK GDPR 6(1)(e), 9(2)(g)", purpose="safeguarding",
                protective_marking="OFFICIAL-SENSITIVE", sent_at=SENT, deliver_by=SENT + timedelta(hours=2),
            )
            for a in self.agencies
        ]

    def open_event(self) -> None:
        for opener, data in zip(self.openers, self.envelopes):
            opener.open(data)

    def naive_seal_event(self) -> list[bytes]:
        out = []
        for box in self.naive_boxes:
            parts = [box.encrypt(canonical_json(value)) for _, value in sorted(FIELDS.items())]
            body = b"".join(len(p).to_bytes(2, "big") + p for p in parts)
            out.append(self.naive_signer.sign(body).signature + body)
        return out

    def naive_open_event(self) -> None:
        for unseal, data in zip(self.naive_unseal, self.naive_envelopes):
            signature, body = data[:64], data[64:]
            self.naive_verify.verify(body, signature)
            offset = 0
            while offset < len(body):
                size = int.from_bytes(body[offset:offset + 2], "big")
                unseal.decrypt(body[offset + 2:offset + 2 + size])
                offset += 2 + size


def primitive_costs(seconds: float) -> dict[str, float]:
    """Microseconds per call of the primitives both designs are made of, through PyNaCl."""
    import nacl.bindings as sodium

    signer = generate_key("router", "signing").signing_key()
    message = b"x" * 900
    signature = signer.sign(message).signature
    verifier = signer.verify_key
    recipient = generate_key("agency", "exchange")
    sealed_box = nacl.public.SealedBox(nacl.public.PublicKey(recipient.public_key))
    unseal_box = nacl.public.SealedBox(recipient.exchange_key())
    field = canonical_json(FIELDS["victim.safe_contact"])
    sealed = sealed_box.encrypt(field)
    key, nonce, aad = b"k" * 32, b"n" * 24, b"a" * 120
    ciphertext = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(field, aad, nonce, key)
    work = {
        "ed25519 sign (900 B)": lambda: signer.sign(message),
        "ed25519 verify (900 B)": lambda: verifier.verify(message, signature),
        "xchacha20poly1305 encrypt (field)": lambda: sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
            field, aad, nonce, key),
        "xchacha20poly1305 decrypt (field)": lambda: sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            ciphertext, aad, nonce, key),
        "sealed box encrypt (field)": lambda: sealed_box.encrypt(field),
        "sealed box decrypt (field)": lambda: unseal_box.decrypt(sealed),
    }
    return {name: 1e6 / rate(fn, seconds / 4) for name, fn in work.items()}


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    plaintext = sum(len(canonical_json(v)) for v in FIELDS.values())
    print(f"event: {len(FIELDS)} fields, {plaintext} bytes of canonical JSON; rates in events/s "
          f"(an event = one envelope per recipient); {seconds:.1f} s per figure, one core")
    print(f"{'recipients':>10} | {'seal':>8} {'open':>8} | {'naive seal':>10} {'naive open':>10} | "
          f"{'seal x':>6} {'open x':>6} | {'bytes/env':>9}")
    for recipients in (1, 3, 6):
        s = Scenario(recipients)
        seal = rate(s.seal_event, seconds)
        open_ = rate(s.open_event, seconds)
        naive_seal = rate(s.naive_seal_event, seconds)
        naive_open = rate(s.naive_open_event, seconds)
        size = len(s.envelopes[0])
        print(f"{recipients:>10} | {seal:>8.0f} {open_:>8.0f} | {naive_seal:>10.0f} {naive_open:>10.0f} | "
              f"{seal / naive_seal:>5.1f}x {open_ / naive_open:>5.1f}x | {size:>9}")
    print("primitive costs through PyNaCl (us per call):")
    for name, micros in primitive_costs(seconds).items():
        print(f"  {name:<36} {micros:7.1f}")


if __name__ == "__main__":
    main()
