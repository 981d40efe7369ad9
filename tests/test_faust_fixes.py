"""agents/faust_fixes.py: a record whose hand-over to the streams a rebalance interrupts is not
marked as read, and the commit guard commits only as far as records were handled."""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from types import SimpleNamespace

import faust
from faust.transport.consumer import Consumer
from mode import Service

from agents import faust_fixes
from agents.faust_fixes import _hand_over

TP = ("case-events", 4)


class FetchLoop(Service):
    """The parts of faust's consumer the hand-over uses: the flow's suspend event, the read offsets
    and the commit counters; mode's real wait_first."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()
        self.read_offset: dict = defaultdict(lambda: None)
        self._n_acked = 0
        self.handed: list[int] = []

    async def _add_gap(self, tp, start, end):  # pragma: no cover - no gaps in these fetches
        raise AssertionError("no gap expected")


async def fetch(offsets):
    for offset in offsets:
        yield TP, SimpleNamespace(offset=offset, topic=TP[0])


def run_hand_over(suspend_at: int | None, *, completes: bool = False) -> FetchLoop:
    async def go() -> FetchLoop:
        loop = FetchLoop()

        async def callback(message):
            if message.offset == suspend_at:  # a rebalance begins while this record is handed over
                loop.suspend_flow.set()
                if not completes:
                    await asyncio.sleep(3600)
            loop.handed.append(message.offset)

        await _hand_over(loop, fetch(range(5)), callback, loop.read_offset.__getitem__,
                         loop.read_offset.__setitem__, None, lambda topic: True)
        return loop
    return asyncio.run(go())


def test_a_fetch_handed_over_whole_marks_its_last_record_read():
    loop = run_hand_over(suspend_at=None)
    assert loop.handed == [0, 1, 2, 3, 4] and loop.read_offset[TP] == 4


def test_records_a_rebalance_interrupted_stay_unread_so_they_are_fetched_and_handed_over_again():
    loop = run_hand_over(suspend_at=2)
    assert loop.handed == [0, 1]
    assert loop.read_offset[TP] == 1  # faust 0.15 marked 4: 2, 3 and 4 were then dropped as already seen


def test_a_record_handed_over_while_the_flow_is_suspended_stays_unread():
    # The stream has it in its queue, which resuming the flow empties: it must be fetched again.
    loop = run_hand_over(suspend_at=2, completes=True)
    assert loop.handed == [0, 1, 2] and loop.read_offset[TP] == 1


def test_the_fix_is_installed_on_the_pinned_faust_only(monkeypatch):
    names = ("_drain_messages", "perform_seek", "_new_offset")
    original = {name: getattr(Consumer, name) for name in names}
    try:
        monkeypatch.setattr(faust, "__version__", "0.15.3")
        assert faust_fixes.install() and Consumer._drain_messages is faust_fixes._drain_messages
        assert Consumer._new_offset is faust_fixes._new_offset
        for name in names:
            setattr(Consumer, name, original[name])
        monkeypatch.setattr(faust, "__version__", "0.16.0")
        assert not faust_fixes.install() and Consumer._drain_messages is original["_drain_messages"]
    finally:
        for name in names:
            setattr(Consumer, name, original[name])


def offsets_book(acked: list[int], committed=None, floor=None, tp=TP):
    from intervaltree import IntervalTree

    book = SimpleNamespace(_acked=defaultdict(list, {tp: list(acked)}), _committed_offset=defaultdict(lambda: None),
                           _gap=defaultdict(IntervalTree), _acked_index=defaultdict(set, {tp: set(acked)}))
    book._committed_offset[tp] = committed
    if floor is not None:
        book._masb_floors = {tp: floor}
    return book


class Partition(tuple):
    """faust's TP: a (topic, partition) named tuple."""

    topic = property(lambda self: self[0])


GUARDED = Partition(("g.case-events", 0))
OTHER = Partition(("g.other", 0))


def commit_point(handled: list[int], committed=None, floor=None, acked=None):
    """The offset the guard lets faust commit after the router handled these offsets (faust's own
    acknowledgements, ``acked``, default to the same offsets)."""
    faust_fixes._HANDLED.pop(GUARDED, None)
    faust_fixes.guard([GUARDED.topic])
    faust_fixes.handled(SimpleNamespace(tp=GUARDED, offset=o) for o in handled)
    book = offsets_book(handled if acked is None else acked, committed, floor, tp=GUARDED)
    return faust_fixes._new_offset(book, GUARDED), book


def test_the_guard_commits_only_as_far_as_records_were_handled_from_the_committed_offset():
    # A committed offset names the next record to read: 31 here, never handled.
    assert commit_point([32, 33], committed=31)[0] is None
    assert commit_point([31, 32, 33, 35], committed=31)[0] == 34  # 34 never handled either
    # faust 0.15 alone commits past 31 (its check is `min(acked) - committed > 1`) and past 34
    assert faust_fixes._ORIGINAL["_new_offset"](offsets_book([32, 33], committed=31), TP) == 34


def test_the_guard_commits_nothing_of_a_never_committed_partition_until_its_first_record_is_handled():
    assert commit_point([10, 11, 12], floor=0)[0] is None  # 0-9 never handled
    assert commit_point([0, 1, 2], floor=0)[0] == 3
    assert commit_point([0, 1, 2])[0] is None  # no floor read yet: nothing is known to be done
    # faust 0.15 alone commits past them: it skips the check when nothing was committed yet
    assert faust_fixes._ORIGINAL["_new_offset"](offsets_book([10, 11, 12]), TP) == 13


def test_the_guard_ignores_what_faust_counts_as_acknowledged():
    # faust's acknowledgements say 31-33 (a record it marked read and skipped counts as done there)
    assert commit_point([32, 33], committed=31, acked=[31, 32, 33])[0] is None


def test_the_guard_forgets_what_was_committed():
    offset, book = commit_point([40, 41, 42, 43], committed=42, acked=[40, 41, 42, 43])
    assert offset == 44
    assert faust_fixes._HANDLED[GUARDED] == {42, 43} and book._acked[GUARDED] == [42, 43]


def test_topics_not_guarded_keep_fausts_commit_rule():
    book = offsets_book([5, 6, 7], committed=5, tp=OTHER)
    assert faust_fixes._new_offset(book, OTHER) == 8


def test_the_worker_consumer_waits_at_most_fetch_max_wait_for_a_fetch() -> None:
    # faust's 1.5 s long poll held case-events records behind fetches of quiet partitions
    # (publish-to-partner latency of about 1.2 s at 130 events/s, bench/bench_worker_cpu.py).
    assert faust_fixes.install()

    async def made() -> int:
        app = faust.App(f"fetch-wait-{os.urandom(3).hex()}", broker="kafka://127.0.0.1:9", autodiscover=False)
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            return consumer._fetch_max_wait_ms
        finally:
            await consumer.stop()

    assert asyncio.run(made()) == faust_fixes.FETCH_MAX_WAIT_MS <= 100
