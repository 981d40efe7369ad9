"""Throughput of the whole path through a real broker: unit publications in, envelopes + audit out.

    python bench/bench_pipeline.py [--broker kafka|tansu] [--events 2000] [--batches 1,100]

For each router batch size it starts a fresh worker (same broker, own topics), publishes N
high-risk Worcestershire DASH events (two recipients each, so 2 envelopes + 2 audit entries per
event), and times until every delivery entry is in the audit log. Printed side by side in one run,
because the machines here are shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.deployment import DEMO_DIR, WorkerProcess, prepare_deployment, worker_env  # noqa: E402
from deploy.brokers import KafkaBroker, TansuBroker  # noqa: E402
from streams.crypto.keys import Keyring  # noqa: E402
from streams.crypto.pseudonym import PseudonymKeys  # noqa: E402
from streams.kafka import producer  # noqa: E402
from streams.publisher import prepare  # noqa: E402
from streams.topics import Topics  # noqa: E402


def make_records(deployment, n: int) -> list[tuple[bytes, bytes]]:
    template = json.loads((DEMO_DIR / "events" / "01_dash_worcestershire.json").read_text())
    unit_key = Keyring.load_dir(deployment.keys_dir, "hau-worcestershire", kind="signing").current
    pseudonyms = PseudonymKeys.load_dir(deployment.keys_dir)
    records = []
    for _ in range(n):
        template["header"]["event_id"] = str(uuid.uuid4())
        records.append(prepare(template, deployment.policy, unit_key, pseudonyms))
    return records


async def publish_all(bootstrap: str, topic: str, records) -> None:
    p = producer(bootstrap, linger_ms=20, max_batch_size=256 * 1024)
    await p.start()
    try:
        futures = [await p.send(topic, value=value, key=key) for key, value in records]
        await asyncio.gather(*futures)
    finally:
        await p.stop()


async def count_audit(bootstrap: str, topics: Topics) -> int:
    """Entries in the audit log now (its end offset: one partition, offsets from 0)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topics.audit, 0)
        return (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()


def run_one(bootstrap: str, n: int, batch: int) -> float:
    with tempfile.TemporaryDirectory(prefix="masb-bench-") as tmp:
        deployment = prepare_deployment(Path(tmp))
        records = make_records(deployment, n)
        topics = Topics(f"bench-{uuid.uuid4().hex[:8]}.")
        env = worker_env(deployment, bootstrap, topics.prefix, MASB_ROUTER_BATCH=str(batch))
        worker = WorkerProcess(env, Path(tmp) / "worker.log")
        try:
            worker.wait_healthy()
            expected = 1 + 2 * n  # the POLICY_CHANGE entry, then 2 deliveries per event
            started = time.perf_counter()
            asyncio.run(publish_all(bootstrap, topics.case_events, records))
            while asyncio.run(count_audit(bootstrap, topics)) < expected:
                time.sleep(0.2)
            return n / (time.perf_counter() - started)
        finally:
            worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=["kafka", "tansu"], default="kafka")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--batches", default="1,100")
    args = parser.parse_args()
    broker = KafkaBroker() if args.broker == "kafka" else TansuBroker()
    with broker:
        print(f"pipeline on {args.broker}: {args.events} DASH events, 2 recipients each "
              f"(publish -> route -> 2 envelopes + 2 audit entries)")
        for batch in [int(b) for b in args.batches.split(",")]:
            rate = run_one(broker.bootstrap, args.events, batch)
            print(f"  router batch {batch:>4}: {rate:8.0f} events/s end to end")


if __name__ == "__main__":
    main()
