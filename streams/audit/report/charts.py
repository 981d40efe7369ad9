"""The report's charts, drawn by matplotlib as SVG and inlined in the page: no network, no script.

Each function takes counts already aggregated (aggregate.py) and returns one <svg> element as text,
or None when there is nothing to draw. Text stays text (svg.fonttype none) so that it is sharp,
searchable and printable; labels are never parsed as mathtext, whatever an agency id contains.
"""

from __future__ import annotations

import html
import io
import math
import re

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .aggregate import Buckets
from .model import DEADLINE_STATUSES
from .palette import SERIES_COLOURS, STATUS_COLOURS

_RC = {"svg.fonttype": "none", "text.parse_math": False, "font.family": "sans-serif",
       "font.sans-serif": ["DejaVu Sans"], "font.size": 10, "axes.spines.top": False, "axes.spines.right": False,
       "axes.titlesize": 11, "axes.titleweight": "bold", "axes.titlelocation": "left", "legend.frameon": False}
_TICK_FORMATS = {"minute": "%H:%M", "hour": "%d %b %H:00", "day": "%d %b", "week": "w/c %d %b",
                 "month": "%b %Y", "year": "%Y"}
WIDTH_IN = 10.0
MAX_TICKS = 12
MIN_SLOTS = 8  # bar widths on the time axis, however few buckets there are


def _inline(svg: str, chart_id: str, label: str) -> str:
    """matplotlib's SVG document as an element for an HTML page: no XML prolog, metadata or
    namespace URLs, and ids prefixed with chart_id so that several charts share one page."""
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{chart_id}-{m.group(1)}"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{chart_id}-{m.group(1)})", svg)
    svg = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{chart_id}-{m.group(1)}"', svg)
    return svg.replace("<svg ", f'<svg role="img" aria-label="{html.escape(label)}" ', 1).strip()


def _render(fig: Figure, chart_id: str, label: str) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    return _inline(buf.getvalue(), chart_id, label)


def _tick_labels(buckets: Buckets) -> tuple[list[int], list[str]]:
    step = max(1, math.ceil(len(buckets.starts) / MAX_TICKS))
    positions = list(range(0, len(buckets.starts), step))
    return positions, [buckets.starts[i].strftime(_TICK_FORMATS[buckets.unit]) for i in positions]


def stacked_over_time(chart_id: str, title: str, series: dict[str, list[int]], buckets: Buckets,
                      y_label: str, colours: dict[str, str] | None = None) -> str | None:
    """Stacked bars: one bar per time bucket, one colour per series (agency, reason code)."""
    if not series or not any(any(v) for v in series.values()):
        return None
    with matplotlib.rc_context({**_RC, "svg.hashsalt": chart_id}):
        fig = Figure(figsize=(WIDTH_IN, 3.0))
        ax = fig.add_subplot()
        x = list(range(len(buckets.starts)))
        bottom = [0] * len(x)
        for n, (name, counts) in enumerate(series.items()):
            colour = (colours or {}).get(name, SERIES_COLOURS[n % len(SERIES_COLOURS)])
            ax.bar(x, counts, 0.8, bottom=bottom, label=name, color=colour, edgecolor="white", linewidth=0.5)
            bottom = [b + c for b, c in zip(bottom, counts)]
        positions, labels = _tick_labels(buckets)
        ax.set_xticks(positions, labels, rotation=30 if len(labels) > 6 else 0,
                      ha="right" if len(labels) > 6 else "center")
        pad = max(0.0, (MIN_SLOTS - len(x)) / 2)  # a lone bar stays bar-sized, centred
        ax.set_xlim(-0.6 - pad, len(x) - 0.4 + pad)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(y_label)
        ax.set_xlabel(f"UTC, per {buckets.unit}")
        ax.set_title(title)
        ax.grid(axis="y", color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
        return _render(fig, chart_id, title)


def deadline_compliance(chart_id: str, title: str, counts: dict[str, dict[str, int]]) -> str | None:
    """Horizontal stacked bars: one bar per group (agency, agreement), one segment per deadline
    status, each segment labelled with its count."""
    if not counts:
        return None
    groups = list(counts)[::-1]  # matplotlib draws the first bar at the bottom
    with matplotlib.rc_context({**_RC, "svg.hashsalt": chart_id}):
        fig = Figure(figsize=(WIDTH_IN, 1.3 + 0.38 * len(groups)))
        ax = fig.add_subplot()
        left = [0] * len(groups)
        for status in DEADLINE_STATUSES:
            values = [counts[g][status] for g in groups]
            bars = ax.barh(groups, values, 0.7, left=left, label=status, color=STATUS_COLOURS[status],
                           edgecolor="white", linewidth=0.5)
            ax.bar_label(bars, labels=[str(v) if v else "" for v in values], label_type="center", fontsize=8)
            left = [a + v for a, v in zip(left, values)]
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("exchanges")
        ax.set_title(title)
        ax.grid(axis="x", color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
        return _render(fig, chart_id, title)
