"""How long a worker takes to start with a million remembered events: dedupe table in memory vs RocksDB.

    python bench/bench_recovery.py [--remembered 1000000]

The dedupe table (event id -> content digest) is a faust table backed by a changelog topic. This
fills that changelog with N entries (as N routed events would), then times, side by side in one
run, how long a worker takes from its start until /health answers (faust serves it only after the
tables are recovered), and its resident memory then:

- memory store, cold: the whole changelog is read into a Python dict;
- RocksDB store, cold (an empty data directory: a new host): the whole changelog is read into RocksDB;
- RocksDB store, warm (the same data directory again: a restart): only the changelog's tail is read.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.deployment import WorkerProcess, prepare_deployment, worker_env  # noqa: E402
from deploy.brokers import KafkaBroker  # noqa: E402
from streams.kafka import admin, producer  # noqa: E402
from streams.topics import Topics  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def fill_changelog(bootstrap: str, topic: str, n: int) -> None:
    from aiokafka.admin import NewTopic

    client = admin(bootstrap)
    await client.start()
    try:
        await client.create_topics([NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "compact"})])
    finally:
        await client.close()
    p = producer(bootstrap, linger_ms=50, max_batch_size=1024 * 1024, acks=1)
    await p.start()
    try:
        pending = []
        for i in range(n):
            event_id = str(uuid.UUID(int=i + 1)).encode()
            pending.append(await p.send(topic, hashlib.sha256(event_id).hexdigest().encode(), key=event_id,
                                        partition=0))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
                print(f"  changelog: {i + 1:,} of {n:,}", file=sys.stderr, flush=True)
        await asyncio.gather(*pending)
    finally:
        await p.stop()


def start_worker(deployment, bootstrap: str, prefix: str, store: str, datadir: Path, log: Path) -> tuple[float, float]:
    env = worker_env(deployment, bootstrap, prefix, MASB_TABLE_STORE=store, MASB_DATADIR=str(datadir))
    started = time.monotonic()
    worker = WorkerProcess(env, log)
    try:
        worker.wait_healthy(1800)
        took = time.monotonic() - started
        return took, rss_mib(worker.proc.pid)
    finally:
        worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--remembered", type=int, default=1_000_000)
    args = parser.parse_args()
    with KafkaBroker(heap="1g") as broker:
        workdir = Path(tempfile.mkdtemp(prefix="recovery-"))
        deployment = prepare_deployment(workdir)
        prefix = f"rec-{uuid.uuid4().hex[:6]}."
        changelog = Topics(prefix).changelog("seen-events")
        asyncio.run(fill_changelog(broker.bootstrap, changelog, args.remembered))
        rows = [
            ("memory, cold", start_worker(deployment, broker.bootstrap, prefix, "memory", workdir / "mem",
                                          workdir / "mem.log")),
            ("rocksdb, cold", start_worker(deployment, broker.bootstrap, prefix, "rocksdb", workdir / "rocks",
                                           workdir / "rocks1.log")),
            ("rocksdb, warm", start_worker(deployment, broker.bootstrap, prefix, "rocksdb", workdir / "rocks",
                                           workdir / "rocks2.log")),
        ]
    print(f"worker start with {args.remembered:,} remembered event ids (until /health answers)")
    print(f"{'table store':>16} {'seconds':>9} {'RSS MiB':>9}")
    for name, (seconds, rss) in rows:
        print(f"{name:>16} {seconds:>9.1f} {rss:>9.0f}")


if __name__ == "__main__":
    main()
