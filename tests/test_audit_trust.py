"""What an auditor already trusts, held against a log: `--trusted-checkpoint`, the remembered
checkpoint (local state) and the witness quorum, through `masb audit verify` and `check-proof`.

The hole these close (issue 14): drop the last entries and the checkpoints covering them, re-seal
the export's manifest, and the export alone still verifies. Given a checkpoint the auditor already
holds, it must not."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from agents.cli import main
from agents.deployment import prepare_deployment
from streams.audit.checkpoint import Checkpoint, sign_checkpoint
from streams.audit.cosignature import generate_cosigner
from streams.audit.entry import encode_entry, make_entry
from streams.audit.export import write_export
from streams.audit.merkle import CompactRange, leaf_hash
from streams.audit.proof import make_inclusion_proof
from streams.auditing import DEFAULT_ORIGIN, checkpoint_verifiers
from streams.crypto.keys import Keyring

SIZES = (10, 20, 30, 40)
WITNESSES = [generate_cosigner(f"w{i}.example/witness") for i in range(3)]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    return prepare_deployment(tmp_path_factory.mktemp("trust"))


@pytest.fixture(scope="module")
def log_key(deployment):
    return Keyring.load_dir(deployment.keys_dir, deployment.policy.router.id, kind="signing").current.signing_key()


@pytest.fixture
def state_dir() -> Path:
    import os

    return Path(os.environ["MASB_STATE_DIR"])  # tests/conftest.py gives every test its own


def entries(n: int, tag: str = "a") -> list[bytes]:
    return [encode_entry(make_entry("POLICY_CHANGE", recorded_at=datetime(2026, 1, 1),
                                    policy_version=1, reason=f"entry {i} of history {tag}")) for i in range(n)]


def checkpoints(items: list[bytes], key, sizes=SIZES, cosigners=()) -> list[str]:
    notes, cr = [], CompactRange()
    for e in items:
        cr.append(leaf_hash(e))
        if cr.size in sizes:
            cp = Checkpoint(DEFAULT_ORIGIN, cr.size, cr.root())
            notes.append(sign_checkpoint(cp, DEFAULT_ORIGIN, key) + "".join(w.cosign(cp.body()) for w in cosigners))
    return notes


def export(directory: Path, items: list[bytes], notes: list[str], deployment) -> str:
    write_export(directory, items, notes, {"origin": DEFAULT_ORIGIN,
                                           "verifier_keys": checkpoint_verifiers(deployment.policy, DEFAULT_ORIGIN)})
    return str(directory)


def masb(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def verify(capsys, policy: Path, *args: str) -> tuple[int, str]:
    return masb(capsys, "audit", "verify", "--policy", str(policy), *args)


def test_truncated_export_is_refused_given_the_auditors_later_checkpoint(deployment, log_key, tmp_path, capsys):
    full = entries(40)
    notes = checkpoints(full, log_key)
    held = tmp_path / "checkpoint-40.note"
    held.write_text(notes[-1])
    # The operator drops entries 26..40 and the checkpoints covering them, and re-seals the manifest.
    truncated = export(tmp_path / "truncated", full[:25], notes[:2], deployment)

    code, out = verify(capsys, deployment.policy_path, "--from-export", truncated, "--no-state")
    assert code == 0 and "intact" in out  # the export alone cannot show what is missing

    code, out = verify(capsys, deployment.policy_path, "--from-export", truncated, "--trusted-checkpoint", str(held))
    assert code == 1 and "NOT intact" in out, out
    assert f"trusted checkpoint {held} (size 40) is larger than this log: the log has only 25 entries" in out
    assert "entries 26..40" in out


def test_remembered_checkpoint_refuses_a_later_truncation(deployment, log_key, tmp_path, state_dir, capsys):
    full = entries(40)
    notes = checkpoints(full, log_key)
    code, out = verify(capsys, deployment.policy_path, "--from-export", export(tmp_path / "full", full, notes, deployment))
    assert code == 0 and "remembered: checkpoint of size 40" in out, out
    remembered = next((state_dir / "checkpoints").iterdir())
    assert remembered.read_text() == notes[-1] and oct(remembered.stat().st_mode & 0o777) == "0o600"

    code, out = verify(capsys, deployment.policy_path, "--from-export",
                       export(tmp_path / "cut", full[:30], notes[:3], deployment))
    assert code == 1 and f"the checkpoint remembered in {remembered} (size 40) is larger than this log" in out, out
    # An older export is still readable on purpose, without the state:
    code, _ = verify(capsys, deployment.policy_path, "--from-export", str(tmp_path / "cut"), "--no-state")
    assert code == 0
    assert remembered.read_text() == notes[-1]  # the state never moves backwards


def test_a_different_history_of_the_same_size_is_refused(deployment, log_key, tmp_path, capsys):
    """A split view: the log key signed two histories; the auditor holds one, is shown the other."""
    a, b = entries(40, "a"), entries(40, "b")
    held = tmp_path / "a-40.note"
    held.write_text(checkpoints(a, log_key)[-1])
    other = export(tmp_path / "b", b, checkpoints(b, log_key), deployment)
    code, out = verify(capsys, deployment.policy_path, "--from-export", other, "--trusted-checkpoint", str(held))
    assert code == 1
    assert f"trusted checkpoint {held} (size 40): the log's first 40 entries do not hash to its root" in out


def test_a_trusted_checkpoint_must_be_signed_by_the_log(deployment, tmp_path, capsys):
    from nacl.signing import SigningKey

    forged = tmp_path / "forged.note"
    forged.write_text(checkpoints(entries(10), SigningKey.generate())[-1])
    code, out = verify(capsys, deployment.policy_path, "--from-export", str(tmp_path), "--trusted-checkpoint",
                       str(forged))
    assert code == 1 and f"trusted checkpoint {forged}: refused: no signature from a known" in out


# -- witness quorum -------------------------------------------------------------------------------
def witnessed_policy(deployment, tmp_path: Path, quorum: int, members=WITNESSES) -> Path:
    doc = yaml.safe_load(deployment.policy_path.read_text())
    doc["witnesses"] = {"quorum": quorum, "members": [
        {"id": f"witness-{i}", "url": f"http://127.0.0.1:{7380 + i}", "key": w.key_string()}
        for i, w in enumerate(members)]}
    path = tmp_path / f"policy-q{quorum}-{len(members)}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_quorum_of_two_of_three_is_required_and_enforced(deployment, log_key, tmp_path, capsys):
    items = entries(40)
    # Checkpoints up to 30 carry cosignatures of witnesses 0 and 1; the last one only of witness 0.
    notes = checkpoints(items, log_key, sizes=(10, 20, 30), cosigners=WITNESSES[:2])
    notes += checkpoints(items, log_key, sizes=(40,), cosigners=WITNESSES[:1])
    bundle = export(tmp_path / "w", items, notes, deployment)

    code, out = verify(capsys, witnessed_policy(deployment, tmp_path, 2), "--from-export", bundle)
    assert code == 0, out
    assert "the checkpoint of size 30 is cosigned by witness-0, witness-1 (quorum 2 of 3)" in out
    assert "intact up to the last checkpoint cosigned by the witnesses (size 30)" in out
    assert "entries 31..40 match the log's own signature only" in out

    code, out = verify(capsys, witnessed_policy(deployment, tmp_path, 3), "--from-export", bundle, "--no-state")
    assert code == 1
    assert "no checkpoint whose root matches the log is cosigned by a quorum of witnesses (quorum 3 of 3)" in out

    # A policy demanding a witness that never signed (witness-2 replaced by a stranger) and quorum 3.
    stranger = generate_cosigner("stranger.example/witness")
    policy = witnessed_policy(deployment, tmp_path, 3, [*WITNESSES[:2], stranger])
    code, out = verify(capsys, policy, "--from-export", bundle, "--no-state")
    assert code == 1 and "(witnesses: witness-0, witness-1)" in out


def test_a_bad_cosignature_from_a_known_witness_invalidates_the_checkpoint(deployment, log_key, tmp_path, capsys):
    items = entries(10)
    note = checkpoints(items, log_key, sizes=(10,), cosigners=WITNESSES)[0]
    line = note.split("\n")[-2]  # witness 2's line: one bit changed
    raw = line.split(" ")[2]
    bad = note.replace(raw, raw[:20] + ("A" if raw[20] != "A" else "B") + raw[21:])
    bundle = export(tmp_path / "bad", items, [bad], deployment)
    code, out = verify(capsys, witnessed_policy(deployment, tmp_path, 2), "--from-export", bundle, "--no-state")
    assert code == 1 and "checkpoint 1: bad signature for key w2.example/witness+" in out


# -- proofs ---------------------------------------------------------------------------------------
def proof_file(tmp_path: Path, items, notes, deployment, name: str, **kwargs) -> str:
    doc = make_inclusion_proof(items, notes, checkpoint_verifiers(deployment.policy, DEFAULT_ORIGIN), DEFAULT_ORIGIN,
                               [3], **kwargs)
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def check(capsys, policy: Path, path: str, *args: str) -> tuple[int, str]:
    return masb(capsys, "audit", "check-proof", path, "--policy", str(policy), *args)


def test_check_proof_holds_the_proof_to_the_trusted_checkpoint(deployment, log_key, tmp_path, capsys):
    items = entries(40)
    notes = checkpoints(items, log_key)
    held = tmp_path / "cp20.note"
    held.write_text(notes[1])
    policy = deployment.policy_path

    old = proof_file(tmp_path, items, notes[:1], deployment, "old.json")  # against checkpoint 10
    code, out = check(capsys, policy, old, "--trusted-checkpoint", str(held))
    assert code == 1 and f"the proof's checkpoint (size 10) is older than trusted checkpoint {held} (size 20)" in out

    plain = proof_file(tmp_path, items, notes, deployment, "new.json")  # against 40, no consistency proof
    code, out = check(capsys, policy, plain, "--trusted-checkpoint", str(held))
    assert code == 1 and "is not shown to extend" in out and "--extends 20" in out

    extended = proof_file(tmp_path, items, notes, deployment, "ext.json", extends=[20])
    code, out = check(capsys, policy, extended, "--trusted-checkpoint", str(held))
    assert code == 0 and "VALID" in out and "remembered: checkpoint of size 40" in out, out

    # A history forked after entry 20, signed by the log key: its consistency proof cannot verify.
    fork = items[:20] + entries(20, "fork")
    doc = json.loads(Path(extended).read_text())
    forked = json.loads(Path(proof_file(tmp_path, fork, checkpoints(fork, log_key), deployment, "f.json",
                                        extends=[20])).read_text())
    forked["extends"] = doc["extends"]
    Path(tmp_path / "f.json").write_text(json.dumps(forked))
    code, out = check(capsys, policy, str(tmp_path / "f.json"), "--trusted-checkpoint", str(held), "--no-state")
    assert code == 1 and "is not consistent with" in out


def test_check_proof_requires_the_quorum_and_relies_on_it_for_consistency(deployment, log_key, tmp_path, capsys):
    items = entries(40)
    witnessed = checkpoints(items, log_key, cosigners=WITNESSES[1:])
    held = tmp_path / "cp20.note"
    held.write_text(witnessed[1])
    policy = witnessed_policy(deployment, tmp_path, 2)
    code, out = check(capsys, policy, proof_file(tmp_path, items, witnessed, deployment, "w.json"),
                      "--trusted-checkpoint", str(held))
    assert code == 0, out
    assert "cosigned by witness-1, witness-2 (quorum 2 of 3)" in out
    assert "rests on the witnesses' cosignatures" in out

    lonely = checkpoints(items, log_key, cosigners=WITNESSES[:1])
    code, out = check(capsys, policy, proof_file(tmp_path, items, lonely, deployment, "l.json"), "--no-state")
    assert code == 1 and "is cosigned by 1 of the witnesses the policy names (quorum 2 of 3; cosigned by: witness-0)" in out
