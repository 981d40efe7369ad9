"""The unit's HTTP ingest (`masb ingest`, streams/ingest.py) against Apache Kafka and a running worker.

What a case system relies on: 202 only once Kafka holds the event, and then the partners get it;
every refusal says which field and why without echoing values, and produces nothing; 503 when
Kafka is unreachable, so the client retries and nothing is lost silently.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from aiohttp.test_utils import TestClient, TestServer

from deploy.brokers import free_port
from streams.crypto.keys import generate_key
from streams.ingest import IngestConfigError, IngestService, build_ingest_app
from tests.harness import fixture_event, run

pytestmark = pytest.mark.kafka

UNIT = "hau-worcestershire"


def service_for(running, **options) -> IngestService:
    return IngestService(options.pop("bootstrap", running.bootstrap), running.policy, running.unit_key(UNIT),
                         running.topics, pseudonyms=running.pseudonyms, **options)


def call(service: IngestService, method: str, path: str, **kwargs) -> tuple[int, dict, str, dict]:
    """One request to a fresh in-process ingest app: (status, headers, text, json or {})."""
    async def go():
        async with TestClient(TestServer(build_ingest_app(service))) as client:
            response = await client.request(method, path, **kwargs)
            text = await response.text()
            try:
                body = json.loads(text)
            except ValueError:
                body = {}
            return response.status, dict(response.headers), text, body

    return run(go())


def post(service, body, **kwargs):
    return call(service, "POST", "/events", data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json", **kwargs.pop("headers", {})}, **kwargs)


def key_of(running, case_ref: str) -> bytes:
    """The record key of a case: its pseudonym (docs/keys.md), never the reference itself."""
    return running.pseudonyms.pseudonym(case_ref)


def case_event_keys(running) -> list[bytes]:
    return [r.key for r in running.records(running.topics.case_events)]


def test_valid_event_is_acknowledged_then_routed_to_the_partners(deployment_on_kafka):
    event = fixture_event("RISK_ASSESSMENT_COMPLETED", case_ref="WM-INGEST202A")
    status, _, _, body = post(service_for(deployment_on_kafka), event)
    assert status == 202 and body == {"event_id": event["header"]["event_id"]}
    # 202 means Kafka already holds it: the record is on case-events now, not later.
    assert key_of(deployment_on_kafka, "WM-INGEST202A") in case_event_keys(deployment_on_kafka)
    item = deployment_on_kafka.wait_feed("nhs-worcs-acute", event["header"]["event_id"])
    assert item.envelope.fields["victim.nhs_number"] == event["victim"]["nhs_number"]


def test_an_array_is_accepted_whole(deployment_on_kafka):
    events = [fixture_event("SAFETY_PLAN_UPDATED", case_ref="WM-INGESTARR1"),
              fixture_event("CASE_CLOSED", case_ref="WM-INGESTARR2")]
    status, _, _, body = post(service_for(deployment_on_kafka), events)
    assert status == 202 and body == {"event_ids": [e["header"]["event_id"] for e in events]}
    for event in events:
        deployment_on_kafka.wait_feed("idva-west-mercia", event["header"]["event_id"])


def test_invalid_event_is_400_naming_each_field_and_problem_never_values(deployment_on_kafka):
    event = fixture_event("MARAC_REFERRAL", case_ref="WM-INGEST400A")
    event["victim"]["nhs_number"] = "9434765918"  # wrong check digit
    event["header"]["consent"]["reason"] = None     # REFUSED needs a reason
    event["dash_score"] = 31
    status, _, text, body = post(service_for(deployment_on_kafka), event)
    assert status == 400
    paths = {e["path"] for e in body["errors"]}
    assert paths == {"victim.nhs_number", "header.consent.reason", "dash_score"}
    assert all(e["problem"] for e in body["errors"])
    for value in ("9434765918", "31", event["victim"]["name"], event["victim"]["address"]["postcode"]):
        assert value not in text
    assert key_of(deployment_on_kafka, "WM-INGEST400A") not in case_event_keys(deployment_on_kafka)


def test_one_invalid_event_in_an_array_refuses_the_whole_request(deployment_on_kafka):
    good = fixture_event("CASE_CLOSED", case_ref="WM-INGEST400B")
    bad = fixture_event("CASE_CLOSED", case_ref="WM-INGEST400C")
    del bad["header"]["occurred_at"]
    status, _, _, body = post(service_for(deployment_on_kafka), [good, bad])
    assert status == 400
    assert body["errors"] == [{"path": "header.occurred_at", "problem": "required field is missing", "index": 1}]
    keys = case_event_keys(deployment_on_kafka)
    assert key_of(deployment_on_kafka, "WM-INGEST400B") not in keys
    assert key_of(deployment_on_kafka, "WM-INGEST400C") not in keys


def test_malformed_json_wrong_type_and_shape_are_refused(deployment_on_kafka):
    service = service_for(deployment_on_kafka)
    status, _, _, body = call(service, "POST", "/events", data=b'{"header": ', headers={"Content-Type": "application/json"})
    assert status == 400 and body["errors"][0]["path"] == "<body>" and "not valid JSON" in body["errors"][0]["problem"]
    status, _, _, body = call(service, "POST", "/events", data=b'"a string"', headers={"Content-Type": "application/json"})
    assert status == 400 and body["errors"][0]["path"] == "<body>"
    status, _, _, body = call(service, "POST", "/events", data=b"[]", headers={"Content-Type": "application/json"})
    assert status == 400
    status, _, _, body = post(service, [42])
    assert status == 400 and body["errors"] == [{"path": "<event>", "problem": "expected an object", "index": 0}]
    status, _, _, body = call(service, "POST", "/events", data=json.dumps(fixture_event("CASE_CLOSED")).encode(),
                              headers={"Content-Type": "text/plain"})
    assert status == 415 and body["errors"][0]["path"] == "<body>"


def test_oversized_body_is_413_with_or_without_a_content_length(deployment_on_kafka):
    service = service_for(deployment_on_kafka, max_body_bytes=4096)
    event = fixture_event("CASE_CLOSED", case_ref="WM-INGEST413A")
    event["padding"] = "x" * 8000
    status, _, _, body = post(service, event)
    assert status == 413 and body["errors"][0]["path"] == "<body>"

    async def chunks():
        data = json.dumps(event).encode()
        for i in range(0, len(data), 1000):
            yield data[i:i + 1000]

    status, _, _, _ = call(service, "POST", "/events", data=chunks(), headers={"Content-Type": "application/json"})
    assert status == 413
    status, _, _, _ = post(service_for(deployment_on_kafka, max_events=2), [event, event, event])
    assert status == 413
    assert key_of(deployment_on_kafka, "WM-INGEST413A") not in case_event_keys(deployment_on_kafka)


def test_unit_may_not_publish_for_another_area_or_as_another_unit_403(deployment_on_kafka):
    service = service_for(deployment_on_kafka)
    status, _, _, body = post(service, fixture_event("CASE_CLOSED", case_ref="WM-INGEST403A", area="herefordshire"))
    assert status == 403
    assert "not registered to publish CASE_CLOSED for area herefordshire" in body["errors"][0]["problem"]
    status, _, _, body = post(service, fixture_event("CASE_CLOSED", case_ref="WM-INGEST403B", unit_id="hau-shropshire"))
    assert status == 403 and body["errors"][0]["path"] == "header.unit_id"
    keys = case_event_keys(deployment_on_kafka)
    assert key_of(deployment_on_kafka, "WM-INGEST403A") not in keys
    assert key_of(deployment_on_kafka, "WM-INGEST403B") not in keys


def test_kafka_unreachable_is_503_then_a_retry_delivers_once(deployment_on_kafka):
    down = service_for(deployment_on_kafka, bootstrap=f"127.0.0.1:{free_port()}", send_timeout=2)
    event = fixture_event("PROTECTION_NOTICE_ISSUED", case_ref="WM-INGEST503A")
    started = time.monotonic()
    status, headers, _, body = post(down, event)
    assert status == 503 and headers["Retry-After"] == "5" and body["acknowledged"] == []
    assert body["errors"][0]["path"] == "<kafka>" and "retry" in body["errors"][0]["problem"]
    assert time.monotonic() - started < 15
    status, _, _, body = call(down, "GET", "/health")
    assert status == 503 and body["kafka"] is False

    up = service_for(deployment_on_kafka)
    assert call(up, "GET", "/health")[0] == 200
    assert post(up, event)[0] == 202
    assert post(up, event)[0] == 202  # the client retried once more: still one delivery
    event_id = event["header"]["event_id"]
    deployment_on_kafka.wait_audit(lambda e: e["kind"] == "DUPLICATE" and e["event_id"] == event_id)
    ids = [i.envelope.event_id for i in deployment_on_kafka.feed("worcs-childrens-services") if i.ok]
    assert ids.count(event_id) == 1
    deliveries = [e for e in deployment_on_kafka.audit_entries() if e["kind"] == "DELIVERY" and e["event_id"] == event_id]
    assert sorted(e["agency_id"] for e in deliveries) == ["idva-west-mercia", "worcs-childrens-services"]


def test_a_record_kafka_refuses_for_good_is_413_not_a_retry_and_the_next_request_goes_through(deployment_on_kafka):
    """A case-events topic whose max.message.bytes is below an event's size refuses the record for
    good: 503 would have the case system retry it for ever. Once the topic is fixed, the same
    ingest (its producer replaced) publishes again."""
    import uuid

    from streams.kafka import TopicSpec, ensure_topics
    from streams.topics import Topics
    from tests.harness import set_topic_config

    topics = Topics(f"i{uuid.uuid4().hex[:8]}.")
    run(ensure_topics(deployment_on_kafka.bootstrap, [TopicSpec(topics.case_events)]))
    service = IngestService(deployment_on_kafka.bootstrap, deployment_on_kafka.policy,
                            deployment_on_kafka.unit_key(UNIT), topics, pseudonyms=deployment_on_kafka.pseudonyms)
    first = fixture_event("PROTECTION_NOTICE_ISSUED", case_ref="WM-INGEST413A")
    assert post(service, first)[0] == 202
    run(set_topic_config(deployment_on_kafka.bootstrap, topics.case_events, max_message_bytes="200"))
    refused = fixture_event("PROTECTION_NOTICE_ISSUED", case_ref="WM-INGEST413A")
    status, headers, _, body = post(service, refused)
    assert status == 413 and "Retry-After" not in headers and body["acknowledged"] == []
    problem = body["errors"][0]
    assert problem["path"] == "<kafka>" and "max.message.bytes" in problem["problem"] and "do not retry" in problem["problem"]
    assert topics.case_events in problem["problem"] and "WM-INGEST413A" not in json.dumps(body)

    run(set_topic_config(deployment_on_kafka.bootstrap, topics.case_events, max_message_bytes="1048588"))
    assert post(service, refused)[0] == 202
    keys = [r.key for r in deployment_on_kafka.records(topics.case_events)]
    assert keys == [key_of(deployment_on_kafka, "WM-INGEST413A")] * 2


def test_bearer_token_when_configured(deployment_on_kafka):
    service = service_for(deployment_on_kafka, token="s3cret-token")
    event = fixture_event("CASE_CLOSED", case_ref="WM-INGEST401A")
    assert post(service, event)[0] == 401
    assert post(service, event, headers={"Authorization": "Bearer wrong"})[0] == 401
    assert key_of(deployment_on_kafka, "WM-INGEST401A") not in case_event_keys(deployment_on_kafka)
    assert post(service, event, headers={"Authorization": "Bearer s3cret-token"})[0] == 202


def test_ingest_refuses_to_start_with_a_key_the_policy_does_not_trust(deployment_on_kafka):
    stranger = generate_key(UNIT, "signing")
    with pytest.raises(IngestConfigError, match="not a trusted key"):
        IngestService(deployment_on_kafka.bootstrap, deployment_on_kafka.policy, stranger,
                      pseudonyms=deployment_on_kafka.pseudonyms)
    with pytest.raises(IngestConfigError, match="not a unit"):
        IngestService(deployment_on_kafka.bootstrap, deployment_on_kafka.policy, generate_key("hau-nowhere", "signing"),
                      pseudonyms=deployment_on_kafka.pseudonyms)


def test_masb_ingest_command_serves_events_and_metrics(deployment_on_kafka, tmp_path):
    dep = deployment_on_kafka.deployment
    key_file = next(dep.keys_dir.glob(f"{UNIT}.signing.*.key"))
    port = free_port()
    log = open(tmp_path / "ingest.log", "wb")  # noqa: SIM115 - closed in finally, after the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "agents", "ingest", "--as", UNIT, "--key", str(key_file), "--policy",
         str(dep.policy_path), "--keys-dir", str(dep.keys_dir), "--port", str(port),
         "--bootstrap", deployment_on_kafka.bootstrap,
         "--topic-prefix", deployment_on_kafka.topics.prefix],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def healthy():
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        deployment_on_kafka.wait_for(healthy, 30, "masb ingest /health")
        event = fixture_event("CHILD_NOTIFICATION", case_ref="WM-INGESTCLI1")
        request = urllib.request.Request(f"{base}/events", data=json.dumps(event).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=15) as response:
            assert response.status == 202
            assert json.loads(response.read()) == {"event_id": event["header"]["event_id"]}
        item = deployment_on_kafka.wait_feed("school-oakfield-primary", event["header"]["event_id"])
        assert item.envelope.fields["child.name"] == event["child"]["name"]

        bad = urllib.request.Request(f"{base}/events", data=b"{", method="POST", headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=5)
        assert refused.value.code == 400
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert 'masb_ingest_requests_total{status="202"} 1.0' in metrics
        assert 'masb_ingest_requests_total{status="400"} 1.0' in metrics
        assert 'masb_ingest_events_total{event_type="CHILD_NOTIFICATION"} 1.0' in metrics
        assert event["child"]["name"] not in metrics
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
