"""How many problems an error shows: the first MAX_SHOWN, then how many more (both doors, the same).

An event with 24,000 bad array entries must not print 24,000 lines (``masb publish``) or send a
multi-megabyte 400 body (HTTP ingest): the first problems say what is wrong, the count how much.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

MAX_SHOWN = 20

T = TypeVar("T")


def first(problems: Sequence[T], limit: int = MAX_SHOWN) -> tuple[list[T], int]:
    """The first ``limit`` problems and the number left out (0 when all are shown)."""
    return list(problems[:limit]), max(0, len(problems) - limit)


def more_line(left_out: int) -> str:
    """The line that ends a capped list: ``... and 23980 more problems``."""
    return f"... and {left_out} more problem{'s' if left_out != 1 else ''}"
