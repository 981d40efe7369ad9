"""The time MASB's worker goes by: the system clock, or, for tests only, a clock a test moves.

    MASB_CLOCK unset or ""       the system clock (UTC)
    MASB_CLOCK=file:/some/path   the time written in that file (one ISO 8601 date-time with a UTC
                                 offset, e.g. 2026-11-27T18:30:00+00:00), read again on every call

The file clock lets an integration test move a running worker six hours ahead by writing one file
instead of sleeping: the router stamps deliveries and deadlines with it, the deadline agent judges
them by it. It is a test setting: a production worker must leave MASB_CLOCK unset.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from streams.errors import InvalidInput

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(timezone.utc)


class ClockError(InvalidInput, ValueError):
    """A MASB_CLOCK setting or clock file that cannot be read as a time."""


class FileClock:
    """The time written in a file, read on every call (test-only: see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __call__(self) -> datetime:
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ClockError(f"clock file {self.path}: cannot read it ({exc.strerror})") from None
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ClockError(f"clock file {self.path}: not an ISO 8601 date-time") from None
        if moment.tzinfo is None:
            raise ClockError(f"clock file {self.path}: the time has no UTC offset")
        return moment.astimezone(timezone.utc)


def clock_from_setting(setting: str | None) -> Clock:
    """The clock a MASB_CLOCK value names; ClockError for anything else."""
    if not setting:
        return system_clock
    if setting.startswith("file:"):
        clock = FileClock(setting[len("file:"):])
        clock()  # fail at start, not on the first event
        return clock
    raise ClockError("MASB_CLOCK must be empty or file:PATH (a test setting)")
