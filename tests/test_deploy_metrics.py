"""Every metric the dashboard (deploy/grafana/masb.json) and the alert rules
(deploy/prometheus/masb-alerts.yaml) use is served by a running worker's or the ingest's /metrics.

The worker runs as the container image runs it (web port bound to every address:
MASB_WEB_HOST=0.0.0.0), with the test clock of docs/deadlines.md. Some metrics appear only after an
event, and the test makes each happen:

- labelled counters of routing (masb_events_routed_total, masb_envelopes_total,
  masb_audit_entries_total, masb_duplicates_total, masb_refused_total): an event routed, the same
  event again, and a garbage record;
- masb_task_restarts_total: a task cancelled from inside (MASB_FAULT_INJECTION);
- masb_partition_lag / _stalled / _progress_age_seconds: the health monitor's first probe after
  the worker holds its input partitions;
- masb_deliveries_overdue, masb_escalations_total: the clock moved a day past the event's delivery,
  beyond its agreements' deadlines (docs/deadlines.md);
- masb_ingest_requests_total, masb_ingest_events_total: one event through `masb ingest`.

Metrics other issues add are listed in tests/deploy_checks.py PENDING_METRICS; once served, the
test says to take them off that list.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy.brokers import free_port
from tests.deploy_checks import PENDING_METRICS, PROMETHEUS_SERIES, used_metric_names
from tests.harness import deep, demo_event, running_deployment

pytestmark = pytest.mark.kafka

UNIT = "hau-worcestershire"


def served(url: str) -> set[str]:
    """Sample names on a /metrics page (histograms as _bucket/_sum/_count, counters as _total)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def post(url: str, body: bytes = b"", headers: dict | None = None) -> dict:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    with urllib.request.urlopen(request, timeout=15) as response:
        return json.load(response)


def set_clock(path, moment: datetime) -> None:
    temp = path.with_suffix(".new")
    temp.write_text(moment.isoformat())
    os.replace(temp, path)


def test_every_metric_of_the_dashboard_and_the_rules_is_served(kafka, tmp_path):
    clock, now = tmp_path / "clock.txt", datetime.now(timezone.utc)
    set_clock(clock, now)
    with running_deployment(kafka, tmp_path / "deployment", MASB_WEB_HOST="0.0.0.0", MASB_FAULT_INJECTION="1",
                            MASB_HEALTH_INTERVAL="1", MASB_CLOCK=f"file:{clock}",
                            MASB_DEADLINE_INTERVAL="0.3") as running:
        event = demo_event("02_marac_worcestershire")
        running.publish(event)
        running.publish(deep(event))                    # the same event again: a duplicate
        running.send_raw(None, b"\x00not a publication")  # refused and dead-lettered
        running.wait_for(lambda: [e for e in running.audit_entries() if e["kind"] == "DELIVERY"
                                  and e["event_id"] == event["header"]["event_id"]], 30, "the event delivered")
        set_clock(clock, now + timedelta(hours=25))     # past every deadline of its agreements: escalations
        running.wait_for(lambda: running.health()["tasks"]["checkpointer"]["up"], 30, "the checkpointer running")
        assert post(running.worker.url("/debug/tasks/checkpointer/cancel")) == {"cancelled": True}

        worker_needs = {"masb_events_routed_total", "masb_envelopes_total", "masb_duplicates_total",
                        "masb_refused_total", "masb_task_restarts_total", "masb_partition_lag",
                        "masb_partition_stalled", "masb_partition_progress_age_seconds",
                        "masb_deliveries_overdue", "masb_escalations_total", "masb_build_info"}
        worker = running.wait_for(lambda: (names := served(running.worker.url("/metrics"))) >= worker_needs
                                  and names, 60, "the event-driven metrics on the worker's /metrics")

        ingest = ingest_metrics(running, tmp_path)

    used = used_metric_names()
    on_pages = worker | ingest | PROMETHEUS_SERIES
    missing = {name: sorted(where) for name, where in used.items()
               if name not in on_pages and name not in PENDING_METRICS}
    assert missing == {}
    arrived = sorted(name for name in PENDING_METRICS if name in on_pages)
    assert arrived == [], f"served now: take them off PENDING_METRICS in tests/deploy_checks.py: {arrived}"
    assert set(PENDING_METRICS) <= set(used)  # each pending name is still used, so still awaited


def ingest_metrics(running, tmp_path) -> set[str]:
    """`masb ingest` for one unit, one event posted through it: the names on its /metrics."""
    dep = running.deployment
    key_file = next(dep.keys_dir.glob(f"{UNIT}.signing.*.key"))
    port = free_port()
    log = open(tmp_path / "ingest.log", "wb")  # noqa: SIM115 - closed in finally, after the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "agents", "ingest", "--as", UNIT, "--key", str(key_file), "--policy",
         str(dep.policy_path), "--pseudonym-key", str(next(dep.keys_dir.glob("*.secret"))), "--port", str(port),
         "--bootstrap", running.bootstrap, "--topic-prefix", running.topics.prefix],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        running.wait_for(healthy, 30, "masb ingest /health")
        event = demo_event("03_child_notification_worcestershire")
        answer = post(f"{base}/events", json.dumps(event).encode(), {"Content-Type": "application/json"})
        assert answer == {"event_id": event["header"]["event_id"]}
        return served(f"{base}/metrics")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
