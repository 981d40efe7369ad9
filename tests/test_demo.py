"""`masb demo` as a new user runs it: embedded Tansu broker, no Kafka installed, exit 0, a
readable summary, and no process left behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.tansu


def _broker_processes(workdir) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "tansu" in line and "broker" in line]


def test_demo_runs_end_to_end_on_the_embedded_broker(tmp_path):
    before = _broker_processes(tmp_path)
    result = subprocess.run([sys.executable, "-m", "agents", "demo", "--workdir", str(tmp_path / "demo")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "embedded broker (Tansu) started" in out
    # The scripted high-risk case reaches the health trust and the IDVA service, and the summary
    # names the fields each decrypted (names only: no values are printed).
    assert "RISK_ASSESSMENT_COMPLETED case WM-7Q2K9D4XJ3 (worcestershire, risk HIGH)" in out
    assert "-> nhs-worcs-acute" in out and "victim.nhs_number" in out
    assert "legal basis: UK GDPR Art. 6(1)(e) public task" in out  # the human name next to the code
    assert "-> school-oakfield-primary" in out and "child_present" in out
    assert "Alex Example" not in out and "9434765919" not in out
    assert "1 refused record(s)" in out
    assert "verified intact" in out and "demo completed" in out
    assert "10 received on time" in out  # every delivery's receipt, against its agreed deadline
    assert _broker_processes(tmp_path) == before  # the embedded broker was stopped


def test_demo_against_a_running_broker(tansu, tmp_path):
    command = [sys.executable, "-m", "agents", "demo", "--bootstrap", tansu, "--workdir", str(tmp_path / "demo")]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120)
    # Tansu has no idempotent producer: said in one line, with what to set.
    assert refused.returncode == 2 and "MASB_KAFKA_ENABLE_IDEMPOTENCE=false" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "MASB_KAFKA_ENABLE_IDEMPOTENCE": "false"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"using Kafka at {tansu}" in result.stdout and "demo completed" in result.stdout


@pytest.mark.kafka
def test_demo_secure_runs_the_same_demo_on_a_locked_down_apache_kafka(tmp_path):
    """`masb demo --secure`: SASL_SSL, SCRAM users, ACLs from the policy; every party connects as itself."""
    result = subprocess.run([sys.executable, "-m", "agents", "demo", "--secure", "--workdir", str(tmp_path / "demo")],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "SASL_SSL (SCRAM-SHA-512)" in out and "no access without an ACL" in out
    assert re.search(r"granted \d+ ACLs derived from the policy", out)
    assert "-> nhs-worcs-acute" in out and "verified intact" in out and "10 received on time" in out
    assert "tried to read idva-west-mercia's feed: Kafka at" in out and "READ on topic demo.partner.idva-west-mercia" in out
    for user in ("masb-router", "masb-auditor", "masb-agency-idva-west-mercia"):
        assert (tmp_path / "demo" / "clients" / f"{user}.properties").exists()
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in processes  # the broker and the worker were stopped
