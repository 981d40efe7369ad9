"""Self-contained proof files: an entry is in the signed log, or one checkpoint extends another.

Pure functions (no I/O). A proof file is UTF-8 JSON (docs/audit.md, "Proof files"):

  inclusion:   {"format": "masb-audit-proof", "version": 1, "type": "inclusion", "origin": ...,
                "tree_size": n, "checkpoint": <signed note of size n>,
                "inclusions": [{"index": i, "position": p, "entry": <base64>, "proof": [<base64>, ...]}]}
  consistency: {"format": "masb-audit-proof", "version": 1, "type": "consistency", "origin": ...,
                "old_size": m, "new_size": n, "old_checkpoint": <note>, "new_checkpoint": <note>,
                "proof": [<base64>, ...]}

check_proof() needs nothing but the file and the log's verifier keys: no Kafka, no log copy.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from streams import jsonin
from streams.errors import CheckFailed

from .checkpoint import Checkpoint, CheckpointError, open_checkpoint
from .trust import OpenedCheckpoint, TrustedCheckpoint, Witnesses, open_witnessed_checkpoint
from .entry import AuditEntryError, decode_entry
from .merkle import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

FORMAT = "masb-audit-proof"
VERSION = 1
MAX_PROOF_HASHES = 64  # log2 of any possible tree size is far below this


class ProofError(CheckFailed, ValueError):
    """A proof that cannot be made or does not verify. Messages name indexes and sizes, never contents."""


@dataclass
class CheckedProof:
    type: str
    checkpoint: Checkpoint  # the (newest) signed checkpoint the proof leads to
    old_checkpoint: Checkpoint | None = None
    entries: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (0-based index, decoded entry)
    notes: list[str] = field(default_factory=list)
    opened: OpenedCheckpoint | None = None  # the (newest) checkpoint with its note and cosigners


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ProofError(f"{what}: must be a base64 string")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProofError(f"{what}: not valid base64") from None
    if _b64(data) != text:
        raise ProofError(f"{what}: base64 is not canonical")
    return data


def _valid_checkpoints(notes: Sequence[str], verifiers: list[str], origin: str) -> list[tuple[str, Checkpoint]]:
    out = []
    for note in notes:
        try:
            out.append((note, open_checkpoint(note, verifiers, origin=origin)))
        except CheckpointError:
            continue  # `masb audit verify` reports these; a proof only uses good ones
    return out


class Tree(Protocol):
    """The log's Merkle tree as proofs need it: streams/audit/tiles.py's TileIndex, or LeafTree."""

    @property
    def size(self) -> int: ...

    def root(self, size: int) -> bytes: ...

    def inclusion_proof(self, index: int, size: int) -> list[bytes]: ...

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]: ...


class LeafTree:
    """The tree recomputed from every leaf hash (merkle.py): O(n) per proof, no index needed."""

    def __init__(self, entries: Sequence[bytes]) -> None:
        self.hashes = [leaf_hash(e) for e in entries]

    @property
    def size(self) -> int:
        return len(self.hashes)

    def root(self, size: int) -> bytes:
        return root_from_leaf_hashes(self.hashes[:size])

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return inclusion_proof(self.hashes, index, size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        return consistency_proof(self.hashes, old_size, new_size)


def signed_checkpoints(notes: Sequence[str], verifiers: list[str], origin: str) -> list[Checkpoint]:
    """The checkpoints among `notes` that open under `verifiers` and `origin` (others are skipped)."""
    return [cp for _, cp in _valid_checkpoints(notes, verifiers, origin)]


def _matching_checkpoint(tree: Tree, candidates: list[tuple[str, Checkpoint]],
                         what: str) -> tuple[str, Checkpoint]:
    """The largest candidate whose root the log's entries reproduce."""
    for note, cp in sorted(candidates, key=lambda nc: nc[1].size, reverse=True):
        if cp.size <= tree.size and tree.root(cp.size) == cp.root:
            return note, cp
    raise ProofError(f"no signed checkpoint that the log matches covers {what}; "
                     "run `masb audit verify`, or request a checkpoint and retry")


def _extends(tree: Tree, sizes: Sequence[int], new_size: int) -> list[dict[str, Any]]:
    """Consistency proofs from each earlier size an auditor holds to the proof's checkpoint."""
    out = []
    for old in sorted(set(sizes)):
        if not 0 <= old <= new_size:
            raise ProofError(f"--extends {old}: must be between 0 and the proof's checkpoint size {new_size}")
        out.append({"old_size": old, "proof": [_b64(h) for h in tree.consistency_proof(old, new_size)]})
    return out


def make_inclusion_proof(entries: Sequence[bytes], notes: Sequence[str], verifiers: list[str], origin: str,
                         indexes: Sequence[int], positions: Sequence[int] | None = None,
                         extends: Sequence[int] = (), tree: Tree | None = None,
                         held: Sequence[int] = ()) -> dict[str, Any]:
    """Proof file for the entries at `indexes` (0-based) against the latest signed checkpoint that
    covers all of them and that the log reproduces; `extends` adds consistency proofs from those
    earlier sizes (the sizes of checkpoints the auditor already trusts) to that checkpoint, and
    `held` from those of these sizes that are below it (a checkpoint remembered by `audit verify`:
    one of the proof's size or larger needs none, or cannot have one).

    tree: the log's tree (a TileIndex of these entries, streams/audit/tiles.py); default: recomputed
    from every entry. Each proof is checked against the signed root with the entry's own bytes."""
    if not indexes:
        raise ProofError("no entry to prove")
    tree = LeafTree(entries) if tree is None else tree
    last = max(indexes)
    candidates = [(n, cp) for n, cp in _valid_checkpoints(notes, verifiers, origin) if cp.size > last]
    if not candidates:
        raise ProofError(f"entry {last + 1} is not yet covered by a signed checkpoint; "
                         "request one (POST /audit/checkpoint) or retry after the next one")
    note, cp = _matching_checkpoint(tree, candidates, f"entry {last + 1}")
    inclusions = []
    for i in sorted(set(indexes)):
        path = tree.inclusion_proof(i, cp.size)
        if not verify_inclusion(leaf_hash(entries[i]), i, cp.size, path, cp.root):
            raise ProofError(f"entry {i + 1} of the log is not the entry the signed checkpoint of size {cp.size} "
                             "holds: the log was changed; run `masb audit verify`")
        inclusions.append({
            "index": i, "position": positions[i] if positions is not None else i, "entry": _b64(entries[i]),
            "proof": [_b64(h) for h in path],
        })
    doc = {"format": FORMAT, "version": VERSION, "type": "inclusion", "origin": origin, "tree_size": cp.size,
           "checkpoint": note, "inclusions": inclusions}
    sizes = [*extends, *(size for size in held if size < cp.size)]
    if sizes:
        doc["extends"] = _extends(tree, sizes, cp.size)
    return doc


def make_consistency_proof(entries: Sequence[bytes], notes: Sequence[str], verifiers: list[str], origin: str,
                           old_size: int, new_size: int, tree: Tree | None = None) -> dict[str, Any]:
    """Proof file that the signed checkpoint of new_size extends the signed checkpoint of old_size
    (tree: as for make_inclusion_proof)."""
    if not 0 <= old_size <= new_size:
        raise ProofError("consistency: need 0 <= OLD_SIZE <= NEW_SIZE")
    valid = _valid_checkpoints(notes, verifiers, origin)
    tree = LeafTree(entries) if tree is None else tree
    chosen = []
    for size in (old_size, new_size):
        same = [(n, cp) for n, cp in valid if cp.size == size]
        if not same:
            sizes = sorted({cp.size for _, cp in valid})
            near = ", ".join(str(s) for s in sizes[-10:])
            raise ProofError(f"no signed checkpoint of size {size} (latest sizes signed: {near or 'none'})")
        chosen.append(_matching_checkpoint(tree, same, f"size {size}"))
    proof = tree.consistency_proof(old_size, new_size)
    return {"format": FORMAT, "version": VERSION, "type": "consistency", "origin": origin,
            "old_size": old_size, "new_size": new_size, "old_checkpoint": chosen[0][0],
            "new_checkpoint": chosen[1][0], "proof": [_b64(h) for h in proof]}


def _int(doc: dict, key: str) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProofError(f"{key}: must be a non-negative integer")
    return value


def _hashes(value: Any, what: str) -> list[bytes]:
    if not isinstance(value, list) or len(value) > MAX_PROOF_HASHES:
        raise ProofError(f"{what}: must be a list of at most {MAX_PROOF_HASHES} base64 hashes")
    out = [_unb64(h, f"{what}[{k}]") for k, h in enumerate(value)]
    if any(len(h) != 32 for h in out):
        raise ProofError(f"{what}: every hash must be 32 bytes")
    return out


def _open(note: Any, what: str, verifiers: list[str], origin: str,
          witnesses: Witnesses | None = None) -> OpenedCheckpoint:
    if not isinstance(note, str):
        raise ProofError(f"{what}: must be a signed note (string)")
    try:
        return open_witnessed_checkpoint(note, verifiers, origin, witnesses)
    except CheckpointError as exc:
        raise ProofError(f"{what}: refused: {exc}") from None


def _require_quorum(opened: OpenedCheckpoint, what: str, witnesses: Witnesses | None) -> None:
    if witnesses is not None and not witnesses.met(opened.cosigners):
        seen = ", ".join(opened.cosigners) or "none"
        raise ProofError(f"{what} (size {opened.checkpoint.size}) is cosigned by {len(opened.cosigners)} of the "
                         f"witnesses the policy names ({witnesses.describe()}; cosigned by: {seen}); it cannot be "
                         "relied on yet: ask for a proof against a checkpoint the witnesses have cosigned")


def _parse_extends(doc: dict[str, Any]) -> dict[int, list[bytes]]:
    items = doc.get("extends", [])
    if not isinstance(items, list):
        raise ProofError("extends: must be a list")
    out = {}
    for k, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise ProofError(f"extends {k}: must be an object")
        out[_int(item, "old_size")] = _hashes(item.get("proof"), f"extends {k}.proof")
    return out


def _check_trusted(new: OpenedCheckpoint, trusted: Sequence[TrustedCheckpoint], proofs: dict[int, list[bytes]],
                   witnesses: Witnesses | None, notes: list[str]) -> None:
    """The proof's checkpoint must be the auditor's trusted checkpoints or an extension of each."""
    cp = new.checkpoint
    for t in trusted:
        held = t.checkpoint
        if cp.size < held.size:
            raise ProofError(f"the proof's checkpoint (size {cp.size}) is older than {t.source} (size {held.size}): "
                             f"it cannot show the entries are in the history already held; ask for a proof "
                             f"against a checkpoint of size {held.size} or more")
        if cp.size == held.size:
            if cp.root != held.root:
                raise ProofError(f"the proof's checkpoint (size {cp.size}) has another root than {t.source} "
                                 f"(size {held.size}): the log signed two histories (a fork)")
            continue
        if held.size in proofs:
            if not verify_consistency(held.size, cp.size, held.root, cp.root, proofs[held.size]):
                raise ProofError(f"the proof's checkpoint (size {cp.size}) is not consistent with {t.source} "
                                 f"(size {held.size}): the consistency proof in the file does not verify "
                                 "(a fork, or a changed proof)")
            continue
        if witnesses is not None and witnesses.quorum and witnesses.met(new.cosigners):
            notes.append(f"consistency with {t.source} (size {held.size}) rests on the witnesses' cosignatures "
                         "(the file carries no consistency proof from that size)")
            continue
        raise ProofError(f"the proof's checkpoint (size {cp.size}) is not shown to extend {t.source} (size "
                         f"{held.size}): the file carries no consistency proof from size {held.size}; make the "
                         f"proof with `masb audit prove EVENT_ID --extends {held.size}`")


def parse_proof_file(text: str | bytes) -> dict[str, Any]:
    try:
        doc = jsonin.loads(text)  # strict: a repeated key ("tree_size" twice) would be ambiguous
    except jsonin.JsonInputError as exc:
        raise ProofError("not a JSON proof file: " + "; ".join(str(p) for p in exc.problems)) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ProofError(f"not a {FORMAT} file")
    if doc.get("version") != VERSION:
        raise ProofError(f"unsupported proof file version (this reader knows {VERSION})")
    return doc


def check_proof(doc: dict[str, Any], verifiers: list[str], origin: str,
                trusted: Sequence[TrustedCheckpoint] = (), witnesses: Witnesses | None = None) -> CheckedProof:
    """Verify a proof file offline with verifier keys and an origin the auditor trusts (the file's
    own "origin" is informational only). Raises ProofError saying what does not verify.

    trusted: checkpoints the auditor already holds: the proof's checkpoint must equal or extend each
      (a consistency proof in the file's "extends", or the witnesses' quorum, shows the extension).
    witnesses: the checkpoint the proof leads to must carry the quorum's cosignatures."""
    kind = doc.get("type")
    notes = []
    if doc.get("origin") != origin:
        notes.append("the proof file names another origin; only the trusted origin was used")
    extends = _parse_extends(doc)
    if kind == "inclusion":
        opened = _open(doc.get("checkpoint"), "checkpoint", verifiers, origin, witnesses)
        _require_quorum(opened, "the proof's checkpoint", witnesses)
        cp = opened.checkpoint
        size = _int(doc, "tree_size")
        if size != cp.size:
            raise ProofError(f"tree_size {size} is not the signed checkpoint's size {cp.size}")
        items = doc.get("inclusions")
        if not isinstance(items, list) or not items:
            raise ProofError("inclusions: must be a non-empty list")
        checked = CheckedProof("inclusion", cp, notes=notes, opened=opened)
        for k, item in enumerate(items, start=1):
            what = f"inclusion {k}"
            if not isinstance(item, dict):
                raise ProofError(f"{what}: must be an object")
            index = _int(item, "index")
            entry = _unb64(item.get("entry"), f"{what}.entry")
            path = _hashes(item.get("proof"), f"{what}.proof")
            if not index < size:
                raise ProofError(f"{what}: index {index} is outside the tree of size {size}")
            if not verify_inclusion(leaf_hash(entry), index, size, path, cp.root):
                raise ProofError(f"{what} (entry {index + 1}): the proof does not lead from this entry to the "
                                 f"signed root of size {size}; the entry, its index or the proof was changed")
            try:
                checked.entries.append((index, decode_entry(entry)))
            except AuditEntryError as exc:
                raise ProofError(f"{what}: {exc}") from None
        _check_trusted(opened, trusted, extends, witnesses, notes)
        return checked
    if kind == "consistency":
        old = _open(doc.get("old_checkpoint"), "old_checkpoint", verifiers, origin).checkpoint
        opened = _open(doc.get("new_checkpoint"), "new_checkpoint", verifiers, origin, witnesses)
        _require_quorum(opened, "new_checkpoint", witnesses)
        new = opened.checkpoint
        if (_int(doc, "old_size"), _int(doc, "new_size")) != (old.size, new.size):
            raise ProofError("old_size/new_size are not the sizes of the signed checkpoints")
        path = _hashes(doc.get("proof"), "proof")
        if not verify_consistency(old.size, new.size, old.root, new.root, path):
            raise ProofError(f"consistency proof from size {old.size} to {new.size} does not verify: the newer "
                             "checkpoint is not shown to extend the older one (a fork or a changed proof)")
        # The file's own proof shows the extension from its old checkpoint: a trusted checkpoint
        # equal to that one is covered by it.
        for t in trusted:
            if t.checkpoint.size == old.size and t.checkpoint.root != old.root:
                raise ProofError(f"old_checkpoint (size {old.size}) has another root than {t.source}: the log "
                                 "signed two histories (a fork)")
            if t.checkpoint.size == old.size:
                extends.setdefault(old.size, path)
        _check_trusted(opened, trusted, extends, witnesses, notes)
        return CheckedProof("consistency", new, old_checkpoint=old, notes=notes, opened=opened)
    raise ProofError("type: must be 'inclusion' or 'consistency'")
