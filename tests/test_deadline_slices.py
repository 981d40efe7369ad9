"""The deadline agent shares the worker's event loop with the router (agents/deadlines.py): a long
fold is cut into slices, and the router's task runs between them."""
from __future__ import annotations

import asyncio
import time

from agents.deadlines import TimeSlices


def _ticks_during(work_items: int, sliced: bool) -> int:
    async def go() -> int:
        ticks = 0
        stop = False

        async def router() -> None:
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(router())
        await asyncio.sleep(0)
        before = ticks
        slices = TimeSlices(0.005)
        for _ in range(work_items):  # a fold: about 1 ms of synchronous work per audit entry
            if sliced:
                await slices.share()
            time.sleep(0.001)
        during = ticks - before
        stop = True
        await task
        return during

    return asyncio.run(go())


def test_other_tasks_run_during_a_long_fold() -> None:
    assert _ticks_during(100, sliced=True) >= 5


def test_without_slices_nothing_else_runs_during_a_fold() -> None:
    # What the slices are for: the same work unsliced holds the loop for all of its 100 ms.
    assert _ticks_during(100, sliced=False) == 0
