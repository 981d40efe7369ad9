"""`masb publish` on Apache Kafka: an invalid event is refused with the field and the problem,
and nothing is produced; a valid one is produced sealed to the router, keyed by its case ref."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from agents.deployment import prepare_deployment
from streams import codec
from streams.crypto.keys import Keyring
from streams.crypto.pseudonym import PseudonymKeys
from streams.crypto.publication import open_publication
from streams.kafka import TopicSpec, ensure_topics, read_topic
from streams.topics import Topics
from tests.harness import fixture_event, run

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def setup(kafka, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("publish-cli")
    deployment = prepare_deployment(workdir)
    prefix = f"tpub{uuid.uuid4().hex[:8]}."
    # As a worker does at start: `masb publish` refuses a topic that does not exist.
    run(ensure_topics(kafka, [TopicSpec(Topics(prefix).case_events)]))
    return kafka, deployment, prefix, workdir


def masb_publish(setup, *events, unit="hau-worcestershire") -> subprocess.CompletedProcess:
    kafka, deployment, prefix, workdir = setup
    path = workdir / f"{uuid.uuid4().hex}.json"
    path.write_text(json.dumps(list(events)))
    return subprocess.run([sys.executable, "-m", "agents", "publish", "--as", unit, "--keys-dir", str(deployment.keys_dir),
                           "--policy", str(deployment.policy_path), "--bootstrap", kafka, "--topic-prefix", prefix,
                           str(path)], capture_output=True, text=True, timeout=60, check=False)


def produced(setup) -> list:
    kafka, _, prefix, _ = setup

    async def go():
        return [r async for r in read_topic(kafka, f"{prefix}case-events")]

    return run(go())


def test_invalid_event_exits_non_zero_naming_field_and_problem_and_produces_nothing(setup):
    event = fixture_event("MARAC_REFERRAL")
    event["victim"]["nhs_number"] = "9434765918"
    event["children"][0]["school"]["urn"] = "12AB"
    valid = fixture_event("CASE_CLOSED")  # in the same file: all or nothing
    result = masb_publish(setup, valid, event)
    assert result.returncode != 0
    assert "event 2: invalid" in result.stderr
    assert "victim.nhs_number:" in result.stderr and "children[0].school.urn:" in result.stderr
    assert "nothing was published" in result.stderr
    for value in ("9434765918", "12AB", event["victim"]["name"]):
        assert value not in result.stderr + result.stdout
    assert result.stdout == ""
    assert produced(setup) == []


def test_refused_publisher_exits_non_zero(setup):
    result = masb_publish(setup, fixture_event("CASE_CLOSED", area="shropshire"))
    assert result.returncode != 0 and "refused" in result.stderr
    assert "not registered to publish CASE_CLOSED for area shropshire" in result.stderr
    assert produced(setup) == []


def test_valid_event_is_produced_sealed_and_keyed_by_the_case_pseudonym(setup):
    _, deployment, _, _ = setup
    event = fixture_event("CASE_CLOSED")
    result = masb_publish(setup, event)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"published": event["header"]["event_id"], "event_type": "CASE_CLOSED"}
    records = produced(setup)
    pseudonyms = PseudonymKeys.load_dir(deployment.keys_dir)
    assert len(records) == 1 and records[0].key == pseudonyms.pseudonym(event["header"]["case_ref"])
    assert event["header"]["case_ref"].encode() not in records[0].key
    router = Keyring.load_dir(deployment.keys_dir, deployment.policy.router.id, kind="exchange")
    opened = open_publication(records[0].value, router_exchange_keys={k: router.get(k) for k in router.key_ids},
                              unit_verify_key=deployment.policy.unit_verify_key)
    assert opened.unit_id == "hau-worcestershire"
    assert codec.decode_event(opened.wire_event) == event
