"""The worker under faults, on Apache Kafka: a broker outage, a task killed from inside, SIGTERM while the
broker is away, a record too large to forward, a partition held still. Nothing is lost, nothing ends
silently, and /health tells the truth while it happens (docs/operations.md, "Health" and "Stopping")."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest

from deploy.brokers import KafkaBroker
from streams.kafka import producer
from streams.publisher import Publisher
from tests.harness import demo_event, fixture_event, running_deployment, set_topic_config

pytestmark = pytest.mark.kafka

OUTAGE_SECONDS = 90
FAST_HEALTH = {"MASB_HEALTH_INTERVAL": "1", "MASB_STALL_SECONDS": "3", "MASB_FAULT_INJECTION": "1"}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get(url: str) -> tuple[int, dict]:
    import json

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def post(url: str) -> dict:
    import json

    with urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=5) as response:
        return json.load(response)


class Publishing(threading.Thread):
    """A unit publishing MARAC referrals, each retried until Kafka acknowledges it (as docs/publishing.md asks)."""

    def __init__(self, running, per_second: float = 5) -> None:
        super().__init__(daemon=True)
        self.running = running
        self.pause = 1 / per_second
        self.stop = threading.Event()
        self.acknowledged: list[str] = []

    def run(self) -> None:
        asyncio.run(self._publish())

    async def _publish(self) -> None:
        unit = "hau-worcestershire"
        event = demo_event("02_marac_worcestershire")
        while not self.stop.is_set():
            try:
                async with Publisher(self.running.bootstrap, self.running.policy, self.running.unit_key(unit),
                                     self.running.topics, pseudonyms=self.running.pseudonyms) as publisher:
                    while not self.stop.is_set():
                        await asyncio.wait_for(publisher.publish(event), 10)
                        self.acknowledged.append(event["header"]["event_id"])
                        event = demo_event("02_marac_worcestershire")
                        await asyncio.sleep(self.pause)
            except Exception:  # noqa: BLE001 - the broker is away: publish the same event again later
                await asyncio.sleep(1)


def entitled(running, event_type: str, area: str) -> list[str]:
    return [share.agency_id for share in running.policy.routing(event_type, area)]


def delivered_to_all(running, event_ids: list[str], agencies: list[str]) -> bool:
    """Every event's DELIVERY entry for every agency is in the log (its envelope was acknowledged in
    the same batch), and every agency's feed opens to it."""
    delivered = {(e["event_id"], e["agency_id"]) for e in running.audit_entries() if e["kind"] == "DELIVERY"}
    if any((event_id, agency) not in delivered for event_id in event_ids for agency in agencies):
        return False
    return all(set(event_ids) <= {i.envelope.event_id for i in running.feed(agency) if i.ok} for agency in agencies)


def missing_report(running, event_ids: list[str], agencies: list[str]) -> str:
    delivered = {(e["event_id"], e["agency_id"]) for e in running.audit_entries() if e["kind"] == "DELIVERY"}
    missing = sorted({event_id for event_id in event_ids for agency in agencies if (event_id, agency) not in delivered})
    return f"{len(missing)} of {len(event_ids)} events lack a delivery; /health: {get(running.worker.url('/health'))}"


def covered_by_checkpoint(running) -> bool:
    from streams.audit.verify import verify_log
    from streams.auditing import DEFAULT_ORIGIN, checkpoint_verifiers, read_log

    snapshot = asyncio.run(read_log(running.bootstrap, running.topics))
    report = verify_log(snapshot.entries, snapshot.checkpoints, checkpoint_verifiers(running.policy, DEFAULT_ORIGIN),
                        DEFAULT_ORIGIN)
    return report.ok and report.uncovered_entries == 0 and report.entries > 0


@pytest.fixture(scope="module")
def own_broker():
    """An Apache Kafka of this module's own: these tests stop and restart it."""
    broker = KafkaBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.cleanup()


def test_a_broker_outage_is_reported_ridden_out_quietly_and_nothing_is_lost(own_broker, tmp_path):
    env = {"MASB_HEALTH_INTERVAL": "1", "MASB_STALL_SECONDS": "20"}
    with running_deployment(own_broker.bootstrap, tmp_path, **env) as running:
        agencies = entitled(running, "MARAC_REFERRAL", "worcestershire")
        publishing = Publishing(running)
        publishing.start()
        running.wait_for(lambda: len(publishing.acknowledged) >= 10, 30, "events flowing")
        log = running.worker.log.name
        pid = running.worker.proc.pid
        lines_before, cpu_before = len(open(log, "rb").read().splitlines()), cpu_seconds(pid)
        own_broker.kill()
        down_at = time.monotonic()
        samples = []
        while time.monotonic() - down_at < OUTAGE_SECONDS:
            samples.append((get(running.worker.url("/health")), get(running.worker.url("/ready"))[0]))
            time.sleep(3)
        cpu = cpu_seconds(pid) - cpu_before
        lines = len(open(log, "rb").read().splitlines()) - lines_before
        own_broker.restart()
        up_at = time.monotonic()
        running.wait_for(lambda: len(publishing.acknowledged) >= 20 + len(samples) // 100, 60, "publishing resumed")
        publishing.stop.set()
        publishing.join(30)
        ids = list(publishing.acknowledged)
        try:
            running.wait_for(lambda: delivered_to_all(running, ids, agencies), 180, "every event at every agency")
        except AssertionError:
            raise AssertionError(missing_report(running, ids, agencies)) from None
        running.worker.request_checkpoint()
        running.wait_for(lambda: covered_by_checkpoint(running), 20, "every entry covered by a signed checkpoint")
        healthy = running.wait_for(lambda: get(running.worker.url("/ready"))[0] == 200, 90, "ready again")
        recovered_in = time.monotonic() - up_at

    # While the broker was away, /health said so (status 200: the process is alive) and /ready was 503.
    reported = [body for (status, body), ready in samples[2:] if status == 200 and ready == 503
                and body["broker"]["ok"] is False and "broker unreachable" in body["problems"]]
    assert len(reported) >= len(samples) - 4, samples[:3]
    assert healthy and recovered_in < 90
    assert cpu < 0.5 * OUTAGE_SECONDS, f"{cpu:.1f}s of CPU in a {OUTAGE_SECONDS}s outage"
    assert lines <= OUTAGE_SECONDS, f"{lines} log lines in a {OUTAGE_SECONDS}s outage"


def test_sigterm_while_the_broker_is_away_ends_the_worker_in_time_and_loses_nothing(own_broker, tmp_path):
    env = {**FAST_HEALTH, "MASB_STOP_DEADLINE": "10"}
    with running_deployment(own_broker.bootstrap, tmp_path, **env) as running:
        post(running.worker.url("/debug/tasks/router/hold?seconds=6"))  # the next batch waits ...
        event = fixture_event("CASE_CLOSED")
        running.publish(event)
        time.sleep(2)
        own_broker.kill()  # ... and finds the broker gone: the router retries its sends
        time.sleep(8)
        started = time.monotonic()
        os.killpg(running.worker.proc.pid, signal.SIGTERM)
        code = running.worker.proc.wait(timeout=30)
        took = time.monotonic() - started
        own_broker.restart()
    assert code == 0 and took <= 12, f"exit code {code} after {took:.1f}s"
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "Traceback" not in log
    # The abandoned batch was not committed: a new worker routes the event, once.
    with running_deployment(own_broker.bootstrap, tmp_path / "again", topic_prefix=running.topics.prefix,
                            deployment=running.deployment) as again:
        for agency in entitled(again, "CASE_CLOSED", event["header"]["area"]):
            again.wait_feed(agency, event["header"]["event_id"], timeout=60)
            assert [i.envelope.event_id for i in again.feed(agency) if i.ok].count(event["header"]["event_id"]) == 1


def test_a_task_killed_from_inside_is_restarted_and_health_says_so(kafka, tmp_path):
    with running_deployment(kafka, tmp_path, **FAST_HEALTH) as running:
        running.wait_for(lambda: get(running.worker.url("/health"))[1]["tasks"]["checkpointer"]["up"], 30,
                         "the checkpointer running")
        assert post(running.worker.url("/debug/tasks/checkpointer/cancel")) == {"cancelled": True}
        status, body = running.wait_for(lambda: (lambda r: r if r[1]["tasks"]["checkpointer"]["restarts"] else None)(
            get(running.worker.url("/health"))), 10, "the restart on /health")
        assert status == 200 and body["tasks"]["checkpointer"]["last_error"] == "CancelledError"
        running.wait_for(lambda: get(running.worker.url("/health"))[1]["tasks"]["checkpointer"]["up"], 30,
                         "the checkpointer up again")
        metrics = urllib.request.urlopen(running.worker.url("/metrics"), timeout=5).read().decode()
        assert 'masb_task_restarts_total{task="checkpointer"} 1.0' in metrics
        running.publish(fixture_event("CASE_CLOSED"))  # and it signs again
        running.worker.request_checkpoint()
        running.wait_for(lambda: covered_by_checkpoint(running) and len(running.audit_entries()) >= 3, 30,
                         "new entries covered by a checkpoint after the restart")
        assert "checkpointer ended unexpectedly" in open(running.worker.log.name).read()


def test_an_oversized_record_is_dead_lettered_by_reference_and_the_partition_moves_on(kafka, tmp_path):
    with running_deployment(kafka, tmp_path, **FAST_HEALTH) as running:
        big = b"\x01" + os.urandom(1048450 - 1)  # ../shared/cases/turn2/14a: about 1 MiB on case-events

        async def produce(topic: str, value: bytes, key: bytes | None) -> None:
            p = producer(running.bootstrap, max_request_size=2 * 1024 * 1024)
            await p.start()
            try:
                await p.send_and_wait(topic, value, key=key)
            finally:
                await p.stop()

        asyncio.run(produce(running.topics.case_events, big, running.pseudonyms.pseudonym("WM-T2CASE0001")))
        after = fixture_event("CASE_CLOSED", case_ref="WM-T2CASE0001")  # 14b: same key, same partition
        running.publish(after)
        for agency in entitled(running, "CASE_CLOSED", after["header"]["area"]):
            running.wait_feed(agency, after["header"]["event_id"])
        letters = running.wait_for(lambda: [d for d in running.dead_letters() if d["reason_code"] == "OVERSIZED"], 30,
                                   "the dead letter")
        import hashlib

        assert letters[0]["payload"] is None and letters[0]["payload_sha256"] == hashlib.sha256(big).hexdigest()
        assert max(len(r.value) for r in running.records(running.topics.dead_letter)) < 8192

        # The same on the receipts topic: the record is dead-lettered, the next receipt recorded.
        asyncio.run(produce(running.topics.receipts, big, None))
        running.wait_for(lambda: [d for d in running.dead_letters() if d["source_topic"] == running.topics.receipts],
                         30, "the receipt's dead letter")

        # A partition that stops moving while records wait is reported while it lasts, and only then.
        assert get(running.worker.url("/ready"))[0] == 200
        post(running.worker.url("/debug/tasks/router/hold?seconds=12"))
        held = fixture_event("CASE_CLOSED")
        running.publish(held)
        status, body = running.wait_for(lambda: (lambda r: r if r[0] == 503 else None)(get(running.worker.url("/ready"))),
                                        15, "the stall on /ready")
        stalled = [p for p in body["partitions"] if p["state"] == "stalled"]
        assert stalled and stalled[0]["topic"] == running.topics.case_events and stalled[0]["lag"] >= 1
        assert get(running.worker.url("/health"))[0] == 200  # alive: a stall is not a reason to kill it
        for agency in entitled(running, "CASE_CLOSED", held["header"]["area"]):
            running.wait_feed(agency, held["header"]["event_id"], timeout=30)
        running.wait_for(lambda: get(running.worker.url("/ready"))[0] == 200, 20, "ready again after the stall")
        metrics = urllib.request.urlopen(running.worker.url("/metrics"), timeout=5).read().decode()
        assert f'masb_partition_stalled{{partition="0",topic="{running.topics.case_events}"}} 0.0' in metrics


def test_an_envelope_the_broker_refuses_is_dead_lettered_and_the_partner_partition_moves_on(kafka, tmp_path):
    """A partner topic whose max.message.bytes is below an envelope's size refuses it: the envelope
    is replaced by a SEND_REFUSED dead letter and its REFUSAL entry, the other agencies get the event,
    and once the limit is raised the next event of the same case reaches the same partner partition
    (the router does not stall on it)."""
    with running_deployment(kafka, tmp_path) as running:
        first = fixture_event("CASE_CLOSED", case_ref="WM-T2CASE0002")
        agencies = entitled(running, "CASE_CLOSED", first["header"]["area"])
        victim, others = agencies[0], agencies[1:]
        running.publish(first)
        running.wait_feed(victim, first["header"]["event_id"])

        topic = running.topics.partner(victim)
        asyncio.run(set_topic_config(running.bootstrap, topic, max_message_bytes="200"))
        refused = fixture_event("CASE_CLOSED", case_ref="WM-T2CASE0002")
        running.publish(refused)
        letters = running.wait_for(lambda: [d for d in running.dead_letters() if d["reason_code"] == "SEND_REFUSED"],
                                   60, "the SEND_REFUSED dead letter")
        assert topic in letters[0]["reason"] and letters[0]["payload"] is None
        for agency in others:
            running.wait_feed(agency, refused["header"]["event_id"])
        assert any(e["kind"] == "REFUSAL" and e["reason_code"] == "SEND_REFUSED" for e in running.audit_entries())

        asyncio.run(set_topic_config(running.bootstrap, topic, max_message_bytes="1048588"))
        after = fixture_event("CASE_CLOSED", case_ref="WM-T2CASE0002")
        running.publish(after)
        running.wait_feed(victim, after["header"]["event_id"], timeout=60)



def test_a_redrive_request_for_a_record_that_is_no_dead_letter_is_ignored_and_routing_goes_on(kafka, tmp_path):
    """Whoever may write the dead-letter topic and the redrive requests (docs/security.md) must not
    be able to stop the worker: a request naming bytes that are not a dead letter is logged and
    ignored, as a malformed request is, and the next events are routed."""
    from datetime import datetime, timezone

    from streams.redrive import dead_letter_sha256, encode_request

    with running_deployment(kafka, tmp_path) as running:
        garbage = b"\x02\xff\xff\xff not a dead letter"
        running.produce(running.topics.dead_letter, garbage)
        running.produce(running.topics.redrive_requests,
                        encode_request(0, dead_letter_sha256(garbage), datetime.now(timezone.utc)))
        running.wait_for(lambda: "cannot be redriven" in (tmp_path / "worker.log").read_text(), 30,
                         "the ignored request in the worker's log")
        after = fixture_event("CASE_CLOSED")
        running.publish(after)
        for agency in entitled(running, "CASE_CLOSED", after["header"]["area"]):
            running.wait_feed(agency, after["header"]["event_id"])
        status, health = get(running.worker.url("/health"))
        assert status == 200 and health["tasks"]["redrive"]["restarts"] == 0, health
        assert "Traceback" not in (tmp_path / "worker.log").read_text()
