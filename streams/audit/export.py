"""Offline audit bundle: a directory an auditor can verify with no access to Kafka.

  entries.bin      each entry as uint32 big-endian length || entry bytes, in log order
  checkpoints.txt  each signed note as "checkpoint <byte length>\\n" || note bytes || "\\n"
  manifest.json    origin, verifier keys, counts, SHA-256 and size of both files

The manifest protects against corruption and truncation in transit, not against
a forger: authenticity comes only from the checkpoint signatures, checked with
verifier keys the auditor obtained independently (not from the manifest).
Full byte layout: docs/audit.md, "Export".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from streams import jsonin
from streams.errors import CheckFailed

from .checkpoint import MAX_NOTE_BYTES, parse_verifier_key
from .trust import TrustedCheckpoint, Witnesses
from .verify import VerifyReport, verify_log

__all__ = ["ExportError", "ExportManifest", "write_export", "read_export", "verify_export"]

FORMAT = "masb-audit-export"
VERSION = 1
ENTRIES_FILE = "entries.bin"
CHECKPOINTS_FILE = "checkpoints.txt"
MANIFEST_FILE = "manifest.json"
MAX_ENTRY_BYTES = 0xFFFFFFFF
_LEN = struct.Struct(">I")
_HEADER = re.compile(rb"checkpoint (0|[1-9][0-9]{0,5})\n")
_CHUNK = 1 << 20


class ExportError(CheckFailed, ValueError):
    """The bundle is incomplete, corrupted or not a bundle. Messages name the file and the problem."""


@dataclass(frozen=True)
class ExportManifest:
    origin: str
    verifier_keys: list[str]
    entry_count: int
    checkpoint_count: int
    files: dict[str, dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "origin": self.origin,
            "verifier_keys": self.verifier_keys,
            "entry_count": self.entry_count,
            "checkpoint_count": self.checkpoint_count,
            "files": self.files,
            "meta": self.meta,
        }
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def _entry_bytes(item: bytes | tuple[int, bytes]) -> bytes:
    # Accept the (position, entry) pairs verify_log takes, so one reader feeds both.
    return item[1] if isinstance(item, tuple) else item


def write_export(
    directory: str | os.PathLike[str],
    entries: Iterable[bytes | tuple[int, bytes]],
    checkpoints: Iterable[str],
    meta: dict[str, Any],
) -> ExportManifest:
    """Write a bundle into `directory` (created if needed; existing bundle files are refused).

    meta must hold "origin" (str) and "verifier_keys" (list of key strings); any
    other keys are stored as-is under "meta" and must be JSON-serialisable and
    free of personal data (e.g. source topic, partition, first offset, time).
    """
    origin = meta.get("origin")
    keys = meta.get("verifier_keys")
    if not isinstance(origin, str) or not origin:
        raise ExportError("meta.origin: must be a non-empty string")
    if not isinstance(keys, list) or not keys:
        raise ExportError("meta.verifier_keys: must be a non-empty list of verifier key strings")
    for i, k in enumerate(keys):
        parse_verifier_key(k)  # raises CheckpointError naming the key problem
    extra = {k: v for k, v in meta.items() if k not in ("origin", "verifier_keys")}
    json.dumps(extra)  # fail before writing anything if not serialisable

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for name in (ENTRIES_FILE, CHECKPOINTS_FILE, MANIFEST_FILE):
        if (out / name).exists():
            raise ExportError(f"{name}: already exists; refusing to overwrite a bundle")

    files: dict[str, dict[str, Any]] = {}
    count = 0
    digest, size = hashlib.sha256(), 0
    tmp = out / (ENTRIES_FILE + ".partial")
    with open(tmp, "wb") as f:
        buf = bytearray()
        for item in entries:
            entry = _entry_bytes(item)
            if len(entry) > MAX_ENTRY_BYTES:
                raise ExportError(f"{ENTRIES_FILE}: entry {count + 1} is longer than 2^32-1 bytes")
            buf += _LEN.pack(len(entry))
            buf += entry
            count += 1
            if len(buf) >= _CHUNK:
                digest.update(buf)
                size += len(buf)
                f.write(buf)
                buf.clear()
        digest.update(buf)
        size += len(buf)
        f.write(buf)
    os.replace(tmp, out / ENTRIES_FILE)
    files[ENTRIES_FILE] = {"sha256": digest.hexdigest(), "bytes": size}

    framed = bytearray()
    n_cp = 0
    for number, note in enumerate(checkpoints, start=1):
        raw = note.encode("utf-8")
        if len(raw) > MAX_NOTE_BYTES or not raw.endswith(b"\n"):
            raise ExportError(f"{CHECKPOINTS_FILE}: checkpoint {number} is not a signed note (too long or no final newline)")
        framed += b"checkpoint %d\n" % len(raw) + raw + b"\n"
        n_cp = number
    (out / CHECKPOINTS_FILE).write_bytes(framed)
    files[CHECKPOINTS_FILE] = {"sha256": hashlib.sha256(framed).hexdigest(), "bytes": len(framed)}

    manifest = ExportManifest(origin, list(keys), count, n_cp, files, extra)
    # Written last: a bundle without a manifest is visibly incomplete.
    (out / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def _load_manifest(directory: Path) -> ExportManifest:
    try:
        doc = jsonin.loads((directory / MANIFEST_FILE).read_bytes())  # strict: no repeated keys
    except FileNotFoundError:
        raise ExportError(f"{MANIFEST_FILE}: missing; the bundle is incomplete") from None
    except jsonin.JsonInputError as exc:
        raise ExportError(f"{MANIFEST_FILE}: not valid JSON: " + "; ".join(str(p) for p in exc.problems)) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ExportError(f"{MANIFEST_FILE}: format is not {FORMAT}")
    if doc.get("version") != VERSION:
        raise ExportError(f"{MANIFEST_FILE}: unsupported version (this reader knows {VERSION})")
    checks = {
        "origin": lambda v: isinstance(v, str) and v,
        "verifier_keys": lambda v: isinstance(v, list) and all(isinstance(k, str) for k in v),
        "entry_count": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "checkpoint_count": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "files": lambda v: isinstance(v, dict),
        "meta": lambda v: isinstance(v, dict),
    }
    for key, ok in checks.items():
        if not ok(doc.get(key)):
            raise ExportError(f"{MANIFEST_FILE}: field {key} is missing or has the wrong type")
    unknown = sorted(set(doc["files"]) - {ENTRIES_FILE, CHECKPOINTS_FILE})
    if unknown:  # a manifest that claims to cover a file no reader checks says more than it proves
        raise ExportError(f"{MANIFEST_FILE}: files lists {len(unknown)} name(s) that are not part of an export "
                          f"(only {ENTRIES_FILE} and {CHECKPOINTS_FILE} are)")
    for name in (ENTRIES_FILE, CHECKPOINTS_FILE):
        info = doc["files"].get(name)
        if not (
            isinstance(info, dict)
            and isinstance(info.get("sha256"), str)
            and re.fullmatch(r"[0-9a-f]{64}", info["sha256"])
            and isinstance(info.get("bytes"), int)
        ):
            raise ExportError(f"{MANIFEST_FILE}: files.{name} needs sha256 (64 hex) and bytes (integer)")
    return ExportManifest(
        doc["origin"], doc["verifier_keys"], doc["entry_count"], doc["checkpoint_count"], doc["files"], doc["meta"]
    )


def _check_file(path: Path, info: dict[str, Any]) -> None:
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise ExportError(f"{path.name}: missing") from None
    if actual != info["bytes"]:
        raise ExportError(f"{path.name}: size is {actual} bytes, manifest says {info['bytes']}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != info["sha256"]:
        raise ExportError(f"{path.name}: SHA-256 does not match the manifest; the file was changed or corrupted")


def _parse_checkpoints(data: bytes) -> list[str]:
    notes: list[str] = []
    i = 0
    while i < len(data):
        m = _HEADER.match(data, i)
        if not m:
            raise ExportError(f"{CHECKPOINTS_FILE}: record {len(notes) + 1}: expected 'checkpoint <length>' line")
        length = int(m.group(1))
        if length > MAX_NOTE_BYTES:
            raise ExportError(f"{CHECKPOINTS_FILE}: record {len(notes) + 1}: longer than a signed note may be "
                              f"({MAX_NOTE_BYTES} bytes)")
        start, end = m.end(), m.end() + length
        if end + 1 > len(data) or data[end : end + 1] != b"\n":
            raise ExportError(f"{CHECKPOINTS_FILE}: record {len(notes) + 1}: length does not match its content")
        try:
            notes.append(data[start:end].decode("utf-8"))
        except UnicodeDecodeError:
            raise ExportError(f"{CHECKPOINTS_FILE}: record {len(notes) + 1}: not UTF-8") from None
        i = end + 1
    return notes


def _iter_entries(path: Path, expected: int) -> Iterator[tuple[int, bytes]]:
    index = 0
    with open(path, "rb", buffering=_CHUNK) as f:
        while True:
            head = f.read(4)
            if not head:
                break
            if len(head) < 4:
                raise ExportError(f"{ENTRIES_FILE}: entry {index + 1}: truncated length prefix")
            (length,) = _LEN.unpack(head)
            body = f.read(length)
            if len(body) != length:
                raise ExportError(f"{ENTRIES_FILE}: entry {index + 1}: truncated body")
            yield index, body
            index += 1
    if index != expected:
        raise ExportError(f"{ENTRIES_FILE}: holds {index} entries, manifest says {expected}")


def read_export(
    directory: str | os.PathLike[str], check_hashes: bool = True
) -> tuple[Iterator[tuple[int, bytes]], list[str], ExportManifest]:
    """Open a bundle: (entries as (0-based index, bytes), signed notes, manifest).

    With check_hashes (default) both files are hashed and compared with the
    manifest before anything is returned; the entry iterator also checks the
    framing and the count as it goes and raises ExportError on a mismatch.
    """
    root = Path(directory)
    manifest = _load_manifest(root)
    entries_path, cps_path = root / ENTRIES_FILE, root / CHECKPOINTS_FILE
    if check_hashes:
        _check_file(entries_path, manifest.files[ENTRIES_FILE])
        _check_file(cps_path, manifest.files[CHECKPOINTS_FILE])
    try:
        notes = _parse_checkpoints(cps_path.read_bytes())
    except FileNotFoundError:
        raise ExportError(f"{CHECKPOINTS_FILE}: missing") from None
    if len(notes) != manifest.checkpoint_count:
        raise ExportError(f"{CHECKPOINTS_FILE}: holds {len(notes)} checkpoints, manifest says {manifest.checkpoint_count}")
    if not entries_path.exists():
        raise ExportError(f"{ENTRIES_FILE}: missing")
    return _iter_entries(entries_path, manifest.entry_count), notes, manifest


def verify_export(
    directory: str | os.PathLike[str],
    verifiers: list[str],
    origin: str,
    progress: Callable[[int], None] | None = None,
    trusted: Sequence[TrustedCheckpoint] = (),
    witnesses: Witnesses | None = None,
) -> VerifyReport:
    """read_export + verify_log with keys, origin, trusted checkpoints and witnesses the auditor
    holds (never the manifest's)."""
    entries, notes, manifest = read_export(directory)
    report = verify_log(entries, notes, verifiers, origin, progress, trusted=trusted, witnesses=witnesses)
    if manifest.origin != origin:
        report.notes.append("the manifest names another origin; only the trusted origin was used")
    return report
