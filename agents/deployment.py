"""A deployment on this machine: keys and a rendered policy in a directory, and `masb worker`
as a child process. Used by `masb demo` and by the integration tests."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from deploy.brokers import free_port
from streams.errors import CheckFailed

if TYPE_CHECKING:
    from streams.policy import Policy

DEMO_DIR = Path(str(files("deploy") / "demo"))


@dataclass(frozen=True)
class Deployment:
    workdir: Path
    keys_dir: Path
    policy_path: Path
    policy: "Policy"


def prepare_deployment(workdir: Path, template: Path = DEMO_DIR / "policy.template.yaml") -> Deployment:
    """Fresh private keys for every party a policy template names, one case pseudonym key (shared
    by the units and the router), the case-key secrets, and the policy rendered with them."""
    from streams.audit.case_keys import CASE_KEYS_DIR
    from streams.audit.shared_case_keys import CaseKeySecrets
    from streams.crypto.keys import generate_key, write_private_key
    from streams.crypto.pseudonym import file_name, generate_pseudonym_key, write_pseudonym_key
    from streams.policy import load_policy, render_template, template_placeholders

    text = template.read_text()
    keys_dir = workdir / "keys"
    keys_dir.mkdir(parents=True, exist_ok=True)
    public: dict[tuple[str, str], tuple[str, str]] = {}
    for owner, kind in sorted(template_placeholders(text)):
        record = generate_key(owner, kind)
        write_private_key(keys_dir / f"{owner}.{kind}.{record.key_id}.key", record)
        public[(owner, kind)] = (record.key_id, base64.b64encode(record.public_key).decode())
    CaseKeySecrets.create(keys_dir / CASE_KEYS_DIR)  # the shared case-key store's secrets
    pseudonym_key = generate_pseudonym_key()
    write_pseudonym_key(keys_dir / file_name(pseudonym_key), pseudonym_key)
    policy_path = workdir / "policy.yaml"
    policy_path.write_text(render_template(text, public))
    return Deployment(workdir, keys_dir, policy_path, load_policy(policy_path))


def worker_env(deployment: Deployment, bootstrap: str, topic_prefix: str, **extra: str) -> dict[str, str]:
    """Environment for `masb worker` on this deployment, on a single local broker: quick checkpoints
    and group joins, one partition and one replica unless ``extra`` says otherwise."""
    settings = dict(
        MASB_BOOTSTRAP=bootstrap, MASB_POLICY=str(deployment.policy_path),
        MASB_KEYS_DIR=str(deployment.keys_dir), MASB_TOPIC_PREFIX=topic_prefix,
        MASB_DATADIR=str(deployment.workdir / "worker-data"), MASB_CHECKPOINT_INTERVAL="1",
        MASB_SESSION_TIMEOUT="6", MASB_PARTITIONS="1", MASB_REPLICATION_FACTOR="1", MASB_MIN_INSYNC_REPLICAS="1",
    )
    return {**os.environ, **settings, **extra}


class WorkerProcess:
    """`masb worker` as a child process in its own process group; stop() ends all of it."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.web_port = free_port()
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agents", "worker", "--web-port", str(self.web_port), "--log-level", env.get("MASB_WORKER_LOG_LEVEL", "warn")],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.web_port}{path}"

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CheckFailed(f"the worker exited with code {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url("/health"), timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise CheckFailed(f"the worker was not healthy after {timeout:.0f}s; see {self.log.name}")

    def request_checkpoint(self) -> None:
        request = urllib.request.Request(self.url("/audit/checkpoint"), method="POST", data=b"")
        urllib.request.urlopen(request, timeout=5).close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
