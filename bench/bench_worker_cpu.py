"""Worker CPU per event and publish-to-partner latency, `masb worker` against raw aiokafka loops.

    python bench/bench_worker_cpu.py [--events 10000] [--repeats 3] [--skip-latency] [--windows 0.02,0.005]

Everything runs side by side in one run on one Apache Kafka, because the machines here are shared
and their speed changes from day to day: only the ratios mean something.

Throughput (goal: worker CPU per MARAC event at most 7x the raw 6-output loop's). N MARAC referrals
(3 recipients each: 3 envelopes + 3 audit entries) are published as fast as possible to

  raw 1 output    a plain aiokafka process: consume a batch, produce one record per input record,
                  wait for the acks, commit (the least a consume -> produce service can do);
  raw 6 outputs   the same loop producing 6 records per input, of the sizes MASB produces
                  (3 envelopes to 3 partner topics, 3 audit entries to one audit topic);
  raw all records the 6-output loop, and in the same process a second stage that reads the 3 "audit"
                  records of each event and writes a notice and a state record for each, of the
                  sizes the deadline agent writes (every record the worker reads and writes per
                  event, within a few: position records, changelog, checkpoints);
  masb worker     the whole worker (router, checkpointer, deadline agent, ...) as deployed;

and each consumer process's CPU time (user + system, from /proc) is read from just before the first
publication until every output is in Kafka and the process is idle again, divided by N. The median
of --repeats runs is printed, with the cryptographic floor of the same event beside it
(bench_router.py's breakdown: the PyNaCl and fastavro calls MASB cannot avoid), the deadline
agent's own floor (decoding the 3 DELIVERY entries, sealing and signing the 3 DELIVERED notices to
the publishing unit) and their sum with "raw all records": the lower bound of a worker that does
everything MASB's does with no Python logic and no Faust. The overhead that remains is visible.

Latency (goal: p99 within 3x of the raw 6-output loop's). At an offered rate of 0.05x the raw
6-output loop's measured events/s, events are published one by one (each with its own case, so its
own record key) and the time from the publish call to the arrival of the first partner record with
that key is measured, for the raw 6-output loop and for one `masb worker` per router batch window
given (MASB_ROUTER_BATCH_WINDOW: how long an idle router waits to fill a batch).

Results on the 2 shared cores of the development machine are in README.md ("Benchmarks").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from agents.deployment import DEMO_DIR, WorkerProcess, prepare_deployment, worker_env  # noqa: E402
from deploy.brokers import KafkaBroker  # noqa: E402
from streams.crypto.keys import Keyring  # noqa: E402
from streams.crypto.pseudonym import PseudonymKeys  # noqa: E402
from streams.kafka import consumer, producer  # noqa: E402
from streams.publisher import prepare  # noqa: E402
from bench_pipeline import publish_all  # noqa: E402  (bench/ is on sys.path)
from streams.topics import Topics  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def settle(pid: int, quiet: float = 0.02, interval: float = 1.0, limit: float = 60.0) -> float:
    """CPU seconds of ``pid`` once it is idle again: less than ``quiet`` CPU seconds per second."""
    deadline = time.monotonic() + limit
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = cpu_seconds(pid)
        if now - last < quiet * interval:
            return now
        last = now
    return last


# -- the records ---------------------------------------------------------------------------------

def make_records(deployment, n: int) -> list[tuple[bytes, bytes]]:
    """N MARAC referrals as `masb publish` makes them, each with its own case (its own record key)."""
    template = json.loads((DEMO_DIR / "events" / "02_marac_worcestershire.json").read_text())
    unit_key = Keyring.load_dir(deployment.keys_dir, "hau-worcestershire", kind="signing").current
    pseudonyms = PseudonymKeys.load_dir(deployment.keys_dir)
    out = []
    base = uuid.uuid4().hex[:6].upper()
    for i in range(n):
        template["header"]["event_id"] = str(uuid.uuid4())
        template["header"]["case_ref"] = f"WM-{base}{i:07d}"
        out.append(prepare(template, deployment.policy, unit_key, pseudonyms))
    return out


class Traffic:
    """What MASB's worker writes for one MARAC referral, made by its own code: the router's 3
    envelopes and 3 DELIVERY entries, and the deadline agent's 3 DELIVERED notices and 3 state
    records (one per delivery it tracks)."""

    def __init__(self, deployment) -> None:
        from agents.app import load_identity
        from streams.audit.case_keys import CaseKeyStore
        from streams.audit.entry import decode_entry
        from streams.crypto.notice import NoticeSealer
        from streams.deadlines import DeadlineBook
        from streams.routing import InputRecord, Router

        policy = deployment.policy
        with tempfile.TemporaryDirectory() as tmp:
            self.identity = load_identity(policy, deployment.keys_dir, CaseKeyStore(tmp))
            router = Router(policy, self.identity, Topics("size."))
            key, value = make_records(deployment, 1)[0]
            self.deliveries = router.deliver(router.admit(InputRecord("size.case-events", 0, 0, key, value)))
        book, now = DeadlineBook(), datetime.now(UTC)
        self.requests, self.states = [], []
        for offset, delivery in enumerate(self.deliveries):
            folded = book.apply(offset, decode_entry(delivery.audit_entry), policy, now)
            self.requests += folded.notices
            self.states += [t.to_json() for t in folded.changed.values() if t is not None]
        self.unit = policy.unit(self.requests[0].tracking.unit_id)
        sealer = NoticeSealer(self.identity.signing.current, self.identity.exchange.current)
        key = self.unit.active_exchange_key
        self.notices = [sealer.seal(unit_id=self.unit.id, unit_key_id=key.key_id, unit_public_key=key.public_key,
                                    content=r.content(), created_at=now) for r in self.requests]

    @property
    def router_sizes(self) -> list[int]:
        return [len(d.envelope) for d in self.deliveries] + [len(d.audit_entry) for d in self.deliveries]

    @property
    def deadline_sizes(self) -> list[int]:
        return [len(n) for n in self.notices] + [len(s) for s in self.states]

    def deadline_floor(self, seconds: float = 2.0) -> float:
        """Microseconds per event of the PyNaCl and fastavro calls the deadline agent cannot avoid:
        per DELIVERY entry, decode it, then seal and sign the unit's DELIVERED notice (Avro
        content, crypto_box, Avro body, Ed25519, Avro signed notice), inputs prepared beforehand."""
        import io

        import fastavro
        import nacl.public
        import nacl.utils

        from streams.audit.entry import _SCHEMAS
        from streams.crypto import notice

        key = self.unit.active_exchange_key
        box = nacl.public.Box(self.identity.exchange.current.exchange_key(), nacl.public.PublicKey(key.public_key))
        signer = self.identity.signing.current.signing_key()
        now = datetime.now(UTC)
        work = [(d.audit_entry, {"version": notice.NOTICE_VERSION, **r.content()}, r.notice_id)
                for d, r in zip(self.deliveries, self.requests)]

        def one_event() -> None:
            for entry, content, notice_id in work:
                fastavro.schemaless_reader(io.BytesIO(entry[1:]), _SCHEMAS[entry[0]], None)
                out = io.BytesIO()
                fastavro.schemaless_writer(out, notice._CONTENT_SCHEMA, content)
                sealed = bytes(box.encrypt(out.getvalue(), nacl.utils.random(24)))
                body = io.BytesIO()
                fastavro.schemaless_writer(body, notice._BODY_SCHEMA, {
                    "version": 1, "notice_id": notice_id, "unit_id": "u", "recipient_key_id": "k",
                    "sender_exchange_key_id": "x", "created_at": now, "sealed": sealed})
                signature = signer.sign(notice.NOTICE_SIGNATURE_PREFIX + body.getvalue()).signature
                fastavro.schemaless_writer(io.BytesIO(), notice._SIGNED_SCHEMA, {
                    "version": 1, "body": body.getvalue(), "signer_key_id": "s", "signature": signature})

        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            one_event()
            count += 1
        return (time.perf_counter() - started) / count * 1e6


async def end_offset_sum(bootstrap: str, topics: list[str]) -> int:
    from aiokafka import TopicPartition

    c = consumer(bootstrap)
    await c.start()
    try:
        tps = []
        for topic in topics:
            parts = c.partitions_for_topic(topic)
            if parts is None:
                await c._client.add_topic(topic)
                await c._client.force_metadata_update()
                parts = c.partitions_for_topic(topic) or {0}
            tps += [TopicPartition(topic, p) for p in parts]
        return sum((await c.end_offsets(tps)).values())
    finally:
        await c.stop()


# -- the raw loop (run in its own process: `bench_worker_cpu.py raw-loop ...`) -------------------

async def raw_loop(bootstrap: str, stages: list[tuple[str, list[tuple[str, int]]]]) -> None:
    """For each stage (source, outputs), concurrently in one event loop, as MASB's agents run:
    consume a batch, produce len(outputs) records per input record (topic, size), wait for every
    ack, commit; forever. The key of each output is the input's key."""
    from aiokafka import AIOKafkaConsumer

    p = producer(bootstrap, linger_ms=2, max_batch_size=512 * 1024)
    consumers = [AIOKafkaConsumer(source, bootstrap_servers=bootstrap, group_id=f"raw-{uuid.uuid4().hex[:6]}",
                                  enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=100)
                 for source, _ in stages]
    await p.start()
    for c in consumers:
        await c.start()

    async def stage(c, outputs: list[tuple[str, int]]) -> None:
        payloads = [(topic, os.urandom(size)) for topic, size in outputs]
        while True:
            batch = await c.getmany(timeout_ms=1000, max_records=100)
            futures = []
            for messages in batch.values():
                for m in messages:
                    for topic, value in payloads:
                        futures.append(await p.send(topic, value, key=m.key))
            if futures:
                await asyncio.gather(*futures)
                await c.commit()

    print("ready", flush=True)
    try:
        await asyncio.gather(*(stage(c, outputs) for c, (_, outputs) in zip(consumers, stages)))
    finally:
        await p.stop()
        for c in consumers:
            await c.stop()


class RawProcess:
    """The raw loop as a child process consuming ``source`` and producing ``outputs``."""

    def __init__(self, bootstrap: str, source: str, outputs: list[tuple[str, int]],
                 follow: tuple[str, list[tuple[str, int]]] | None = None) -> None:
        """``follow``: a second stage (source, outputs) in the same process, as the deadline agent
        follows the audit topic in the worker."""
        spec = json.dumps({"bootstrap": bootstrap, "stages": [(source, outputs)] + ([follow] if follow else [])})
        self.proc = subprocess.Popen([sys.executable, __file__, "raw-loop", spec], stdout=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError("the raw loop did not start")
        time.sleep(3)  # its consumer joins the group

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def ensure(bootstrap: str, names: list[str]) -> None:
    from streams.kafka import TopicSpec, ensure_topics

    await ensure_topics(bootstrap, [TopicSpec(n) for n in names])


# -- throughput ----------------------------------------------------------------------------------

def run_raw(bootstrap: str, records, sizes: list[int], follow_sizes: list[int] | None = None) -> tuple[float, float]:
    """(events/s, CPU us/event) of a raw loop producing outputs of ``sizes`` for each record; with
    ``follow_sizes``, a second stage in the same process consumes the last output topic (the
    "audit" one) and produces an output of each of these sizes per record it reads."""
    tag = uuid.uuid4().hex[:6]
    source = f"raw-{tag}.in"
    outs = [f"raw-{tag}.out{i}" for i in range(min(len(sizes), 4))]
    outputs = [(outs[min(i, len(outs) - 1)], size) for i, size in enumerate(sizes)]
    follow, watched, wanted = None, list(outs), len(records) * len(sizes)
    if follow_sizes:
        follows = [f"raw-{tag}.follow{i}" for i in range(len(follow_sizes))]
        follow = (outs[-1], list(zip(follows, follow_sizes)))
        watched += follows
        wanted += len(records) * sizes.count(sizes[-1]) * len(follow_sizes)
    asyncio.run(ensure(bootstrap, [source, *watched]))
    raw = RawProcess(bootstrap, source, outputs, follow)
    try:
        before = cpu_seconds(raw.proc.pid)
        started = time.monotonic()
        asyncio.run(publish_all(bootstrap, source, records))
        while asyncio.run(end_offset_sum(bootstrap, watched)) < wanted:
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        cpu = settle(raw.proc.pid) - before
        return len(records) / elapsed, cpu / len(records) * 1e6
    finally:
        raw.stop()


def run_masb(bootstrap: str, deployment, records, workdir: Path, **env: str) -> tuple[float, float, float]:
    """(events/s, worker CPU us/event, worker idle CPU us/s) of one `masb worker`."""
    prefix = f"cpu-{uuid.uuid4().hex[:6]}."
    topics = Topics(prefix)
    # Each worker its own data directory: a table cached by an earlier run names offsets of its topics.
    worker = WorkerProcess(worker_env(deployment, bootstrap, prefix, MASB_DATADIR=str(workdir / f"{prefix}data"),
                                      **env), workdir / f"{prefix}log")
    try:
        worker.wait_healthy(120)
        time.sleep(5)  # the group settles, the checkpointer takes its lease
        idle_from = cpu_seconds(worker.proc.pid)
        time.sleep(3)
        idle = (cpu_seconds(worker.proc.pid) - idle_from) / 3
        base = asyncio.run(end_offset_sum(bootstrap, [topics.audit]))
        before = cpu_seconds(worker.proc.pid)
        started = time.monotonic()
        asyncio.run(publish_all(bootstrap, topics.case_events, records))
        wanted = base + 3 * len(records)
        while asyncio.run(end_offset_sum(bootstrap, [topics.audit])) < wanted:
            if time.monotonic() - started > 900:
                raise RuntimeError("the worker did not route everything within 15 minutes")
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        cpu = settle(worker.proc.pid, quiet=max(0.02, idle * 2)) - before
        return len(records) / elapsed, cpu / len(records) * 1e6, idle * 1e6
    finally:
        worker.stop()


# -- latency -------------------------------------------------------------------------------------

async def probe_latency(bootstrap: str, source: str, watched: str, records, rate: float) -> list[float]:
    """Publish ``records`` one by one at ``rate`` per second; seconds from each publish call to the
    first record with its key on topic ``watched``."""
    from aiokafka import AIOKafkaConsumer

    sent: dict[bytes, float] = {}
    seen: dict[bytes, float] = {}
    reader = AIOKafkaConsumer(watched, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="latest",
                              fetch_max_wait_ms=5)
    await reader.start()
    await reader.seek_to_end()
    await reader.position(next(iter(reader.assignment())))
    writer = producer(bootstrap, linger_ms=0)
    await writer.start()
    done = asyncio.Event()

    async def read() -> None:
        while len(seen) < len(records):
            batch = await reader.getmany(timeout_ms=100)
            now = time.perf_counter()
            for messages in batch.values():
                for m in messages:
                    seen.setdefault(m.key, now)
        done.set()

    reading = asyncio.create_task(read())
    try:
        start = time.perf_counter()
        for i, (key, value) in enumerate(records):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[key] = time.perf_counter()
            await writer.send(source, value, key=key)
        await asyncio.wait_for(done.wait(), 120)
    finally:
        reading.cancel()
        await writer.stop()
        await reader.stop()
    return [seen[k] - sent[k] for k in sent]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def latency_raw(bootstrap: str, records, sizes: list[int], rate: float) -> list[float]:
    tag = uuid.uuid4().hex[:6]
    source, outs = f"lat-{tag}.in", [f"lat-{tag}.out{i}" for i in range(4)]
    outputs = [(outs[min(i, 3)], size) for i, size in enumerate(sizes)]
    asyncio.run(ensure(bootstrap, [source, *outs]))
    raw = RawProcess(bootstrap, source, outputs)
    try:
        return asyncio.run(probe_latency(bootstrap, source, outs[0], records, rate))
    finally:
        raw.stop()


def latency_masb(bootstrap: str, deployment, records, rate: float, workdir: Path, window: float) -> list[float]:
    prefix = f"lat-{uuid.uuid4().hex[:6]}."
    topics = Topics(prefix)
    agency = deployment.policy.routing("MARAC_REFERRAL", "worcestershire")[0].agency_id
    worker = WorkerProcess(worker_env(deployment, bootstrap, prefix, MASB_DATADIR=str(workdir / f"{prefix}data"),
                                      MASB_ROUTER_BATCH_WINDOW=str(window)),
                           workdir / f"{prefix}log")
    try:
        worker.wait_healthy(120)
        time.sleep(5)
        return asyncio.run(probe_latency(bootstrap, topics.case_events, topics.partner(agency), records, rate))
    finally:
        worker.stop()


# -- the cryptographic floor ----------------------------------------------------------------------

def crypto_floor(seconds: float = 2.0) -> float:
    """Microseconds per MARAC event (3 recipients) of the PyNaCl and fastavro calls MASB cannot avoid."""
    from bench_router import Scenario, floor_micros

    return floor_micros(Scenario(3), seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-events", type=int, default=3000)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--windows", type=lambda text: [float(w) for w in text.split(",")], default=[0.02, 0.005],
                        help="router batch windows in seconds to measure latency with (MASB_ROUTER_BATCH_WINDOW)")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    floor = crypto_floor()
    workdir = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    deployment = prepare_deployment(workdir)
    traffic = Traffic(deployment)
    sizes, follow_sizes = traffic.router_sizes, traffic.deadline_sizes
    notice_size = sum(follow_sizes[:3]) // 3
    state_size = sum(follow_sizes[3:]) // 3
    deadline_floor = traffic.deadline_floor()
    results: dict[str, list[tuple[float, float]]] = {"raw 1 output": [], "raw 6 outputs": [],
                                                     "raw all records": [], "masb worker": []}
    with KafkaBroker(heap="1g") as broker:
        bootstrap = broker.bootstrap
        raw6_rates = []
        if not args.skip_throughput:
            for repeat in range(args.repeats):
                records = make_records(deployment, args.events)
                results["raw 1 output"].append(run_raw(bootstrap, records, [sizes[0]]))
                results["raw 6 outputs"].append(run_raw(bootstrap, records, sizes))
                results["raw all records"].append(run_raw(bootstrap, records, sizes, [notice_size, state_size]))
                rate, cpu, idle = run_masb(bootstrap, deployment, records, workdir)
                results["masb worker"].append((rate, cpu))
                print(f"  repeat {repeat + 1}: " + ", ".join(f"{name} {r[-1][1]:.0f} us/event"
                                                               for name, r in results.items())
                      + f" (worker idle: {idle:.0f} us/s)", file=sys.stderr, flush=True)
            raw6_rates = [r for r, _ in results["raw 6 outputs"]]
        latencies = {}
        if not args.skip_latency:
            raw6 = statistics.median(raw6_rates) if raw6_rates else \
                run_raw(bootstrap, make_records(deployment, args.events), sizes)[0]
            offered = 0.05 * raw6
            records = make_records(deployment, args.latency_events)
            latencies["raw 6 outputs"] = latency_raw(bootstrap, records, sizes, offered)
            for window in args.windows:
                records = make_records(deployment, args.latency_events)
                latencies[f"masb {window * 1e3:g} ms"] = latency_masb(bootstrap, deployment, records, offered, workdir,
                                                                     window)
    print(f"one Apache Kafka, {os.cpu_count()} cores; MARAC referrals, 3 recipients each "
          f"(outputs of {', '.join(map(str, sizes))} bytes)")
    if not args.skip_throughput:
        print(f"throughput: {args.events:,} events, median of {args.repeats}")
        print(f"  {'':<16}{'events/s':>10}{'CPU us/event':>14}{'x raw 6 outputs':>17}")
        raw6_cpu = statistics.median(c for _, c in results["raw 6 outputs"])
        for name, runs in results.items():
            rate, cpu = statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs)
            print(f"  {name:<16}{rate:>10.0f}{cpu:>14.0f}{cpu / raw6_cpu:>16.1f}x")
        masb_cpu = statistics.median(c for _, c in results["masb worker"])
        all_cpu = statistics.median(c for _, c in results["raw all records"])
        print(f"  {'crypto floor':<16}{'':>10}{floor:>14.0f}{floor / raw6_cpu:>16.1f}x   "
              f"(router: PyNaCl + fastavro calls alone, bench_router.py)")
        print(f"  {'deadline floor':<16}{'':>10}{deadline_floor:>14.0f}{deadline_floor / raw6_cpu:>16.1f}x   "
              f"(3 entries decoded, 3 DELIVERED notices sealed and signed)")
        bound = floor + deadline_floor + all_cpu
        print(f"  {'lower bound':<16}{'':>10}{bound:>14.0f}{bound / raw6_cpu:>16.1f}x   "
              f"(both floors + raw all records: no Python logic, no Faust)")
        print(f"  masb worker over floor + raw 6 outputs: {masb_cpu - floor - raw6_cpu:.0f} us/event; "
              f"over the lower bound: {masb_cpu - bound:.0f} us/event ({masb_cpu / bound:.1f}x the bound)")
        print(f"  (raw all records: the 6 outputs, and a second stage reading the 3 audit records and writing a "
              f"{notice_size}-byte notice and a {state_size}-byte state record for each, as the deadline agent)")
    if latencies:
        print(f"latency, publish -> first partner record, offered {offered:.0f} events/s (0.05x raw 6 outputs), "
              f"{args.latency_events:,} events, one consumer process")
        print(f"  {'':<16}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
        for name, values in latencies.items():
            print(f"  {name:<16}{percentile(values, 50) * 1e3:>10.1f}{percentile(values, 99) * 1e3:>10.1f}"
                  f"{max(values) * 1e3:>10.1f}")
        raw = percentile(latencies["raw 6 outputs"], 99)
        for window in args.windows:
            ratio = percentile(latencies[f"masb {window * 1e3:g} ms"], 99) / raw
            print(f"  p99 masb / raw, router batch window {window * 1e3:g} ms (MASB_ROUTER_BATCH_WINDOW): {ratio:.1f}x")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "raw-loop":
        spec = json.loads(sys.argv[2])
        try:
            asyncio.run(raw_loop(spec["bootstrap"], [(source, [tuple(o) for o in outputs])
                                                     for source, outputs in spec["stages"]]))
        except KeyboardInterrupt:
            pass
    else:
        main()
