"""Who received what, when and why: reports over the exchange log (docs/audit.md, "Reports").

build_report() selects and dedupes the log's entries into a Report; verify_for_report() says whether
the log verified and against which checkpoint; render_csv/json/html() format it. Modules: model
(the report and its statuses), build, verification, timeline (a case's life), aggregate (counts
over time), csv_json, page (HTML) and charts (matplotlib SVG).
"""

from .build import build_report
from .csv_json import CSV_COLUMNS, render_csv, render_json, report_document
from .model import (
    DEADLINE_STATUSES,
    FORMAT,
    SEALED,
    SHREDDED,
    CheckpointInfo,
    Filters,
    LogVerification,
    Report,
    ReportError,
    deadline_status,
    parse_time,
)
from .page import render_html
from .timeline import TimelineStep, case_timeline
from .verification import verify_for_report

RENDERERS = {"csv": render_csv, "json": render_json, "html": render_html}

__all__ = [
    "CSV_COLUMNS", "DEADLINE_STATUSES", "FORMAT", "RENDERERS", "SEALED", "SHREDDED", "CheckpointInfo", "Filters",
    "LogVerification", "Report", "ReportError", "TimelineStep", "build_report", "case_timeline", "deadline_status",
    "parse_time", "render_csv", "render_html", "render_json", "report_document", "verify_for_report",
]
