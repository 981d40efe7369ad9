"""`masb witness serve` faces other networks and answers anyone (fresh-user findings):

- evidence is kept only for what the log key signed and cannot both be true (two checkpoints of one
  size with different roots), once per fork whatever cosignature lines the notes carry; a consistency
  proof that does not verify proves nothing about the log (anyone can make one): a plain 422;
- a request whose headers or body never arrive is answered 408 or closed within --request-timeout.

Against the real `masb witness serve` process, as a log or a stranger would talk to it."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import time
from pathlib import Path

import nacl.signing
import pytest

from streams.audit.checkpoint import Checkpoint, open_note_verified, sign_checkpoint, verifier_key_string
from streams.audit.cosignature import cosigner_signer_key, generate_cosigner
from streams.audit.merkle import consistency_proof, leaf_hash, root_from_leaf_hashes
from streams.witness.protocol import format_add_checkpoint
from tests.test_witness import WitnessProcess

ORIGIN = "masb.example/audit/fresh-user"
LOG_KEY = nacl.signing.SigningKey(bytes(range(1, 33)))
LOG_VKEY = verifier_key_string(ORIGIN, LOG_KEY.verify_key)
LEAVES = [leaf_hash(f"entry {i}".encode()) for i in range(32)]
OTHER = [leaf_hash(b"another history")] + LEAVES[1:]  # what a forking log shows someone else
WITNESS = generate_cosigner("witness.example/fresh-user")
TIMEOUT = 2  # --request-timeout of the witness under test, seconds


def note(size: int, leaves=LEAVES) -> str:
    return sign_checkpoint(Checkpoint(ORIGIN, size, root_from_leaf_hashes(leaves[:size])), ORIGIN, LOG_KEY)


def with_junk_cosignature(text: str, n: int) -> str:
    """The note with one more signature line by a key nobody knows (ignored by the witness)."""
    raw = hashlib.sha256(f"junk {n}".encode()).digest() * 3
    return text + f"\u2014 junk{n}.example/witness {base64.b64encode(raw[:68]).decode()}\n"


class Witness(WitnessProcess):
    """The witness under test: its own key and state, --request-timeout TIMEOUT."""

    def __init__(self, tmp: Path) -> None:
        key_file = tmp / "witness.key"
        key_file.write_text(cosigner_signer_key(WITNESS.name, WITNESS.signing_key) + "\n")
        key_file.chmod(0o600)
        self.state = tmp / "state"
        super().__init__(tmp, key_file, self.state, LOG_VKEY, ("--request-timeout", str(TIMEOUT)))

    def evidence(self) -> list[Path]:
        return sorted((self.state / "evidence").iterdir())


@pytest.fixture
def witness(tmp_path):
    process = Witness(tmp_path)
    yield process
    process.stop()


def test_a_proof_that_does_not_verify_is_a_plain_422_and_no_evidence(witness) -> None:
    assert witness.post(format_add_checkpoint(0, [], note(13)))[0] == 200
    junk_hash = base64.b64encode(hashlib.sha256(b"anything").digest())
    for n in range(5):  # each a new note to the witness: it must not fill the evidence folder
        body = b"old 13\n" + junk_hash + b"\n\n" + with_junk_cosignature(note(14), n).encode()
        status, text = witness.post(body)
        assert status == 422 and "consistency proof" in text, (status, text)
    # A real history that the log might have rewritten: the proof still proves nothing about the log.
    assert witness.post(format_add_checkpoint(13, consistency_proof(OTHER, 13, 20), note(20, OTHER)))[0] == 422
    assert witness.evidence() == []
    refusals = [line for line in witness.log_path.read_text().splitlines() if "does not verify" in line]
    assert len(refusals) == 6 and all("evidence" not in line for line in refusals), refusals
    assert witness.post(format_add_checkpoint(13, consistency_proof(LEAVES, 13, 14), note(14)))[0] == 200


def test_a_fork_is_kept_once_whatever_cosignature_lines_or_old_size_come_with_it(witness) -> None:
    assert witness.post(format_add_checkpoint(0, [], note(10)))[0] == 200
    for n in range(4):
        status, text = witness.post(format_add_checkpoint(10, [], with_junk_cosignature(note(10, OTHER), n)))
        assert status == 422 and "second checkpoint of size 10" in text, (status, text)
    # The same signed fork with a wrong old size: answered 409 (the spec's order) and still the same evidence.
    assert witness.post(format_add_checkpoint(4, consistency_proof(OTHER, 4, 10), note(10, OTHER))) == (409, "10\n")
    [kept] = witness.evidence()
    doc = json.loads(kept.read_text())
    assert doc["kind"] == "fork" and doc["origin"] == ORIGIN and doc["cosigned"]["size"] == doc["submitted"]["size"] == 10
    # Both notes verify under the log key alone, and carry nothing but signatures that verify.
    _, theirs = open_note_verified(doc["submitted"]["note"], [LOG_VKEY])
    assert doc["submitted"]["note"] == note(10, OTHER) and len(theirs) == 1
    _, ours = open_note_verified(doc["cosigned"]["note"], [LOG_VKEY, WITNESS.verifier()])
    assert len(ours) == 2 and doc["cosigned"]["note"].startswith(note(10).rsplit("\n\n", 1)[0])
    assert doc["cosigned"]["root"] != doc["submitted"]["root"]
    # A second, different fork is new evidence; the witness carries on with its own history.
    third = [leaf_hash(b"a third history")] + LEAVES[1:]
    assert witness.post(format_add_checkpoint(10, [], note(10, third)))[0] == 422
    assert len(witness.evidence()) == 2
    assert witness.post(format_add_checkpoint(10, consistency_proof(LEAVES, 10, 12), note(12)))[0] == 200


def exchange(witness: Witness, data: bytes) -> tuple[bytes, float, float]:
    """Send data and read until the witness closes: (what it answered, seconds until its first byte
    or the close, seconds until closed)."""
    started = time.monotonic()
    answered = None
    with socket.create_connection(witness.address, timeout=TIMEOUT + 15) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answered = answered or time.monotonic() - started
                answer += chunk
        except ConnectionResetError:
            pass
    closed = time.monotonic() - started
    return answer, answered or closed, closed


HEAD = b"POST /add-checkpoint HTTP/1.1\r\nHost: witness\r\n"


def test_a_body_that_never_arrives_is_answered_408_and_closed(witness) -> None:
    answer, answered, closed = exchange(witness, HEAD + b"Content-Length: 100\r\n\r\nold 0\n")
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert TIMEOUT - 0.5 < answered < TIMEOUT + 3 and closed < 2 * TIMEOUT + 3, (answered, closed)
    [line] = [line for line in witness.log_path.read_text().splitlines() if "408" in line]
    assert f"within {TIMEOUT} s" in line


def test_headers_that_never_end_are_closed(witness) -> None:
    answer, _, closed = exchange(witness, HEAD + b"Content-Length: 10")
    assert closed < TIMEOUT + 3, closed
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer


def test_a_body_larger_than_any_request_is_refused_at_once(witness) -> None:
    answer, answered, closed = exchange(witness, HEAD + b"Content-Length: 1000000000000\r\n\r\nold 0\n")
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert answered < TIMEOUT and closed < 2 * TIMEOUT + 3, (answered, closed)
