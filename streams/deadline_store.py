"""The deadline agent's book in RocksDB: memory that does not grow with the open deliveries.

The book holds one tracking per open delivery, for as long as the agreement's expiry (weeks): in a
dict that is about 1.4 KB of memory per delivery, for ever more deliveries. `RocksTrackings` keeps
them on disk instead, as a cache of the compacted topic `deadlines.state` (the book's durable copy,
docs/deadlines.md, "State"): it is emptied and loaded from that topic whenever a worker takes the
deadline work over, so nothing in it needs to survive a restart.

Key spaces (a byte prefix each; tracking keys are "<event id>/<agency id>" in UTF-8; times are
milliseconds since the epoch plus 2^62, 8 bytes big-endian, so that keys sort by time):

    t <key>                  -> header || the tracking's state record (Tracking.to_json)
    d <next due> <key>       -> ""          streams.deadlines.next_due: what a look at the clock reads
    o <deliver by> <key>     -> agency id   delivered, deadline set, required receipt not yet in
    e <key>                  -> agency id   an open escalation (not closed, not ended)

The header (17 bytes) records which index keys the tracking has (next due, deliver by, or all ones
for none; 1 if escalated), so that changing or deleting a tracking removes exactly those. A look
at the clock reads the `d` keys up to now, the gauges read the `o` keys up to now and the `e` keys:
what is due, overdue or escalated, never the whole book.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch

from streams.deadlines import Tracking, next_due, open_escalation

_TRACKING, _DUE, _OVERDUE, _ESCALATED = b"t", b"d", b"o", b"e"
_NONE = b"\xff" * 8
_OFFSET = 1 << 62
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_HEADER = 17
WRITE_BUFFER_BYTES = 2 * 1024 * 1024  # RocksDB's memtable: what the book may hold in memory before a flush
BLOCK_CACHE_BYTES = 4 * 1024 * 1024  # recently read blocks (RocksDB's default is 32 MiB per database)


def _time_key(moment: datetime | None) -> bytes:
    if moment is None:
        return _NONE
    delta = moment - _EPOCH
    millis = (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000
    return (millis + _OFFSET).to_bytes(8, "big")


class RocksTrackings:
    """A book's store (the interface of streams.deadlines.MemoryTrackings) in a RocksDB directory,
    created empty: whatever was there is removed first."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(WRITE_BUFFER_BYTES)
        options.set_max_write_buffer_number(2)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(BLOCK_CACHE_BYTES))
        table.set_cache_index_and_filter_blocks(True)  # their memory bounded by the cache too
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        # Most lookups are of keys not in the book (a DELIVERY's new tracking): without a bloom
        # filter each one searched every table, and a 120,000-delivery book spent most of the
        # worker's CPU there (bench/bench_soak.py, bench/bench_deadlines.py).
        table.set_bloom_filter(10, False)
        options.set_block_based_table_factory(table)
        self.db = Rdict(str(self.directory), options)
        self._count = 0
        self._last_read: tuple[bytes, bytes | None] | None = None  # (key, stored value): get, then put

    def close(self) -> None:
        """Close and remove the directory (the book lives on in the state topic)."""
        self.db.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- the store interface -----------------------------------------------------------------------
    def get(self, key: str) -> Tracking | None:
        raw = _TRACKING + key.encode()
        value = self.db.get(raw)
        self._last_read = (raw, value)  # a fold gets a tracking, then puts it: one lookup, not two
        return Tracking.from_json(value[_HEADER:]) if value is not None else None

    def put(self, t: Tracking) -> None:
        key = t.key.encode()
        batch = WriteBatch(raw_mode=True)
        if not self._unindex(key, batch):
            self._count += 1
        due, deliver_by = _time_key(next_due(t)), _NONE
        if due != _NONE:
            batch.put(_DUE + due + key, b"")
        if t.delivered and not t.satisfied and t.deliver_by is not None:
            deliver_by = _time_key(t.deliver_by)
            batch.put(_OVERDUE + deliver_by + key, t.agency_id.encode())
        escalated = open_escalation(t)
        if escalated:
            batch.put(_ESCALATED + key, t.agency_id.encode())
        batch.put(_TRACKING + key, due + deliver_by + (b"\x01" if escalated else b"\x00") + t.to_json())
        self.db.write(batch)

    def delete(self, key: str) -> None:
        raw = key.encode()
        batch = WriteBatch(raw_mode=True)
        if self._unindex(raw, batch):
            self._count -= 1
            batch.delete(_TRACKING + raw)
            self.db.write(batch)

    def _unindex(self, key: bytes, batch: WriteBatch) -> bool:
        """Remove the index keys of the stored tracking `key` into `batch`; False if there is none."""
        raw, last, self._last_read = _TRACKING + key, self._last_read, None
        old = last[1] if last is not None and last[0] == raw else self.db.get(raw)
        if old is None:
            return False
        due, deliver_by, escalated = old[:8], old[8:16], old[16]
        if due != _NONE:
            batch.delete(_DUE + due + key)
        if deliver_by != _NONE:
            batch.delete(_OVERDUE + deliver_by + key)
        if escalated:
            batch.delete(_ESCALATED + key)
        return True

    def __len__(self) -> int:
        return self._count

    def mapping(self) -> dict[str, Tracking]:
        """Every tracking (reads the whole book: for tests and tools, not for the worker's loop)."""
        return {key[1:].decode(): Tracking.from_json(value[_HEADER:])
                for key, value in self._range(_TRACKING, _TRACKING + b"\xff")}

    def due(self, now: datetime) -> list[Tracking]:
        """Trackings whose `next_due` has come, sorted by key."""
        found = []
        for key, _ in self._range(_DUE, _DUE + _time_key(now) + b"\xff"):
            t = self.get(key[9:].decode())
            if t is not None:
                found.append(t)
        return sorted(found, key=lambda t: t.key)

    def overdue_by_agency(self, now: datetime) -> dict[str, int]:
        return self._count_agencies(_OVERDUE, _OVERDUE + _time_key(now) + b"\xff")

    def open_escalations_by_agency(self) -> dict[str, int]:
        return self._count_agencies(_ESCALATED, _ESCALATED + b"\xff")

    # -- reading ranges ----------------------------------------------------------------------------
    def _count_agencies(self, start: bytes, end: bytes) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, agency in self._range(start, end):
            name = agency.decode()
            counts[name] = counts.get(name, 0) + 1
        return counts

    def _range(self, start: bytes, end: bytes):
        """(key, value) of the keys in [start, end), in key order."""
        it = self.db.iter()
        it.seek(start)
        while it.valid():
            key = it.key()
            if key >= end:
                break
            yield key, it.value()
            it.next()
