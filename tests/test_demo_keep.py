"""`masb demo --keep` as a new user explores with it: the printed env file makes the other commands
(and the suggested `consume`) work; Ctrl-C ends it with 130; a worker that dies ends it with exit 1
and one line saying so, never a silent 0."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.tansu


def start_demo(workdir):
    # Its own process group (the test sends it signals) and the default SIGINT handler, as a terminal's.
    proc = subprocess.Popen([sys.executable, "-m", "agents", "demo", "--keep", "--workdir", str(workdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        lines.append(line)
        if "keep running until you press Ctrl-C" in line or time.monotonic() > deadline:
            break
    for line in proc.stdout:  # the suggestions, up to the metrics line
        lines.append(line)
        if line.startswith("worker metrics:"):
            break
    return proc, "".join(lines)


def env_from(workdir) -> dict[str, str]:
    env = dict(os.environ)
    for line in (workdir / "env").read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0]
    return env


def worker_pid(proc) -> int:
    children = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(proc.pid)], capture_output=True,
                              text=True).stdout
    (pid,) = [int(line.split()[0]) for line in children.splitlines() if "agents worker" in line]
    return pid


def finish(proc, timeout=60) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # The demo's broker and worker run in sessions of their own: stop them too, not only the demo.
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True,
                                  text=True).stdout.split()
        os.killpg(proc.pid, signal.SIGKILL)
        for child in map(int, children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        _, err = proc.communicate()
    return proc.returncode, err


@pytest.mark.parametrize("signum, code, said", [(signal.SIGINT, 130, "masb: interrupted"),
                                                 (signal.SIGTERM, 143, "masb: terminated")])
def test_the_env_file_and_the_suggested_consume_work_and_ctrl_c_exits_130(tmp_path, signum, code, said):
    workdir = tmp_path / "demo"
    proc, out = start_demo(workdir)
    try:
        assert "demo completed" in out, out
        env = env_from(workdir)
        assert {"MASB_PARTITIONS", "MASB_REPLICATION_FACTOR", "MASB_MIN_INSYNC_REPLICAS"} <= env.keys()
        (suggested,) = [line.strip() for line in out.splitlines() if line.strip().startswith("masb consume")]
        command = shlex.split(suggested.split("#")[0])
        consumed = subprocess.run([sys.executable, "-m", "agents", *command[1:]], env=env, capture_output=True,
                                  text=True, timeout=60)
        assert consumed.returncode == 0, consumed.stderr
        assert re.search(r"\b[1-9]\d* events decrypted", consumed.stderr), consumed.stderr
        # A second demo in the same folder would wipe the keys and settings of this one: refused.
        second = subprocess.run([sys.executable, "-m", "agents", "demo", "--workdir", str(workdir)],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and f"a demo is already running in {workdir}" in second.stderr
        assert (workdir / "env").exists()
    finally:
        os.killpg(proc.pid, signum)
        returned, err = finish(proc)
    assert returned == code and said in err and "Traceback" not in err, err


def test_a_worker_that_dies_ends_the_demo_with_exit_1_and_says_so(tmp_path):
    workdir = tmp_path / "demo"
    proc, out = start_demo(workdir)
    try:
        assert "demo completed" in out, out
        os.kill(worker_pid(proc), signal.SIGKILL)
        code, err = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert code == 1, err
    assert "masb: the demo's worker (process " in err and ") ended (signal SIGKILL); stopping the demo; its log:" in err
    assert "Traceback" not in err
