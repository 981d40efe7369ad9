"""The witness (C2SP tlog-witness add-checkpoint): cosigns consistent checkpoints only, refuses
rollbacks and split views and keeps both signed checkpoints as evidence, and survives a restart
with its state. First the rules on the service itself, then `masb witness serve` as a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import nacl.signing
import pytest

from streams.audit.checkpoint import Checkpoint, open_note_verified, sign_checkpoint, verifier_key_string
from streams.audit.cosignature import cosigner_signer_key, generate_cosigner
from streams.audit.merkle import EMPTY_ROOT, consistency_proof, leaf_hash, root_from_leaf_hashes
from streams.witness.protocol import format_add_checkpoint
from streams.witness.service import WitnessService
from streams.witness.state import WitnessState, WitnessStateError, origin_hash

ORIGIN = "masb.example/audit/witnessed"
LOG_KEY = nacl.signing.SigningKey(bytes(range(32)))
LOG_VKEY = verifier_key_string(ORIGIN, LOG_KEY.verify_key)
LEAVES = [leaf_hash(f"entry {i}".encode()) for i in range(64)]
WITNESS = generate_cosigner("witness.example/test")


def note(size: int, leaves=LEAVES, key=LOG_KEY, origin=ORIGIN) -> str:
    return sign_checkpoint(Checkpoint(origin, size, root_from_leaf_hashes(leaves[:size])), origin, key)


def request(old: int, size: int, leaves=LEAVES, proof=None, **kwargs) -> bytes:
    if proof is None:
        proof = consistency_proof(leaves, old, size) if old else []
    return format_add_checkpoint(old, proof, note(size, leaves, **kwargs))


@pytest.fixture
def state_path(tmp_path) -> Path:
    return tmp_path / "witness-state"


@pytest.fixture
def service(state_path):
    from streams.audit.checkpoint import parse_verifier_key

    state = WitnessState(state_path)
    yield WitnessService(WITNESS, {ORIGIN: [parse_verifier_key(LOG_VKEY)]}, state, clock=lambda: 1_800_000_000)
    state.close()


def cosigned(response, size: int, leaves=LEAVES) -> bool:
    assert response.status == 200, response
    _, verified = open_note_verified(note(size, leaves) + response.body, [WITNESS.verifier()])
    return [v.name for v in verified] == [WITNESS.name]


def test_cosigns_the_first_checkpoint_and_each_consistent_extension(service, state_path) -> None:
    assert cosigned(service.add_checkpoint(request(0, 5)), 5)
    assert cosigned(service.add_checkpoint(request(5, 13)), 13)
    assert cosigned(service.add_checkpoint(request(13, 13)), 13)  # the same checkpoint again
    stored = json.loads((state_path / "logs" / f"{origin_hash(ORIGIN)}.json").read_text())
    assert stored["format"] == "masb-witness-state-v1" and stored["size"] == 13
    # The stored note is what monitors get: the log's signature and ours, both verifying.
    _, verified = open_note_verified(stored["note"], [LOG_VKEY, WITNESS.verifier()])
    assert len(verified) == 2


def test_an_old_size_other_than_the_last_cosigned_gets_409_with_that_size(service) -> None:
    service.add_checkpoint(request(0, 8))
    response = service.add_checkpoint(request(0, 20))
    assert (response.status, response.body, response.content_type) == (409, "8\n", "text/x.tlog.size")
    assert cosigned(service.add_checkpoint(request(8, 20)), 20)


def test_a_split_view_of_the_same_size_is_refused_and_both_notes_kept(service, state_path) -> None:
    service.add_checkpoint(request(0, 10))
    other = [leaf_hash(b"another history")] + LEAVES[1:]
    response = service.add_checkpoint(request(10, 10, leaves=other))
    assert response.status == 422 and "second checkpoint of size 10" in response.body
    [evidence] = (state_path / "evidence").iterdir()
    doc = json.loads(evidence.read_text())
    assert doc["kind"] == "fork" and doc["cosigned"]["size"] == 10
    assert doc["cosigned"]["note"].startswith(note(10).rsplit("\n\n", 1)[0])
    assert doc["submitted"]["note"] == note(10, other)
    for kept in (doc["cosigned"]["note"], doc["submitted"]["note"]):  # both are signed by the log
        open_note_verified(kept, [LOG_VKEY])
    assert cosigned(service.add_checkpoint(request(10, 12)), 12)  # the witness carries on with its history


def test_a_larger_checkpoint_no_proof_connects_is_refused_without_evidence(service, state_path) -> None:
    service.add_checkpoint(request(0, 10))
    other = LEAVES[:5] + [leaf_hash(b"rewritten")] + LEAVES[6:]
    # The log sends a proof made on its new history: it cannot lead to the root the witness holds.
    response = service.add_checkpoint(request(10, 16, leaves=other))
    assert response.status == 422
    # Not evidence: anyone can send a proof that does not verify (tests/test_fresh_user_witness.py).
    assert list((state_path / "evidence").iterdir()) == []


@pytest.mark.parametrize("body, status", [
    (b"old 0\n\n" + note(3, origin="other.example/log").encode(), 404),
    (format_add_checkpoint(0, [], note(3, key=nacl.signing.SigningKey(bytes(32)))), 403),
    (format_add_checkpoint(0, [], note(3).replace("\n3\n", "\n4\n")), 403),
    (b"old 5\n\n" + note(3).encode(), 400),                      # old size larger than the checkpoint
    (b"new 0\n\n" + note(3).encode(), 400),
    (b"old 00\n\n" + note(3).encode(), 400),
    (b"old 0\n" + b"AAAA\n" + b"\n" + note(3).encode(), 400),    # a proof line that is not a hash
    (format_add_checkpoint(0, [LEAVES[0]], note(3)), 422),       # a proof from size 0 must be empty
    (format_add_checkpoint(0, [], sign_checkpoint(Checkpoint(ORIGIN, 0, LEAVES[0]), ORIGIN, LOG_KEY)), 422),
    (b"old 0\n" + b"\n".join([b"47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="] * 64) + b"\n\n" + note(3).encode(), 400),
])
def test_each_refusal_has_the_spec_status(service, body, status) -> None:
    assert service.add_checkpoint(body).status == status


def test_empty_tree_is_cosigned_with_its_root(service) -> None:
    text = sign_checkpoint(Checkpoint(ORIGIN, 0, EMPTY_ROOT), ORIGIN, LOG_KEY)
    assert service.add_checkpoint(format_add_checkpoint(0, [], text)).status == 200


def test_restart_resumes_from_the_state_and_refuses_a_rollback(state_path) -> None:
    from streams.audit.checkpoint import parse_verifier_key

    logs = {ORIGIN: [parse_verifier_key(LOG_VKEY)]}
    state = WitnessState(state_path)
    with pytest.raises(WitnessStateError, match="in use by another witness"):
        WitnessState(state_path)  # one process per state directory
    assert WitnessService(WITNESS, logs, state).add_checkpoint(request(0, 30)).status == 200
    state.close()

    state = WitnessState(state_path)
    restarted = WitnessService(WITNESS, logs, state)
    assert restarted.add_checkpoint(request(30, 20, proof=[])).status == 400  # smaller than the old size it names
    response = restarted.add_checkpoint(request(0, 20))               # pretends the witness is new
    assert (response.status, response.body) == (409, "30\n")
    assert restarted.add_checkpoint(request(30, 31)).status == 200
    state.close()


# -- `masb witness serve` as a process ------------------------------------------------------------
class WitnessProcess:
    """`masb witness serve` on a free port, its stderr in tmp/witness.log; ``extra``: more flags."""

    def __init__(self, tmp: Path, key_file: Path, state: Path, log_key: str = LOG_VKEY, extra: tuple = ()) -> None:
        self.log_path = tmp / "witness.log"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agents", "witness", "serve", "--key", str(key_file), "--state-dir", str(state),
             "--port", "0", "--log-key", log_key, *extra],
            stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL, start_new_session=True)
        line = self.proc.stdout.readline().decode()
        assert "listening on" in line, self.log_path.read_text()
        self.url = line.split("listening on ")[1].split(" ")[0]
        self.address = (self.url.split("//")[1].split(":")[0], int(self.url.rsplit(":", 1)[1]))

    def post(self, body: bytes) -> tuple[int, str]:
        req = urllib.request.Request(self.url + "/add-checkpoint", data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            if exc.code == 409:
                assert exc.headers["Content-Type"] == "text/x.tlog.size"
            return exc.code, exc.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        self.proc.stdout.close()
        self.log.close()


def test_the_witness_process_survives_a_restart_and_serves_its_checkpoint(tmp_path) -> None:
    key_file = tmp_path / "witness.key"
    key_file.write_text(cosigner_signer_key(WITNESS.name, WITNESS.signing_key) + "\n")
    key_file.chmod(0o600)
    state = tmp_path / "state"
    witness = WitnessProcess(tmp_path, key_file, state)
    try:
        status, body = witness.post(request(0, 40))
        assert status == 200 and body.startswith(f"\u2014 {WITNESS.name} ")
    finally:
        witness.stop()
    witness = WitnessProcess(tmp_path, key_file, state)
    try:
        assert witness.post(request(0, 25)) == (409, "40\n")
        with urllib.request.urlopen(f"{witness.url}/{origin_hash(ORIGIN)}/checkpoint", timeout=10) as response:
            latest = response.read().decode()
        _, verified = open_note_verified(latest, [LOG_VKEY, WITNESS.verifier()])
        assert len(verified) == 2 and latest.startswith(f"{ORIGIN}\n40\n")
        assert witness.post(request(40, 41))[0] == 200
    finally:
        witness.stop()


def test_keygen_writes_a_private_key_and_prints_the_verifier_key(tmp_path, capsys) -> None:
    from agents.cli import main
    from streams.audit.cosignature import parse_cosigner_signer_key

    out = tmp_path / "w.key"
    assert main(["witness", "keygen", "--name", "partner.example/witness", "--out", str(out)]) == 0
    vkey = capsys.readouterr().out.strip()
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert parse_cosigner_signer_key(out.read_text()).key_string() == vkey
    assert main(["witness", "keygen", "--name", "partner.example/witness", "--out", str(out)]) == 2  # never overwritten
