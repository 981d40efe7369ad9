"""`masb audit report` against `masb audit verify` per entry, as a user runs them, on one Apache Kafka.

    MASB_KAFKA_LIB=... .venv/bin/python bench/bench_audit_commands.py [--entries 200000] [--repeats 3]
                                      [--formats csv json] [--pool N] [--baseline DIR] [--no-split]

Starts one Apache Kafka (KRaft, deploy/brokers.py), makes a deployment (deploy/demo's policy with
fresh keys, agents/deployment.py), and writes bench_report.py's synthetic log of about ``--entries``
entries into the deployment's topics: the entries into `audit.exchange`, a checkpoint record signed
by the router's signing key every ``--checkpoint-every`` entries into `audit.checkpoints`, and the
wrapped case keys into `audit.case-keys` (so that the report opens case references, as an auditor's
does with --keys-dir). Then, side by side in one run, it times the commands as separate processes,
each ``--repeats`` times (median), over the same log on the same broker:

    masb audit verify                      (--no-state: every repeat does the same work)
    masb audit report --format csv|json    (--keys-dir: case references opened; --out a file)

and prints wall time and CPU time (the child's user+system, its decoding workers included) per
entry, and report/verify of each. With ``--pool N`` (default: the cores) the first format's report
runs once more with MASB_REPORT_WORKERS=N (total CPU against wall time); with ``--baseline DIR``
every command runs also from another checkout (a worktree of main), for before and after in one run.
Below that, the pure-CPU split of the same work in this process: reading the log from Kafka,
decoding the entries, building the report (decode included), verifying, rendering, so a reader
sees where the time goes. Every process started (broker, commands) is stopped, also on failure or
Ctrl-C. Shared machines differ from run to run: compare the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import signed_checkpoints, synthetic_entries  # noqa: E402

from agents.app import load_identity  # noqa: E402
from agents.deployment import prepare_deployment  # noqa: E402
from deploy.brokers import KafkaBroker  # noqa: E402
from streams.audit.case_keys import CASE_KEYS_DIR  # noqa: E402
from streams.audit.checkpoint_record import encode_checkpoint_record  # noqa: E402
from streams.audit.shared_case_keys import CaseKeySecrets, SharedCaseKeys  # noqa: E402
from streams.auditing import DEFAULT_ORIGIN  # noqa: E402
from streams.kafka import TopicSpec, ensure_topics, producer  # noqa: E402
from streams.topics import Topics  # noqa: E402

ENTRIES_PER_EVENT = 6.29  # bench_report's log: 2-5 deliveries per event, most with a receipt, some refusals


@dataclass
class Timing:
    wall: float  # seconds
    cpu: float  # user + system seconds of the child


def write_log(bootstrap: str, topics: Topics, deployment, entries_wanted: int, every: int) -> int:
    """The synthetic log, its signed checkpoints and its case keys in Kafka; returns the entry count."""
    secrets = CaseKeySecrets.load(deployment.keys_dir / CASE_KEYS_DIR)
    signing_key = load_identity(deployment.policy, deployment.keys_dir).signing.current.signing_key()

    async def write() -> int:
        await ensure_topics(bootstrap, [TopicSpec(topics.audit), TopicSpec(topics.checkpoints),
                                        TopicSpec(topics.case_keys, config={"cleanup.policy": "compact"})])
        store = SharedCaseKeys(bootstrap, topics.case_keys, secrets)
        await store.load({0})  # empty: every case gets a new key in partition 0
        t0 = time.perf_counter()
        entries = synthetic_entries(max(1, round(entries_wanted / ENTRIES_PER_EVENT)), store)
        print(f"log: {len(entries):,} entries made in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        out = producer(bootstrap, linger_ms=50, max_batch_size=1024 * 1024, acks=1, enable_idempotence=False)
        await out.start()
        try:
            pending = [await out.send(topics.case_keys, r.value, key=r.key, partition=0) for r in store.new_records()]
            store.confirm_new()
            for n, entry in enumerate(entries):
                pending.append(await out.send(topics.audit, entry, partition=0))
                if len(pending) >= 20_000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
            # Checkpoints after the entries they cover, as the checkpointer publishes them.
            for note, tree in signed_checkpoints(entries, DEFAULT_ORIGIN, signing_key, every):
                pending.append(await out.send(topics.checkpoints, encode_checkpoint_record(note, tree.size, tree),
                                              partition=0))
            await asyncio.gather(*pending)
        finally:
            await out.stop()
        return len(entries)

    return asyncio.run(write())


def run_command(args: list[str], env: dict[str, str], cwd: str | None = None) -> Timing:
    """One `masb ...` process (the code of the checkout ``cwd``, default this one): its wall time
    and CPU time; refuses a failing command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "agents", *args], env=env, capture_output=True, text=True,
                          timeout=3600, cwd=cwd)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"masb {' '.join(args[:2])} exited {done.returncode}:\n{done.stdout[-2000:]}"
                         f"{done.stderr[-2000:]}")
    return Timing(wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))


def median(timings: list[Timing]) -> Timing:
    return Timing(statistics.median(t.wall for t in timings), statistics.median(t.cpu for t in timings))


def commands(bootstrap: str, topics: Topics, deployment, formats: list[str], repeats: int, out_dir: Path,
             entries: int, pool: int, baseline: str | None = None) -> dict[str, Timing]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASB_")}
    common = ["--bootstrap", bootstrap, "--topic-prefix", topics.prefix, "--policy", str(deployment.policy_path)]
    runs: dict[str, list[str]] = {"verify": ["audit", "verify", *common, "--no-state"]}
    for fmt in formats:
        runs[f"report {fmt}"] = ["audit", "report", *common, "--keys-dir", str(deployment.keys_dir),
                                 "--format", fmt, "--out", str(out_dir / f"report.{fmt}")]
    envs = {name: env for name in runs}
    if pool > 1:  # the report as the pool decodes it (MASB_REPORT_WORKERS): wall and total CPU
        name = f"report {formats[0]}, {pool} decoders"
        runs[name] = runs[f"report {formats[0]}"]
        envs[name] = {**env, "MASB_REPORT_WORKERS": str(pool)}
    places = {name: None for name in runs}
    if baseline:  # the same commands from another checkout (its agents/ and streams/ come first on sys.path)
        for name in list(runs):
            runs[f"{name} [baseline]"], envs[f"{name} [baseline]"] = runs[name], envs[name]
            places[f"{name} [baseline]"] = baseline
    timings: dict[str, list[Timing]] = {name: [] for name in runs}
    for repeat in range(repeats):  # interleaved: a slow spell of the shared machine hits every command
        for name, argv in runs.items():
            timings[name].append(run_command(argv, envs[name], places[name]))
            t = timings[name][-1]
            print(f"  repeat {repeat + 1}: {name:<28} {t.wall:7.2f} s wall {t.cpu:7.2f} s CPU "
                  f"({t.cpu / entries * 1e6:6.2f} us/entry)", file=sys.stderr, flush=True)
    return {name: median(ts) for name, ts in timings.items()}


def cpu_split(bootstrap: str, topics: Topics, deployment, entries_count: int,
              pool: int) -> list[tuple[str, float, float]]:
    """The work of both commands in this process, step by step: (step, CPU seconds of this process
    and its decoding workers, wall seconds)."""
    from streams.audit.entry import decode_entry
    from streams.audit.report import Filters, build_report, render_csv, render_json, verify_for_report
    from streams.audit.shared_case_keys import CaseKeyView
    from streams.auditing import checkpoint_verifiers, read_log

    verifiers = checkpoint_verifiers(deployment.policy, DEFAULT_ORIGIN)
    secrets = CaseKeySecrets.load(deployment.keys_dir / CASE_KEYS_DIR)
    steps: list[tuple[str, float, float]] = []

    def cpu() -> float:
        mine, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return mine.ru_utime + mine.ru_stime + workers.ru_utime + workers.ru_stime

    def step(name, fn):
        c0, t0 = cpu(), time.perf_counter()
        value = fn()
        steps.append((name, cpu() - c0, time.perf_counter() - t0))
        return value

    snapshot = step("read the log from Kafka (read_log)", lambda: asyncio.run(read_log(bootstrap, topics)))
    assert len(snapshot.entries) == entries_count, (len(snapshot.entries), entries_count)
    step("verify (verify_log via verify_for_report)",
         lambda: verify_for_report(snapshot.entries, snapshot.checkpoints, verifiers, DEFAULT_ORIGIN))
    view = step("read and unwrap the case keys", lambda: asyncio.run(
        CaseKeyView.read(bootstrap, topics.case_keys, secrets)))
    step("decode the entries alone (decode_entry)", lambda: [decode_entry(d) for _, d in snapshot.entries])
    step("build the report, 1 process (decode, cases, rows)",
         lambda: build_report(snapshot.entries, Filters(), view, workers=1))
    report = step(f"build the report, decoding in {pool} processes",
                  lambda: build_report(snapshot.entries, Filters(), view, workers=pool))
    step("render CSV", lambda: render_csv(report))
    step("render JSON", lambda: render_json(report))
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=200_000, help="about this many log entries (default 200,000)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each command; the median is shown (default 3)")
    ap.add_argument("--formats", nargs="+", default=["csv", "json"], choices=["csv", "json", "html"])
    ap.add_argument("--checkpoint-every", type=int, default=1000, help="entries between signed checkpoints")
    ap.add_argument("--no-split", action="store_true", help="skip the in-process CPU split")
    ap.add_argument("--baseline", metavar="DIR", help="also run every command from this other checkout (e.g. a "
                                                       "worktree of main): before and after in one run")
    ap.add_argument("--pool", type=int, default=len(os.sched_getaffinity(0)),
                    help="also run the first format's report decoding in this many processes (default: the cores; "
                         "1: not)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed bench still stops its broker
    with tempfile.TemporaryDirectory(prefix="audit-commands-") as tmp, KafkaBroker(heap="1g") as broker:
        workdir = Path(tmp)
        deployment = prepare_deployment(workdir)
        topics = Topics(f"ac-{uuid.uuid4().hex[:6]}.")
        n = write_log(broker.bootstrap, topics, deployment, args.entries, args.checkpoint_every)
        medians = commands(broker.bootstrap, topics, deployment, args.formats, args.repeats, workdir, n, args.pool,
                           args.baseline)
        steps = [] if args.no_split else cpu_split(broker.bootstrap, topics, deployment, n, args.pool)
    verify = medians["verify"]
    print(f"\n`masb audit` over {n:,} entries in Apache Kafka (median of {args.repeats}; separate processes, "
          "start-up included)")
    print(f"{'command':<28} {'wall s':>8} {'CPU s':>8} {'wall us/entry':>14} {'CPU us/entry':>13} "
          f"{'report/verify (wall, CPU)':>26}")
    for name, t in medians.items():
        base = medians["verify [baseline]"] if name.endswith("[baseline]") else verify
        ratio = "" if name.startswith("verify") else f"{t.wall / base.wall:.2f}x, {t.cpu / base.cpu:.2f}x"
        print(f"{name:<28} {t.wall:>8.2f} {t.cpu:>8.2f} {t.wall / n * 1e6:>14.2f} {t.cpu / n * 1e6:>13.2f} "
              f"{ratio:>26}")
    print("target: report at least half as fast per entry as verify (report/verify at most 2x)")
    if steps:
        print("\nThe same work step by step in one process (us/entry; CPU includes decoding workers)")
        print(f"  {'step':<52} {'CPU':>8} {'wall':>8}")
        for name, seconds, wall in steps:
            print(f"  {name:<52} {seconds / n * 1e6:8.2f} {wall / n * 1e6:8.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
