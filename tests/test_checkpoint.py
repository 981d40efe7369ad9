"""C2SP signed notes and tlog-checkpoints, checked against the Go reference vectors."""

from __future__ import annotations

import base64

import nacl.signing
import pytest

from streams.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    key_id,
    open_checkpoint,
    open_note,
    parse_checkpoint_body,
    parse_signer_key,
    parse_verifier_key,
    sign_checkpoint,
    sign_note,
    signer_key_string,
    verifier_key_string,
)
from streams.audit.merkle import leaf_hash

# Public test vectors of golang.org/x/mod/sumdb/note (note_test.go, BSD licence): an independent
# implementation of the same signed-note format. Ed25519 is deterministic, so our signature over
# the same text with the same key must be byte-identical to theirs.
GO_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_PETER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_ENOCH = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_PETER_SIG = "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
GO_ENOCH_SIG = "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"


def test_go_reference_key_strings_round_trip() -> None:
    name, sk = parse_signer_key(GO_SIGNER)
    assert name == "PeterNeumann"
    assert verifier_key_string(name, sk.verify_key) == GO_PETER
    assert signer_key_string(name, sk) == GO_SIGNER
    v = parse_verifier_key(GO_PETER)
    assert v.key_id.hex() == "c74f20a3" == key_id(name, bytes(sk.verify_key)).hex()


def test_signature_is_byte_identical_to_go_reference() -> None:
    name, sk = parse_signer_key(GO_SIGNER)
    assert sign_note(GO_TEXT, name, sk) == GO_TEXT + "\n" + GO_PETER_SIG


def test_open_go_reference_note() -> None:
    note = GO_TEXT + "\n" + GO_PETER_SIG + GO_ENOCH_SIG
    assert open_note(note, [GO_PETER]) == (GO_TEXT, ["PeterNeumann"])  # Enoch unknown: ignored
    assert open_note(note, [GO_PETER, GO_ENOCH]) == (GO_TEXT, ["PeterNeumann", "EnochRoot"])
    assert open_note(note.encode("utf-8"), [GO_ENOCH]) == (GO_TEXT, ["EnochRoot"])
    with pytest.raises(CheckpointError) as e:
        open_note(note, [])
    assert e.value.reason == "no_known_signature"


def test_go_reference_corrupted_signature_rejects_whole_note() -> None:
    corrupted = GO_PETER_SIG[:60] + "ABCD" + GO_PETER_SIG[60:]
    with pytest.raises(CheckpointError) as e:
        open_note(GO_TEXT + "\n" + corrupted, [GO_PETER])
    assert e.value.reason == "bad_signature"
    assert str(e.value) == "bad signature for key PeterNeumann+c74f20a3"


@pytest.mark.parametrize(
    "msg",
    [
        GO_TEXT,
        GO_TEXT + "\n",
        GO_TEXT + "\n" + GO_PETER_SIG[:-1],
        "\x01" + GO_TEXT + "\n" + GO_PETER_SIG,
        b"\xff" + (GO_TEXT + "\n" + GO_PETER_SIG).encode(),
        GO_TEXT + "\n" + "\u2014 Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=",
        GO_TEXT + "\n" + GO_PETER_SIG + "Unexpected line.\n",
        GO_TEXT + "\n" + GO_PETER_SIG * 101,
    ],
)
def test_go_reference_malformed_notes(msg: str | bytes) -> None:
    with pytest.raises(CheckpointError) as e:
        open_note(msg, [GO_PETER])
    assert e.value.reason == "malformed"


def test_go_reference_verifier_key_manglings_are_rejected() -> None:
    parse_verifier_key(GO_PETER)
    b = GO_PETER
    bad = [b[i:j] for i in range(len(b) + 1) for j in range(i + 1, len(b) + 1) if (i, j) != (0, len(b))]
    bad += [b[:i] + chr(ord(b[i]) + 1) + b[i + 1 :] for i in range(len(b))]
    bad += [
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",  # wrong key length
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # unknown algorithm
    ]
    for k in bad:
        with pytest.raises(CheckpointError):
            parse_verifier_key(k)


# --- checkpoints ----------------------------------------------------------------

ORIGIN = "masb.example/audit/test"
ROOT = leaf_hash(b"some tree")


@pytest.fixture(scope="module")
def log_key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes(range(32)))


def test_checkpoint_body_and_round_trip(log_key: nacl.signing.SigningKey) -> None:
    cp = Checkpoint(ORIGIN, 1200, ROOT)
    note = sign_checkpoint(cp, ORIGIN, log_key)
    body = f"{ORIGIN}\n1200\n{base64.b64encode(ROOT).decode()}\n"
    assert note.startswith(body + "\n\u2014 " + ORIGIN + " ")
    assert note.count("\n") == 5
    vkey = verifier_key_string(ORIGIN, log_key.verify_key)
    assert open_checkpoint(note, [vkey]) == cp
    assert open_checkpoint(note, [vkey], origin=ORIGIN) == cp


def test_checkpoint_for_another_log_is_refused(log_key: nacl.signing.SigningKey) -> None:
    note = sign_checkpoint(Checkpoint("other.example/log", 3, ROOT), ORIGIN, log_key)
    with pytest.raises(CheckpointError) as e:
        open_checkpoint(note, [verifier_key_string(ORIGIN, log_key.verify_key)], origin=ORIGIN)
    assert e.value.reason == "wrong_origin"


def test_altered_checkpoint_body_fails_signature(log_key: nacl.signing.SigningKey) -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 1200, ROOT), ORIGIN, log_key)
    forged = note.replace("\n1200\n", "\n1100\n", 1)
    with pytest.raises(CheckpointError) as e:
        open_checkpoint(forged, [verifier_key_string(ORIGIN, log_key.verify_key)])
    assert e.value.reason == "bad_signature"
    assert "1100" not in str(e.value) and "1200" not in str(e.value)


def test_checkpoint_signed_by_impostor_key_of_same_name_is_not_trusted(log_key: nacl.signing.SigningKey) -> None:
    impostor = nacl.signing.SigningKey(bytes(32))
    note = sign_checkpoint(Checkpoint(ORIGIN, 5, ROOT), ORIGIN, impostor)
    with pytest.raises(CheckpointError) as e:
        open_checkpoint(note, [verifier_key_string(ORIGIN, log_key.verify_key)])
    assert e.value.reason == "no_known_signature"


def test_unknown_cosignature_is_ignored(log_key: nacl.signing.SigningKey) -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 7, ROOT), ORIGIN, log_key)
    witness = nacl.signing.SigningKey(bytes([7] * 32))
    witness_line = sign_note(Checkpoint(ORIGIN, 7, ROOT).body(), "witness.example", witness).rsplit("\n\n", 1)[1]
    cosigned = note + witness_line
    assert open_checkpoint(cosigned, [verifier_key_string(ORIGIN, log_key.verify_key)]).size == 7
    both = [verifier_key_string(ORIGIN, log_key.verify_key), verifier_key_string("witness.example", witness.verify_key)]
    assert open_note(cosigned, both)[1] == [ORIGIN, "witness.example"]


def test_c2sp_example_checkpoint_body_parses() -> None:
    # Example from c2sp.org/tlog-checkpoint.
    cp = parse_checkpoint_body("example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n")
    assert (cp.origin, cp.size, len(cp.root)) == ("example.com/behind-the-sofa", 20852163, 32)


@pytest.mark.parametrize(
    "body",
    [
        f"{ORIGIN}\n012\n{base64.b64encode(ROOT).decode()}\n",  # leading zero
        f"{ORIGIN}\n-1\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n12\n{base64.b64encode(ROOT[:31]).decode()}\n",  # short root
        f"{ORIGIN}\n12\n{base64.b64encode(ROOT).decode().rstrip('=')}\n",  # unpadded base64
        f"{ORIGIN}\n12\n",
        f"\n12\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n12\n{base64.b64encode(ROOT).decode()}\n\nextension\n",
        f"{ORIGIN}\n12\n{base64.b64encode(ROOT).decode()}",
    ],
)
def test_malformed_checkpoint_bodies(body: str) -> None:
    with pytest.raises(CheckpointError) as e:
        parse_checkpoint_body(body)
    assert e.value.reason == "malformed"


def test_signed_note_with_extension_lines_keeps_them(log_key: nacl.signing.SigningKey) -> None:
    cp = Checkpoint(ORIGIN, 9, ROOT, ("ext one",))
    vkey = verifier_key_string(ORIGIN, log_key.verify_key)
    assert open_checkpoint(sign_checkpoint(cp, ORIGIN, log_key), [vkey]) == cp


def test_invalid_key_names_are_refused(log_key: nacl.signing.SigningKey) -> None:
    for name in ["", "a b", "a+b"]:
        with pytest.raises(CheckpointError):
            verifier_key_string(name, log_key.verify_key)


# --- bounds on untrusted notes (C2SP signed-note: accept at least 16 signatures of up to ~5 kB) --------

def _unknown_line(name: str, size: int) -> str:
    return f"\u2014 {name} {base64.b64encode(bytes([7]) * size).decode()}\n"


def test_sixteen_post_quantum_sized_signatures_are_accepted_and_ignored(log_key: nacl.signing.SigningKey) -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 7, ROOT), ORIGIN, log_key)
    # 16 cosigners with a 255-byte name and a 5,000-byte signature (more than ML-DSA-87's 4,627).
    big = note + "".join(_unknown_line(f"w{i:02d}" + "x" * 252, 4 + 8 + 4980) for i in range(16))
    assert len(big.encode()) > 100_000
    assert open_checkpoint(big, [verifier_key_string(ORIGIN, log_key.verify_key)]).size == 7
    # The known signature may come last, after all the big unknown ones.
    body, sig = note.rsplit("\n\n", 1)
    reordered = body + "\n\n" + "".join(_unknown_line(f"w{i}", 2424) for i in range(16)) + sig
    assert open_checkpoint(reordered, [verifier_key_string(ORIGIN, log_key.verify_key)]).size == 7


@pytest.mark.parametrize("extra", [
    [("w", 68)] * 100,                        # 101 signature lines: more than any verifier must take
    [(f"w{i}", 10_000) for i in range(20)],   # over 256 KiB in all
])
def test_notes_beyond_the_bounds_are_refused(log_key: nacl.signing.SigningKey, extra) -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, 7, ROOT), ORIGIN, log_key)
    big = note + "".join(_unknown_line(name, size) for name, size in extra)
    for form in (big, big.encode()):
        with pytest.raises(CheckpointError) as e:
            open_checkpoint(form, [verifier_key_string(ORIGIN, log_key.verify_key)])
        assert e.value.reason == "malformed"


def test_case_15_proof_with_16_pq_sized_cosignatures_is_accepted(capsys) -> None:
    """../shared/cases/turn2/15: `masb audit check-proof --policy` refused it as too large."""
    from pathlib import Path

    from agents.cli import main

    here = Path(__file__).resolve().parent / "fixtures" / "audit"
    code = main(["audit", "check-proof", str(here / "15_checkpoint_16_pq_sized_witness_cosigs.json"),
                 "--policy", str(here / "15_policy_for_the_checkpoint.yaml"), "--no-state"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "VALID: 1 entries are in the log masb.local/exchange-log as signed at size 5" in out


def test_a_checkpoint_record_with_a_repeated_key_is_refused() -> None:
    """The checkpoint topic's records are JSON: a repeated "note" (or "next_offset") would be read
    one way here and another by a reader whose parser keeps the first, so it is no record at all."""
    from streams.audit.checkpoint_record import CheckpointRecordError, note_of

    good = b'{"format": "masb-checkpoint-record-v1", "note": "a", "next_offset": 1, "compact_range": {}}'
    assert note_of(good) == "a"
    repeated = b'{"format": "masb-checkpoint-record-v1", "note": "a", "note": "b", "next_offset": 1}'
    for not_a_record in (repeated, None, b"", b"\xff"):  # None: a tombstone on the checkpoint topic
        with pytest.raises(CheckpointRecordError):
            note_of(not_a_record)
