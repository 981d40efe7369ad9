"""Audit log core throughput: append (leaf hash + CompactRange), streaming verify_log,
inclusion-proof generation. Pure CPU, no Kafka.

  .venv/bin/python bench/bench_audit.py [--entries 1000000] [--every 10000] [--size 300]
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Iterator

import nacl.signing

from streams.audit.checkpoint import Checkpoint, sign_checkpoint, verifier_key_string
from streams.audit.merkle import CompactRange, inclusion_proof, leaf_hash, root_from_leaf_hashes, verify_inclusion
from streams.audit.verify import verify_log

ORIGIN = "masb.example/audit/bench"


def synthetic_entries(n: int, size: int) -> Iterator[tuple[int, bytes]]:
    """Distinct 300-byte entries generated on the fly (the log is never held in memory)."""
    filler = random.Random(7).randbytes(size - 8)
    for i in range(n):
        yield i, i.to_bytes(8, "big") + filler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--every", type=int, default=10_000, help="checkpoint interval")
    ap.add_argument("--size", type=int, default=300, help="entry size in bytes")
    ap.add_argument("--proofs", type=int, default=20, help="inclusion proofs to generate")
    args = ap.parse_args()
    n = args.entries
    key = nacl.signing.SigningKey(bytes(range(32)))
    vkey = verifier_key_string(ORIGIN, key.verify_key)

    # 1. Append: leaf hash + CompactRange, signing a checkpoint every `every` entries.
    cr = CompactRange()
    leaves: list[bytes] = []  # kept only for the proof benchmark below (32 B each)
    notes: list[str] = []
    t0 = time.perf_counter()
    for _, entry in synthetic_entries(n, args.size):
        h = leaf_hash(entry)
        cr.append(h)
        leaves.append(h)
        if cr.size % args.every == 0:
            notes.append(sign_checkpoint(Checkpoint(ORIGIN, cr.size, cr.root()), ORIGIN, key))
    t_append = time.perf_counter() - t0
    print(f"append      {n:>9,} entries of {args.size} B in {t_append:6.2f} s = {n / t_append:>10,.0f} entries/s "
          f"({len(notes)} checkpoints signed, state {len(cr.peaks)} hashes)")

    # 2. Streaming verification of the whole log against every checkpoint.
    t0 = time.perf_counter()
    report = verify_log(synthetic_entries(n, args.size), notes, [vkey], ORIGIN)
    t_verify = time.perf_counter() - t0
    assert report.ok and report.checkpoints_verified == len(notes), report.problems[:3]
    print(f"verify_log  {n:>9,} entries, {len(notes)} checkpoints in {t_verify:6.2f} s = {n / t_verify:>10,.0f} entries/s")

    # 3. Inclusion proofs over the full tree, from leaf hashes only (no cached interior nodes).
    root = root_from_leaf_hashes(leaves)
    assert root == cr.root()
    rng = random.Random(1)
    indices = [rng.randrange(n) for _ in range(args.proofs)]
    t0 = time.perf_counter()
    proofs = [inclusion_proof(leaves, i, n) for i in indices]
    t_proof = (time.perf_counter() - t0) / len(indices)
    t0 = time.perf_counter()
    assert all(verify_inclusion(leaves[i], i, n, p, root) for i, p in zip(indices, proofs))
    t_check = (time.perf_counter() - t0) / len(indices)
    print(f"inclusion   proof in a {n:,}-leaf tree: generate {t_proof * 1000:7.1f} ms, verify {t_check * 1e6:6.1f} us, "
          f"{len(proofs[0])} hashes ({len(proofs[0]) * 32} B)")


if __name__ == "__main__":
    main()
