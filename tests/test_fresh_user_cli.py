"""What a fresh user tried on the installed command: bad settings in the environment, impossible
numbers and ports, empty flag values, signals to a witness, paths whose parent folders are missing.
Each is refused at once with the documented exit code (docs/cli.md) and one line naming the setting,
flag or path at fault; never a traceback, never a folder made where none was asked for."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agents.deployment import prepare_deployment
from tests.harness import fixture_event, stderr_after_signal

NO_BROKER = "127.0.0.1:1"  # nothing listens on port 1: refused at once


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fresh-user")
    deployment = prepare_deployment(root / "deployment")
    (root / "event.json").write_text(json.dumps(fixture_event("MARAC_REFERRAL")))
    (root / "a-file").write_text("not a directory")
    (root / "no-registry").mkdir()
    (root / "empty-export").mkdir()
    return root, deployment


def masb(*args, cwd: Path, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agents", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False, env={**os.environ, **(env or {})})


def one_line(result: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """The result's exit code is ``code`` and its stderr starts with one `masb:` line holding ``words``."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith("masb: "), result.stderr
    for word in words:
        assert word in first, result.stderr
    return result.stderr


def key(deployment, owner: str, kind: str) -> Path:
    return next(deployment.keys_dir.glob(f"{owner}.{kind}.*.key"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- 1. MASB_SCHEMA_ROOT --------------------------------------------------------------------------
SCHEMA_ROOTS = {"missing": lambda r: r / "no-such-folder", "a file": lambda r: r / "a-file",
                "a folder without registry.json": lambda r: r / "no-registry"}
COMMANDS = {
    "policy check": lambda r, d: ["policy", "check", d.policy_path],
    "policy explain": lambda r, d: ["policy", "explain", d.policy_path, "MARAC_REFERRAL", "worcestershire"],
    "schemas check": lambda r, d: ["schemas", "check"],
    "publish": lambda r, d: ["publish", "--bootstrap", NO_BROKER, "--policy", d.policy_path, "--as",
                             "hau-worcestershire", "--key", key(d, "hau-worcestershire", "signing"),
                             "--keys-dir", d.keys_dir, r / "event.json"],
    "consume": lambda r, d: ["consume", "--bootstrap", NO_BROKER, "--policy", d.policy_path, "--agency",
                             "nhs-worcs-acute", "--key", key(d, "nhs-worcs-acute", "exchange")],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", SCHEMA_ROOTS)
def test_a_schema_root_that_holds_no_schemas_is_named(setup, kind, command):
    root, deployment = setup
    schema_root = SCHEMA_ROOTS[kind](root)
    result = masb(*COMMANDS[command](root, deployment), cwd=root, env={"MASB_SCHEMA_ROOT": str(schema_root)})
    one_line(result, 2, "MASB_SCHEMA_ROOT", str(schema_root))


def test_the_worker_names_a_bad_schema_root_before_it_starts(setup):
    root, deployment = setup
    result = masb("worker", "--bootstrap", NO_BROKER, "--policy", deployment.policy_path, "--keys-dir",
                  deployment.keys_dir, "--web-port", _free_port(), cwd=root, env={"MASB_SCHEMA_ROOT": "abc"})
    one_line(result, 2, "MASB_SCHEMA_ROOT abc")


# -- 2, 3, 8. masb witness ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def witness_key(setup):
    root, _ = setup
    path = root / "wit.key"
    result = masb("witness", "keygen", "--name", "witness.example/masb", "--out", path, cwd=root)
    assert result.returncode == 0, result.stderr
    return path


def serve(setup, witness_key, *more) -> list:
    root, deployment = setup
    return ["witness", "serve", "--key", witness_key, "--policy", deployment.policy_path, *more]


@pytest.mark.parametrize("port", ["99999", "-1", "abc", "８０"])
def test_witness_serve_refuses_a_port_number_that_is_none(setup, witness_key, port):
    root, _ = setup
    one_line(masb(*serve(setup, witness_key, "--state-dir", root / "state-p", "--port", port), cwd=root),
             2, "--port", "not a port number")


def test_witness_serve_names_a_port_it_cannot_listen_on(setup, witness_key):
    root, _ = setup
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = masb(*serve(setup, witness_key, "--state-dir", root / "state-busy", "--port", port), cwd=root)
    one_line(result, 2, f"cannot listen on 127.0.0.1:{port}")


@pytest.mark.parametrize("signum, code, said", [(signal.SIGINT, 130, "masb: interrupted"), (signal.SIGTERM, 0, None)])
def test_witness_serve_stops_like_ingest_ctrl_c_130_sigterm_0(setup, witness_key, signum, code, said):
    """A service like `ingest` (docs/cli.md): SIGTERM from its service manager is a clean stop."""
    root, _ = setup
    proc = subprocess.Popen([sys.executable, "-m", "agents",
                             *map(str, serve(setup, witness_key, "--state-dir", root / f"state-{int(signum)}",
                                             "--port", "0"))],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "listening on" in line
        url = line.split("listening on ")[1].split(" ")[0]
        with pytest.raises(urllib.error.HTTPError):  # it serves (and so has its signal handlers)
            urllib.request.urlopen(f"{url}/no-such-origin/checkpoint", timeout=10)
    finally:
        err = stderr_after_signal(proc, signum)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    if said:
        assert said in err, err
    else:
        assert err == "", err


def test_witness_serve_makes_its_state_folder_but_never_its_parents(setup, witness_key):
    root, _ = setup
    state = root / "nodir" / "state"
    one_line(masb(*serve(setup, witness_key, "--state-dir", state), cwd=root), 2, "--state-dir", str(root / "nodir"))
    assert not (root / "nodir").exists()


def test_witness_keygen_says_a_directory_is_one(setup):
    root, _ = setup
    one_line(masb("witness", "keygen", "--name", "w.example/x", "--out", root, cwd=root), 2,
             f"--out {root} is a directory")


# -- 4. numeric flags ----------------------------------------------------------------------------
@pytest.mark.parametrize("flag, value", [("--send-timeout", "nan"), ("--send-timeout", "inf"), ("--send-timeout", "0"),
                                         ("--send-timeout", "-1"), ("--max-body-bytes", "-1"),
                                         ("--max-body-bytes", "0"), ("--max-body-bytes", "1.5")])
def test_ingest_refuses_numbers_that_would_fail_every_request(setup, flag, value):
    root, deployment = setup
    result = masb("ingest", "--bootstrap", NO_BROKER, "--policy", deployment.policy_path, "--as", "hau-worcestershire",
                  "--key", key(deployment, "hau-worcestershire", "signing"), "--keys-dir", deployment.keys_dir,
                  "--port", _free_port(), flag, value, cwd=root, timeout=20)
    one_line(result, 2, f"argument {flag}", repr(value))


# -- 5, 8. masb demo -----------------------------------------------------------------------------
@pytest.mark.parametrize("name, value", [("MASB_ROUTER_BATCH_WINDOW", "nan"), ("MASB_WORKER_LOG_LEVEL", "bogus"),
                                         ("MASB_PARTITIONS", "abc")])
def test_the_demo_refuses_a_bad_worker_setting_before_it_starts_anything(setup, name, value):
    root, _ = setup
    workdir = root / f"demo-{name}"
    result = masb("demo", "--workdir", workdir, cwd=root, env={name: value}, timeout=30)
    one_line(result, 2, name)
    assert "embedded broker" not in result.stdout and not workdir.exists()


def test_the_demo_keeps_its_own_topology_whatever_the_environment_says(setup, monkeypatch):
    """One broker, one replica: a replication factor the environment sets for real clusters does not
    stop the demo (it replaces the topology settings), but a value that is no number does."""
    from agents.demo import check_worker_settings
    from streams.errors import InvalidInput

    monkeypatch.setenv("MASB_REPLICATION_FACTOR", "1")  # below the default MASB_MIN_INSYNC_REPLICAS (2)
    check_worker_settings(None)
    monkeypatch.setenv("MASB_REPLICATION_FACTOR", "one")
    with pytest.raises(InvalidInput, match="^MASB_REPLICATION_FACTOR"):
        check_worker_settings(None)


def test_the_demo_makes_its_folder_but_never_its_parents(setup):
    root, _ = setup
    result = masb("demo", "--workdir", root / "no" / "such", cwd=root, timeout=30)
    one_line(result, 2, "--workdir", str(root / "no"))
    assert "embedded broker" not in result.stdout and not (root / "no").exists()


# -- 6. empty values ------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["dlq", "list", "--bootstrap", ""], ["dlq", "redrive", "--event-id", ""],
                                  ["policy", "check", ""], ["acl", "plan", "--principal-prefix", ""]])
def test_an_empty_argument_is_refused_not_read_as_its_default(setup, args):
    root, _ = setup
    flag = args[-2] if args[-2].startswith("--") else "file"
    one_line(masb(*args, cwd=root, env={"MASB_BOOTSTRAP": NO_BROKER}, timeout=20), 2, f"argument {flag}", "empty")


def test_an_empty_topic_prefix_flag_means_no_prefix(monkeypatch):
    from agents.cli.common import topics

    monkeypatch.setenv("MASB_TOPIC_PREFIX", "other.")
    assert topics(argparse.Namespace(topic_prefix="")).prefix == ""
    assert topics(argparse.Namespace(topic_prefix=None)).prefix == "other."


# -- 7. settings from the environment ------------------------------------------------------------
@pytest.mark.parametrize("name, value, says", [
    ("MASB_WEDGED_SECONDS", "abc", "MASB_WEDGED_SECONDS: must be a number in ASCII digits, 0 or more"),
    ("MASB_WEB_PORT", "0", "MASB_WEB_PORT: must be a whole number in ASCII digits, from 1 to 65535"),
    ("MASB_ROUTER_BATCH_WINDOW", "11", "MASB_ROUTER_BATCH_WINDOW: must be a number in ASCII digits, above 0, at most 10"),
    ("MASB_ROUTER_BATCH", "0", "MASB_ROUTER_BATCH: must be a whole number in ASCII digits, 1 or more"),
])
def test_a_refused_setting_says_the_whole_range(monkeypatch, name, value, says):
    from agents.settings import Settings
    from streams.errors import InvalidInput

    monkeypatch.setenv(name, value)
    with pytest.raises(InvalidInput) as refused:
        Settings.from_args(argparse.Namespace())
    assert str(refused.value) == says


def test_a_web_host_not_of_this_machine_is_named_in_the_hint(setup):
    root, deployment = setup
    result = masb("worker", "--bootstrap", NO_BROKER, "--policy", deployment.policy_path, "--keys-dir",
                  deployment.keys_dir, "--web-port", _free_port(), cwd=root, env={"MASB_WEB_HOST": "abc"})
    err = one_line(result, 2, "abc")
    assert "MASB_WEB_HOST" in err and "--web-port" not in err, err


@pytest.mark.parametrize("state", ["a-file", "a-file/below"])
def test_a_state_dir_that_is_a_file_is_named(setup, state):
    root, deployment = setup
    result = masb("audit", "verify", "--from-export", root / "empty-export", "--policy", deployment.policy_path,
                  cwd=root, env={"MASB_STATE_DIR": str(root / state)})
    one_line(result, 2, "MASB_STATE_DIR", str(root / state), "is not a directory")
    result = masb("audit", "verify", "--from-export", root / "empty-export", "--policy", deployment.policy_path,
                  "--state-dir", root / state, cwd=root)
    one_line(result, 2, "--state-dir")

