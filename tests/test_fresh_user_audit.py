"""What a fresh user found trying to break `masb audit` (and `status`) from the installed wheel: each
run as the user ran it, asserting the documented exit code (docs/cli.md) and one `masb:` line on
stderr, never a traceback.

- MASB_REPORT_WORKERS=999999 forked thousands of decoding processes for a 37-entry log, and Ctrl-C
  left each of them printing a KeyboardInterrupt traceback;
- a report of a log that is not intact exited 1 with nothing on stderr saying why;
- `prove --agency nosuch` and `prove --extends -1` read the whole log before refusing, with exit 1;
- the note that the remembered checkpoint was not used went to stdout;
- `prove` then `check-proof`, as documented, was refused once `verify` had remembered a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import nacl.signing
import pytest

from agents.cli import main
from streams.audit.checkpoint import Checkpoint, sign_checkpoint
from streams.audit.decoding import CHUNK, MAX_REQUESTED, decode_entries
from streams.audit.entry import encode_entry, make_entry
from streams.audit.export import write_export
from streams.audit.merkle import CompactRange, leaf_hash
from streams.auditing import DEFAULT_ORIGIN, checkpoint_verifiers
from streams.crypto.keys import Keyring

NO_BROKER = "127.0.0.1:1"  # nothing listens there: a command that reads the log would exit 3
AGENCIES = ("nhs-worcs-acute", "idva-west-mercia", "worcs-childrens-services")
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def log_key(deployment):
    return Keyring.load_dir(deployment.keys_dir, deployment.policy.router.id, kind="signing").current.signing_key()


def event_id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def deliveries(count: int) -> list[bytes]:
    return [encode_entry(make_entry(
        "DELIVERY", recorded_at=T0 + timedelta(minutes=n), event_id=event_id(n), event_type="MARAC_REFERRAL",
        unit_id="hau-worcestershire", area="worcestershire", agency_id=AGENCIES[n % 3], agreement_id="isa-1",
        agreement_version=1, policy_version=1, policy_digest="ab" * 32, legal_basis="UK_GDPR_6_1_E_9_2_G_DPA_SCH1_18",
        fields=["victim.name"], envelope_sha256="cd" * 32, recipient_key_id="k1")) for n in range(count)]


def signed(items: list[bytes], key, sizes) -> list[str]:
    notes, cr = [], CompactRange()
    for e in items:
        cr.append(leaf_hash(e))
        if cr.size in sizes:
            notes.append(sign_checkpoint(Checkpoint(DEFAULT_ORIGIN, cr.size, cr.root()), DEFAULT_ORIGIN, key))
    return notes


def export(directory: Path, items: list[bytes], notes: list[str], deployment) -> str:
    write_export(directory, items, notes, {"origin": DEFAULT_ORIGIN,
                                           "verifier_keys": checkpoint_verifiers(deployment.policy, DEFAULT_ORIGIN)})
    return str(directory)


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse refused the arguments
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def masb(*args, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agents", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, **kwargs)


# -- 1. decoding processes: bounded, and quiet on Ctrl-C -------------------------------------------
def test_masb_report_workers_above_the_bound_is_refused_naming_it_before_the_log_is_read(deployment):
    for value in (str(MAX_REQUESTED + 1), "999999"):
        done = masb("audit", "report", "--bootstrap", NO_BROKER, "--policy", deployment.policy_path,
                    env={"MASB_REPORT_WORKERS": value})
        out, err = done.communicate(timeout=60)
        assert done.returncode == 2, err  # not 3: the broker was never asked
        assert err.startswith(f"masb: MASB_REPORT_WORKERS={value}: more than {MAX_REQUESTED} processes"), err
        assert "Traceback" not in err and out == ""


def _children_while_decoding(datas: list[bytes], workers: int) -> tuple[int, int]:
    """(the most child processes alive while the entries were decoded, entries decoded)."""
    most, count = 0, 0
    decoded = decode_entries(datas, workers)
    try:
        for _ in decoded:
            count += 1
            most = max(most, len(multiprocessing.active_children()))
    finally:
        decoded.close()
    return most, count


def test_no_more_decoding_processes_than_cores_and_none_for_a_small_log():
    small = deliveries(37)
    assert _children_while_decoding(small, MAX_REQUESTED) == (0, 37)  # one chunk: decoded in this process
    cores = len(os.sched_getaffinity(0))
    three_chunks = small * (2 * CHUNK // 37 + 2)
    most, count = _children_while_decoding(three_chunks, MAX_REQUESTED)
    assert count == len(three_chunks)
    assert most <= min(cores, 3), (most, cores)  # never more than the cores, nor than the chunks to decode
    assert not multiprocessing.active_children()  # and gone once the entries are decoded


@pytest.fixture(scope="module")
def large_export(deployment, log_key, tmp_path_factory) -> str:
    """Enough entries that a report decodes them in a pool for a few seconds."""
    items = deliveries(2000) * 15  # the same bytes again: decoding costs the same, building them does not
    return export(tmp_path_factory.mktemp("large") / "export", items, signed(items, log_key, {len(items)}),
                  deployment)


def _child_pids(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a pool needs 2 cores")
@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_during_a_pooled_report_stops_it_with_one_line(deployment, large_export, tmp_path, signum, code,
                                                                word):
    # As a terminal's Ctrl-C (and `timeout -s INT`) does: the signal goes to the whole process group.
    # 8 asked for: more than the cores here, so that (before the fix) some sat idle, and an idle
    # worker that took the Ctrl-C printed its traceback (a busy one sends it back to the command).
    proc = masb("audit", "report", "--from-export", large_export, "--policy", deployment.policy_path,
                "--format", "csv", "--out", tmp_path / "r.csv", env={"MASB_REPORT_WORKERS": "8"},
                start_new_session=True)
    try:
        deadline, children = time.monotonic() + 60, []
        while not children and proc.poll() is None and time.monotonic() < deadline:
            children = _child_pids(proc.pid)
            time.sleep(0.01)
        assert children, "the report ended before its decoding processes were seen"
        os.killpg(proc.pid, signum)  # at once: a worker just forked is idle, waiting for its first chunk
        assert len(children) <= len(os.sched_getaffinity(0)), children
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code, err
    assert err.splitlines()[-1] == f"masb: {word}", err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "Process" not in err, err
    assert [line for line in err.splitlines() if line.startswith("masb:")] == [f"masb: {word}"], err
    assert not [pid for pid in children if _running(pid)]
    assert not (tmp_path / "r.csv").exists()


# -- 2. a report of a log that is not intact says why it exits 1 -----------------------------------
@pytest.fixture(scope="module")
def altered_export(deployment, log_key, tmp_path_factory) -> str:
    items = deliveries(12)
    notes = signed(items, log_key, {6, 12})
    items[8] = deliveries(13)[12]  # an entry replaced after the checkpoint of size 12 was signed
    return export(tmp_path_factory.mktemp("altered") / "export", items, notes, deployment)


@pytest.mark.parametrize("fmt", ["csv", "json", "html"])
def test_a_report_of_a_log_that_is_not_intact_says_so_on_stderr(deployment, altered_export, tmp_path, capsys, fmt):
    code, out, err = run(capsys, "audit", "report", "--from-export", altered_export, "--policy",
                         deployment.policy_path, "--format", fmt)
    assert code == 1 and out  # the report is still written, and says so itself
    assert err.count("masb:") == 1 and err.startswith("masb: the audit log is NOT intact: ") and \
        "checkpoint" in err, err
    code, out, err = run(capsys, "audit", "report", "--from-export", altered_export, "--policy",
                         deployment.policy_path, "--format", fmt, "--out", tmp_path / f"r.{fmt}")
    assert code == 1 and out == "" and (tmp_path / f"r.{fmt}").stat().st_size > 0
    lines = err.splitlines()
    assert lines[0] == f"masb: {fmt} report written to {tmp_path / f'r.{fmt}'}", err
    assert len(lines) == 2 and lines[1].startswith("masb: the audit log is NOT intact: "), err


# -- 3. prove: flags that mean nothing are refused before the log is read ---------------------------
@pytest.mark.parametrize("flags, words", [
    (["--agency", "nosuch"], "agency nosuch is not in the sharing policy"),
    (["--extends", "-1"], "argument --extends: '-1' is not a whole number in ASCII digits, 0 or more"),
])
def test_prove_refuses_an_unknown_agency_or_a_negative_size_with_exit_2(deployment, capsys, flags, words):
    code, out, err = run(capsys, "audit", "prove", event_id(1), "--bootstrap", NO_BROKER, "--policy",
                         deployment.policy_path, *flags)
    assert code == 2 and words in err and out == "", err  # 2, not 3: the broker was never asked


def test_prove_refuses_an_unknown_agency_before_reading_an_export(deployment, altered_export, capsys):
    code, out, err = run(capsys, "audit", "prove", event_id(1), "--from-export", altered_export, "--policy",
                         deployment.policy_path, "--agency", "nosuch")
    assert code == 2 and err.startswith("masb: agency nosuch is not in the sharing policy") and out == "", err


# -- 4. notes about the auditor's own state go to stderr --------------------------------------------
def test_the_note_on_an_unusable_remembered_checkpoint_goes_to_stderr(deployment, log_key, tmp_path, capsys):
    items = deliveries(10)
    bundle = export(tmp_path / "export", items, signed(items, log_key, {10}), deployment)
    other = nacl.signing.SigningKey(bytes(range(32)))
    state = Path(os.environ["MASB_STATE_DIR"]) / "checkpoints" / hashlib.sha256(DEFAULT_ORIGIN.encode()).hexdigest()
    state.parent.mkdir(parents=True)
    state.write_text(sign_checkpoint(Checkpoint(DEFAULT_ORIGIN, 5, b"\x01" * 32), DEFAULT_ORIGIN, other))

    code, out, err = run(capsys, "audit", "verify", "--from-export", bundle, "--policy", deployment.policy_path)
    assert code == 0 and "note:" not in out and "audit log intact" in out, out
    assert err.startswith(f"masb: note: the checkpoint remembered in {state} was not used: "), err

    state.write_text(sign_checkpoint(Checkpoint(DEFAULT_ORIGIN, 5, b"\x01" * 32), DEFAULT_ORIGIN, other))
    code, out, err = run(capsys, "audit", "verify", "--bootstrap", NO_BROKER, "--policy", deployment.policy_path)
    assert code == 3 and out == "" and "masb: note: the checkpoint remembered in" in err, (out, err)


# -- 5. prove, then check-proof, after verify remembered a checkpoint -------------------------------
def test_prove_then_check_proof_works_after_verify_remembered_a_checkpoint(deployment, log_key, tmp_path, capsys):
    items = deliveries(40)
    notes = signed(items, log_key, {10, 20, 30, 40})
    earlier = export(tmp_path / "earlier", items[:20], notes[:2], deployment)
    now = export(tmp_path / "now", items, notes, deployment)
    policy = deployment.policy_path
    code, out, _ = run(capsys, "audit", "verify", "--from-export", earlier, "--policy", policy)
    assert code == 0 and "remembered: checkpoint of size 20" in out, out

    # Without the remembered checkpoint (--no-state) the proof is refused against it, as before:
    proof = tmp_path / "p.json"
    code, _, err = run(capsys, "audit", "prove", event_id(33), "--from-export", now, "--policy", policy,
                       "--out", proof, "--no-state")
    assert code == 0 and "remembered" not in err and "extends" not in json.loads(proof.read_text())
    code, out, _ = run(capsys, "audit", "check-proof", proof, "--policy", policy)
    assert code == 1 and "not shown to extend the checkpoint remembered" in out, out

    # By default prove shows the proof extends it, and check-proof accepts it.
    code, out, err = run(capsys, "audit", "prove", event_id(33), "--from-export", now, "--policy", policy,
                         "--out", proof)
    assert code == 0 and "consistency proof from the checkpoint remembered in" in err and "(size 20)" in err, err
    code, out, err = run(capsys, "audit", "check-proof", proof, "--policy", policy)
    assert code == 0 and f"proof {proof}: VALID" in out and "held against: the checkpoint remembered" in out, out
    assert "(size 20)" in out and "remembered: checkpoint of size 40" in out, out


# -- invalid input elsewhere is exit 2 -------------------------------------------------------------
def test_status_of_something_that_is_no_event_id_is_exit_2(deployment, capsys):
    code, _, err = run(capsys, "status", "not-a-uuid", "--as", "hau-worcestershire", "--key", "k", "--policy",
                       deployment.policy_path, "--bootstrap", NO_BROKER)
    assert code == 2 and "argument event_id: not an event id" in err and "not-a-uuid" not in err, err


@pytest.mark.parametrize("value, args, what", [
    ("not a ref", ["audit", "shred"], "CASE_REF"),
    ("wm-lower-case", ["audit", "report", "--bootstrap", NO_BROKER, "--case-ref"], "--case-ref"),
])
def test_what_is_no_case_reference_is_exit_2_and_not_echoed(deployment, capsys, value, args, what):
    code, out, err = run(capsys, *args, value, "--policy", deployment.policy_path) if "report" in args else \
        run(capsys, *args, value)
    assert code == 2 and err.startswith(f"masb: {what} is not a case reference") and value not in err, err
