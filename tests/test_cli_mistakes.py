"""Ordinary mistakes, run as a user runs `masb`: one clear line naming the thing at fault, the documented
exit code (docs/cli.md), no traceback, no personal data, no unclosed Kafka client."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.deployment import prepare_deployment
from tests.harness import fixture_event, stderr_after_signal

NO_BROKER = "127.0.0.1:1"  # nothing listens on port 1: refused at once
EVENT = fixture_event("MARAC_REFERRAL")
PERSONAL = [EVENT["victim"]["name"], EVENT["header"]["case_ref"], EVENT["victim"]["nhs_number"]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mistakes")
    deployment = prepare_deployment(root / "deployment")
    (root / "event.json").write_text(json.dumps(EVENT, indent=1))
    (root / "a-file").write_text("not a directory")
    (root / "empty.yaml").write_text("")
    typo = deployment.policy_path.read_text().replace("agreements:", "agreemnts:", 1)
    (root / "typo.yaml").write_text(typo)
    (root / "bad-date.yaml").write_text(re.sub(r"effective_from: \S+", "effective_from: 2026-13-01",
                                                deployment.policy_path.read_text(), count=1))
    pretty = json.dumps(EVENT, indent=1).splitlines()
    assert pretty[23].endswith(",")
    pretty[23] = pretty[23][:-1]  # a missing comma at the end of line 24: the parser stops at line 25
    (root / "missing-comma.json").write_text("\n".join(pretty))
    return root, deployment


def masb(*args: str, cwd: Path, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agents", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False, env={**os.environ, **(env or {})})


def key(deployment, owner: str, kind: str = "exchange") -> str:
    return str(next(deployment.keys_dir.glob(f"{owner}.{kind}.*.key")))


def key_id(deployment, owner: str, kind: str) -> str:
    return Path(key(deployment, owner, kind)).name.split(".")[2]


def report(d, *more) -> list:
    """`audit report` against no broker: a flag checked before the log is read fails with 2, not 3."""
    return ["audit", "report", "--bootstrap", NO_BROKER, "--policy", d.policy_path, *more]


def _busy_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


# (name, arguments given the fixture's paths, exit code, words the one line must contain)
CASES = [
    ("consume, no broker", lambda r, d: ["consume", "--bootstrap", NO_BROKER, "--policy", d.policy_path,
                                         "--agency", "nhs-worcs-acute", "--key", key(d, "nhs-worcs-acute")],
     3, ["127.0.0.1:1", "unavailable"]),
    ("publish, no broker", lambda r, d: ["publish", "--bootstrap", NO_BROKER, "--policy", d.policy_path,
                                         "--as", "hau-worcestershire", "--key", key(d, "hau-worcestershire", "signing"),
                                         "--keys-dir", d.keys_dir, r / "event.json"], 3, ["127.0.0.1:1", "unavailable"]),
    ("audit verify, no broker", lambda r, d: ["audit", "verify", "--bootstrap", NO_BROKER, "--policy", d.policy_path],
     3, ["127.0.0.1:1"]),
    ("audit report, no broker", lambda r, d: ["audit", "report", "--bootstrap", NO_BROKER, "--policy", d.policy_path],
     3, ["127.0.0.1:1"]),
    ("worker, no broker", lambda r, d: ["worker", "--bootstrap", NO_BROKER, "--policy", d.policy_path,
                                        "--keys-dir", d.keys_dir, "--web-port", str(_free_port())], 3, ["127.0.0.1:1"]),
    ("worker, policy with a typo", lambda r, d: ["worker", "--bootstrap", NO_BROKER, "--policy", r / "typo.yaml",
                                                 "--keys-dir", d.keys_dir], 2, ["typo.yaml", "agreemnts"]),
    ("worker, no such keys dir", lambda r, d: ["worker", "--bootstrap", NO_BROKER, "--policy", d.policy_path,
                                               "--keys-dir", r / "nokeys"], 2, ["nokeys", "not found"]),
    ("policy check on a directory", lambda r, d: ["policy", "check", r], 2, ["mistakes", "is a directory"]),
    ("policy explain, unknown event type", lambda r, d: ["policy", "explain", d.policy_path, "MARAC", "worcestershire"],
     2, ["MARAC"]),
    ("keys generate --out an existing file", lambda r, d: ["keys", "generate", "--owner", "x-unit", "--out",
                                                           r / "a-file"], 2, ["a-file", "is a file"]),
    ("keys export-public of a directory", lambda r, d: ["keys", "export-public", r], 2, ["is a directory"]),
    ("audit verify --from-export of a missing dir", lambda r, d: ["audit", "verify", "--from-export", r / "nope",
                                                                  "--policy", d.policy_path], 2, ["nope", "not found"]),
    ("audit check-proof of a missing file", lambda r, d: ["audit", "check-proof", r / "nope.json",
                                                          "--policy", d.policy_path], 2, ["nope.json", "not found"]),
    ("audit shred without a keys dir", lambda r, d: ["audit", "shred", "WM-ABC123456"], 2, ["keys dir"]),
    ("schemas check of a missing root", lambda r, d: ["schemas", "check", "--root", r / "nope"], 2, ["nope", "not found"]),
    ("schemas check of an empty root", lambda r, d: ["schemas", "check", "--root", d.keys_dir], 2,
     ["nothing to check"]),
    ("consume for an agency the policy does not know", lambda r, d: ["consume", "--bootstrap", NO_BROKER, "--policy",
                                                                     d.policy_path, "--agency", "nobody", "--key",
                                                                     key(d, "nhs-worcs-acute")], 2, ["nobody"]),
    ("consume with a signing key", lambda r, d: ["consume", "--bootstrap", NO_BROKER, "--policy", d.policy_path,
                                                 "--agency", "nhs-worcs-acute", "--key",
                                                 key(d, "hau-worcestershire", "signing")], 2, ["exchange key"]),
    ("publish as a unit the policy does not know", lambda r, d: ["publish", "--bootstrap", NO_BROKER, "--policy",
                                                                 d.policy_path, "--as", "hau-nowhere", r / "event.json"],
     2, ["hau-nowhere"]),
    ("publish a file that does not exist", lambda r, d: ["publish", "--policy", d.policy_path, "--as",
                                                         "hau-worcestershire", "--key",
                                                         key(d, "hau-worcestershire", "signing"), r / "none.json"],
     2, ["none.json", "not found"]),
    ("no policy anywhere", lambda r, d: ["audit", "verify", "--bootstrap", NO_BROKER], 2, ["--policy", "MASB_POLICY"]),
    ("a policy date that is not a date", lambda r, d: ["policy", "explain", r / "bad-date.yaml", "MARAC_REFERRAL",
                                                       "worcestershire"], 2, ["bad-date.yaml", "effective_from"]),
    ("a pretty-printed event with a missing comma", lambda r, d: ["publish", "--policy", d.policy_path, "--as",
                                                                  "hau-worcestershire", "--keys-dir", d.keys_dir,
                                                                  r / "missing-comma.json"], 2, ["line 25"]),
    ("status, no broker", lambda r, d: ["status", EVENT["header"]["event_id"], "--bootstrap", NO_BROKER, "--policy",
                                        d.policy_path, "--as", "hau-worcestershire", "--key",
                                        key(d, "hau-worcestershire")], 3, ["127.0.0.1:1", "unavailable"]),
    ("status with an agency's key", lambda r, d: ["status", EVENT["header"]["event_id"], "--bootstrap", NO_BROKER,
                                                  "--policy", d.policy_path, "--as", "hau-worcestershire", "--key",
                                                  key(d, "nhs-worcs-acute")], 2, ["exchange key", "hau-worcestershire"]),
    ("status as a unit the policy does not know", lambda r, d: ["status", EVENT["header"]["event_id"], "--policy",
                                                                d.policy_path, "--as", "hau-nowhere", "--key",
                                                                key(d, "hau-worcestershire")], 2, ["hau-nowhere"]),
    ("consume --unit, no broker", lambda r, d: ["consume", "--bootstrap", NO_BROKER, "--policy", d.policy_path,
                                                "--unit", "hau-worcestershire", "--key", key(d, "hau-worcestershire")],
     3, ["127.0.0.1:1", "unavailable"]),
    ("consume --unit --ack", lambda r, d: ["consume", "--policy", d.policy_path, "--unit", "hau-worcestershire",
                                           "--key", key(d, "hau-worcestershire"), "--ack"], 2, ["--ack"]),
    ("dlq list, no broker", lambda r, d: ["dlq", "list", "--bootstrap", NO_BROKER], 3, ["127.0.0.1:1", "unavailable"]),
    ("dlq redrive, negative wait", lambda r, d: ["dlq", "redrive", "--bootstrap", NO_BROKER, "--wait", "-1"], 2,
     ["--wait"]),
    ("a bootstrap port that is not a number", lambda r, d: ["dlq", "list", "--bootstrap", "127.0.0.1:abc"], 2,
     ["--bootstrap 127.0.0.1:abc", "HOST:PORT"]),
    ("an ingest port out of range", lambda r, d: ["ingest", "--as", "hau-worcestershire", "--key",
                                                  key(d, "hau-worcestershire", "signing"), "--port", "99999"], 2,
     ["ingest: argument --port: '99999' is not a port number"]),
    ("a trusted checkpoint file that does not exist", lambda r, d: ["audit", "verify", "--trusted-checkpoint",
                                                                    str(r / "nope.note"), "--bootstrap", NO_BROKER,
                                                                    "--policy", str(d.policy_path)], 2,
     ["trusted checkpoint", "nope.note: not found"]),
    ("a proof index folder that holds other files, named before the log is read",
     lambda r, d: ["audit", "prove", "00000000-0000-4000-8000-000000000000", "--index", str(r), "--bootstrap",
                   NO_BROKER, "--policy", str(d.policy_path)], 2, ["is not a proof index"]),
    ("a negative --max", lambda r, d: ["consume", "--agency", "nhs-worcs-acute", "--key",
                                       key(d, "nhs-worcs-acute"), "--max", "-1"], 2, ["argument --max", "0 or more"]),
    ("a --max in Python's digit grouping (the numbers rule of every door: ASCII digits only)",
     lambda r, d: ["consume", "--agency", "nhs-worcs-acute", "--key", key(d, "nhs-worcs-acute"), "--max", "1_000"], 2,
     ["argument --max: '1_000' is not a whole number in ASCII digits, 0 or more"]),
    ("a redrive --wait of infinity", lambda r, d: ["dlq", "redrive", "--bootstrap", NO_BROKER, "--wait", "inf"], 2,
     ["argument --wait: 'inf' is not a number in ASCII digits, 0 or more"]),
    ("an empty policy file", lambda r, d: ["policy", "check", str(r / "empty.yaml")], 1, ["the document is empty"]),
    ("a demo folder that is a file", lambda r, d: ["demo", "--workdir", str(r / "a-file")], 2,
     ["--workdir", "a-file is a file"]),
    ("a demo bootstrap port that is not a number", lambda r, d: ["demo", "--bootstrap", "127.0.0.1:x", "--workdir",
                                                                 str(r / "demo")], 2,
     ["--bootstrap 127.0.0.1:x", "HOST:PORT"]),
    ("a bootstrap port out of range", lambda r, d: ["audit", "report", "--bootstrap", "127.0.0.1:99999", "--policy",
                                                    d.policy_path], 2, ["--bootstrap 127.0.0.1:99999", "HOST:PORT"]),
    ("a bad address in a bootstrap list", lambda r, d: ["consume", "--bootstrap", "127.0.0.1:9092,kafka-2", "--policy",
                                                        d.policy_path, "--agency", "nhs-worcs-acute", "--key",
                                                        key(d, "nhs-worcs-acute")], 2, ["kafka-2", "HOST:PORT"]),
    ("a demo folder holding files the demo did not make", lambda r, d: ["demo", "--workdir", str(r / "deployment")], 2,
     ["--workdir", "not empty", "was not made by `masb demo`"]),
    ("a demo folder that is the current one", lambda r, d: ["demo", "--workdir", "."], 2, ["current folder"]),
    ("a topic prefix Kafka cannot name topics with", lambda r, d: ["dlq", "list", "--bootstrap", NO_BROKER,
                                                                   "--topic-prefix", "my prefix."], 2,
     ["topic prefix 'my prefix.'", "--topic-prefix"]),
    ("a worker web port of 0", lambda r, d: ["worker", "--web-port", "0"], 2, ["--web-port", "not a port number"]),
    ("consistency sizes the wrong way round", lambda r, d: ["audit", "consistency", "5", "3", "--bootstrap", NO_BROKER,
                                                            "--policy", d.policy_path], 2, ["OLD_SIZE"]),
    ("a redrive wait that is not a number", lambda r, d: ["dlq", "redrive", "--bootstrap", NO_BROKER, "--wait", "nan"],
     2, ["--wait", "'nan'"]),
    ("a shred timeout below 0", lambda r, d: ["audit", "shred", "WM-X", "--timeout", "-1"], 2, ["--timeout"]),
    ("an argument that is not UTF-8", lambda r, d: ["audit", "prove", "\udcff\udcfe", "--bootstrap", NO_BROKER], 2,
     ["argument 3 is not valid UTF-8"]),
    ("a key file that is no key", lambda r, d: ["keys", "export-public", r / "empty.yaml"], 2,
     ["empty.yaml", "not a MASB key file"]),
    # Output paths are checked before the log is read (the broker is never asked: exit 2, not 3).
    ("audit report --out in a missing folder", lambda r, d: report(d, "--format", "html", "--out", r / "nope" / "r.html"),
     2, ["--out", "nope/r.html", "not found"]),
    ("audit report --out a directory", lambda r, d: report(d, "--out", r), 2, ["--out", "is a directory"]),
    ("audit prove --out in a missing folder", lambda r, d: ["audit", "prove", "00000000-0000-4000-8000-000000000000",
                                                            "--bootstrap", NO_BROKER, "--policy", d.policy_path,
                                                            "--out", r / "nope" / "p.json"],
     2, ["nope/p.json", "not found"]),
    ("audit consistency --out a directory", lambda r, d: ["audit", "consistency", "1", "2", "--bootstrap", NO_BROKER,
                                                          "--policy", d.policy_path, "--out", r], 2, ["is a directory"]),
    ("audit export to an existing file", lambda r, d: ["audit", "export", r / "a-file", "--bootstrap", NO_BROKER,
                                                       "--policy", d.policy_path], 2, ["a-file", "not a directory"]),
    ("audit export under a missing folder", lambda r, d: ["audit", "export", r / "nope" / "a" / "b", "--bootstrap",
                                                          NO_BROKER, "--policy", d.policy_path], 2,
     ["nope/a/b", "folder", "not found"]),
    ("witness keygen --out in a missing folder", lambda r, d: ["witness", "keygen", "--name", "witness.example.org/w",
                                                               "--out", r / "nope" / "w.key"], 2, ["nope", "not found"]),
    # Key generation checks everything before it makes a folder.
    ("keys generate, an owner with a path", lambda r, d: ["keys", "generate", "--owner", "../evil", "--out", r / "k2"],
     2, ["--owner ../evil", "party id"]),
    ("keys generate, an owner with a slash", lambda r, d: ["keys", "generate", "--owner", "a/b", "--out", r / "k2"],
     2, ["--owner a/b", "party id"]),
    ("keys generate without --owner", lambda r, d: ["keys", "generate"], 2, ["needs --owner"]),
    ("keys generate --kind pseudonym --owner", lambda r, d: ["keys", "generate", "--kind", "pseudonym", "--owner", "x",
                                                             "--out", r / "k4"], 2, ["--owner", "pseudonym"]),
    ("keys case-secrets --out in a missing folder", lambda r, d: ["keys", "case-secrets", "--out", r / "nope" / "k"],
     2, ["nope/k", "not found"]),
    # Report filters are checked before the log is read.
    ("audit report --since a word", lambda r, d: report(d, "--since", "yesterday"), 2, ["--since yesterday", "ISO 8601"]),
    ("audit report --since a day that does not exist", lambda r, d: report(d, "--since", "2026-02-30"), 2,
     ["--since 2026-02-30", "ISO 8601"]),
    ("audit report --since after --until", lambda r, d: report(d, "--since", "2026-03-02", "--until", "2026-03-01"), 2,
     ["--since", "--until"]),
    ("audit report --case-ref without a keys dir", lambda r, d: report(d, "--case-ref", "WM-ABC123456"), 2,
     ["--case-ref", "--keys-dir"]),
    ("audit report for an agency the policy does not know", lambda r, d: report(d, "--agency", "nobody"), 2,
     ["agency nobody is not in the sharing policy"]),
    ("audit report for an unknown event type", lambda r, d: report(d, "--event-type", "NOPE"), 2,
     ["event type NOPE"]),
    ("audit report for an unknown legal basis", lambda r, d: report(d, "--legal-basis", "NOPE"), 2,
     ["legal basis NOPE"]),
    ("keys revoke of a unit's only signing key", lambda r, d: ["keys", "revoke", "--policy", d.policy_path, "--owner",
                                                               "hau-shropshire", "--key-id",
                                                               key_id(d, "hau-shropshire", "signing"), "--output",
                                                               r / "rv2.yaml"], 1,
     ["rv2.yaml: line", "no active signing key", "only active key of hau-shropshire"]),
    ("keys revoke --output in a missing folder", lambda r, d: ["keys", "revoke", "--policy", d.policy_path, "--owner",
                                                               "hau-shropshire", "--key-id",
                                                               key_id(d, "hau-shropshire", "signing"), "--output",
                                                               r / "nope" / "rv2.yaml"], 2, ["nope", "not found"]),
]


@pytest.mark.parametrize("name, argv, code, words", CASES, ids=[c[0] for c in CASES])
def test_a_mistake_is_one_clear_line_with_its_exit_code(setup, name, argv, code, words):
    root, deployment = setup
    env = {"MASB_POLICY": "", "MASB_BOOTSTRAP": "", "MASB_KEYS_DIR": ""}
    before = sorted(root.rglob("*"))
    result = masb(*map(str, argv(root, deployment)), cwd=root, env=env)
    assert result.returncode == code, result.stderr
    err = result.stderr
    assert "Traceback" not in err and "Unclosed" not in err and ".tmp" not in err, err
    assert sorted(root.rglob("*")) == before, "a failed command left files or folders behind"
    lines = [line for line in err.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 4 and lines[0].startswith("masb: "), err
    for word in words:
        assert word in err, err
    for value in PERSONAL:
        assert value not in err + result.stdout


def test_a_usage_error_of_masb_itself_names_masb_once(setup):
    root, _ = setup
    result = masb(cwd=root)
    assert result.returncode == 2
    assert result.stderr.startswith("masb: the following arguments are required: COMMAND"), result.stderr


@pytest.mark.parametrize("command", [["audit", "verify"], ["worker", "--web-port", "6066"], ["dlq", "list"]])
def test_a_bad_masb_bootstrap_is_named_with_exit_2(setup, command):
    root, deployment = setup
    env = {"MASB_BOOTSTRAP": "127.0.0.1:70000", "MASB_POLICY": str(deployment.policy_path),
           "MASB_KEYS_DIR": str(deployment.keys_dir)}
    result = masb(*command, cwd=root, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("masb: MASB_BOOTSTRAP 127.0.0.1:70000: not HOST:PORT"), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_a_bad_masb_report_workers_is_named_with_exit_2_before_the_log_is_read(setup):
    root, deployment = setup
    result = masb(*report(deployment), cwd=root, env={"MASB_REPORT_WORKERS": "two"})
    assert result.returncode == 2, result.stderr  # not 3: no broker is ever asked
    assert result.stderr.startswith("masb: MASB_REPORT_WORKERS=two: not a whole number"), result.stderr


def test_a_busy_web_port_is_named_before_the_worker_starts(setup):
    root, deployment = setup
    with _busy_port() as busy:
        port = busy.getsockname()[1]
        result = masb("worker", "--bootstrap", NO_BROKER, "--policy", str(deployment.policy_path),
                      "--keys-dir", str(deployment.keys_dir), "--web-port", str(port), cwd=root)
    assert result.returncode == 2 and f"127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_usage_errors_exit_2_with_argparse_usage(setup):
    root, _ = setup
    result = masb("keys", "generate", cwd=root)
    assert result.returncode == 2 and "--owner" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("argv", [["audit", "report", "--format", "pdf"], ["status"], ["keys", "generate", "--kind", "x"]])
def test_a_usage_error_is_one_masb_line_and_a_hint_like_every_other_error(setup, argv):
    root, _ = setup
    result = masb(*argv, cwd=root)
    first, *rest = result.stderr.splitlines()
    assert result.returncode == 2 and first.startswith(f"masb: {' '.join(argv[:2] if argv[0] != 'status' else argv[:1])}")
    assert rest == [f"  see `masb {' '.join(argv[:2] if argv[0] != 'status' else argv[:1])} --help`"]


def test_a_reader_that_goes_away_ends_the_command_quietly_with_141(setup):
    root, deployment = setup
    proc = subprocess.Popen([sys.executable, "-m", "agents", "policy", "explain", str(deployment.policy_path),
                             "MARAC_REFERRAL", "worcestershire"], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # `| head -c 0`: the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("masb ingest did not start listening")


@pytest.mark.parametrize("signum, code, said", [(signal.SIGINT, 130, "masb: interrupted"), (signal.SIGTERM, 0, None)])
def test_ingest_stops_cleanly_ctrl_c_exits_130_and_sigterm_0(setup, signum, code, said):
    """Ctrl-C is exit 130 like every long command; SIGTERM is how a service manager stops it (exit 0).
    Ingest starts without a broker: its producer connects on the first request."""
    root, deployment = setup
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "agents", "ingest", "--bootstrap", NO_BROKER, "--policy",
                             str(deployment.policy_path), "--as", "hau-worcestershire", "--key",
                             key(deployment, "hau-worcestershire", "signing"), "--keys-dir", str(deployment.keys_dir),
                             "--port", str(port)], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_port(port, proc)
    finally:
        err = stderr_after_signal(proc, signum)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "Unclosed" not in err, err
    if said:
        assert said in err, err


def test_ingest_says_where_it_listens_only_once_it_does(setup):
    root, deployment = setup
    args = [sys.executable, "-m", "agents", "ingest", "--bootstrap", NO_BROKER, "--policy", str(deployment.policy_path),
            "--as", "hau-worcestershire", "--key", key(deployment, "hau-worcestershire", "signing"),
            "--keys-dir", str(deployment.keys_dir), "--port"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = subprocess.run(args + [str(port)], cwd=root, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.splitlines() and refused.stderr.splitlines()[0].startswith(
        f"masb: cannot listen on 127.0.0.1:{port}"), refused.stderr
    assert "POST http" not in refused.stderr
    port = _free_port()
    proc = subprocess.Popen(args + [str(port)], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_port(port, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert f"POST http://127.0.0.1:{port}/events" in err, err


@pytest.mark.tansu
@pytest.mark.parametrize("signum, code, said", [(signal.SIGINT, 130, "masb: interrupted"),
                                                (signal.SIGTERM, 143, "masb: terminated")])
def test_ctrl_c_or_sigterm_in_consume_follow_stops_cleanly_without_a_traceback(setup, tansu, signum, code, said):
    import asyncio

    from streams.kafka import TopicSpec, ensure_topics
    from streams.topics import Topics

    root, deployment = setup
    prefix = f"ctrlc{int(signum)}."
    asyncio.run(ensure_topics(tansu, [TopicSpec(Topics(prefix).partner("nhs-worcs-acute"))]))
    proc = subprocess.Popen([sys.executable, "-m", "agents", "consume", "--follow", "--bootstrap", tansu,
                             "--topic-prefix", prefix, "--policy", str(deployment.policy_path), "--agency",
                             "nhs-worcs-acute", "--key", key(deployment, "nhs-worcs-acute")],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)  # reading, waiting for envelopes
    err = stderr_after_signal(proc, signum)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "Unclosed" not in err, err
    assert said in err


def test_version_names_the_installed_package(setup):
    root, _ = setup
    from importlib.metadata import version

    result = masb("--version", cwd=root)
    assert result.returncode == 0 and result.stdout.strip() == f"masb {version('masb')}"
