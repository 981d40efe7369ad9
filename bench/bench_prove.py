"""Inclusion proofs with and without the proof index (streams/audit/tiles.py), the index's one-off
build, and `audit report` against `audit verify` per entry over one synthetic log. Pure CPU, no Kafka.

  .venv/bin/python bench/bench_prove.py [--entries 1000000] [--small 1000] [--legacy 1000 100000]
                                        [--proofs 300] [--report-events 30000]

Proof timing: the index is built from the leaf hashes (one-off), opened (its tiles checked against its
recorded root), then `--proofs` inclusion proofs of random leaves against the full tree are made
through it: "cold" is the mean of 20 proofs each made by a freshly opened index (every tile read
from disk, nothing reused: one `masb audit prove` of one delivery), "mean" the mean
over all (tiles of level >= 1 and nodes of height >= 8 are reused between proofs, as one
`masb audit prove` call proving many events reuses them). Every proof is checked against merkle.py's.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from streams.audit.merkle import inclusion_proof, leaf_hash, verify_inclusion
from streams.audit.tiles import TileIndex

COLD = 20


def leaf_hashes(n: int) -> list[bytes]:
    filler = random.Random(7).randbytes(292)  # 300-byte entries, as bench_audit.py
    return [leaf_hash(i.to_bytes(8, "big") + filler) for i in range(n)]


def with_index(n: int, proofs: int, check: int) -> tuple[float, float]:
    hashes = leaf_hashes(n)
    rng = random.Random(n)
    picks = [rng.randrange(n) for _ in range(proofs)]
    expected = {i: inclusion_proof(hashes, i, n) for i in picks[:check]}  # merkle.py, for the check only
    root = None
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        index = TileIndex.rebuild(Path(tmp) / "index", hashes)
        t_build = time.perf_counter() - t0
        root, files = index.root(), sum(1 for p in (Path(tmp) / "index").rglob("*") if p.is_file())
        del hashes, index
        gc.collect()
        t0 = time.perf_counter()
        index = TileIndex.open(Path(tmp) / "index")
        t_open = time.perf_counter() - t0
        t_first = 0.0
        for i in picks[:COLD]:  # one proof per freshly opened index: every tile read, no node reused
            cold = TileIndex.open(Path(tmp) / "index")
            t0 = time.perf_counter()
            first = cold.inclusion_proof(i, n)
            t_first += (time.perf_counter() - t0) / COLD
            assert first == expected.get(i, first)
        t0 = time.perf_counter()
        made = [index.inclusion_proof(i, n) for i in picks]
        t_mean = (time.perf_counter() - t0) / len(picks)
        assert all(made[k] == expected[i] for k, i in enumerate(picks[:check]))
        assert all(verify_inclusion(index.leaf(i), i, n, p, root) for i, p in zip(picks, made))
    print(f"index       {n:>9,} entries: build {t_build:7.2f} s ({files:,} files), open {t_open * 1e3:6.2f} ms; "
          f"proof cold {t_first * 1e3:6.3f} ms, mean of {proofs} {t_mean * 1e3:6.3f} ms", flush=True)
    return t_first, t_mean


def without_index(n: int, proofs: int) -> float:
    hashes = leaf_hashes(n)
    rng = random.Random(n)
    picks = [rng.randrange(n) for _ in range(proofs)]
    t0 = time.perf_counter()
    for i in picks:
        inclusion_proof(hashes, i, n)
    t = (time.perf_counter() - t0) / proofs
    print(f"no index    {n:>9,} entries: proof mean of {proofs} {t * 1e3:9.3f} ms (merkle.py, from all leaf hashes)",
          flush=True)
    return t


def report_vs_verify(events: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_report import KEY, ORIGIN, T0, synthetic_log  # the report benchmark's log

    from streams.audit.case_keys import CaseKeyStore
    from streams.audit.checkpoint import verifier_key_string
    from streams.audit.report import Filters, build_report, render_csv, verify_for_report
    from streams.audit.verify import verify_log

    verifiers = [verifier_key_string(ORIGIN, KEY.verify_key)]
    with tempfile.TemporaryDirectory() as tmp:
        store = CaseKeyStore(f"{tmp}/case-keys")
        t0 = time.perf_counter()
        entries, notes = synthetic_log(events, store)
        t_make = time.perf_counter() - t0
        pairs = list(enumerate(entries))
        n = len(entries)
        t0 = time.perf_counter()
        check = verify_log(pairs, notes, verifiers, ORIGIN)
        t_verify = time.perf_counter() - t0
        assert check.ok
        t0 = time.perf_counter()
        report = build_report(pairs, Filters(), store, as_of=T0 + timedelta(days=14, hours=2))
        t_build = time.perf_counter() - t0
        report.set_verification(verify_for_report(pairs, notes, verifiers, ORIGIN))
        t_rverify = time.perf_counter() - t0 - t_build
        t1 = time.perf_counter()
        render_csv(report)
        t_csv = time.perf_counter() - t1
    t_report = t_build + t_rverify + t_csv
    print(f"log         {n:>9,} entries ({events:,} events, {len(notes)} checkpoints) made in {t_make:.1f} s")
    print(f"verify      {n / t_verify:>9,.0f} entries/s ({t_verify / n * 1e6:6.2f} us/entry, verify_log)")
    print(f"report csv  {n / t_report:>9,.0f} entries/s ({t_report / n * 1e6:6.2f} us/entry: build_report "
          f"{t_build / n * 1e6:.2f} + verify_for_report {t_rverify / n * 1e6:.2f} + render_csv {t_csv / n * 1e6:.2f})")
    print(f"report/verify time per entry: {t_report / t_verify:.2f}x (target: at most 2x)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=1_000_000, help="the large log (default 1,000,000)")
    ap.add_argument("--small", type=int, default=1_000, help="the small log (default 1,000)")
    ap.add_argument("--legacy", type=int, nargs="*", default=[1_000, 100_000],
                    help="sizes to prove without the index (default 1,000 and 100,000)")
    ap.add_argument("--proofs", type=int, default=300, help="proofs per size with the index")
    ap.add_argument("--report-events", type=int, default=30_000,
                    help="events of the report/verify log (about 6.5 entries each; 0 skips it)")
    args = ap.parse_args()
    small_first, small_mean = with_index(args.small, args.proofs, check=50)
    large_first, large_mean = with_index(args.entries, args.proofs, check=COLD)
    print(f"ratio       {args.entries:,} / {args.small:,}: cold proof {large_first / small_first:.2f}x, "
          f"mean {large_mean / small_mean:.2f}x (target: at most 2x)", flush=True)
    for n in args.legacy:
        without_index(n, 20 if n <= 10_000 else 3)
    if args.report_events:
        report_vs_verify(args.report_events)


if __name__ == "__main__":
    main()
