"""Dead-letter redrive on Apache Kafka (docs/deadlines.md, "Redrive").

A unit already on a newer schema registry publishes a CHILD_NOTIFICATION whose schema id the
router does not know: refused as WIRE_FORMAT. The schema owner registers the same change in the
router's registry (a copy of streams/schemas that the worker reads through MASB_SCHEMA_ROOT) and
restarts the worker; `masb dlq redrive` then sends the dead letter back, and the event reaches its
agencies once, even when it is redriven twice and the unit publishes it again as well.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from agents.deployment import WorkerProcess, worker_env
from streams import codec
from streams.codec import Codec
from streams.crypto.envelope import EnvelopeError
from streams.crypto.publication import seal_publication
from streams.partner import opener_for
from streams.schema_registry import DEFAULT_SCHEMA_ROOT, register_pending
from tests.harness import fixture_event, running_deployment

pytestmark = pytest.mark.kafka

NEW_FIELD = {"name": "dsl_acknowledged", "type": ["null", "boolean"], "default": None,
             "doc": "Whether the designated safeguarding lead acknowledged the notification."}
AGENCIES = ("school-oakfield-primary", "worcs-childrens-services")


def evolve(root) -> int:
    source = root / "events" / "child_notification.avsc"
    schema = json.loads(source.read_text())
    schema["fields"].append(NEW_FIELD)
    source.write_text(json.dumps(schema, indent=2))
    [new_id] = register_pending(root)
    return new_id


@pytest.fixture(scope="module")
def redrive(kafka, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("redrive")
    router_root = workdir / "router-schemas"   # what the worker knows: the shipped registry, for now
    unit_root = workdir / "unit-schemas"       # a unit already on the next version
    shutil.copytree(DEFAULT_SCHEMA_ROOT, router_root)
    shutil.copytree(DEFAULT_SCHEMA_ROOT, unit_root)
    new_id = evolve(unit_root)
    with running_deployment(kafka, workdir, MASB_SCHEMA_ROOT=str(router_root)) as running:
        yield running, router_root, unit_root, new_id


def masb(running, *args, **env):
    environment = dict(os.environ, MASB_BOOTSTRAP=running.bootstrap, MASB_TOPIC_PREFIX=running.topics.prefix,
                       MASB_POLICY=str(running.deployment.policy_path), **env)
    return subprocess.run([sys.executable, "-m", "agents", *args], env=environment, capture_output=True, text=True,
                          timeout=120)


def publish_wire(running, event, wire: bytes) -> None:
    unit_key = running.unit_key(event["header"]["unit_id"])
    router = running.policy.router.active_exchange_key
    value = seal_publication(unit_id=unit_key.owner, unit_signing_key=unit_key, router_key_id=router.key_id,
                             router_exchange_public=router.public_key, wire_event=wire)
    key = running.pseudonyms.current.pseudonym(event["header"]["case_ref"])  # records are keyed by pseudonym
    running.produce(running.topics.case_events, value, key=key)


def envelopes_of(running, agency: str, event_id: str) -> int:
    """Envelopes for the event on the agency's feed, counted raw (no client-side dedupe)."""
    opener = opener_for(agency, running.keyring(agency), running.policy)
    count = 0
    for record in running.records(running.topics.partner(agency)):
        try:
            count += opener.open(record.value).event_id == event_id
        except EnvelopeError:
            pass
    return count


def test_refused_for_an_unknown_schema_id_then_redriven_after_registration_reaches_each_agency_once(redrive):
    running, router_root, unit_root, new_id = redrive
    event = fixture_event("CHILD_NOTIFICATION", case_ref="WM-REDRIVE01")
    event["dsl_acknowledged"] = True
    event_id = event["header"]["event_id"]
    wire = Codec(unit_root).encode(event)
    assert codec.schema_id_of(wire) == new_id
    running.send_raw(b"WM-NOT-A-CASE", b"")  # an empty record: never redrivable
    publish_wire(running, event, wire)
    [refusal] = running.wait_audit(lambda e: e["kind"] == "REFUSAL" and e["reason_code"] == "WIRE_FORMAT")
    assert refusal["unit_id"] == "hau-worcestershire"

    listed = masb(running, "dlq", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    assert doc["by_reason"]["WIRE_FORMAT"]["count"] == 1 and doc["by_reason"]["EMPTY_RECORD"]["redrivable"] == 0
    assert "WM-REDRIVE01" not in listed.stdout and "WM-NOT-A-CASE" not in listed.stdout
    refused = masb(running, "dlq", "redrive", "--reason", "EMPTY_RECORD")
    assert refused.returncode == 1 and "cannot be redriven" in refused.stderr

    # The cause is fixed: the router's registry learns the new version (a restart reads it).
    assert evolve(router_root) == new_id
    running.worker.stop()
    running.worker = WorkerProcess(worker_env(running.deployment, running.bootstrap, running.topics.prefix,
                                              MASB_SCHEMA_ROOT=str(router_root)), running.deployment.workdir / "w2.log")
    running.worker.wait_healthy()

    done = masb(running, "dlq", "redrive", "--reason", "WIRE_FORMAT")
    assert done.returncode == 0, done.stderr
    [line] = [json.loads(x) for x in done.stdout.splitlines()]
    assert line["reason_code"] == "WIRE_FORMAT" and line["recorded_at"]
    for agency in AGENCIES:
        running.wait_feed(agency, event_id)
    [entry] = [e for e in running.audit_entries() if e["kind"] == "REDRIVE"]
    assert entry["reason_code"] == "WIRE_FORMAT" and entry["source"] == refusal["source"]
    assert f"dead letter {running.topics.dead_letter}/0/1 " in entry["reason"]

    # Redriven again, and published again by the unit: still once per agency.
    assert masb(running, "dlq", "redrive", "--reason", "WIRE_FORMAT").returncode == 1  # already requested
    again = masb(running, "dlq", "redrive", "--reason", "WIRE_FORMAT", "--again")
    assert again.returncode == 0, again.stderr
    publish_wire(running, event, wire)
    running.wait_for(lambda: len([e for e in running.audit_entries() if e["kind"] == "DUPLICATE"
                                  and e["event_id"] == event_id]) == 2, 30, "two DUPLICATE entries")
    assert len([e for e in running.audit_entries() if e["kind"] == "REDRIVE"]) == 2
    for agency in AGENCIES:
        assert envelopes_of(running, agency, event_id) == 1
    deliveries = [e for e in running.audit_entries() if e["kind"] == "DELIVERY" and e["event_id"] == event_id]
    assert sorted(e["agency_id"] for e in deliveries) == sorted(AGENCIES)
    listed = json.loads(masb(running, "dlq", "list", "--format", "json").stdout)
    assert [r["redrive_requested_at"] is not None for r in listed["records"]] == [False, True]
