"""RFC 9162 (Certificate Transparency 2.0) Merkle tree hashing and proofs.

Everything here follows RFC 9162 section 2.1 exactly, with SHA-256:
  leaf hash  = SHA-256(0x00 || entry)
  node hash  = SHA-256(0x01 || left || right)
  empty root = SHA-256("")
A tree of n > 1 leaves splits at k, the largest power of two smaller than n.

Verifiers return False on anything they cannot accept (wrong sizes, wrong hash
lengths, short or long proofs): they are fed untrusted input and must never raise
on it. Generators raise ValueError on impossible arguments, since those are
programming errors of the caller.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any, Sequence

__all__ = [
    "HASH_SIZE",
    "EMPTY_ROOT",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "CompactRange",
    "inclusion_proof",
    "verify_inclusion",
    "consistency_proof",
    "consistency_proof_ranges",
    "ConsistencyProofBuilder",
    "verify_consistency",
]

HASH_SIZE = 32
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


def leaf_hash(entry: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d)."""
    return _sha256(_LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Interior node: SHA-256(0x01 || left || right)."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def _split_point(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _perfect_root(hashes: Sequence[bytes], start: int, n: int) -> bytes:
    """Root of a perfect subtree (n a power of two), reduced level by level: ~3x faster than recursion."""
    level = list(hashes[start : start + n])
    while len(level) > 1:
        level = [_sha256(_NODE_PREFIX + level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    return level[0]


def _subtree_root(hashes: Sequence[bytes], start: int, end: int) -> bytes:
    """MTH of hashes[start:end], by the recursive definition (depth is log2 n)."""
    n = end - start
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return hashes[start]
    if n & (n - 1) == 0:
        return _perfect_root(hashes, start, n)
    k = _split_point(n)
    return node_hash(_perfect_root(hashes, start, k), _subtree_root(hashes, start + k, end))


def _check_hash(h: Any) -> bool:
    return isinstance(h, (bytes, bytearray)) and len(h) == HASH_SIZE


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """Root hash (MTH) of a tree whose leaf hashes are given in order."""
    for i, h in enumerate(hashes):
        if not _check_hash(h):
            raise ValueError(f"leaf hash {i}: must be {HASH_SIZE} bytes")
    return _subtree_root(hashes, 0, len(hashes))


class CompactRange:
    """The right frontier of an append-only tree: one hash per set bit of size.

    peaks[0] is the root of the largest (leftmost) perfect subtree. Appending
    merges equal-sized peaks like a binary counter; root() folds the peaks from
    the right, which is exactly RFC 9162's split at the largest power of two.
    Memory and root() cost are O(log n); the state can be persisted with
    to_dict() so an appender resumes without replaying the log.
    """

    __slots__ = ("_size", "_peaks")

    def __init__(self) -> None:
        self._size = 0
        self._peaks: list[bytes] = []

    @property
    def size(self) -> int:
        return self._size

    @property
    def peaks(self) -> tuple[bytes, ...]:
        return tuple(self._peaks)

    def append(self, leaf: bytes) -> None:
        """Append one leaf hash (not the entry: call leaf_hash first)."""
        if not _check_hash(leaf):
            raise ValueError(f"leaf hash must be {HASH_SIZE} bytes")
        peaks = self._peaks
        h = bytes(leaf)
        n = self._size
        # Each trailing 1 bit of the old size is a complete peak of the same
        # height as the subtree being carried: merge them.
        while n & 1:
            h = _sha256(_NODE_PREFIX + peaks.pop() + h).digest()
            n >>= 1
        peaks.append(h)
        self._size += 1

    def append_entry(self, entry: bytes) -> bytes:
        """Hash an entry as a leaf, append it, and return its leaf hash."""
        h = _sha256(_LEAF_PREFIX + entry).digest()
        self.append(h)
        return h

    def root(self) -> bytes:
        peaks = self._peaks
        if not peaks:
            return EMPTY_ROOT
        r = peaks[-1]
        for p in reversed(peaks[:-1]):
            r = _sha256(_NODE_PREFIX + p + r).digest()
        return r

    def copy(self) -> "CompactRange":
        other = CompactRange()
        other._size = self._size
        other._peaks = list(self._peaks)
        return other

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state: {"size": int, "hashes": [base64 std, ...]} (peaks left to right)."""
        return {"size": self._size, "hashes": [base64.b64encode(p).decode("ascii") for p in self._peaks]}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "CompactRange":
        """Rebuild from to_dict() output; raises ValueError if the state is inconsistent."""
        size = state.get("size") if isinstance(state, dict) else None
        hashes = state.get("hashes") if isinstance(state, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("compact range state: size must be a non-negative integer")
        if not isinstance(hashes, list):
            raise ValueError("compact range state: hashes must be a list")
        if len(hashes) != bin(size).count("1"):
            raise ValueError("compact range state: number of hashes does not match size")
        peaks = []
        for i, text in enumerate(hashes):
            try:
                raw = base64.b64decode(text, validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise ValueError(f"compact range state: hashes[{i}] is not valid base64") from None
            if len(raw) != HASH_SIZE:
                raise ValueError(f"compact range state: hashes[{i}] must decode to {HASH_SIZE} bytes")
            peaks.append(raw)
        cr = cls()
        cr._size = size
        cr._peaks = peaks
        return cr

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CompactRange) and self._size == other._size and self._peaks == other._peaks

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size})"


# --- inclusion proofs (RFC 9162 2.1.3) ---------------------------------------


def _path(hashes: Sequence[bytes], m: int, start: int, end: int, out: list[bytes]) -> None:
    """PATH(m, D[start:end]) of RFC 9162 2.1.3.1, appended leaf-to-root into out."""
    n = end - start
    if n <= 1:
        return
    k = _split_point(n)
    if m < k:
        _path(hashes, m, start, start + k, out)
        out.append(_subtree_root(hashes, start + k, end))
    else:
        _path(hashes, m - k, start + k, end, out)
        out.append(_subtree_root(hashes, start, start + k))


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int, size: int) -> list[bytes]:
    """Audit path for leaf `index` in the tree made of the first `size` leaf hashes."""
    if not 0 <= size <= len(leaf_hashes):
        raise ValueError("inclusion proof: size must be between 0 and the number of leaves")
    if not 0 <= index < size:
        raise ValueError("inclusion proof: index must be in [0, size)")
    out: list[bytes] = []
    _path(leaf_hashes, index, 0, size, out)
    return out


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 2.1.3.2: does `proof` show leaf hash `leaf` at `index` in the tree (size, root)?"""
    if not (_check_hash(leaf) and _check_hash(root)):
        return False
    if not (isinstance(index, int) and isinstance(size, int)) or not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    r = bytes(leaf)
    for p in proof:
        if not _check_hash(p) or sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # Skip levels where this node is the rightmost and has no sibling.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


# --- consistency proofs (RFC 9162 2.1.4) -------------------------------------


def _subproof(hashes: Sequence[bytes], m: int, start: int, end: int, b: bool, out: list[bytes]) -> None:
    """SUBPROOF(m, D[start:end], b) of RFC 9162 2.1.4.1."""
    n = end - start
    if m == n:
        if not b:
            out.append(_subtree_root(hashes, start, end))
        return
    k = _split_point(n)
    if m <= k:
        _subproof(hashes, m, start, start + k, b, out)
        out.append(_subtree_root(hashes, start + k, end))
    else:
        _subproof(hashes, m - k, start + k, end, False, out)
        out.append(_subtree_root(hashes, start, start + k))


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[new_size]): empty when old_size is 0 or equals new_size."""
    if not 0 <= old_size <= new_size <= len(leaf_hashes):
        raise ValueError("consistency proof: need 0 <= old_size <= new_size <= number of leaves")
    out: list[bytes] = []
    if 0 < old_size < new_size:
        _subproof(leaf_hashes, old_size, 0, new_size, True, out)
    return out


def consistency_proof_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The leaf ranges [start, end) whose tree hashes make PROOF(old_size, D[new_size]), in proof order.

    Each range either ends at or before old_size, and is then one of the perfect subtrees of the
    old tree's compact range, or starts at or after old_size; the latter tile [old_size, new_size).
    """
    if not 0 <= old_size <= new_size:
        raise ValueError("consistency proof: need 0 <= old_size <= new_size")
    out: list[tuple[int, int]] = []

    def subproof(m: int, start: int, end: int, b: bool) -> None:
        n = end - start
        if m == n:
            if not b:
                out.append((start, end))
            return
        k = _split_point(n)
        if m <= k:
            subproof(m, start, start + k, b)
            out.append((start + k, end))
        else:
            subproof(m - k, start + k, end, False)
            out.append((start, start + k))

    if 0 < old_size < new_size:
        subproof(old_size, 0, new_size, True)
    return out


class ConsistencyProofBuilder:
    """PROOF(old.size, D[new_size]) without the whole tree: from the compact range of the old tree
    and the leaf hashes old.size .. new_size-1, given once each in order (add). Memory O(log n).

    This is how the checkpointer proves a new checkpoint to a witness: it keeps the compact range
    of the size the witness last cosigned and the leaves since then, or streams them from the log.
    """

    def __init__(self, old: CompactRange, new_size: int) -> None:
        if not old.size <= new_size:
            raise ValueError("consistency proof: the new size is smaller than the old tree")
        self.new_size = new_size
        self._next = old.size
        ranges = consistency_proof_ranges(old.size, new_size)
        peaks: dict[tuple[int, int], bytes] = {}
        start, remaining = 0, old.size
        for peak in old.peaks:  # peaks are the subtrees of the old size's set bits, largest first
            width = 1 << (remaining.bit_length() - 1)
            peaks[(start, start + width)] = peak
            start, remaining = start + width, remaining - width
        self._proof: list[bytes | None] = []
        self._pending: list[tuple[int, int, int]] = []  # (start, end, index in proof) of ranges after old
        for start, end in ranges:
            if end <= old.size:
                self._proof.append(peaks[(start, end)])  # KeyError would be a bug: proved impossible above
            else:
                self._pending.append((start, end, len(self._proof)))
                self._proof.append(None)
        self._pending.sort()
        self._current: CompactRange | None = None

    def add(self, leaf: bytes) -> None:
        """The next leaf hash (index old.size, old.size + 1, ...)."""
        if self._next >= self.new_size:
            raise ValueError("consistency proof: more leaves than the new size")
        if not self._pending:  # old size 0: the proof is empty and needs no leaf
            self._next += 1
            return
        if self._current is None:
            self._current = CompactRange()
        self._current.append(leaf)
        self._next += 1
        start, end, slot = self._pending[0]
        if self._next == end:
            self._proof[slot] = self._current.root()
            self._pending.pop(0)
            self._current = None

    def add_all(self, leaves) -> "ConsistencyProofBuilder":
        for leaf in leaves:
            self.add(leaf)
        return self

    def proof(self) -> list[bytes]:
        if self._next != self.new_size:
            raise ValueError(f"consistency proof: {self.new_size - self._next} leaves still missing")
        return list(self._proof)  # type: ignore[arg-type]


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 2.1.4.2: is the tree (new_size, new_root) an append-only extension of (old_size, old_root)?

    Edge cases, stricter than "anything goes": equal sizes need an empty proof
    and equal roots; old_size 0 needs an empty proof and old_root equal to the
    empty-tree hash.
    """
    if not (_check_hash(old_root) and _check_hash(new_root)):
        return False
    if not (isinstance(old_size, int) and isinstance(new_size, int)) or not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return len(proof) == 0 and old_root == new_root
    if old_size == 0:
        return len(proof) == 0 and old_root == EMPTY_ROOT
    if len(proof) == 0 or not all(_check_hash(p) for p in proof):
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # old tree is a complete subtree: its root starts the path
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
