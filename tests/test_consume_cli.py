"""`masb consume` on Apache Kafka: an agency prints its decrypted events as JSON lines; with another
agency's key it decrypts nothing, says why on stderr and exits non-zero."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from streams import codec
from tests.harness import demo_event

pytestmark = pytest.mark.kafka

IDVA, NHS = "idva-west-mercia", "nhs-worcs-acute"


@pytest.fixture(scope="module")
def published(deployment_on_kafka):
    d = deployment_on_kafka
    events = [demo_event("01_dash_worcestershire"), demo_event("02_marac_worcestershire")]
    d.publish(*events)
    for event in events:
        d.wait_feed(IDVA, event["header"]["event_id"])
    return events


def key_file(d, owner: str, kind: str = "exchange") -> str:
    (path,) = d.deployment.keys_dir.glob(f"{owner}.{kind}.*.key")
    return str(path)


def consume(d, *args: str, env_vars: bool = False) -> subprocess.CompletedProcess:
    """`masb consume` as a user runs it; settings by flags, or by MASB_* variables."""
    settings = {"MASB_BOOTSTRAP": d.bootstrap, "MASB_POLICY": str(d.deployment.policy_path),
                "MASB_TOPIC_PREFIX": d.topics.prefix}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASB_")}
    if env_vars:
        env.update(settings)
        flags: list[str] = []
    else:
        flags = ["--bootstrap", d.bootstrap, "--policy", settings["MASB_POLICY"], "--topic-prefix", d.topics.prefix]
    return subprocess.run([sys.executable, "-m", "agents", "consume", *flags, *args], check=False,
                          capture_output=True, text=True, env=env, timeout=60)


def test_prints_the_decrypted_events_as_json_lines(deployment_on_kafka, published):
    d = deployment_on_kafka
    result = consume(d, "--agency", IDVA, "--key", key_file(d, IDVA), env_vars=True)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["event_id"] for line in lines] == [e["header"]["event_id"] for e in published]
    for line, event in zip(lines, published):
        header = event["header"]
        (share,) = [s for s in d.policy.routing(header["event_type"], header["area"]) if s.agency_id == IDVA]
        assert line["event_type"] == header["event_type"] and line["case_ref"] == header["case_ref"]
        assert line["agreement"] == f"{share.agreement_id} v{share.agreement_version}"
        assert line["policy_version"] == d.policy.version and line["legal_basis"] == share.legal_basis
        assert line["deliver_by"] is not None
        # Exactly the entitled fields, nested back into the event's shape.
        for path in share.fields:
            value = codec.get_path(event, path)
            if value is None:
                continue
            node = line["event"]
            for part in path.split("."):
                node = node[part]
            assert node == value, path
        assert "address" not in line["event"].get("victim", {})  # not in the IDVA's agreement
    assert result.stderr.strip().endswith(f"{len(published)} events decrypted, 0 envelopes refused")


def test_max_stops_after_that_many_events(deployment_on_kafka, published):
    d = deployment_on_kafka
    result = consume(d, "--agency", IDVA, "--key", key_file(d, IDVA), "--max", "1")
    assert result.returncode == 0
    assert [json.loads(line)["event_id"] for line in result.stdout.splitlines()] == [published[0]["header"]["event_id"]]


def test_another_agencys_key_decrypts_nothing_and_says_why(deployment_on_kafka, published):
    d = deployment_on_kafka
    result = consume(d, "--agency", IDVA, "--key", key_file(d, NHS))
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"the key given belongs to {NHS}, not {IDVA}" in result.stderr
    assert result.stderr.count("refused: UnknownRecipientKey") == len(published)
    assert f"0 events decrypted, {len(published)} envelopes refused" in result.stderr
    for event in published:  # the refusals name key ids, never what the envelope holds
        assert event["victim"]["name"] not in result.stderr
        assert event["header"]["case_ref"] not in result.stderr


def test_another_agencys_key_on_an_empty_feed_still_fails(deployment_on_kafka, published):
    d = deployment_on_kafka
    assert d.records(d.topics.partner("shropshire-housing")) == []  # nothing shared with housing yet
    result = consume(d, "--agency", "shropshire-housing", "--key", key_file(d, NHS))
    assert result.returncode == 1
    assert "cannot decrypt shropshire-housing's feed" in result.stderr


def test_a_signing_key_is_refused_with_a_clear_message(deployment_on_kafka, published):
    d = deployment_on_kafka
    result = consume(d, "--agency", IDVA, "--key", key_file(d, "hau-worcestershire", "signing"))
    assert result.returncode == 2  # usage: the wrong kind of key
    assert "exchange key files" in result.stderr and "Traceback" not in result.stderr


def test_missing_policy_is_a_clear_error(deployment_on_kafka, tmp_path):
    d = deployment_on_kafka
    result = subprocess.run([sys.executable, "-m", "agents", "consume", "--bootstrap", d.bootstrap,
                             "--policy", str(tmp_path / "none.yaml"), "--agency", IDVA, "--key", key_file(d, IDVA)],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "none.yaml not found" in result.stderr
