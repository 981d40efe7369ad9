"""C2SP tlog-cosignature (cosignature/v1) against an independent implementation: Go's
github.com/transparency-dev/formats/note, through committed known answers and, when Go is
installed, live in both directions (tests/interop/cosignature)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from streams.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    open_note_verified,
    parse_signer_key,
    parse_verifier_key,
    sign_checkpoint,
    verifier_key_string,
)
from streams.audit.cosignature import (
    CosignatureVerifier,
    cosigner_signer_key,
    generate_cosigner,
    parse_cosigner_signer_key,
    parse_cosigner_verifier_key,
)
from streams.audit.merkle import leaf_hash

HERE = Path(__file__).resolve().parent
VECTORS = json.loads((HERE / "vectors" / "cosignature" / "go_formats_v1.json").read_text())
INTEROP = HERE / "interop" / "cosignature"


def _witness_verifiers() -> list[CosignatureVerifier]:
    return [parse_cosigner_verifier_key(w["vkey"]) for w in VECTORS["witnesses"]]


def test_go_key_strings_parse_and_round_trip() -> None:
    for w in VECTORS["witnesses"]:
        signer = parse_cosigner_signer_key(w["skey"])  # Go's plain Ed25519 signer key (type 0x01)
        assert signer.name == w["name"]
        assert signer.key_string() == w["vkey"]  # the cosignature/v1 vkey Go derived (type 0x04)
        # Our own signer key format (type 0x04) round-trips and is the same key.
        ours = parse_cosigner_signer_key(cosigner_signer_key(signer.name, signer.signing_key))
        assert ours.key_string() == w["vkey"]
        # Same public key, two signature types, two different key IDs: never confused.
        assert parse_verifier_key(w["ed25519_vkey"]).key_id != parse_cosigner_verifier_key(w["vkey"]).key_id


def test_our_cosignatures_are_byte_identical_to_go() -> None:
    signers = [parse_cosigner_signer_key(w["skey"]) for w in VECTORS["witnesses"]]
    for item in VECTORS["notes"]:
        lines = item["note"].rsplit("\n\n", 1)[1].splitlines(keepends=True)
        for signer, timestamp, line in zip(signers, item["cosignature_timestamps"], lines[1:]):
            assert signer.cosign(item["text"], timestamp) == line


def test_go_cosigned_notes_verify() -> None:
    log = parse_verifier_key(VECTORS["log_vkey"])
    for item in VECTORS["notes"]:
        text, verified = open_note_verified(item["note"], [log, *_witness_verifiers()])
        assert text == item["text"]
        assert [v.name for v in verified] == ["masb.example/audit/vectors", *[w["name"] for w in VECTORS["witnesses"]]]
        for v, stamp in zip(verified[1:], item["cosignature_timestamps"]):
            raw = base64.b64decode(item["note"].split(f"\u2014 {v.name} ")[1].split("\n")[0])
            assert CosignatureVerifier.timestamp(raw[4:]) == stamp


@pytest.mark.parametrize("change", ["timestamp", "body", "type"])
def test_altered_cosignature_is_refused(change: str) -> None:
    item = VECTORS["notes"][0]
    witness = VECTORS["witnesses"][0]
    note = item["note"]
    prefix = f"\u2014 {witness['name']} "
    b64 = note.split(prefix)[1].split("\n")[0]
    raw = bytearray(base64.b64decode(b64))
    if change == "timestamp":
        raw[11] ^= 1  # one second later: the signed time line differs
        forged = note.replace(b64, base64.b64encode(bytes(raw)).decode())
    elif change == "body":
        forged = note.replace("\n8\n", "\n9\n", 1)
    else:
        # The same public key as a plain Ed25519 note key (type 0x01) has another key ID: the
        # cosignature is not even looked at, so a log verifier cannot be fooled by it.
        text, verified = open_note_verified(note, [parse_verifier_key(witness["ed25519_vkey"]),
                                                   parse_verifier_key(VECTORS["log_vkey"])])
        assert [v.name for v in verified] == ["masb.example/audit/vectors"]
        return
    with pytest.raises(CheckpointError) as e:
        open_note_verified(forged, [parse_cosigner_verifier_key(witness["vkey"])])
    assert e.value.reason == "bad_signature"


def test_cosigner_verifier_key_must_be_type_0x04() -> None:
    with pytest.raises(CheckpointError):
        parse_cosigner_verifier_key(VECTORS["witnesses"][0]["ed25519_vkey"])
    vkey = VECTORS["witnesses"][0]["vkey"]
    with pytest.raises(CheckpointError):
        parse_cosigner_verifier_key(vkey.replace("+", "+0", 1)[:-1])


# -- live, both directions, when Go is installed ------------------------------------------------
@pytest.fixture(scope="module")
def go_tool(tmp_path_factory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed: the committed known answers above still ran")
    out = tmp_path_factory.mktemp("go") / "cosignature"
    env = dict(os.environ, GOFLAGS="-mod=readonly")
    result = subprocess.run([go, "build", "-o", str(out), "."], cwd=INTEROP, env=env, capture_output=True,
                            text=True, timeout=280)
    assert result.returncode == 0, result.stderr
    return out


def _go(tool: Path, mode: str, doc: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(tool), mode], input=json.dumps(doc), capture_output=True, text=True, timeout=60)


def test_go_verifies_our_cosignatures(go_tool: Path) -> None:
    _, log_key = parse_signer_key("PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")
    origin = "masb.example/audit/live"
    cp = Checkpoint(origin, 1234, leaf_hash(b"live"))
    witnesses = [generate_cosigner("w1.example/witness"), generate_cosigner("w2.example/witness")]
    note = sign_checkpoint(cp, origin, log_key)
    note += "".join(w.cosign(cp.body()) for w in witnesses)
    doc = {"note": note, "log_vkey": verifier_key_string(origin, log_key.verify_key),
           "witness_vkeys": [w.key_string() for w in witnesses]}
    result = _go(go_tool, "verify", doc)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["verified"] == [origin, "w1.example/witness", "w2.example/witness"]
    # A cosignature on another checkpoint, moved onto this one, fails there too.
    other = witnesses[0].cosign(Checkpoint(origin, 1235, cp.root).body())
    moved = note.replace(note.split("\u2014 w1.example/witness ")[1].split("\n")[0], other.split(" ")[2].strip())
    assert _go(go_tool, "verify", {**doc, "note": moved}).returncode == 1


def test_we_verify_go_cosignatures(go_tool: Path) -> None:
    text = "masb.example/audit/live\n77\n" + base64.b64encode(leaf_hash(b"x")).decode() + "\n"
    signer = generate_cosigner("go-made.example/witness")
    result = _go(go_tool, "sign", {"skey": cosigner_signer_key(signer.name, signer.signing_key), "text": text})
    assert result.returncode == 0, result.stderr
    lines = json.loads(result.stdout)["lines"]
    _, verified = open_note_verified(text + "\n" + lines, [signer.verifier()])
    assert [v.name for v in verified] == [signer.name]
