"""Several workers on a 3-broker Apache Kafka give exactly the result of one, through a worker killed
with SIGKILL and a broker stopped mid-stream (issue 10; docs/operations.md, "Several workers").

Three workers, six partitions, replication 3 with min.insync.replicas 2: afterwards every event
reached every entitled agency, the exchange log verifies and counts each exchange once, no two
checkpoints share a size, every case has one case-key id across the whole log, and a shredded case
can no longer be linked by any worker.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import signal
import threading
import time
import urllib.request

import pytest

from agents.deployment import WorkerProcess, prepare_deployment, worker_env
from deploy.brokers import free_port
from deploy.cluster import KafkaCluster
from streams.audit.case_keys import CASE_KEYS_DIR, open_sealed_case
from streams.audit.checkpoint import open_checkpoint
from streams.audit.checkpoint_record import note_of
from streams.audit.entry import decode_entry
from streams.audit.shared_case_keys import CaseKeySecrets, CaseKeyView
from streams.audit.verify import verify_log
from streams.auditing import DEFAULT_ORIGIN, checkpoint_verifiers, read_log
from streams.crypto.envelope import EnvelopeError
from streams.crypto.keys import Keyring
from streams.errors import CheckFailed
from streams.crypto.pseudonym import PseudonymKeys
from streams.partner import opener_for
from streams.kafka import read_topic
from streams.publisher import Publisher
from streams.topics import Topics
from tests.harness import demo_event

pytestmark = pytest.mark.kafka

WORKERS, PARTITIONS, EVENTS, CASES = 3, 6, 300, 30


def health(worker: WorkerProcess) -> dict:
    try:
        with urllib.request.urlopen(worker.url("/health"), timeout=5) as response:
            return json.load(response)
    except OSError:
        return {}


def records(bootstrap: str, topic: str, committed_only: bool = False) -> list:
    async def go():
        return [r async for r in read_topic(bootstrap, topic, committed_only=committed_only)]
    return asyncio.run(go())


@pytest.fixture  # a fresh cluster for each run: the test stops one of its brokers
def cluster():
    with KafkaCluster(nodes=3) as running:
        yield running


# Known: faust 0.15 can still lose one event in a rebalance after restarts (docs/architecture.md,
# "Known limits"); seen in about 1 run in 4 under load. Two reruns, on fresh clusters, keep CI honest
# about everything else while that is open; a third failure fails.
@pytest.mark.flaky(reruns=2)
@pytest.mark.timeout(900)
def test_three_workers_through_a_killed_worker_and_a_stopped_broker(cluster, tmp_path):
    deployment = prepare_deployment(tmp_path / "deployment")
    prefix = f"scale{os.urandom(2).hex()}."
    topics = Topics(prefix)
    env = {"MASB_PARTITIONS": str(PARTITIONS), "MASB_REPLICATION_FACTOR": "3", "MASB_MIN_INSYNC_REPLICAS": "2",
           "MASB_HEALTH_INTERVAL": "1", "MASB_STALL_SECONDS": "20", "MASB_WEDGED_SECONDS": "40",
           "MASB_FAULT_INJECTION": "1", "MASB_WORKER_LOG_LEVEL": os.environ.get("MASB_WORKER_LOG_LEVEL", "warn")}
    envs = [worker_env(deployment, cluster.bootstrap, prefix, MASB_DATADIR=str(tmp_path / f"worker{i}-data"), **env)
            for i in range(WORKERS)]
    workers = [WorkerProcess(envs[i], tmp_path / f"worker{i}.log") for i in range(WORKERS)]

    def restart_stopped(survivors: list, until_healthy: bool = False) -> None:
        # What systemd (Restart=on-failure) or Kubernetes does: a worker that stopped itself (a
        # wedged consumer, docs/operations.md "Health") is started again, on its own data.
        for i, worker in enumerate(survivors):
            for _ in range(5):  # a worker that cannot start at all fails the test, not loops it
                if worker.proc.poll() not in (None, 0):
                    n = workers.index(worker)
                    worker = workers[n] = survivors[i] = WorkerProcess(
                        envs[n], tmp_path / f"worker{n}-restarted-{time.monotonic_ns()}.log")
                if not until_healthy:
                    break
                try:
                    worker.wait_healthy(120)
                    break
                except CheckFailed:  # it stopped itself meanwhile: start it again
                    continue
            else:
                raise AssertionError(f"worker {workers.index(worker)} did not come back; see {tmp_path}")
    try:
        for worker in workers:
            worker.wait_healthy(120)
        rng = random.Random(7)
        cases = [f"WM-SCALE{n:04d}X" for n in range(CASES)]
        events = []
        for _ in range(EVENTS):
            event = demo_event("02_marac_worcestershire")
            event["header"]["case_ref"] = rng.choice(cases)
            events.append(event)
        acknowledged: list[str] = []
        unit_key = Keyring.load_dir(deployment.keys_dir, "hau-worcestershire", kind="signing").current

        def publish() -> None:
            async def go():
                pending = list(events)
                while pending:
                    try:
                        async with Publisher(cluster.bootstrap, deployment.policy, unit_key, topics,
                                             pseudonyms=PseudonymKeys.load_dir(deployment.keys_dir)) as publisher:
                            while pending:
                                await asyncio.wait_for(publisher.publish(pending[0]), 20)
                                acknowledged.append(pending.pop(0)["header"]["event_id"])
                                await asyncio.sleep(0.05)
                    except Exception:  # noqa: BLE001 - a broker or leader moved: the same event again
                        await asyncio.sleep(1)
            asyncio.run(go())

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        deadline = time.monotonic() + 120
        while len(acknowledged) < EVENTS // 3 and time.monotonic() < deadline:
            time.sleep(0.5)
        # Kill -9 the worker that signs checkpoints (the hardest one to lose), then stop a broker.
        signer = next((w for w in workers if health(w).get("checkpoint", {}).get("active")), workers[0])
        os.killpg(signer.proc.pid, signal.SIGKILL)
        signer.proc.wait()
        survivors = [w for w in workers if w is not signer]
        while len(acknowledged) < 2 * EVENTS // 3 and time.monotonic() < deadline + 120:
            time.sleep(0.5)
        cluster.kill(2, signal.SIGTERM)
        publisher.join(300)
        assert len(acknowledged) == EVENTS

        entitled = [s.agency_id for s in deployment.policy.routing("MARAC_REFERRAL", "worcestershire")]
        wanted = {e["header"]["event_id"] for e in events}

        def missing_deliveries() -> tuple[list, collections.Counter]:
            delivered, other = collections.Counter(), collections.Counter()
            for entry in (decode_entry(r.value) for r in records(cluster.bootstrap, topics.audit)):
                if entry["kind"] == "DELIVERY":
                    delivered[(entry["event_id"], entry["agency_id"])] += 1
                else:
                    other[(entry["event_id"], entry["kind"])] += 1
            return [(e, a) for e in wanted for a in entitled if not delivered[(e, a)]], other

        deadline = time.monotonic() + 240
        while (missing := missing_deliveries())[0]:
            restart_stopped(survivors)
            if time.monotonic() > deadline:
                lost, other = missing
                lost_events = {e for e, _ in lost}
                (tmp_path / "missing.json").write_text(json.dumps({
                    "missing_pairs": len(lost), "events": len(lost_events),
                    "their_other_entries": [f"{e} {k} x{n}" for (e, k), n in other.items() if e in lost_events],
                    "all_other_kinds": dict(collections.Counter(k for (_, k) in other.elements())),
                    "dead_letters": len(records(cluster.bootstrap, topics.dead_letter)),
                    "input_ends": {r.partition: r.offset for r in records(cluster.bootstrap, topics.case_events)}},
                    indent=1))
                (tmp_path / "cluster.json").write_text(json.dumps(asyncio.run(_partition_facts(
                    cluster.bootstrap, [topics.case_events, topics.audit])), indent=1, default=str))
                import shutil
                for node_log in cluster.workdir.glob("node*/*.log"):
                    shutil.copy(node_log, tmp_path / f"{node_log.parent.name}-{node_log.name}")
                for i, worker in enumerate(survivors):  # where each survivor's tasks wait, for the record
                    with urllib.request.urlopen(worker.url("/debug/asyncio"), timeout=10) as response:
                        (tmp_path / f"survivor{i}-asyncio.txt").write_bytes(response.read())
                    (tmp_path / f"survivor{i}-health.json").write_text(json.dumps(health(worker), indent=1))
                raise AssertionError(f"not every event reached every entitled agency; see {tmp_path}")
            time.sleep(3)

        # Each partner's feed opens to every event, and to nothing else (a redelivery after the kill
        # repeats an event id, which partners drop: docs/routing.md).
        for agency in entitled:
            opener = opener_for(agency, Keyring.load_dir(deployment.keys_dir, agency), deployment.policy)
            opened = collections.Counter()
            for record in records(cluster.bootstrap, topics.partner(agency)):
                try:
                    opened[opener.open(record.value).event_id] += 1
                except EnvelopeError as exc:
                    raise AssertionError(f"{agency}: envelope refused: {exc}") from None
            assert set(opened) == wanted

        # The log verifies, covered by checkpoints; no two checkpoints share a size.
        restart_stopped(survivors, until_healthy=True)
        for worker in survivors:
            urllib.request.urlopen(urllib.request.Request(worker.url("/audit/checkpoint"), data=b"", method="POST"),
                                   timeout=5).close()
        verifiers = checkpoint_verifiers(deployment.policy, DEFAULT_ORIGIN)
        deadline = time.monotonic() + 60
        while True:
            snapshot = asyncio.run(read_log(cluster.bootstrap, topics))
            report = verify_log(snapshot.entries, snapshot.checkpoints, verifiers, DEFAULT_ORIGIN)
            if report.ok and report.uncovered_entries == 0:
                break
            assert time.monotonic() < deadline, report.problems or report.notes
            time.sleep(2)
        sizes = [open_checkpoint(note_of(r.value), verifiers).size
                 for r in records(cluster.bootstrap, topics.checkpoints, committed_only=True)]
        assert len(sizes) == len(set(sizes)), collections.Counter(sizes).most_common(3)

        # Every case has exactly one case-key id across the whole log.
        secrets = CaseKeySecrets.load(deployment.keys_dir / CASE_KEYS_DIR)
        view = asyncio.run(CaseKeyView.read(cluster.bootstrap, topics.case_keys, secrets))
        keys = view.keys_by_id()
        key_ids_of = collections.defaultdict(set)
        for _, data in snapshot.entries:
            entry = decode_entry(data)
            if entry["case_key_id"]:
                case = open_sealed_case(keys[entry["case_key_id"]], entry["sealed_case"], entry["event_id"])
                key_ids_of[case].add(entry["case_key_id"])
        assert set(key_ids_of) == {e["header"]["case_ref"] for e in events}
        assert all(len(ids) == 1 for ids in key_ids_of.values()), {c: ids for c, ids in key_ids_of.items() if len(ids) > 1}

        # Shred one case: its key is gone from the store and from the worker that routes it.
        victim = events[0]["header"]["case_ref"]
        (old_key,) = key_ids_of[victim]
        from agents.cli import main

        assert main(["audit", "shred", victim, "--keys-dir", str(deployment.keys_dir), "--bootstrap", cluster.bootstrap,
                     "--topic-prefix", prefix]) == 0
        view = asyncio.run(CaseKeyView.read(cluster.bootstrap, topics.case_keys, secrets))
        assert view.find(victim) is None and old_key in view.shredded_ids() and old_key not in view.keys_by_id()
        again = demo_event("02_marac_worcestershire")
        again["header"]["case_ref"] = victim
        asyncio.run(_publish_one(cluster.bootstrap, deployment, unit_key, topics, again))
        deadline = time.monotonic() + 60
        while True:
            fresh = [decode_entry(r.value) for r in records(cluster.bootstrap, topics.audit)]
            mine = [e for e in fresh if e["event_id"] == again["header"]["event_id"] and e["kind"] == "DELIVERY"]
            if mine:
                break
            assert time.monotonic() < deadline, "the event after the shred was not routed"
            time.sleep(1)
        assert {e["case_key_id"] for e in mine} != {old_key}  # no worker could link it to the old key
    finally:
        for worker in workers:
            worker.stop()


async def _publish_one(bootstrap, deployment, unit_key, topics, event) -> None:
    async with Publisher(bootstrap, deployment.policy, unit_key, topics,
                         pseudonyms=PseudonymKeys.load_dir(deployment.keys_dir)) as publisher:
        await publisher.publish(event)


def test_a_worker_refuses_a_cluster_whose_topics_disagree_with_its_partitions(kafka, tmp_path):
    """MASB_PARTITIONS is part of the deployment: an existing case-events with another partition
    count is refused at start, naming the topic and both counts, never used as it is."""
    import subprocess
    import sys

    from streams.kafka import TopicSpec, ensure_topics

    deployment = prepare_deployment(tmp_path / "deployment")
    prefix = f"mismatch{os.urandom(3).hex()}."
    asyncio.run(ensure_topics(kafka, [TopicSpec(Topics(prefix).case_events, 2)]))
    env = worker_env(deployment, kafka, prefix, MASB_PARTITIONS="3")
    result = subprocess.run([sys.executable, "-m", "agents", "worker", "--web-port", str(free_port())],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"topic {prefix}case-events has 2 partitions, but this deployment uses 3" in result.stderr
    assert "MASB_PARTITIONS" in result.stderr and "Traceback" not in result.stderr


async def _partition_facts(bootstrap: str, topic_names: list[str]) -> dict:
    """Leader, replicas, ISR, beginning and end offsets of each partition, for a failure's record."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.kafka import consumer

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    reader = consumer(bootstrap, group_id=None)
    await admin.start()
    await reader.start()
    try:
        described = await admin.describe_topics(topic_names)
        facts = {}
        for topic in described:
            tps = [TopicPartition(topic["topic"], p["partition"]) for p in topic["partitions"]]
            begins, ends = await reader.beginning_offsets(tps), await reader.end_offsets(tps)
            facts[topic["topic"]] = [{"partition": p["partition"], "leader": p["leader"], "replicas": p["replicas"],
                                      "isr": p["isr"], "begin": begins[tp], "end": ends[tp]}
                                     for p, tp in zip(topic["partitions"], tps)]
        return facts
    finally:
        await reader.stop()
        await admin.close()


def test_a_worker_refuses_to_create_topics_with_more_replicas_than_brokers(kafka, tmp_path):
    """Creating a topic needs as many live brokers as replicas: refused at start with one line (a
    worker restarting while one broker is down, on topics that exist, starts: the scale-out test)."""
    import subprocess
    import sys

    deployment = prepare_deployment(tmp_path / "deployment")
    env = worker_env(deployment, kafka, f"replicas{os.urandom(3).hex()}.", MASB_REPLICATION_FACTOR="3",
                     MASB_MIN_INSYNC_REPLICAS="2")
    result = subprocess.run([sys.executable, "-m", "agents", "worker", "--web-port", str(free_port())],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "replication factor 3 needs 3 brokers, but the cluster at" in result.stderr and "has 1" in result.stderr
    assert "Traceback" not in result.stderr
