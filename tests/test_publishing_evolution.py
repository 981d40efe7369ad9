"""Replay of old data after a schema evolution, on Apache Kafka.

Events published with CHILD_NOTIFICATION schema version 1 sit in case-events. The schema then
evolves (an optional field is added and registered as version 2, in a copy of schemas/ that the
worker reads through MASB_SCHEMA_ROOT). A worker started only afterwards, on the new registry,
reads the old records from the beginning, routes them, and partners decrypt them; events written
with the new version route alongside them.
"""

from __future__ import annotations

import json
import shutil
import uuid

import pytest

from agents.app import topic_specs
from agents.deployment import WorkerProcess, prepare_deployment, worker_env
from streams import codec
from streams.codec import Codec
from streams.crypto.keys import Keyring
from streams.crypto.pseudonym import PseudonymKeys
from streams.crypto.publication import open_publication, seal_publication
from streams.kafka import ensure_topics, producer
from streams.schema_registry import (
    DEFAULT_SCHEMA_ROOT,
    Registry,
    check_compatibility,
    register_pending,
)
from streams.topics import Topics
from tests.harness import Running, fixture_event, run

pytestmark = pytest.mark.kafka

NEW_FIELD = {"name": "dsl_acknowledged", "type": ["null", "boolean"], "default": None,
             "doc": "Whether the designated safeguarding lead acknowledged the notification."}


@pytest.fixture(scope="module")
def evolved_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("schemas") / "schemas"
    shutil.copytree(DEFAULT_SCHEMA_ROOT, root)
    source = root / "events" / "child_notification.avsc"
    schema = json.loads(source.read_text())
    schema["fields"].append(NEW_FIELD)
    source.write_text(json.dumps(schema, indent=2))
    new_ids = register_pending(root)
    assert check_compatibility(root) == []
    return root, new_ids[0]


@pytest.fixture(scope="module")
def replay(kafka, tmp_path_factory, evolved_root):
    root, new_id = evolved_root
    deployment = prepare_deployment(tmp_path_factory.mktemp("evolution"))
    topics = Topics(f"tevo{uuid.uuid4().hex[:8]}.")
    policy = deployment.policy
    run(ensure_topics(kafka, topic_specs(topics, policy, 1)))
    unit_key = Keyring.load_dir(deployment.keys_dir, "hau-worcestershire", kind="signing").current
    router = policy.router.active_exchange_key
    old_id = Registry(DEFAULT_SCHEMA_ROOT).latest("CHILD_NOTIFICATION").id

    old_events = [fixture_event("CHILD_NOTIFICATION", case_ref=f"WM-EVOLVEOLD{i}") for i in range(3)]
    new_event = fixture_event("CHILD_NOTIFICATION", case_ref="WM-EVOLVENEW1")
    new_event["dsl_acknowledged"] = True
    records = []
    for event in old_events:  # written before the evolution: the project's registry, version 1
        wire = codec.encode_event(event)
        assert codec.schema_id_of(wire) == old_id
        records.append((event, wire))
    new_wire = Codec(root).encode(new_event)  # a unit already on the new registry
    assert codec.schema_id_of(new_wire) == new_id
    records.append((new_event, new_wire))

    async def publish() -> None:
        p = producer(kafka)
        await p.start()
        try:
            for event, wire in records:
                value = seal_publication(unit_id=unit_key.owner, unit_signing_key=unit_key, router_key_id=router.key_id,
                                         router_exchange_public=router.public_key, wire_event=wire)
                key = PseudonymKeys.load_dir(deployment.keys_dir).pseudonym(event["header"]["case_ref"])
                await p.send_and_wait(topics.case_events, value=value, key=key)
        finally:
            await p.stop()

    run(publish())
    # Only now does a worker start, on the evolved registry: it replays case-events from the start.
    worker = WorkerProcess(worker_env(deployment, kafka, topics.prefix, MASB_SCHEMA_ROOT=str(root)),
                           deployment.workdir / "worker.log")
    try:
        worker.wait_healthy()
        yield Running(kafka, deployment, topics, worker), old_events, new_event, old_id, new_id
    finally:
        worker.stop()


def test_old_records_really_carry_the_old_schema_id(replay):
    running, old_events, _, old_id, _ = replay
    router_keys = Keyring.load_dir(running.deployment.keys_dir, running.policy.router.id, kind="exchange")
    ids = []
    for record in running.records(running.topics.case_events)[:len(old_events)]:
        opened = open_publication(record.value, router_exchange_keys={k: router_keys.get(k) for k in router_keys.key_ids},
                                  unit_verify_key=running.policy.unit_verify_key)
        ids.append(codec.schema_id_of(opened.wire_event))
    assert ids == [old_id] * len(old_events)


def test_worker_on_the_new_registry_routes_old_data_and_partners_read_it(replay):
    running, old_events, _, _, new_id = replay
    for event in old_events:
        event_id = event["header"]["event_id"]
        school = running.wait_feed("school-oakfield-primary", event_id).envelope
        assert school.fields == {"child.name": event["child"]["name"], "child.date_of_birth": event["child"]["date_of_birth"],
                                 "incident_at": event["incident_at"], "child_present": event["child_present"],
                                 "police_reference": event["police_reference"]}
        childrens = running.wait_feed("worcs-childrens-services", event_id).envelope
        assert childrens.fields["child"] == event["child"] and childrens.fields["school"] == event["school"]
        # Read with the evolved schema: the envelope names the version the worker resolved to.
        assert school.schema_ref == f"CHILD_NOTIFICATION@{new_id}"
    assert not running.dead_letters()


def test_new_version_events_route_alongside(replay):
    running, _, new_event, _, new_id = replay
    envelope = running.wait_feed("school-oakfield-primary", new_event["header"]["event_id"]).envelope
    assert envelope.fields["child.name"] == new_event["child"]["name"]
    assert envelope.schema_ref == f"CHILD_NOTIFICATION@{new_id}"
    deliveries = [e for e in running.audit_entries() if e["kind"] == "DELIVERY"]
    assert len(deliveries) == 2 * 4  # school and children's services, for 3 old events and 1 new one
