"""agents/faust_fixes.py: a record whose hand-over to the streams a rebalance interrupts is not
marked as read (faust 0.15 marked it, and later dropped it unrouted when it was fetched again)."""

from __future__ import annotations

import asyncio
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


def run_hand_over(suspend_at: int | None, *, completes: bool = False, seek_at: int | None = None) -> FetchLoop:
    async def go() -> FetchLoop:
        loop = FetchLoop()

        async def callback(message):
            if message.offset == suspend_at:  # a rebalance begins while this record is handed over
                loop.suspend_flow.set()
                if not completes:
                    await asyncio.sleep(3600)
            if message.offset == seek_at:  # the partitions are sought while it is handed over
                faust_fixes._next_seek_generation(loop)
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


def test_a_record_handed_over_while_the_partitions_are_sought_stays_unread():
    # A seek resets the read offsets to the committed ones; marking this record after it would
    # drop the record when it is fetched again.
    loop = run_hand_over(suspend_at=None, seek_at=3)
    assert loop.handed == [0, 1, 2, 3] and loop.read_offset[TP] == 2


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


def offsets_book(acked: list[int], committed=None, floor=None):
    from intervaltree import IntervalTree

    book = SimpleNamespace(_acked=defaultdict(list, {TP: list(acked)}), _committed_offset=defaultdict(lambda: None),
                           _gap=defaultdict(IntervalTree), _acked_index=defaultdict(set, {TP: set(acked)}))
    book._committed_offset[TP] = committed
    if floor is not None:
        book._masb_floors = {TP: floor}
    return book


def test_nothing_is_committed_past_a_record_never_acknowledged_at_the_head_of_a_new_partition():
    assert faust_fixes._new_offset(offsets_book([10, 11, 12], floor=0), TP) is None  # 0-9 never acknowledged
    assert faust_fixes._new_offset(offsets_book([0, 1, 2], floor=0), TP) == 3
    # faust 0.15 alone commits past them: it skips the check when nothing was committed yet
    assert faust_fixes._ORIGINAL["_new_offset"](offsets_book([10, 11, 12]), TP) == 13


def test_nothing_is_committed_past_the_unacknowledged_record_at_the_committed_offset():
    # A committed offset names the next record to read: 31 here, never acknowledged.
    assert faust_fixes._new_offset(offsets_book([32, 33], committed=31), TP) is None
    assert faust_fixes._new_offset(offsets_book([31, 32, 33], committed=31), TP) == 34
    # faust 0.15 alone lets one such record through (its check is `min(acked) - committed > 1`)
    assert faust_fixes._ORIGINAL["_new_offset"](offsets_book([32, 33], committed=31), TP) == 34
