"""/metrics of a worker on Apache Kafka after a known mix of events: every counter has the right
value, the histograms counted every record, the policy gauge shows the version in force, and no
label value (nor anything else on the page) carries data from inside an event."""

from __future__ import annotations

import collections
import re
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.codec import EVENT_TYPES
from streams.policy import AREAS
from tests.harness import deep, demo_event

pytestmark = pytest.mark.kafka

KINDS = {"DELIVERY", "REFUSAL", "DUPLICATE", "POLICY_CHANGE"}


def scrape(running) -> tuple[str, dict[tuple[str, tuple], float]]:
    with urllib.request.urlopen(running.worker.url("/metrics"), timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("masb_"):
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def strings_in(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


@pytest.fixture(scope="module")
def scenario(deployment_on_kafka):
    d = deployment_on_kafka
    worcs = [demo_event("01_dash_worcestershire"), demo_event("02_marac_worcestershire"),
             demo_event("03_child_notification_worcestershire")]
    notice = demo_event("04_protection_notice_shropshire")
    d.publish(*worcs)
    d.publish(notice)
    d.publish(deep(worcs[0]))              # the same event again: a duplicate, not delivered twice
    d.send_raw(b"WM-NOT-A-CASE", b"\x00garbage that is no publication")
    d.send_raw(None, b"")
    events = [*worcs, notice]
    expected_records = len(events) + 1 + 2
    d.wait_for(lambda: scrape(d)[1].get(("masb_routing_seconds_count", ())) == expected_records, 45,
               f"{expected_records} records routed")
    return events, expected_records


def test_counters_have_the_right_values(deployment_on_kafka, scenario):
    d = deployment_on_kafka
    events, _ = scenario
    _, samples = scrape(d)
    routed = collections.Counter(e["header"]["event_type"] for e in events)
    envelopes = collections.Counter(
        (e["header"]["event_type"], s.agency_id)
        for e in events for s in d.policy.routing(e["header"]["event_type"], e["header"]["area"]))
    refused = collections.Counter(letter["reason_code"] for letter in d.dead_letters())
    assert refused["EMPTY_RECORD"] == 1 and sum(refused.values()) == 2

    def family(name: str) -> dict[tuple, float]:
        return {labels: value for (n, labels), value in samples.items() if n == name}

    assert family("masb_events_routed_total") == {(("event_type", t),): float(n) for t, n in routed.items()}
    assert family("masb_envelopes_total") == {
        (("agency", a), ("event_type", t)): float(n) for (t, a), n in envelopes.items()}
    assert len(envelopes) == sum(envelopes.values()) >= 2 * len(events)  # every demo event has recipients
    assert family("masb_refused_total") == {(("reason_code", r),): float(n) for r, n in refused.items()}
    assert family("masb_duplicates_total") == {(("event_type", "RISK_ASSESSMENT_COMPLETED"),): 1.0}
    audit = collections.Counter(e["kind"] for e in d.audit_entries())
    assert audit == {"POLICY_CHANGE": 1, "DELIVERY": sum(envelopes.values()), "REFUSAL": 2, "DUPLICATE": 1}
    assert family("masb_audit_entries_total") == {(("kind", k),): float(n) for k, n in audit.items()}
    assert samples[("masb_policy_version", ())] == 1.0
    assert samples[("masb_policy_reload_failures_total", ())] == 0.0


def test_histograms_counted_every_record(deployment_on_kafka, scenario):
    events, expected_records = scenario
    _, samples = scrape(deployment_on_kafka)
    assert samples[("masb_routing_seconds_count", ())] == expected_records  # routed, duplicate, refused
    assert samples[("masb_encrypt_seconds_count", ())] == len(events)       # only events that were sealed
    for name in ("masb_routing_seconds", "masb_encrypt_seconds"):
        count = samples[(f"{name}_count", ())]
        assert samples[(f"{name}_bucket", (("le", "+Inf"),))] == count
        assert 0 < samples[(f"{name}_sum", ())] < count * 5  # seconds, plausibly measured
        buckets = sorted((float(dict(labels)["le"]), v) for (n, labels), v in samples.items()
                         if n == f"{name}_bucket")
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative


def test_no_label_value_comes_from_inside_an_event(deployment_on_kafka, scenario):
    d = deployment_on_kafka
    events, _ = scenario
    text, samples = scrape(d)
    allowed = (set(EVENT_TYPES) | {a.id for a in d.policy.agencies} | KINDS
               | {letter["reason_code"] for letter in d.dead_letters()} | d.own_label_values())
    for (name, labels) in samples:
        for label, value in labels:
            if label == "le":
                float(value)  # histogram bounds are numbers
            else:
                assert value in allowed, (name, label, value)
    # Nothing an event carries appears anywhere on the page: names, dates of birth, addresses,
    # case references, event ids, free text (enumeration codes like HIGH and areas are not personal).
    codes = set(AREAS) | {u.id for u in d.policy.units}  # policy vocabulary, not personal data
    personal = {s for e in events for s in strings_in(e)
                if len(s) >= 5 and s not in codes and not re.fullmatch(r"[A-Z][A-Z0-9_]*", s)}
    assert {"Alex Example", "WM-7Q2K9D4XJ3", "Sam Example"} <= personal
    for event in events:
        assert event["header"]["event_id"] in personal
    leaked = sorted(s for s in personal if s in text)
    assert leaked == []
    assert "WM-NOT-A-CASE" not in text  # nor the key of a refused record
