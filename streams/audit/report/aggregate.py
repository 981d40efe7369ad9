"""Counts over time for the report's charts: rows are counted into at most ~60 calendar buckets
first, so drawing costs the same for a hundred exchanges as for a million."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from .model import parse_iso

MAX_BUCKETS = 60

# Bucket sizes from finest to coarsest, with their (approximate, for months and years) length.
_UNITS: tuple[tuple[str, timedelta], ...] = (
    ("minute", timedelta(minutes=1)), ("hour", timedelta(hours=1)), ("day", timedelta(days=1)),
    ("week", timedelta(days=7)), ("month", timedelta(days=31)), ("year", timedelta(days=366)),
)


def _floor(t: datetime, unit: str) -> datetime:
    t = t.astimezone(timezone.utc)
    if unit == "minute":
        return t.replace(second=0, microsecond=0)
    if unit == "hour":
        return t.replace(minute=0, second=0, microsecond=0)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "day":
        return day
    if unit == "week":  # ISO weeks start on Monday
        return day - timedelta(days=day.weekday())
    if unit == "month":
        return day.replace(day=1)
    return day.replace(month=1, day=1)


def _next(t: datetime, unit: str) -> datetime:
    if unit == "month":
        return t.replace(year=t.year + t.month // 12, month=t.month % 12 + 1)
    if unit == "year":
        return t.replace(year=t.year + 1)
    return t + dict(_UNITS)[unit]


@dataclass(frozen=True)
class Buckets:
    unit: str  # minute, hour, day, week (from Monday) or month or year, in UTC
    starts: tuple[datetime, ...]  # consecutive, the first at or before the period's start

    def index(self, t: datetime) -> int:
        return max(0, bisect.bisect_right(self.starts, t) - 1)


def buckets_for(first: datetime, last: datetime, max_buckets: int = MAX_BUCKETS) -> Buckets:
    """The finest calendar unit that covers first..last in at most max_buckets buckets."""
    if last < first:
        first, last = last, first
    for unit, length in _UNITS:
        if (last - _floor(first, unit)) / length < max_buckets - 1 or unit == "year":
            break
    starts = [_floor(first, unit)]
    while _next(starts[-1], unit) <= last:
        starts.append(_next(starts[-1], unit))
    return Buckets(unit, tuple(starts))


def counts_over_time(rows: list[dict[str, Any]], series: Callable[[dict[str, Any]], str],
                     buckets: Buckets) -> dict[str, list[int]]:
    """{series name: [count per bucket]} of rows by their `recorded_at`, largest series first."""
    out: dict[str, list[int]] = {}
    for row in rows:
        name = series(row)
        counts = out.get(name)
        if counts is None:
            counts = out[name] = [0] * len(buckets.starts)
        counts[buckets.index(parse_iso(row["recorded_at"]))] += 1
    return dict(sorted(out.items(), key=lambda item: (-sum(item[1]), item[0])))


def top_series(series: dict[str, list[int]], keep: int, other: str) -> dict[str, list[int]]:
    """The `keep` largest series, the rest summed into one named `other` (a legend stays readable)."""
    if len(series) <= keep + 1:
        return series
    names = list(series)
    out = {name: series[name] for name in names[:keep]}
    out[other] = [sum(values) for values in zip(*(series[name] for name in names[keep:]))]
    return out
