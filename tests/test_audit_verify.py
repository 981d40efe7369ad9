"""Offline verification: every kind of tampering is found and located; an intact log passes."""

from __future__ import annotations

import hashlib
import json

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.audit.checkpoint import Checkpoint, sign_checkpoint, verifier_key_string
from streams.audit.export import ExportError, read_export, verify_export, write_export
from streams.audit.merkle import CompactRange, consistency_proof, leaf_hash
from streams.audit.verify import check_checkpoint_chain, find_divergence, verify_log

ORIGIN = "masb.example/audit/test"
KEY = nacl.signing.SigningKey(bytes(range(1, 33)))
VKEY = verifier_key_string(ORIGIN, KEY.verify_key)
OFFSET_BASE = 1000  # positions differ from entry numbers, so messages show which is which
MARKER = b"PERSONAL-DATA-MARKER"
N, EVERY = 1000, 100


def make_entries(n: int = N) -> list[bytes]:
    return [MARKER + b" entry %06d " % i + bytes([i % 251]) * 40 for i in range(n)]


def sign_checkpoints(entries: list[bytes], sizes: list[int], key: nacl.signing.SigningKey = KEY) -> list[str]:
    cr, notes, wanted = CompactRange(), [], set(sizes)
    roots = {}
    if 0 in wanted:
        roots[0] = cr.root()
    for e in entries:
        cr.append(leaf_hash(e))
        if cr.size in wanted:
            roots[cr.size] = cr.root()
    for s in sizes:
        notes.append(sign_checkpoint(Checkpoint(ORIGIN, s, roots[s]), ORIGIN, key))
    return notes


GOOD = make_entries()
SIZES = list(range(EVERY, N + 1, EVERY))
NOTES = sign_checkpoints(GOOD, SIZES)


def positioned(entries: list[bytes]) -> list[tuple[int, bytes]]:
    return [(OFFSET_BASE + i, e) for i, e in enumerate(entries)]


def run(entries: list[bytes], notes: list[str] = NOTES):
    report = verify_log(positioned(entries), notes, [VKEY], ORIGIN)
    for p in report.problems + report.notes:
        assert MARKER.decode() not in p  # no entry content ever leaks into a report
    return report


def test_untouched_log_verifies() -> None:
    report = run(GOOD)
    assert report.ok and report.problems == []
    assert (report.entries, report.checkpoints_checked, report.checkpoints_verified) == (N, 10, 10)
    assert report.verified_size == N and report.first_bad_checkpoint is None
    assert report.uncovered_entries == 0 and report.notes == []


def test_altered_entry_is_located_between_checkpoints() -> None:
    log = list(GOOD)
    log[436] = log[436].replace(b"entry", b"ENTRY")
    report = run(log)
    assert not report.ok and report.first_bad_checkpoint == 5
    assert report.problems[0] == (
        "checkpoint 5 (size 500): root mismatch: the first 500 entries do not hash to the signed root; "
        "the log was altered, reordered or truncated at or before entry 500; entries 1..400 match "
        "checkpoint 4, so the first change is in entries 401..500 (positions 1400..1499)"
    )
    assert [p.split(" (")[0] for p in report.problems] == [f"checkpoint {k}" for k in range(5, 11)]
    assert report.verified_size == 400 and report.checkpoints_verified == 4


def test_deleted_entry_breaks_later_checkpoints_and_last_reports_missing() -> None:
    log = GOOD[:250] + GOOD[251:]
    report = run(log)
    assert not report.ok and report.first_bad_checkpoint == 3
    assert "first change is in entries 201..300" in report.problems[0]
    assert report.problems[-1] == (
        "checkpoint 10 (size 1000): the log has only 999 entries but this checkpoint signed 1000; "
        "entries 1000..1000 are missing (the log was truncated or entries deleted)"
    )


def test_inserted_entry_is_found() -> None:
    log = GOOD[:250] + [b"forged entry"] + GOOD[250:]
    report = run(log)
    assert not report.ok and report.first_bad_checkpoint == 3
    assert len(report.problems) == 8  # checkpoints 3..10 all mismatch
    assert report.uncovered_entries == 1  # the 1001st entry is beyond every checkpoint


def test_swapped_entries_are_found() -> None:
    log = list(GOOD)
    log[610], log[611] = log[611], log[610]
    report = run(log)
    assert not report.ok and report.first_bad_checkpoint == 7
    assert "entries 601..700" in report.problems[0]


def test_truncated_log_is_reported() -> None:
    report = run(GOOD[:950])
    assert not report.ok and report.first_bad_checkpoint == 10
    assert report.problems == [
        "checkpoint 10 (size 1000): the log has only 950 entries but this checkpoint signed 1000; "
        "entries 951..1000 are missing (the log was truncated or entries deleted)"
    ]
    assert report.checkpoints_verified == 9 and report.verified_size == 900


def test_forged_checkpoint_signatures_are_reported() -> None:
    notes = list(NOTES)
    impostor = nacl.signing.SigningKey(bytes(32))  # same key name, different key
    notes[6] = sign_checkpoints(GOOD, [700], key=impostor)[0]
    body, sig = notes[3].split("\n\n")
    notes[3] = body.replace("\n400\n", "\n401\n") + "\n\n" + sig  # altered body, original signature
    report = run(GOOD, notes)
    assert not report.ok and report.first_bad_checkpoint == 4
    assert report.problems == [
        f"checkpoint 4: bad signature for key {VKEY.split('+')[0]}+{VKEY.split('+')[1]}",
        "checkpoint 7: no signature from a trusted log key",
    ]


def test_fork_is_reported() -> None:
    other_history = GOOD[:499] + [b"another last entry"]
    fork = sign_checkpoints(other_history, [500])[0]
    notes = NOTES[:5] + [fork] + NOTES[5:]  # published right after the genuine size-500 checkpoint
    report = run(GOOD, notes)
    assert not report.ok and report.first_bad_checkpoint == 6
    assert report.problems[0] == (
        "checkpoint 6 (size 500): fork: checkpoint 5 has the same size but a different root; "
        "the log key signed two different histories"
    )
    assert report.problems[1].startswith("checkpoint 6 (size 500): root mismatch")
    assert len(report.problems) == 2


def test_rolled_back_checkpoint_is_reported() -> None:
    notes = NOTES + sign_checkpoints(GOOD, [300])
    report = run(GOOD, notes)
    assert not report.ok and report.first_bad_checkpoint == 11
    assert report.problems == [
        "checkpoint 11 (size 300): size decreased from 1000 (checkpoint 10); a log never shrinks, "
        "so the log was rolled back or the checkpoints were reordered"
    ]


def test_checkpoint_of_another_log_is_reported() -> None:
    other = sign_checkpoint(Checkpoint("other.example/log", 100, leaf_hash(b"x")), ORIGIN, KEY)
    report = run(GOOD, NOTES + [other])
    assert report.problems == ["checkpoint 11: checkpoint is for another log"]


def test_entries_after_last_checkpoint_are_noted_not_failed() -> None:
    log = make_entries(1050)
    report = verify_log(positioned(log), NOTES, [VKEY], ORIGIN)
    assert report.ok and report.uncovered_entries == 50
    assert report.notes == [
        "entries 1001..1050 (positions 2000..2049) are not yet covered by a signed checkpoint"
    ]


def test_no_checkpoint_means_not_verified() -> None:
    report = run(GOOD, [])
    assert not report.ok and report.uncovered_entries == N


def test_duplicated_position_is_reported() -> None:
    entries = positioned(GOOD)
    entries[5] = (entries[4][0], entries[5][1])
    report = verify_log(entries, NOTES, [VKEY], ORIGIN)
    assert report.problems == [
        "entry 6 (position 1004): position is not after the previous entry's position 1004; "
        "entries are duplicated or out of order"
    ]


def test_streams_entries_and_reports_progress() -> None:
    seen: list[int] = []
    consumed = 0

    def gen():
        nonlocal consumed
        for i in range(25_000):
            consumed += 1
            yield i, b"e%d" % i

    entries = [b"e%d" % i for i in range(25_000)]
    notes = sign_checkpoints(entries, [10_000, 20_000])

    def progress(n: int) -> None:
        seen.append(n)
        assert consumed == n  # called while streaming, not after reading everything

    report = verify_log(gen(), notes, [VKEY], ORIGIN, progress=progress)
    assert report.ok and seen == [10_000, 20_000, 25_000]


def test_unknown_verifier_key_format_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        verify_log([], NOTES, ["not a key"], ORIGIN)


# --- divergence against a trusted export --------------------------------------------

TRUSTED = [leaf_hash(e) for e in GOOD[:800]]


def test_find_divergence_locates_first_changed_entry() -> None:
    log = list(GOOD)
    log[436] = b"changed"
    assert find_divergence(TRUSTED, (leaf_hash(e) for e in log)) == 436


def test_find_divergence_accepts_append_only_growth_and_flags_truncation() -> None:
    assert find_divergence(TRUSTED, (leaf_hash(e) for e in GOOD)) is None
    assert find_divergence(TRUSTED, TRUSTED) is None
    assert find_divergence(TRUSTED, TRUSTED[:700]) == 700


# --- checkpoint chains with consistency proofs only -------------------------------------

LEAVES = [leaf_hash(e) for e in GOOD]
PROOFS = [consistency_proof(LEAVES, a, b) for a, b in zip(SIZES, SIZES[1:])]


def test_checkpoint_chain_with_genuine_proofs_verifies() -> None:
    report = check_checkpoint_chain(NOTES, PROOFS, [VKEY], ORIGIN)
    assert report.ok and report.checkpoints_verified == 10 and report.verified_size == N


def test_checkpoint_chain_detects_rewritten_history() -> None:
    # After checkpoint 4 the log rewrote entry 137 (already covered by checkpoint 4) and kept
    # signing: checkpoints 5.. describe another history. (Changing an entry after 400 would not
    # contradict checkpoint 4, and must not be reported here.)
    forged = list(GOOD)
    forged[136] = b"rewritten"
    forged_leaves = [leaf_hash(e) for e in forged]
    notes = NOTES[:4] + sign_checkpoints(forged, SIZES[4:])
    proofs = PROOFS[:3] + [consistency_proof(forged_leaves, a, b) for a, b in zip(SIZES[3:], SIZES[4:])]
    report = check_checkpoint_chain(notes, proofs, [VKEY], ORIGIN)
    assert not report.ok and report.first_bad_checkpoint == 5
    assert report.problems == [
        "checkpoints 4 -> 5 (sizes 400 -> 500): consistency proof does not verify; "
        "checkpoint 5 is not shown to be an append-only extension of checkpoint 4"
    ]
    assert report.verified_size == 400


def test_checkpoint_chain_needs_one_proof_per_pair() -> None:
    report = check_checkpoint_chain(NOTES, PROOFS[:-1], [VKEY], ORIGIN)
    assert not report.ok and "expected 9 consistency proofs" in report.problems[0]


# --- export bundles ---------------------------------------------------------------------

META = {"origin": ORIGIN, "verifier_keys": [VKEY], "source": "audit topic partition 0"}


def _rehash_manifest(directory) -> None:
    """What a forger who can edit the bundle would do: make the manifest match the files again."""
    manifest = json.loads((directory / "manifest.json").read_text())
    for name in ("entries.bin", "checkpoints.txt"):
        data = (directory / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_export_round_trip_and_verify(tmp_path) -> None:
    manifest = write_export(tmp_path, positioned(GOOD), NOTES, META)
    assert manifest.entry_count == N and manifest.checkpoint_count == 10
    entries, notes, read_manifest = read_export(tmp_path)
    assert notes == NOTES and read_manifest == manifest
    assert read_manifest.meta == {"source": "audit topic partition 0"}
    assert [e for _, e in entries] == GOOD
    # Byte layout: uint32 BE length then the entry; checkpoint records are length-framed.
    raw = (tmp_path / "entries.bin").read_bytes()
    assert raw[:4] == len(GOOD[0]).to_bytes(4, "big") and raw[4 : 4 + len(GOOD[0])] == GOOD[0]
    assert (tmp_path / "checkpoints.txt").read_bytes().startswith(b"checkpoint %d\n" % len(NOTES[0].encode()))
    assert verify_export(tmp_path, [VKEY], ORIGIN).ok


def test_export_refuses_to_overwrite(tmp_path) -> None:
    write_export(tmp_path, GOOD[:3], NOTES[:0], META)
    with pytest.raises(ExportError, match="already exists"):
        write_export(tmp_path, GOOD[:3], NOTES[:0], META)


def test_corrupted_export_file_is_detected(tmp_path) -> None:
    write_export(tmp_path, GOOD, NOTES, META)
    path = tmp_path / "entries.bin"
    data = bytearray(path.read_bytes())
    data[5000] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="entries.bin: SHA-256 does not match"):
        read_export(tmp_path)


def test_a_manifest_naming_a_file_outside_the_export_is_refused(tmp_path) -> None:
    """The manifest must not claim to cover a file that no reader checks (`../../etc/passwd`)."""
    import json

    write_export(tmp_path, GOOD[:3], NOTES[:0], META)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "bytes": 1}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="files lists 1 name"):
        read_export(tmp_path)


def test_forged_export_with_rewritten_manifest_still_fails_verification(tmp_path) -> None:
    write_export(tmp_path, GOOD, NOTES, META)
    path = tmp_path / "entries.bin"
    data = path.read_bytes()
    target = GOOD[436]
    path.write_bytes(data.replace(target, target.replace(b"entry", b"ENTRY")))
    _rehash_manifest(tmp_path)
    report = verify_export(tmp_path, [VKEY], ORIGIN)
    assert not report.ok and report.first_bad_checkpoint == 5
    assert "entries 401..500 (positions 400..499)" in report.problems[0]


def test_truncated_export_is_detected_even_with_rewritten_manifest(tmp_path) -> None:
    write_export(tmp_path, GOOD, NOTES, META)
    path = tmp_path / "entries.bin"
    path.write_bytes(path.read_bytes()[:-3])
    _rehash_manifest(tmp_path)
    entries, _, _ = read_export(tmp_path)
    with pytest.raises(ExportError, match="entry 1000: truncated body"):
        list(entries)


def test_export_with_missing_manifest_is_incomplete(tmp_path) -> None:
    write_export(tmp_path, GOOD[:5], NOTES[:1], META)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(ExportError, match="manifest.json: missing"):
        read_export(tmp_path)


def test_bad_checkpoint_framing_is_detected(tmp_path) -> None:
    write_export(tmp_path, GOOD[:5], NOTES[:2], META)
    path = tmp_path / "checkpoints.txt"
    path.write_bytes(path.read_bytes().replace(b"checkpoint ", b"checkpoint 1", 1))
    _rehash_manifest(tmp_path)
    with pytest.raises(ExportError, match="record 1"):
        read_export(tmp_path)


# --- property: any single change inside the signed range is detected ----------------------

@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(min_value=2, max_value=40))
def test_any_single_tampering_within_signed_range_is_detected(data: st.DataObject, n: int) -> None:
    entries = [b"e%d" % i for i in range(n)]
    sizes = sorted(set(data.draw(st.lists(st.integers(1, n), max_size=4), label="extra checkpoints")) | {n})
    notes = sign_checkpoints(entries, sizes)
    assert verify_log(positioned(entries), notes, [VKEY], ORIGIN).ok
    op = data.draw(st.sampled_from(["alter", "delete", "insert", "swap"]), label="op")
    i = data.draw(st.integers(0, n - 1), label="at")
    log = list(entries)
    if op == "alter":
        log[i] = b"x" + log[i]
    elif op == "delete":
        del log[i]
    elif op == "insert":
        log.insert(i, b"forged")  # before entry i, so inside the signed range
    else:
        j = data.draw(st.integers(0, n - 1).filter(lambda j: j != i), label="with")
        log[i], log[j] = log[j], log[i]
    report = verify_log(positioned(log), notes, [VKEY], ORIGIN)
    assert not report.ok
    # The first bad checkpoint is the first one that covers the change.
    first = min(i, j) if op == "swap" else i
    expected = next(k for k, s in enumerate(sizes, start=1) if s > first)
    assert report.first_bad_checkpoint == expected
