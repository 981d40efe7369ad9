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
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from streams.errors import CheckFailed

from .checkpoint import Checkpoint, CheckpointError, open_checkpoint
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


def _matching_checkpoint(hashes: Sequence[bytes], candidates: list[tuple[str, Checkpoint]],
                         what: str) -> tuple[str, Checkpoint]:
    """The largest candidate whose root the log's entries reproduce."""
    for note, cp in sorted(candidates, key=lambda nc: nc[1].size, reverse=True):
        if cp.size <= len(hashes) and root_from_leaf_hashes(hashes[: cp.size]) == cp.root:
            return note, cp
    raise ProofError(f"no signed checkpoint that the log matches covers {what}; "
                     "run `masb audit verify`, or request a checkpoint and retry")


def make_inclusion_proof(entries: Sequence[bytes], notes: Sequence[str], verifiers: list[str], origin: str,
                         indexes: Sequence[int], positions: Sequence[int] | None = None) -> dict[str, Any]:
    """Proof file for the entries at `indexes` (0-based) against the latest signed checkpoint that
    covers all of them and that the log reproduces."""
    if not indexes:
        raise ProofError("no entry to prove")
    hashes = [leaf_hash(e) for e in entries]
    last = max(indexes)
    candidates = [(n, cp) for n, cp in _valid_checkpoints(notes, verifiers, origin) if cp.size > last]
    if not candidates:
        raise ProofError(f"entry {last + 1} is not yet covered by a signed checkpoint; "
                         "request one (POST /audit/checkpoint) or retry after the next one")
    note, cp = _matching_checkpoint(hashes, candidates, f"entry {last + 1}")
    inclusions = []
    for i in sorted(set(indexes)):
        inclusions.append({
            "index": i, "position": positions[i] if positions is not None else i, "entry": _b64(entries[i]),
            "proof": [_b64(h) for h in inclusion_proof(hashes, i, cp.size)],
        })
    return {"format": FORMAT, "version": VERSION, "type": "inclusion", "origin": origin, "tree_size": cp.size,
            "checkpoint": note, "inclusions": inclusions}


def make_consistency_proof(entries: Sequence[bytes], notes: Sequence[str], verifiers: list[str], origin: str,
                           old_size: int, new_size: int) -> dict[str, Any]:
    """Proof file that the signed checkpoint of new_size extends the signed checkpoint of old_size."""
    if not 0 <= old_size <= new_size:
        raise ProofError("consistency: need 0 <= OLD_SIZE <= NEW_SIZE")
    valid = _valid_checkpoints(notes, verifiers, origin)
    hashes = [leaf_hash(e) for e in entries]
    chosen = []
    for size in (old_size, new_size):
        same = [(n, cp) for n, cp in valid if cp.size == size]
        if not same:
            sizes = sorted({cp.size for _, cp in valid})
            near = ", ".join(str(s) for s in sizes[-10:])
            raise ProofError(f"no signed checkpoint of size {size} (latest sizes signed: {near or 'none'})")
        chosen.append(_matching_checkpoint(hashes, same, f"size {size}"))
    proof = consistency_proof(hashes, old_size, new_size)
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


def _open(note: Any, what: str, verifiers: list[str], origin: str) -> Checkpoint:
    if not isinstance(note, str):
        raise ProofError(f"{what}: must be a signed note (string)")
    try:
        return open_checkpoint(note, verifiers, origin=origin)
    except CheckpointError as exc:
        raise ProofError(f"{what}: refused: {exc}") from None


def parse_proof_file(text: str | bytes) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise ProofError("not a JSON proof file") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ProofError(f"not a {FORMAT} file")
    if doc.get("version") != VERSION:
        raise ProofError(f"unsupported proof file version (this reader knows {VERSION})")
    return doc


def check_proof(doc: dict[str, Any], verifiers: list[str], origin: str) -> CheckedProof:
    """Verify a proof file offline with verifier keys and an origin the auditor trusts (the file's
    own "origin" is informational only). Raises ProofError saying what does not verify."""
    kind = doc.get("type")
    notes = []
    if doc.get("origin") != origin:
        notes.append("the proof file names another origin; only the trusted origin was used")
    if kind == "inclusion":
        cp = _open(doc.get("checkpoint"), "checkpoint", verifiers, origin)
        size = _int(doc, "tree_size")
        if size != cp.size:
            raise ProofError(f"tree_size {size} is not the signed checkpoint's size {cp.size}")
        items = doc.get("inclusions")
        if not isinstance(items, list) or not items:
            raise ProofError("inclusions: must be a non-empty list")
        checked = CheckedProof("inclusion", cp, notes=notes)
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
        return checked
    if kind == "consistency":
        old = _open(doc.get("old_checkpoint"), "old_checkpoint", verifiers, origin)
        new = _open(doc.get("new_checkpoint"), "new_checkpoint", verifiers, origin)
        if (_int(doc, "old_size"), _int(doc, "new_size")) != (old.size, new.size):
            raise ProofError("old_size/new_size are not the sizes of the signed checkpoints")
        path = _hashes(doc.get("proof"), "proof")
        if not verify_consistency(old.size, new.size, old.root, new.root, path):
            raise ProofError(f"consistency proof from size {old.size} to {new.size} does not verify: the newer "
                             "checkpoint is not shown to extend the older one (a fork or a changed proof)")
        return CheckedProof("consistency", new, old_checkpoint=old, notes=notes)
    raise ProofError("type: must be 'inclusion' or 'consistency'")
