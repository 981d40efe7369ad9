"""ISO 8601 durations (retention, deadline) and the delivery deadline of a share."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from .vocab import NEXT_SCHOOL_DAY

if TYPE_CHECKING:  # pragma: no cover
    from .calendar import SchoolCalendar
    from .model import Share

LONDON = ZoneInfo("Europe/London")
SCHOOL_DAY_START = time(8, 0)

# PnYnMnWnDTnHnMnS with integer components, at least one component, "T" only when a time part follows.
# ASCII digits only: \d and int() would accept any Unicode digit ("P８Y").
_DURATION = re.compile(
    r"P(?:(?P<years>[0-9]+)Y)?(?:(?P<months>[0-9]+)M)?(?:(?P<weeks>[0-9]+)W)?(?:(?P<days>[0-9]+)D)?"
    r"(?:T(?=[0-9])(?:(?P<hours>[0-9]+)H)?(?:(?P<minutes>[0-9]+)M)?(?:(?P<seconds>[0-9]+)S)?)?",
    re.ASCII,
)


@dataclass(frozen=True)
class Duration:
    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0
    hours: int = 0
    minutes: int = 0
    seconds: int = 0

    @property
    def is_calendar(self) -> bool:
        """Years and months have no fixed length, so they cannot be added to an instant exactly."""
        return bool(self.years or self.months)

    def as_timedelta(self) -> timedelta:
        if self.is_calendar:
            raise ValueError("a duration with years or months has no fixed length")
        return timedelta(weeks=self.weeks, days=self.days, hours=self.hours, minutes=self.minutes, seconds=self.seconds)


@lru_cache(maxsize=256)
def parse_duration(text: str) -> Duration:
    """Parse an ISO 8601 duration such as P6Y, P30D or PT2H; raises ValueError (message names the problem)."""
    match = _DURATION.fullmatch(text) if isinstance(text, str) and text != "P" else None
    if match is None:
        raise ValueError("not an ISO 8601 duration like P6Y, P30D or PT2H")
    parts = {name: int(value) for name, value in match.groupdict().items() if value is not None}
    duration = Duration(**parts)
    if not any(parts.values()):
        raise ValueError("must be longer than zero")
    return duration


def check_deadline(text: str) -> None:
    """A deadline is `next_school_day` or a fixed-length duration (no years or months)."""
    if text == NEXT_SCHOOL_DAY:
        return
    check_fixed_duration(text)


def check_fixed_duration(text: str) -> timedelta:
    """A duration that can be added to an instant exactly (no years or months); raises ValueError."""
    duration = parse_duration(text)
    if duration.is_calendar:
        raise ValueError("uses years or months, which have no fixed length; use weeks, days, hours or minutes")
    return duration.as_timedelta()


def next_school_day_start(sent_at: datetime, calendar: "SchoolCalendar | None" = None) -> datetime:
    """08:00 Europe/London on the first school day after sent_at's London date.

    Without a calendar every Monday-to-Friday date is a school day; with the policy's school
    calendar, a weekday inside a term that is not closed (docs/policy.md, `deadlines`).
    """
    day: date = sent_at.astimezone(LONDON).date() + timedelta(days=1)
    while not (calendar.is_school_day(day) if calendar is not None else day.weekday() < 5):
        day += timedelta(days=1)
    return datetime.combine(day, SCHOOL_DAY_START, tzinfo=LONDON)


def deliver_by(share: "Share", sent_at: datetime) -> datetime:
    """When the recipient of `share` must have the data, for data sent at `sent_at` (timezone-aware)."""
    if sent_at.tzinfo is None or sent_at.utcoffset() is None:
        raise ValueError("sent_at must be timezone-aware")
    if share.deadline == NEXT_SCHOOL_DAY:
        return next_school_day_start(sent_at, share.school_calendar)
    return sent_at + parse_duration(share.deadline).as_timedelta()
