"""RFC 9162 Merkle tree: published reference vectors plus property tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "rfc9162" / "ct_reference.json").read_text())
LEAVES = [leaf_hash(bytes.fromhex(x)) for x in VECTORS["leaves_hex"]]
ROOTS = {int(k): bytes.fromhex(v) for k, v in VECTORS["roots_hex_by_size"].items()}
ROOTS[0] = bytes.fromhex(VECTORS["empty_root_hex"])


def _hexes(xs: list[bytes]) -> list[str]:
    return [x.hex() for x in xs]


# --- hashing primitives -------------------------------------------------------


def test_domain_separated_hashes_match_rfc_definition() -> None:
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    assert EMPTY_ROOT == hashlib.sha256(b"").digest() == ROOTS[0]


@pytest.mark.parametrize("size", range(0, 9))
def test_reference_roots_for_every_size(size: int) -> None:
    assert root_from_leaf_hashes(LEAVES[:size]) == ROOTS[size]
    cr = CompactRange()
    for h in LEAVES[:size]:
        cr.append(h)
    assert cr.size == size
    assert cr.root() == ROOTS[size]


@pytest.mark.parametrize("vec", VECTORS["inclusion"], ids=lambda v: f"{v['index']}of{v['size']}")
def test_reference_inclusion_proofs(vec: dict) -> None:
    i, n = vec["index"], vec["size"]
    proof = inclusion_proof(LEAVES, i, n)
    assert _hexes(proof) == vec["proof_hex"]
    assert verify_inclusion(LEAVES[i], i, n, proof, ROOTS[n])


@pytest.mark.parametrize("vec", VECTORS["consistency"], ids=lambda v: f"{v['old_size']}to{v['new_size']}")
def test_reference_consistency_proofs(vec: dict) -> None:
    m, n = vec["old_size"], vec["new_size"]
    proof = consistency_proof(LEAVES, m, n)
    assert _hexes(proof) == vec["proof_hex"]
    assert verify_consistency(m, n, ROOTS[m], ROOTS[n], proof)


# --- the corruptions the Go reference verifier tests, applied to our verifier --

SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


@pytest.mark.parametrize("vec", [v for v in VECTORS["inclusion"] if v["proof_hex"]], ids=lambda v: f"{v['index']}of{v['size']}")
def test_corrupted_inclusion_proofs_are_rejected(vec: dict) -> None:
    i, n = vec["index"], vec["size"]
    proof = [bytes.fromhex(x) for x in vec["proof_hex"]]
    root, leaf = ROOTS[n], LEAVES[i]
    probes = [
        (leaf, i - 1, n, proof, root),
        (leaf, i + 1, n, proof, root),
        (leaf, i ^ 2, n, proof, root),
        (leaf, i, n * 2, proof, root),
        (leaf, i, n // 2, proof, root),
        (leaf_hash(b"WrongLeaf"), i, n, proof, root),
        (leaf, i, n, proof, EMPTY_ROOT),
        (leaf, i, n, proof, SOME_HASH),
        (leaf, i, n, proof + [b""], root),
        (leaf, i, n, proof + [root], root),
        (leaf, i, n, [b""] + proof, root),
        (leaf, i, n, [root] + proof, root),
        (leaf, i, n, proof[:-1], root),
        (leaf, i, n, [proof[0], SOME_HASH] + proof[1:], root),
    ]
    for k in range(len(proof)):
        bad = list(proof)
        bad[k] = bytes([bad[k][0] ^ 8]) + bad[k][1:]
        probes.append((leaf, i, n, bad, root))
    for args in probes:
        assert not verify_inclusion(*args), args[1:3]


@pytest.mark.parametrize("vec", [v for v in VECTORS["consistency"] if v["proof_hex"]], ids=lambda v: f"{v['old_size']}to{v['new_size']}")
def test_corrupted_consistency_proofs_are_rejected(vec: dict) -> None:
    m, n = vec["old_size"], vec["new_size"]
    proof = [bytes.fromhex(x) for x in vec["proof_hex"]]
    r1, r2 = ROOTS[m], ROOTS[n]
    probes = [
        (m - 1, n, r1, r2, proof),
        (m + 1, n, r1, r2, proof),
        (m ^ 2, n, r1, r2, proof),
        (m, n * 2, r1, r2, proof),
        (m, n // 2, r1, r2, proof),
        (m, n, SOME_HASH, r2, proof),
        (m, n, r1, SOME_HASH, proof),
        (m, n, r2, r1, proof),
        (m, n, r1, r2, []),
        (m, n, r1, r2, proof + [b""]),
        (m, n, r1, r2, proof + [r1]),
        (m, n, r1, r2, proof + [r2]),
        (m, n, r1, r2, [b""] + proof),
        (m, n, r1, r2, [r1] + proof),
        (m, n, r1, r2, [r2] + proof),
        (m, n, r1, r2, [proof[0]] + proof),
        (m, n, r1, r2, proof[:-1]),
    ]
    for k in range(len(proof)):
        bad = list(proof)
        bad[k] = bytes([bad[k][0] ^ 16]) + bad[k][1:]
        probes.append((m, n, r1, r2, bad))
    for args in probes:
        assert not verify_consistency(*args), args[:2]


def test_consistency_edge_cases() -> None:
    r = ROOTS[3]
    assert verify_consistency(3, 3, r, r, [])
    assert not verify_consistency(3, 3, r, ROOTS[4], [])  # same size, different root: a fork
    assert not verify_consistency(3, 3, r, r, [r])  # same size needs an empty proof
    assert verify_consistency(0, 5, EMPTY_ROOT, ROOTS[5], [])
    assert not verify_consistency(0, 5, SOME_HASH, ROOTS[5], [])
    assert not verify_consistency(0, 5, EMPTY_ROOT, ROOTS[5], [EMPTY_ROOT])
    assert not verify_consistency(5, 3, ROOTS[5], ROOTS[3], consistency_proof(LEAVES, 3, 5))  # time travel
    assert not verify_consistency(-1, 3, r, r, [])


def test_inclusion_edge_cases() -> None:
    h = leaf_hash(b"data")
    assert verify_inclusion(h, 0, 1, [], h)
    assert not verify_inclusion(h, 0, 1, [], b"")
    assert not verify_inclusion(b"", 0, 1, [], h)
    for index, size in [(0, 0), (1, 0), (2, 1), (1, 1), (-1, 1)]:
        assert not verify_inclusion(h, index, size, [], h)


def test_generators_reject_impossible_arguments() -> None:
    with pytest.raises(ValueError):
        inclusion_proof(LEAVES, 8, 8)
    with pytest.raises(ValueError):
        inclusion_proof(LEAVES, 0, 9)
    with pytest.raises(ValueError):
        consistency_proof(LEAVES, 5, 4)
    with pytest.raises(ValueError):
        consistency_proof(LEAVES, 1, 9)


# --- compact range persistence ------------------------------------------------


def test_compact_range_resumes_from_persisted_state() -> None:
    hashes = [leaf_hash(i.to_bytes(4, "big")) for i in range(77)]
    cr = CompactRange()
    for h in hashes[:50]:
        cr.append(h)
    state = json.loads(json.dumps(cr.to_dict()))
    assert state["size"] == 50 and len(state["hashes"]) == bin(50).count("1")
    resumed = CompactRange.from_dict(state)
    for h in hashes[50:]:
        resumed.append(h)
    assert resumed.root() == root_from_leaf_hashes(hashes)


@pytest.mark.parametrize(
    "state",
    [
        {"size": 3, "hashes": []},
        {"size": -1, "hashes": []},
        {"size": 1, "hashes": ["not base64!"]},
        {"size": 1, "hashes": ["AAAA"]},
        {"size": True, "hashes": ["A" * 43 + "="]},
        {"hashes": []},
    ],
)
def test_compact_range_rejects_inconsistent_state(state: dict) -> None:
    with pytest.raises(ValueError):
        CompactRange.from_dict(state)


def test_compact_range_rejects_non_hash_leaf() -> None:
    with pytest.raises(ValueError):
        CompactRange().append(b"raw entry, not a hash")


# --- properties ---------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=70)


def _leaves(n: int, salt: int = 0) -> list[bytes]:
    return [leaf_hash(salt.to_bytes(2, "big") + i.to_bytes(4, "big")) for i in range(n)]


@settings(max_examples=150, deadline=None)
@given(n=st.integers(min_value=0, max_value=130))
def test_compact_range_matches_recursive_definition(n: int) -> None:
    hashes = _leaves(n)
    cr = CompactRange()
    for k, h in enumerate(hashes):
        cr.append(h)
        if k % 7 == 0:
            assert cr.root() == root_from_leaf_hashes(hashes[: k + 1])
    assert cr.root() == root_from_leaf_hashes(hashes)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=sizes)
def test_every_generated_inclusion_proof_verifies_and_any_mutation_fails(data: st.DataObject, n: int) -> None:
    hashes = _leaves(n)
    root = root_from_leaf_hashes(hashes)
    i = data.draw(st.integers(0, n - 1), label="index")
    proof = inclusion_proof(hashes, i, n)
    assert verify_inclusion(hashes[i], i, n, proof, root)
    assert len(proof) <= (n - 1).bit_length()

    other_index = data.draw(st.integers(0, n).filter(lambda j: j != i), label="other index")
    assert not verify_inclusion(hashes[i], other_index, n, proof, root)
    # A proof for size n must not pass for another size, checked against that size's genuine root.
    # (Against the size-n root it can: e.g. leaf 0 has the same path shape in sizes 9 and 10, and
    # the verifier cannot tell a leaf hash from a node hash; no real tree of the other size exists.)
    other_size = data.draw(st.integers(1, 2 * n + 2).filter(lambda s: s != n), label="other size")
    longer = _leaves(max(n, other_size))
    assert not verify_inclusion(hashes[i], i, other_size, proof, root_from_leaf_hashes(longer[:other_size]))
    assert not verify_inclusion(hashes[i], i, n, proof, root_from_leaf_hashes(_leaves(n, salt=1)))
    if n > 1:
        assert not verify_inclusion(hashes[(i + 1) % n], i, n, proof, root)
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1), label="mutated element")
        bit = data.draw(st.integers(0, 255), label="bit")
        bad = list(proof)
        bad[k] = bytes(b ^ (1 << (bit % 8)) if j == bit // 8 else b for j, b in enumerate(bad[k]))
        assert not verify_inclusion(hashes[i], i, n, bad, root)
        assert not verify_inclusion(hashes[i], i, n, proof[:-1], root)
    assert not verify_inclusion(hashes[i], i, n, proof + [root], root)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=sizes)
def test_every_generated_consistency_proof_verifies_and_any_mutation_fails(data: st.DataObject, n: int) -> None:
    hashes = _leaves(n)
    m = data.draw(st.integers(0, n), label="old size")
    r1, r2 = root_from_leaf_hashes(hashes[:m]), root_from_leaf_hashes(hashes)
    proof = consistency_proof(hashes, m, n)
    assert verify_consistency(m, n, r1, r2, proof)
    if 0 < m < n:
        assert proof and len(proof) <= 2 * n.bit_length()
        k = data.draw(st.integers(0, len(proof) - 1), label="mutated element")
        bit = data.draw(st.integers(0, 255), label="bit")
        bad = list(proof)
        bad[k] = bytes(b ^ (1 << (bit % 8)) if j == bit // 8 else b for j, b in enumerate(bad[k]))
        assert not verify_consistency(m, n, r1, r2, bad)
        assert not verify_consistency(m, n, r1, r2, proof[:-1])
        assert not verify_consistency(m, n, r1, r2, proof + [r2])
        assert not verify_consistency(m, n, r2, r1, proof)
        # Wrong sizes, each checked against the genuine root of the size claimed.
        other_m = data.draw(st.integers(1, n).filter(lambda s: s != m), label="other old size")
        assert not verify_consistency(other_m, n, root_from_leaf_hashes(hashes[:other_m]), r2, proof)
        other_n = data.draw(st.integers(m + 1, 2 * n + 2).filter(lambda s: s != n), label="other new size")
        longer = _leaves(other_n)
        assert not verify_consistency(m, other_n, r1, root_from_leaf_hashes(longer), proof)
        # A different history of the same size must not be provably consistent.
        forked = hashes[: m - 1] + [leaf_hash(b"forged")] + hashes[m:]
        assert not verify_consistency(m, n, root_from_leaf_hashes(forked[:m]), r2, proof)
        assert not verify_consistency(m, n, r1, root_from_leaf_hashes(forked), proof)


# --- consistency proofs from a compact range and the later leaves (the checkpointer's way) --------
from streams.audit.merkle import ConsistencyProofBuilder  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=300), st.integers(min_value=0, max_value=300))
def test_proof_from_compact_range_equals_proof_from_all_leaves(a: int, b: int) -> None:
    old_size, new_size = min(a, b), max(a, b)
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(new_size)]
    old = CompactRange()
    for h in leaves[:old_size]:
        old.append(h)
    built = ConsistencyProofBuilder(old, new_size).add_all(leaves[old_size:]).proof()
    assert built == consistency_proof(leaves, old_size, new_size)


def test_builder_refuses_too_few_or_too_many_leaves() -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(10)]
    old = CompactRange()
    for h in leaves[:3]:
        old.append(h)
    builder = ConsistencyProofBuilder(old, 10).add_all(leaves[3:9])
    with pytest.raises(ValueError):
        builder.proof()
    builder.add(leaves[9])
    with pytest.raises(ValueError):
        builder.add(leaves[9])
