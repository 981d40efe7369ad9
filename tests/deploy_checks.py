"""Shared helpers of the deployment tests (tests/test_deploy_files.py, tests/test_deploy_metrics.py):
where the deployment files are, the PromQL they contain and the metric names it uses."""

from __future__ import annotations

import json
import re
from pathlib import Path

from streams import yamlin

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RULES_FILE = DEPLOY / "prometheus" / "masb-alerts.yaml"
RULES_TEST_FILE = DEPLOY / "prometheus" / "masb-alerts.test.yaml"
DASHBOARD_FILE = DEPLOY / "grafana" / "masb.json"

# Metrics the dashboard and the rules use before the worker serves them: each names the issue
# that adds it. The metrics test fails once one of them is served, so that it leaves this list.
# (None now: the deadline metrics of issue 13 are served.)
PENDING_METRICS: dict[str, str] = {}
# Series Prometheus makes itself for every target (not on any /metrics page).
PROMETHEUS_SERIES = {"up"}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
             "offset", "bool", "inf", "nan", "atan2"}
_CLAUSE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left after removing strings, label
    matchers, ranges, grouping clauses, function and aggregation names, keywords and numbers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _CLAUSE.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def rule_expressions() -> list[str]:
    data = yamlin.load_file(RULES_FILE).data
    return [rule["expr"] for group in data["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD_FILE.read_text())


def dashboard_panels() -> list[dict]:
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels inside collapsed rows
    return panels


def dashboard_expressions() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]


def used_metric_names() -> dict[str, set[str]]:
    """Metric name -> where it is used ("rules", "dashboard")."""
    used: dict[str, set[str]] = {}
    for where, exprs in (("rules", rule_expressions()), ("dashboard", dashboard_expressions())):
        for expr in exprs:
            for name in metric_names(expr):
                used.setdefault(name, set()).add(where)
    return used
