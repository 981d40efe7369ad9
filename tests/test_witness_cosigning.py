"""The log's side of the witness protocol: consistency proofs from each witness's last size out of a
bounded window, 409 answers followed, and only cosignatures that verify under the policy's keys kept.
Witnesses here are real HTTP servers (aiohttp) on free ports in this process."""

from __future__ import annotations

import asyncio

import nacl.signing
from aiohttp import ClientSession, web

from deploy.brokers import free_port
from streams.audit.checkpoint import Checkpoint, open_note_verified, parse_verifier_key, sign_checkpoint, \
    verifier_key_string
from streams.audit.cosignature import generate_cosigner
from streams.audit.merkle import CompactRange, consistency_proof, leaf_hash
from streams.witness.cosigning import ProofWindow, WitnessTarget, collect_cosignatures
from streams.witness.http import build_witness_app
from streams.witness.service import WitnessService
from streams.witness.state import WitnessState

ORIGIN = "masb.example/audit/cosigning"
LOG_KEY = nacl.signing.SigningKey(bytes(range(1, 33)))
LEAVES = [leaf_hash(f"e{i}".encode()) for i in range(200)]


def tree(n: int) -> CompactRange:
    cr = CompactRange()
    for h in LEAVES[:n]:
        cr.append(h)
    return cr


def signed(n: int) -> tuple[str, Checkpoint]:
    cp = Checkpoint(ORIGIN, n, tree(n).root())
    return sign_checkpoint(cp, ORIGIN, LOG_KEY), cp


def test_proof_window_is_bounded_and_exact() -> None:
    window = ProofWindow(tree(10), max_leaves=50)
    for h in LEAVES[10:100]:
        window.append(h)
    assert window.proof(10, 100) == consistency_proof(LEAVES, 10, 100)
    assert window.proof(37, 90) == consistency_proof(LEAVES, 37, 90)
    window.advance(30)
    assert window.base_size == 50 and len(window.leaves) == 50  # never more than max_leaves kept
    assert window.proof(37, 90) is None  # before the window: the caller's slow path
    assert window.proof(60, 100) == consistency_proof(LEAVES, 60, 100)


def test_collects_verified_cosignatures_following_409_and_skipping_failures(tmp_path) -> None:
    witnesses = [generate_cosigner(f"w{i}.example/witness") for i in range(3)]
    impostor = generate_cosigner("w2.example/witness")  # answers with a key the policy does not name

    async def scenario() -> None:
        runners, targets = [], []
        for i, signer in enumerate(witnesses):
            state = WitnessState(tmp_path / f"w{i}")
            service = WitnessService(impostor if i == 2 else signer,
                                     {ORIGIN: [parse_verifier_key(verifier_key_string(ORIGIN, LOG_KEY.verify_key))]},
                                     state)
            runner = web.AppRunner(build_witness_app(service))
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            runners.append((runner, state))
            targets.append(WitnessTarget(f"witness-{i}", f"http://127.0.0.1:{port}", signer.verifier()))
        down = WitnessTarget("witness-down", f"http://127.0.0.1:{free_port()}", generate_cosigner("d.example").verifier())
        window = ProofWindow(tree(0))
        for h in LEAVES[:120]:
            window.append(h)
        slow_calls = []

        async def proofs(old: int, new: int):
            proof = window.proof(old, new)
            if proof is None:
                slow_calls.append(old)
                proof = consistency_proof(LEAVES, old, new)
            return proof

        known: dict[str, int] = {}
        try:
            async with ClientSession() as session:
                note, cp = signed(40)
                got = await collect_cosignatures(session, [*targets, down], note, cp, known, 0, proofs, timeout=5)
                assert sorted(got) == ["witness-0", "witness-1"]  # the impostor's line is not kept
                # witness-1 forgets nothing, but the log forgot what it knew: a guess of 0 gets a 409.
                known.pop("witness-1")
                window.advance(60)
                note, cp = signed(120)
                got = await collect_cosignatures(session, targets[:2], note, cp, known, 0, proofs, timeout=5)
                assert sorted(got) == ["witness-0", "witness-1"] and known == {"witness-0": 120, "witness-1": 120}
                assert slow_calls == [40, 40]  # size 40 was before the window: proved the slow way
                full = note + "".join(got.values())
                _, verified = open_note_verified(full, [t.verifier for t in targets[:2]])
                assert len(verified) == 2
        finally:
            for runner, state in runners:
                await runner.cleanup()
                state.close()

    asyncio.run(scenario())
