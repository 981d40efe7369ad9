"""Colours of the report, shared by the charts and the page: a deadline status keeps its colour in
every chart and in the exchange table. Colour-blind-safe (Okabe-Ito)."""

from __future__ import annotations

STATUS_COLOURS: dict[str, str] = {
    "received on time": "#009E73", "received late": "#E69F00", "overdue": "#D55E00",
    "escalated": "#CC79A7", "awaiting receipt": "#56B4E9", "no deadline": "#BBBBBB",
}
SERIES_COLOURS: tuple[str, ...] = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
                                   "#000000", "#999999", "#882255")
