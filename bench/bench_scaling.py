"""Several workers side by side: events/s and worker CPU per event for 1, 2 and 4 workers.

    python bench/bench_scaling.py [--events 6000] [--workers 1,2,4] [--partitions 8]

For each worker count it starts that many `masb worker` processes on one Apache Kafka (own topics,
MASB_PARTITIONS partitions), publishes N pre-sealed MARAC referrals (3 recipients each), and times
from the first publication until every delivery entry is in the exchange log. It prints events/s
and the workers' total CPU time per event (user + system, from /proc), in one run, because the
machines here are shared and noisy. On 2 cores the CPU per event must stay flat as workers are
added (no work is repeated); the speed-up needs more cores and is reported, not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.deployment import DEMO_DIR, WorkerProcess, prepare_deployment, worker_env  # noqa: E402
from deploy.brokers import KafkaBroker  # noqa: E402
from streams.crypto.keys import Keyring  # noqa: E402
from streams.crypto.pseudonym import PseudonymKeys  # noqa: E402
from streams.kafka import consumer, producer  # noqa: E402
from streams.publisher import prepare  # noqa: E402
from streams.topics import Topics  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_records(deployment, n: int, cases: int = 500) -> list[tuple[bytes, bytes]]:
    template = json.loads((DEMO_DIR / "events" / "02_marac_worcestershire.json").read_text())
    unit_key = Keyring.load_dir(deployment.keys_dir, "hau-worcestershire", kind="signing").current
    pseudonyms = PseudonymKeys.load_dir(deployment.keys_dir)
    out = []
    for i in range(n):
        template["header"]["event_id"] = str(uuid.uuid4())
        template["header"]["case_ref"] = f"WM-BENCH{i % cases:05d}"
        out.append(prepare(template, deployment.policy, unit_key, pseudonyms))
    return out


async def publish(bootstrap: str, topic: str, batch) -> None:
    p = producer(bootstrap, linger_ms=20, max_batch_size=256 * 1024)
    await p.start()
    try:
        await asyncio.gather(*[await p.send(topic, value=value, key=key) for key, value in batch])
    finally:
        await p.stop()


async def audit_size(bootstrap: str, topic: str) -> int:
    from aiokafka import TopicPartition

    c = consumer(bootstrap)
    await c.start()
    try:
        tp = TopicPartition(topic, 0)
        return (await c.end_offsets([tp]))[tp]
    finally:
        await c.stop()


def run(bootstrap: str, workers: int, events: int, partitions: int) -> tuple[float, float]:
    workdir = Path(tempfile.mkdtemp(prefix=f"scaling-{workers}-"))
    deployment = prepare_deployment(workdir)
    prefix = f"scale{workers}-{uuid.uuid4().hex[:6]}."
    topics = Topics(prefix)
    recipients = len(deployment.policy.routing("MARAC_REFERRAL", "worcestershire"))
    records = make_records(deployment, events)
    procs = [WorkerProcess(worker_env(deployment, bootstrap, prefix, MASB_PARTITIONS=str(partitions),
                                      MASB_DATADIR=str(workdir / f"data{i}"), MASB_CHECKPOINT_INTERVAL="5"),
                           workdir / f"worker{i}.log") for i in range(workers)]
    try:
        for p in procs:
            p.wait_healthy(120)
        time.sleep(8)  # let the group settle: every worker holds its partitions
        base = asyncio.run(audit_size(bootstrap, topics.audit))
        cpu_before = sum(cpu_seconds(p.proc.pid) for p in procs)
        started = time.monotonic()
        asyncio.run(publish(bootstrap, topics.case_events, records))
        wanted = base + events * recipients
        while asyncio.run(audit_size(bootstrap, topics.audit)) < wanted:
            if time.monotonic() - started > 900:
                raise RuntimeError(f"{workers} workers: not done after 15 min")
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        cpu = sum(cpu_seconds(p.proc.pid) for p in procs) - cpu_before
        return events / elapsed, cpu / events * 1e6
    finally:
        for p in procs:
            p.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    with KafkaBroker(heap="1g") as broker:
        results = {n: run(broker.bootstrap, n, args.events, args.partitions) for n in counts}
    print(f"{args.events:,} MARAC referrals (3 recipients each), {args.partitions} partitions, one Apache Kafka, "
          f"{os.cpu_count()} cores")
    print(f"{'workers':>8} {'events/s':>10} {'CPU us/event':>13} {'speed-up':>9}")
    one = results[counts[0]][0]
    for n in counts:
        rate, cpu = results[n]
        print(f"{n:>8} {rate:>10.0f} {cpu:>13.0f} {rate / one:>8.2f}x")


if __name__ == "__main__":
    main()
