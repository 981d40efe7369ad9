"""What a fresh user found around `masb demo` and the worker it runs: a policy file that turns into
a folder (or otherwise cannot be read) is one log line and one counted failed reload, never a
traceback; `demo --keep` notices its broker dying and stops; the outage log says how long the broker
has been away; a finished demo leaves no settings pointing at a broker that no longer runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from agents import health
from agents.deployment import prepare_deployment
from agents.policy_watch import check_policy_file, file_signature
from streams.policy import load_policy


# -- the policy watcher: every way the file can be unreadable --------------------------------------

def failures() -> float:
    return REGISTRY.get_sample_value("masb_policy_reload_failures_total") or 0.0


@pytest.fixture(scope="module")
def demo_policy(tmp_path_factory):
    deployment = prepare_deployment(tmp_path_factory.mktemp("policy"))
    return deployment.policy_path, deployment.policy_path.read_bytes()


def make_directory(path):
    path.unlink()
    path.mkdir()


def make_not_utf8(path):
    path.write_bytes(b"policy_version: 1\n# \xff\xfe\n")


def make_dangling_link(path):
    path.unlink()
    path.symlink_to(path.with_name("gone.yaml"))


def make_link_loop(path):
    path.unlink()
    path.symlink_to(path)


def make_fifo(path):
    path.unlink()
    os.mkfifo(path)


def make_unreadable(path):
    path.write_bytes(path.read_bytes() + b"\n")  # a new version, that the worker may not read
    path.chmod(0)


def make_missing(path):
    path.unlink()


UNREADABLE = [
    (make_directory, "is a directory"),
    (make_not_utf8, "refused"),
    (make_dangling_link, "is a symbolic link to a file that does not exist"),
    (make_link_loop, "cannot be read (Too many levels of symbolic links)"),
    (make_fifo, "is not a regular file"),
    pytest.param(make_unreadable, "cannot be read (Permission denied)",
                 marks=pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")),
    (make_missing, "is missing"),
]


@pytest.mark.parametrize("spoil, said", UNREADABLE, ids=lambda v: getattr(v, "__name__", None))
def test_an_unreadable_policy_file_is_one_line_and_one_counted_failure(demo_policy, tmp_path, caplog, spoil, said):
    source, text = demo_policy
    path = tmp_path / "policy.yaml"
    path.write_bytes(text)
    policy = load_policy(path)
    runtime = SimpleNamespace(policy=policy, policy_mtime=file_signature(path)[0], policy_problem=None)

    def poll() -> None:  # the sender is only used to record a change that passed every check
        asyncio.run(check_policy_file(runtime, None, path))

    before = failures()
    spoil(path)
    with caplog.at_level(logging.ERROR, logger="masb.policy"):
        for _ in range(3):  # the watcher polls every 2 s: one line and one count, not one per poll
            poll()
    lines = [r.getMessage() for r in caplog.records if r.name == "masb.policy"]
    assert len(lines) == 1 and said in lines[0] and "keeping version 1" in lines[0], lines
    assert str(path) in lines[0] or "policy.yaml" in lines[0]
    assert not any(r.exc_info for r in caplog.records)
    assert failures() == before + 1
    assert runtime.policy is policy

    # Put right (as a deploy tool would: a new file moved into place), it is read again.
    if path.is_dir() and not path.is_symlink():
        path.rmdir()  # a rename replaces anything else
    fresh = tmp_path / "fresh.yaml"
    fresh.write_bytes(text)
    fresh.replace(path)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="masb.policy"):
        poll()
    assert runtime.policy_problem is None and not caplog.records and failures() == before + 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_a_policy_file_made_readable_again_is_read(demo_policy, tmp_path, caplog):
    source, text = demo_policy
    path = tmp_path / "policy.yaml"
    path.write_bytes(text)
    runtime = SimpleNamespace(policy=load_policy(path), policy_mtime=None, policy_problem=None)
    path.chmod(0)
    asyncio.run(check_policy_file(runtime, None, path))
    assert runtime.policy_problem == "cannot be read (Permission denied)"
    path.chmod(0o644)  # changes no mtime: the watcher must still look again
    asyncio.run(check_policy_file(runtime, None, path))
    assert runtime.policy_problem is None


# -- the broker outage log -------------------------------------------------------------------------

def test_the_outage_log_says_when_the_broker_went_and_then_for_how_long(monkeypatch, caplog):
    now = [1000.0]
    monkeypatch.setattr(health.time, "monotonic", lambda: now[0])
    probe = health.Health("127.0.0.1:9", "g", ["t"], supervisor=None, assigned=lambda: (), checkpoint_interval=1)

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "masb.health"]

    with caplog.at_level(logging.INFO, logger="masb.health"):
        probe._broker(True, None)
        now[0] += 600  # reachable for ten minutes, then gone
        probe._broker(False, "KafkaConnectionError")
        assert lines() == ["Kafka at 127.0.0.1:9 became unreachable (KafkaConnectionError); routing waits and "
                           "resumes by itself"]
        for _ in range(11):  # probes every 5 s: nothing more until a minute has passed
            now[0] += 5
            probe._broker(False, "KafkaConnectionError")
        assert len(lines()) == 1
        now[0] += 5
        probe._broker(False, "KafkaConnectionError")
        assert lines()[1].startswith("Kafka at 127.0.0.1:9 still unreachable, for 60s now"), lines()
        now[0] += 65
        probe._broker(False, "KafkaConnectionError")
        assert "for 125s now" in lines()[2]
        now[0] += 5
        probe._broker(True, None)
        assert lines()[3] == "Kafka at 127.0.0.1:9 reachable again after 130s"
    assert "(for 0s)" not in " ".join(lines())


def test_a_broker_unreachable_from_the_start_is_not_said_to_have_become_so(monkeypatch, caplog):
    probe = health.Health("127.0.0.1:9", "g", ["t"], supervisor=None, assigned=lambda: (), checkpoint_interval=1)
    with caplog.at_level(logging.INFO, logger="masb.health"):
        probe._broker(False, "KafkaConnectionError")
    assert [r.getMessage() for r in caplog.records] == [
        "Kafka at 127.0.0.1:9 is unreachable (KafkaConnectionError); routing waits and resumes by itself"]


# -- the demo ----------------------------------------------------------------------------------------

def children_of(pid: int) -> list[tuple[int, str]]:
    out = subprocess.run(["ps", "-o", "pid=,stat=,args=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [(int(line.split()[0]), line) for line in out.splitlines()]


def stop_all(proc) -> None:
    """The demo and what it started (broker and worker run in sessions of their own), by process id."""
    for child, _ in children_of(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def metric(url: str, name: str) -> float | None:
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout:.0f}s: {what}")


@pytest.mark.tansu
def test_demo_keep_stops_when_its_broker_dies_and_the_worker_rides_out_a_policy_folder(tmp_path):
    workdir = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "agents", "demo", "--keep", "--workdir", str(workdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out = []
        for line in proc.stdout:
            out.append(line)
            if line.startswith("worker metrics:"):
                break
        assert "demo completed" in "".join(out), "".join(out)
        metrics_url = out[-1].split(": ", 1)[1].strip()
        (broker,) = [pid for pid, args in children_of(proc.pid) if "tansu" in args]
        assert (workdir / "env").exists()

        # The policy path becomes a folder while the worker runs: one line, one counted failure.
        policy, log = workdir / "policy.yaml", workdir / "worker.log"
        policy.unlink()
        policy.mkdir()
        wait_for(lambda: "is a directory; keeping version 1" in log.read_text(), 30, "the worker's line")
        assert "Traceback" not in log.read_text() and "ended unexpectedly" not in log.read_text()
        assert metric(metrics_url, "masb_policy_reload_failures_total") == 1.0

        os.kill(broker, signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            stop_all(proc)
    assert proc.returncode == 3, err
    assert f"masb: the demo's broker (process {broker}) ended (" in err and "; stopping the demo" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(f"/proc/{broker}")  # reaped, not left a zombie
    assert not (workdir / "env").exists() and not (workdir / "worker-data").exists()
    assert str(workdir) not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


@pytest.mark.tansu
def test_a_plain_demo_leaves_no_settings_for_a_dead_broker_and_says_what_it_left(tmp_path):
    workdir = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "agents", "demo", "--workdir", str(workdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            stop_all(proc)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"left in {workdir} for a look afterwards: keys/ "), last
    assert "policy.yaml" in last and "worker.log" in last and "nothing the demo started still runs" in last
    assert sorted(p.name for p in workdir.iterdir()) == [".masb-demo-folder", "keys", "policy.yaml", "worker.log"]
