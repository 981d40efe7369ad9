"""Memory over a long run: the worker's RSS as events are routed, dedupe table in RocksDB vs in memory.

    python bench/bench_soak.py [--events 100000] [--stores rocksdb,memory] [--every 25000]

For each table store it starts a fresh worker on one Apache Kafka (own topics), publishes N
pre-sealed MARAC referrals (3 recipients each) in chunks, and prints the worker's resident memory
(VmRSS) once the worker has routed each chunk: side by side, in one run, because the machines here
are shared and noisy. The goal (issue 18): with RocksDB, RSS flat within 10 % from the first
checkpoint to the last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.deployment import DEMO_DIR, WorkerProcess, prepare_deployment, worker_env  # noqa: E402
from deploy.brokers import KafkaBroker  # noqa: E402
from streams.crypto.keys import Keyring  # noqa: E402
from streams.crypto.pseudonym import PseudonymKeys  # noqa: E402
from streams.kafka import producer  # noqa: E402
from streams.publisher import prepare  # noqa: E402
from streams.topics import Topics  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def routed(worker: WorkerProcess) -> int:
    text = urllib.request.urlopen(worker.url("/metrics"), timeout=5).read().decode()
    return int(sum(float(v) for v in re.findall(r'^masb_events_routed_total\{[^}]*\} (\S+)$', text, re.M)))


def records(deployment, n: int):
    template = json.loads((DEMO_DIR / "events" / "02_marac_worcestershire.json").read_text())
    unit_key = Keyring.load_dir(deployment.keys_dir, "hau-worcestershire", kind="signing").current
    pseudonyms = PseudonymKeys.load_dir(deployment.keys_dir)
    for _ in range(n):
        template["header"]["event_id"] = str(uuid.uuid4())
        yield prepare(template, deployment.policy, unit_key, pseudonyms)


async def publish(bootstrap: str, topic: str, batch) -> None:
    p = producer(bootstrap, linger_ms=20, max_batch_size=256 * 1024)
    await p.start()
    try:
        await asyncio.gather(*[await p.send(topic, value=value, key=key) for key, value in batch])
    finally:
        await p.stop()


def soak(bootstrap: str, store: str, events: int, every: int) -> list[tuple[int, float]]:
    workdir = Path(tempfile.mkdtemp(prefix=f"soak-{store}-"))
    deployment = prepare_deployment(workdir)
    prefix = f"soak-{uuid.uuid4().hex[:6]}."
    worker = WorkerProcess(worker_env(deployment, bootstrap, prefix, MASB_TABLE_STORE=store), workdir / "worker.log")
    points = []
    try:
        worker.wait_healthy()
        time.sleep(3)
        points.append((0, rss_mib(worker.proc.pid)))
        source = records(deployment, events)
        done = 0
        while done < events:
            chunk = [next(source) for _ in range(min(every, events - done))]
            asyncio.run(publish(bootstrap, Topics(prefix).case_events, chunk))
            done += len(chunk)
            deadline = time.monotonic() + 600
            while routed(worker) < done:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{store}: only {routed(worker)} of {done} routed after 10 min")
                time.sleep(1)
            points.append((done, rss_mib(worker.proc.pid)))
            print(f"  {store}: {done:,} routed, RSS {points[-1][1]:.0f} MiB", file=sys.stderr, flush=True)
    finally:
        worker.stop()
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=25_000)
    parser.add_argument("--stores", default="rocksdb,memory")
    args = parser.parse_args()
    stores = args.stores.split(",")
    with KafkaBroker(heap="1g") as broker:
        results = {store: soak(broker.bootstrap, store, args.events, args.every) for store in stores}
    print(f"worker RSS (MiB) while routing {args.events:,} MARAC referrals (3 recipients each)")
    print(f"{'events routed':>14}" + "".join(f"{s:>12}" for s in stores))
    for i, (count, _) in enumerate(results[stores[0]]):
        print(f"{count:>14,}" + "".join(f"{results[s][i][1]:>12.0f}" for s in stores))
    for store in stores:
        first_loaded = results[store][1][1]
        last = results[store][-1][1]
        print(f"{store}: {last - first_loaded:+.0f} MiB ({(last / first_loaded - 1) * 100:+.1f} %) from the first "
              f"{args.every:,} events to {args.events:,}")


if __name__ == "__main__":
    main()
