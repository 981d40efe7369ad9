"""The policy's `deadlines` section: how long a delivery is tracked (expiry) and the school calendar
that "next school day" deadlines follow (docs/policy.md, docs/deadlines.md).

    deadlines:
      expiry: P5D                      # optional, default P5D (NHS MESH's non-delivery period)
      school_calendar:                 # optional; without it every Monday to Friday is a school day
        terms:
          - {start: 2026-09-02, end: 2026-10-23}
          - {start: 2026-11-02, end: 2026-12-18}
        closed: [2026-11-30]           # optional: INSET days, bank holidays inside a term

A school day is a Monday-to-Friday date inside a term (start and end inclusive) that is not closed.
Outside the calendar's span (before the first term's start, after the last term's end) every
weekday counts, as without a calendar: a calendar that was not renewed makes deadlines earlier,
never later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Callable, Mapping

DEFAULT_EXPIRY = "P5D"
DEADLINES_KEYS = ("expiry", "school_calendar")
CALENDAR_KEYS = ("terms", "closed")
TERM_KEYS = ("start", "end")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)  # YYYY-MM-DD only (fromisoformat takes more)
BASE = ("deadlines", "school_calendar")

# problem(where shown, path in the document, message): the policy parser names the file and line.
Problem = Callable[[str, tuple, str], None]


@dataclass(frozen=True)
class Term:
    start: date
    end: date  # inclusive


@dataclass(frozen=True)
class SchoolCalendar:
    terms: tuple[Term, ...]           # sorted by start, not overlapping, at least one
    closed: frozenset[date] = field(default_factory=frozenset)

    def is_school_day(self, day: date) -> bool:
        if day.weekday() >= 5:
            return False
        if day < self.terms[0].start or day > self.terms[-1].end:
            return True  # outside the calendar's span: every weekday counts
        return day not in self.closed and any(t.start <= day <= t.end for t in self.terms)

    def to_document(self) -> dict[str, Any]:
        document: dict[str, Any] = {"terms": [{"start": t.start.isoformat(), "end": t.end.isoformat()}
                                              for t in self.terms]}
        if self.closed:
            document["closed"] = [d.isoformat() for d in sorted(self.closed)]
        return document


@dataclass(frozen=True)
class DeadlineSettings:
    """How long deliveries are tracked before a non-delivery report, and the school calendar."""

    expiry: str = DEFAULT_EXPIRY
    school_calendar: SchoolCalendar | None = None

    def to_document(self) -> dict[str, Any] | None:
        """The normalised section, or None when everything is the default (the digest then stays
        what it was before the section existed)."""
        document: dict[str, Any] = {}
        if self.expiry != DEFAULT_EXPIRY:
            document["expiry"] = self.expiry
        if self.school_calendar is not None:
            document["school_calendar"] = self.school_calendar.to_document()
        return document or None


def _as_date(value: Any) -> date | None:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and _DATE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:  # e.g. month 13
            return None
    return None


def parse_school_calendar(value: Any, problem: Problem) -> SchoolCalendar | None:
    """Validate `deadlines.school_calendar`; every problem goes to problem(where, path, what)."""
    where = "deadlines.school_calendar"
    if not isinstance(value, Mapping):
        problem(where, BASE, f"must be a mapping, not {type(value).__name__}")
        return None
    for key in value:
        if key not in CALENDAR_KEYS:
            problem(where, BASE + (key,), f"unknown key {str(key)!r}")
    if "terms" not in value:
        problem(where, BASE, "missing required key 'terms'")
        return None
    raw_terms = value["terms"]
    if not isinstance(raw_terms, list) or not raw_terms:
        problem(where, BASE + ("terms",), "terms: must be a non-empty list of {start, end} dates")
        return None
    terms: list[tuple[int, Term]] = []
    ok = True
    for i, raw in enumerate(raw_terms):
        here, path = f"{where}.terms[{i}]", BASE + ("terms", i)
        if not isinstance(raw, Mapping):
            problem(here, path, f"must be a mapping, not {type(raw).__name__}")
            ok = False
            continue
        unknown = [k for k in raw if k not in TERM_KEYS]
        for key in unknown:
            problem(here, path + (key,), f"unknown key {str(key)!r}")
        bounds = {}
        for key in TERM_KEYS:
            if key not in raw:
                problem(here, path, f"missing required key {key!r}")
            elif (parsed := _as_date(raw[key])) is None:
                problem(here, path + (key,), f"{key}: must be a date like 2026-09-02")
            else:
                bounds[key] = parsed
        if len(bounds) != 2 or unknown:
            ok = False
            continue
        if bounds["end"] < bounds["start"]:
            problem(here, path + ("end",), f"end {bounds['end'].isoformat()} is before start "
                                           f"{bounds['start'].isoformat()}")
            ok = False
            continue
        terms.append((i, Term(bounds["start"], bounds["end"])))
    terms.sort(key=lambda item: item[1].start)
    for (i, earlier), (j, later) in zip(terms, terms[1:]):
        if later.start <= earlier.end:
            problem(f"{where}.terms[{j}]", BASE + ("terms", j), f"overlaps terms[{i}] ({earlier.start.isoformat()} "
                                                                f"to {earlier.end.isoformat()})")
            ok = False
    closed: set[date] = set()
    raw_closed = value.get("closed", [])
    if not isinstance(raw_closed, list):
        problem(where, BASE + ("closed",), "closed: must be a list of dates")
        ok = False
        raw_closed = []
    for i, raw in enumerate(raw_closed):
        day = _as_date(raw)
        here, path = f"{where}.closed[{i}]", BASE + ("closed", i)
        if day is None:
            problem(here, path, "must be a date like 2026-11-30")
            ok = False
        elif day in closed:
            problem(here, path, f"{day.isoformat()} listed twice")
            ok = False
        elif not any(t.start <= day <= t.end for _, t in terms):
            problem(here, path, f"{day.isoformat()} is not inside a term (days between terms are holidays already)")
            ok = False
        else:
            closed.add(day)
    if not ok or not terms:
        return None
    return SchoolCalendar(tuple(t for _, t in terms), frozenset(closed))
