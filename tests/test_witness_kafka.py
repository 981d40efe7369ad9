"""Witnessed checkpoints on Apache Kafka: a worker whose policy names three witnesses (each a
`masb witness serve` process on a free port) publishes checkpoints carrying their cosignatures;
`masb audit verify` accepts them with quorum 2, and refuses under a policy demanding a witness that
never signed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agents.cli import main
from agents.deployment import DEMO_DIR, WorkerProcess, prepare_deployment, worker_env
from deploy.brokers import free_port
from streams.audit.checkpoint_record import note_of
from streams.audit.cosignature import cosigner_signer_key, generate_cosigner
from streams.audit.trust import open_witnessed_checkpoint
from streams.auditing import DEFAULT_ORIGIN, checkpoint_verifiers, witness_quorum
from streams.topics import Topics
from tests.harness import Running, demo_event

pytestmark = pytest.mark.kafka


class Witness:
    def __init__(self, workdir: Path, index: int, port: int) -> None:
        self.id = f"witness-{index}"
        self.signer = generate_cosigner(f"witness{index}.partner.example/masb")
        self.key_file = workdir / f"{self.id}.key"
        self.key_file.write_text(cosigner_signer_key(self.signer.name, self.signer.signing_key) + "\n")
        self.key_file.chmod(0o600)
        self.state = workdir / f"{self.id}-state"
        self.port = port
        self.proc: subprocess.Popen | None = None
        self.log = workdir / f"{self.id}.log"

    def member(self) -> dict:
        return {"id": self.id, "url": f"http://127.0.0.1:{self.port}", "key": self.signer.key_string()}

    def start(self, policy: Path) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agents", "witness", "serve", "--key", str(self.key_file), "--state-dir",
                 str(self.state), "--port", str(self.port), "--policy", str(policy)],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        line = self.proc.stdout.readline().decode()
        assert "listening on" in line, self.log.read_text()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        if self.proc is not None:
            self.proc.stdout.close()


def witnessed_template(workdir: Path, witnesses: list[Witness], quorum: int) -> Path:
    text = (DEMO_DIR / "policy.template.yaml").read_text()
    text += "\n" + yaml.safe_dump({"witnesses": {"quorum": quorum, "members": [w.member() for w in witnesses]}})
    path = workdir / "policy.template.yaml"
    path.write_text(text)
    return path


def checkpoints(running: Running) -> list:
    policy = running.policy
    return [open_witnessed_checkpoint(note_of(r.value), checkpoint_verifiers(policy, DEFAULT_ORIGIN), DEFAULT_ORIGIN,
                                      witness_quorum(policy))
            for r in running.records(running.topics.checkpoints)]


def wait_witnessed(running: Running, cosigners: int, more_than: int = 0):
    def covered():
        running.worker.request_checkpoint()
        found = checkpoints(running)
        n = len(running.records(running.topics.audit))
        last = found[-1] if found else None
        if last and last.checkpoint.size == n > more_than and len(last.cosigners) >= cosigners:
            return last
        return None

    return running.wait_for(covered, timeout=60, what=f"a checkpoint covering the log with {cosigners} cosignatures")


def verify(capsys, running: Running, policy: Path) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["audit", "verify", "--bootstrap", running.bootstrap, "--topic-prefix", running.topics.prefix,
                 "--policy", str(policy), "--no-state"])
    return code, capsys.readouterr().out


def test_worker_publishes_checkpoints_cosigned_by_its_witnesses(kafka, tmp_path, capsys) -> None:
    witnesses = [Witness(tmp_path, i, free_port()) for i in range(3)]
    deployment = prepare_deployment(tmp_path, witnessed_template(tmp_path, witnesses, quorum=2))
    assert deployment.policy.witnesses.quorum == 2
    prefix = f"w{os.urandom(4).hex()}."
    worker = None
    try:
        for w in witnesses:
            w.start(deployment.policy_path)
        worker = WorkerProcess(worker_env(deployment, kafka, prefix), tmp_path / "worker.log")
        worker.wait_healthy()
        running = Running(kafka, deployment, Topics(prefix), worker)
        running.publish(demo_event("01_dash_worcestershire"), demo_event("02_marac_worcestershire"))
        first = wait_witnessed(running, cosigners=3)
        assert sorted(first.cosigners) == ["witness-0", "witness-1", "witness-2"]

        # One witness goes away: the next checkpoint still reaches the quorum with the other two.
        witnesses[2].stop()
        running.publish(demo_event("04_protection_notice_shropshire"))
        second = wait_witnessed(running, cosigners=2, more_than=first.checkpoint.size)
        assert sorted(second.cosigners) == ["witness-0", "witness-1"]

        code, out = verify(capsys, running, deployment.policy_path)
        assert code == 0, out
        assert (f"the checkpoint of size {second.checkpoint.size} is cosigned by witness-0, witness-1 "
                "(quorum 2 of 3)") in out
        assert "every entry is covered" in out or "intact" in out

        # The auditor's report names the witnesses that cosigned the checkpoint it relies on.
        assert main(["audit", "report", "--format", "json", "--bootstrap", running.bootstrap, "--topic-prefix",
                     running.topics.prefix, "--policy", str(deployment.policy_path)]) == 0
        relied_on = json.loads(capsys.readouterr().out)["log"]["checkpoint"]
        assert relied_on["size"] == second.checkpoint.size
        assert relied_on["cosigners"] == ["witness-0", "witness-1"]

        # A policy that demands a witness that never signed anything: refused, naming who did sign.
        doc = yaml.safe_load(deployment.policy_path.read_text())
        stranger = generate_cosigner("never.partner.example/masb")
        doc["witnesses"] = {"quorum": 3, "members": [witnesses[0].member(), witnesses[1].member(),
                                                     {"id": "witness-never", "url": "http://127.0.0.1:9",
                                                      "key": stranger.key_string()}]}
        strict = tmp_path / "strict-policy.yaml"
        strict.write_text(yaml.safe_dump(doc))
        code, out = verify(capsys, running, strict)
        assert code == 1, out
        assert "no checkpoint whose root matches the log is cosigned by a quorum of witnesses (quorum 3 of 3)" in out
    finally:
        if worker is not None:
            worker.stop()
        for w in witnesses:
            w.stop()
