"""Breaking the worker on purpose, so that tests can watch it heal (only with MASB_FAULT_INJECTION=1).

    POST /debug/tasks/<task>/cancel           cancel a supervised task from inside, as an outage did
    POST /debug/tasks/<task>/hold?seconds=N   make the router or receipts agent hold its next batch
                                              for N seconds, so records wait behind an unmoving offset
"""

from __future__ import annotations

import asyncio
import time


class Faults:
    def __init__(self) -> None:
        self._holds: dict[str, float] = {}  # agent -> monotonic time until which it holds

    def hold_for(self, name: str, seconds: float) -> None:
        self._holds[name] = time.monotonic() + seconds

    async def hold(self, name: str) -> None:
        """Called by an agent before it sends a batch: waits while a hold on it lasts."""
        while (remaining := self._holds.get(name, 0.0) - time.monotonic()) > 0:
            await asyncio.sleep(min(remaining, 0.5))
