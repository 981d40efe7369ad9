"""Records of the checkpoints topic (format in docs/audit.md, "Checkpoint record").

Value = UTF-8 JSON {"format": "masb-checkpoint-record-v1", "note": <signed note>, "next_offset": <int>,
"compact_range": <CompactRange.to_dict()>}. Verifiers use only "note"; the other two let the
checkpointer resume after a restart without replaying the whole log, and are checked against the
signed root before they are trusted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from streams import jsonin
from streams.audit.checkpoint import CheckpointError, open_checkpoint
from streams.audit.merkle import CompactRange
from streams.errors import CheckFailed

RECORD_FORMAT = "masb-checkpoint-record-v1"


class CheckpointRecordError(CheckFailed, ValueError):
    """A checkpoints-topic record that is malformed or does not match its signed note."""


@dataclass(frozen=True)
class CheckpointRecord:
    note: str
    next_offset: int
    compact_range: CompactRange


def encode_checkpoint_record(note: str, next_offset: int, compact_range: CompactRange) -> bytes:
    return json.dumps({
        "format": RECORD_FORMAT, "note": note, "next_offset": next_offset,
        "compact_range": compact_range.to_dict(),
    }, sort_keys=True).encode()


def _record(value: bytes | None) -> dict:
    """The record's JSON object, with a "format" of this kind and a string "note"."""
    try:
        obj = jsonin.loads(value or b"")  # strict: a repeated "note" or "next_offset" would be read two ways
        if obj.get("format") != RECORD_FORMAT or not isinstance(obj.get("note"), str):
            raise ValueError
        return obj
    except (ValueError, AttributeError, TypeError, UnicodeDecodeError):
        raise CheckpointRecordError("not a masb-checkpoint-record-v1 record") from None


def note_of(value: bytes) -> str:
    """The signed note inside a record (what auditors verify), without trusting the rest."""
    return _record(value)["note"]


def open_checkpoint_record(value: bytes, verifiers: list[str], origin: str) -> CheckpointRecord:
    """Parse a record and check its signature, and that its resume state hashes to the signed root."""
    obj = _record(value)
    note = obj["note"]
    try:
        checkpoint = open_checkpoint(note, verifiers, origin=origin)
        compact_range = CompactRange.from_dict(obj["compact_range"])
        next_offset = int(obj["next_offset"])
    except (CheckpointError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointRecordError(f"checkpoint record refused: {exc}") from None
    if compact_range.size != checkpoint.size or compact_range.root() != checkpoint.root:
        raise CheckpointRecordError("checkpoint record's resume state does not match its signed root")
    return CheckpointRecord(note, next_offset, compact_range)
