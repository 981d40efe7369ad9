"""Deadlines that act, on Apache Kafka with a moved clock (docs/deadlines.md).

The worker runs with MASB_CLOCK=file:<path>: the test writes the time into that file instead of
sleeping, so "six hours later" is one write. The policy is the demo's, with housing's MARAC
deadline at 6 h (Amber) and a second threshold 18 h after it, and a school calendar in which
Monday 30 November 2026 is an INSET day.
"""

from __future__ import annotations

import os
import signal
import urllib.request
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from agents.deployment import DEMO_DIR, WorkerProcess, worker_env
from streams.crypto.envelope import KeyUnwrapFailed, UnknownRecipientKey, WrongRecipient
from streams.crypto.keys import Keyring, generate_key
from streams.partner import ReceiptSender
from tests.harness import fixture_event, run, running_deployment

pytestmark = pytest.mark.kafka

LONDON = ZoneInfo("Europe/London")
FRIDAY_EVENING = datetime(2026, 11, 27, 19, 30, tzinfo=timezone.utc)  # GMT: London time is UTC in November
HOUSING = "shropshire-housing"
UNIT = "hau-shropshire"

CALENDAR = """
deadlines:
  expiry: P5D
  school_calendar:
    terms:
      - {start: 2026-09-02, end: 2026-10-23}
      - {start: 2026-11-02, end: 2026-12-18}
    closed: [2026-11-30]   # an INSET day: the Monday after the Friday evening below
"""


def deadline_template(tmp_path):
    text = (DEMO_DIR / "policy.template.yaml").read_text()
    housing = "    legal_basis: CRIME_AND_DISORDER_ACT_1998_S115\n    retention: P2Y\n    deadline: PT2H\n"
    assert housing in text
    text = text.replace(housing, "    legal_basis: CRIME_AND_DISORDER_ACT_1998_S115\n    retention: P2Y\n"
                                 "    deadline: PT6H\n    escalate_again_after: PT18H\n")
    path = tmp_path / "policy.template.yaml"
    path.write_text(text + CALENDAR)
    return path


class Clock:
    def __init__(self, path):
        self.path = path
        self.now = FRIDAY_EVENING

    def set(self, moment: datetime) -> None:
        assert moment >= self.now, "the test clock only moves forward"
        self.now = moment
        temp = self.path.with_suffix(".new")
        temp.write_text(moment.isoformat())
        os.replace(temp, self.path)


@pytest.fixture(scope="module")
def deployment(kafka, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("deadlines")
    clock = Clock(workdir / "clock.txt")
    clock.set(FRIDAY_EVENING)
    with running_deployment(kafka, workdir, template=deadline_template(workdir),
                            MASB_CLOCK=f"file:{clock.path}", MASB_DEADLINE_INTERVAL="0.3") as running:
        yield running, clock


def entries(running, kind, event_id, agency=None):
    return [e for e in running.audit_entries()
            if e["kind"] == kind and e["event_id"] == event_id and (agency is None or e["agency_id"] == agency)]


def notices(running, event_id, kind=None, unit=UNIT):
    return [i.notice.content for i in running.notices(unit) if i.ok and i.notice.content["event_id"] == event_id
            and (kind is None or i.notice.content["kind"] == kind)]


def wait_notice(running, event_id, kind, agency, level=0, unit=UNIT):
    def found():
        return [c for c in notices(running, event_id, kind, unit) if c["agency_id"] == agency and c["level"] == level]
    return running.wait_for(found, 30, f"{kind} notice for {agency}")[0]


def receipt(running, agency, event_id, status="RECEIVED", tracked=True):
    """The agency's receipt; with `tracked`, wait until the deadline agent has it (its notice to the
    unit), so that moving the clock afterwards cannot race it."""
    envelope = running.wait_feed(agency, event_id).envelope

    async def go():
        async with ReceiptSender(running.bootstrap, running.policy, running.keyring(agency).current,
                                 running.topics) as sender:
            await sender.send(envelope, status)

    run(go())
    if tracked:
        unit = next(e["unit_id"] for e in running.audit_entries() if e["kind"] == "DELIVERY"
                    and e["event_id"] == event_id)
        wait_notice(running, event_id, status, agency, unit=unit)


def metric(running, name, **labels):
    with urllib.request.urlopen(running.worker.url("/metrics"), timeout=5) as response:
        text = response.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and line.split("}")[0].split("{")[1].split(",") == want.split(","):
            return float(line.rsplit(" ", 1)[1])
        if not labels and line.startswith(f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return None


def settle(running, ticks: int = 6):
    """Let the deadline agent look at the clock a few times (its interval is 0.3 s)."""
    import time
    time.sleep(ticks * 0.3 + 0.5)


def test_marac_referral_escalated_once_at_6h_again_at_second_threshold_and_closed_by_late_receipt(deployment):
    running, clock = deployment
    event = fixture_event("MARAC_REFERRAL", unit_id=UNIT, area="shropshire", case_ref="WM-DEADLINE01")
    event_id = event["header"]["event_id"]
    running.publish(event)
    delivered = {c["agency_id"]: c for c in [wait_notice(running, event_id, "DELIVERED", a)
                                             for a in (HOUSING, "gp-fed-shropshire", "idva-west-mercia")]}
    assert delivered[HOUSING]["deliver_by"] == FRIDAY_EVENING + timedelta(hours=6)
    for agency in ("gp-fed-shropshire", "idva-west-mercia"):  # they receive in time: never escalated
        receipt(running, agency, event_id)

    clock.set(FRIDAY_EVENING + timedelta(hours=6) - timedelta(seconds=1))
    settle(running)
    assert entries(running, "ESCALATION", event_id) == []

    clock.set(FRIDAY_EVENING + timedelta(hours=6, seconds=1))
    running.wait_audit(lambda e: e["kind"] == "ESCALATION" and e["event_id"] == event_id)
    settle(running)
    [first] = entries(running, "ESCALATION", event_id)
    assert (first["agency_id"], first["level"], first["reason_code"]) == (HOUSING, 1, "NOT_RECEIVED")
    assert first["deliver_by"] == FRIDAY_EVENING + timedelta(hours=6)
    notice = wait_notice(running, event_id, "ESCALATED", HOUSING, level=1)
    assert notice["overdue_seconds"] == 1 and notice["required_receipt"] == "RECEIVED"
    assert metric(running, "masb_deliveries_overdue", agency=HOUSING) == 1
    assert metric(running, "masb_escalations_total", agency=HOUSING, level="1") == 1

    clock.set(FRIDAY_EVENING + timedelta(hours=24, seconds=1))  # 6 h + the second threshold of 18 h
    running.wait_audit(lambda e: e["kind"] == "ESCALATION" and e["event_id"] == event_id and e["level"] == 2)
    settle(running)
    assert sorted(e["level"] for e in entries(running, "ESCALATION", event_id)) == [1, 2]
    assert all(e["agency_id"] == HOUSING for e in entries(running, "ESCALATION", event_id))
    wait_notice(running, event_id, "ESCALATED", HOUSING, level=2)

    receipt(running, HOUSING, event_id, tracked=False)  # late: closes the escalation
    closed = running.wait_audit(lambda e: e["kind"] == "ESCALATION_CLOSED" and e["event_id"] == event_id)
    assert (closed[0]["agency_id"], closed[0]["level"], closed[0]["reason_code"]) == (HOUSING, 2, "RECEIVED_LATE")
    notice = wait_notice(running, event_id, "ESCALATION_CLOSED", HOUSING, level=2)
    assert notice["overdue_seconds"] == 18 * 3600 + 1
    running.wait_for(lambda: metric(running, "masb_deliveries_overdue", agency=HOUSING) == 0, 10, "overdue gauge 0")
    assert metric(running, "masb_escalations_open", agency=HOUSING) == 0
    settle(running)
    assert len(entries(running, "ESCALATION", event_id)) == 2
    assert len(entries(running, "ESCALATION_CLOSED", event_id)) == 1


def test_the_notice_opens_only_with_the_units_key_and_shows_nothing_in_clear(deployment):
    running, _ = deployment
    items = running.notices(UNIT)
    escalated = next(i for i in items if i.ok and i.notice.content["kind"] == "ESCALATED")
    raw = next(r.value for r in running.records(running.topics.unit(UNIT)) if r.key.decode() == escalated.notice.notice_id)
    content = escalated.notice.content
    for clear in (content["event_id"], content["agency_id"], content["agreement_id"], "ESCALATED"):
        assert clear.encode() not in raw  # which agency, which event: only inside the box
    # Another unit's key cannot open it, nor the right key id with other key bytes.
    worcs = running.unit_keyring("hau-worcestershire")
    from streams.crypto.notice import NoticeOpener
    from streams.partner import trusted_routers
    with pytest.raises(WrongRecipient):
        NoticeOpener("hau-worcestershire", worcs, trusted_routers(running.policy)).open(raw)
    stranger = generate_key(UNIT, "exchange")
    with pytest.raises(UnknownRecipientKey):
        NoticeOpener(UNIT, Keyring(UNIT, [stranger]), trusted_routers(running.policy)).open(raw)
    real = running.unit_keyring(UNIT).current
    impostor = replace(stranger, key_id=real.key_id, public_key=real.public_key)  # right id, wrong secret
    with pytest.raises(KeyUnwrapFailed):
        NoticeOpener(UNIT, Keyring(UNIT, [impostor]), trusted_routers(running.policy)).open(raw)
    assert all(i.ok for i in items)  # the feed holds only the router's notices to this unit


def test_encompass_on_a_friday_evening_is_due_before_the_next_school_day_of_the_calendar(deployment):
    running, clock = deployment
    friday = datetime(2026, 12, 4, 19, 30, tzinfo=LONDON)  # the Friday after: Monday 7 December is a school day
    clock.set(friday.astimezone(timezone.utc))
    event = fixture_event("CHILD_NOTIFICATION", case_ref="WM-DEADLINE02")
    event_id = event["header"]["event_id"]
    running.publish(event)
    school = "school-oakfield-primary"
    [delivery] = running.wait_audit(lambda e: e["kind"] == "DELIVERY" and e["event_id"] == event_id
                                    and e["agency_id"] == school)
    assert delivery["deliver_by"] == datetime(2026, 12, 7, 8, 0, tzinfo=LONDON)  # not Saturday
    receipt(running, "worcs-childrens-services", event_id)  # children's services (2 h) receive in time
    clock.set(datetime(2026, 12, 5, 10, 0, tzinfo=LONDON).astimezone(timezone.utc))  # Saturday morning
    settle(running)
    clock.set(datetime(2026, 12, 7, 7, 59, tzinfo=LONDON).astimezone(timezone.utc))
    settle(running)
    assert entries(running, "ESCALATION", event_id, school) == []
    clock.set(datetime(2026, 12, 7, 8, 0, 1, tzinfo=LONDON).astimezone(timezone.utc))
    [escalation] = running.wait_audit(lambda e: e["kind"] == "ESCALATION" and e["event_id"] == event_id)
    assert escalation["agency_id"] == school


def test_encompass_before_an_inset_day_is_due_the_day_after(deployment):
    """Calendar only (no clock move): the Friday before the INSET day of 30 November."""
    from streams.policy import deliver_by
    running, _ = deployment
    [share] = [s for s in running.policy.routing("CHILD_NOTIFICATION", "worcestershire")
               if s.agency_id == "school-oakfield-primary"]
    assert deliver_by(share, FRIDAY_EVENING) == datetime(2026, 12, 1, 8, 0, tzinfo=LONDON)


def test_a_worker_restart_neither_loses_nor_repeats_an_escalation(deployment):
    running, clock = deployment
    start = clock.now
    first = fixture_event("MARAC_REFERRAL", unit_id=UNIT, area="shropshire", case_ref="WM-DEADLINE03")
    second = fixture_event("MARAC_REFERRAL", unit_id=UNIT, area="shropshire", case_ref="WM-DEADLINE04")
    running.publish(first)
    running.publish(second)
    for event in (first, second):
        wait_notice(running, event["header"]["event_id"], "DELIVERED", HOUSING)
        for agency in ("gp-fed-shropshire", "idva-west-mercia"):
            receipt(running, agency, event["header"]["event_id"])
    first_id, second_id = first["header"]["event_id"], second["header"]["event_id"]

    clock.set(start + timedelta(hours=6, seconds=1))  # the first's deadline passes; escalated at once
    running.wait_audit(lambda e: e["kind"] == "ESCALATION" and e["event_id"] == first_id)
    # kill -9 the worker: the escalation of the first is in the log, nothing after it committed.
    os.killpg(running.worker.proc.pid, signal.SIGKILL)
    running.worker.proc.wait()
    clock.set(start + timedelta(hours=6, minutes=30))  # nothing new is due while it is down
    running.worker = WorkerProcess(worker_env(running.deployment, running.bootstrap, running.topics.prefix,
                                              MASB_CLOCK=f"file:{clock.path}", MASB_DEADLINE_INTERVAL="0.3"),
                                   running.deployment.workdir / "worker-2.log")
    running.worker.wait_healthy()
    running.wait_for(lambda: metric(running, "masb_deliveries_tracked") not in (None, 0), 60,
                     "the new worker to take deadline tracking over")
    settle(running, 10)
    assert len(entries(running, "ESCALATION", first_id, HOUSING)) == 1  # not repeated
    assert len(entries(running, "ESCALATION", second_id, HOUSING)) == 1  # nor lost (published together)

    # Stopped across a deadline: the new worker escalates once, when it is back.
    running.worker.stop()
    clock.set(start + timedelta(hours=24, seconds=5))  # the second threshold of both
    running.worker = WorkerProcess(worker_env(running.deployment, running.bootstrap, running.topics.prefix,
                                              MASB_CLOCK=f"file:{clock.path}", MASB_DEADLINE_INTERVAL="0.3"),
                                   running.deployment.workdir / "worker-3.log")
    running.worker.wait_healthy()
    for event_id in (first_id, second_id):
        running.wait_audit(lambda e, i=event_id: e["kind"] == "ESCALATION" and e["event_id"] == i
                           and e["level"] == 2, timeout=60)
    settle(running, 10)
    for event_id in (first_id, second_id):
        assert sorted(e["level"] for e in entries(running, "ESCALATION", event_id)) == [1, 2]
        assert len(notices(running, event_id, "ESCALATED")) == 2  # one notice per level (repeats dropped)


def test_expiry_sends_a_non_delivery_report(deployment):
    running, clock = deployment
    event = fixture_event("PROTECTION_NOTICE_ISSUED", unit_id=UNIT, area="shropshire", case_ref="WM-DEADLINE05")
    event_id = event["header"]["event_id"]
    running.publish(event)
    wait_notice(running, event_id, "DELIVERED", HOUSING)
    receipt(running, "idva-west-mercia", event_id, "ACKNOWLEDGED")
    published = clock.now
    clock.set(published + timedelta(hours=24, seconds=1))  # escalated at 6 h and again at 24 h
    wait_notice(running, event_id, "ESCALATED", HOUSING, level=2)
    clock.set(published + timedelta(days=5, seconds=1))
    report = wait_notice(running, event_id, "NON_DELIVERY", HOUSING, level=2)
    assert report["received_at"] is None
    [entry] = running.wait_audit(lambda e: e["kind"] == "NON_DELIVERY" and e["event_id"] == event_id)
    assert (entry["agency_id"], entry["reason_code"]) == (HOUSING, "NOT_RECEIVED")
    # A late receipt after the expiry is still recorded, but tracking has ended: no new action.
    receipt(running, HOUSING, event_id, tracked=False)
    running.wait_audit(lambda e: e["kind"] == "RECEIPT" and e["event_id"] == event_id and e["agency_id"] == HOUSING)
    settle(running)
    assert entries(running, "ESCALATION_CLOSED", event_id) == []


def test_status_shows_the_life_of_an_event_to_its_unit_only(deployment, tmp_path):
    import json
    import subprocess
    import sys
    running, _ = deployment
    event = fixture_event("MARAC_REFERRAL", unit_id=UNIT, area="shropshire", case_ref="WM-DEADLINE06")
    event_id = event["header"]["event_id"]
    running.publish(event)
    wait_notice(running, event_id, "DELIVERED", HOUSING)
    receipt(running, "idva-west-mercia", event_id, "ACKNOWLEDGED")
    env = dict(os.environ, MASB_BOOTSTRAP=running.bootstrap, MASB_TOPIC_PREFIX=running.topics.prefix,
               MASB_POLICY=str(running.deployment.policy_path))
    key = next(running.deployment.keys_dir.glob(f"{UNIT}.exchange.*.key"))
    at = deployment[1].now.isoformat()
    done = subprocess.run([sys.executable, "-m", "agents", "status", event_id, "--as", UNIT, "--key", str(key),
                           "--format", "json", "--at", at], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    status = {row["agency"]: row for row in json.loads(done.stdout)["agencies"]}
    assert set(status) == {HOUSING, "gp-fed-shropshire", "idva-west-mercia"}
    assert status["idva-west-mercia"]["state"] == "acknowledged"
    assert status["idva-west-mercia"]["acknowledged_at"] and status["idva-west-mercia"]["received_at"]
    assert status[HOUSING]["state"] == "delivered" and status[HOUSING]["delivered_at"]
    # Another unit sees nothing of it, even with its own valid key.
    other = next(running.deployment.keys_dir.glob("hau-worcestershire.exchange.*.key"))
    done = subprocess.run([sys.executable, "-m", "agents", "status", event_id, "--as", "hau-worcestershire",
                           "--key", str(other)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and event_id in done.stderr and HOUSING not in done.stdout
    # The unit's feed, as JSON lines.
    done = subprocess.run([sys.executable, "-m", "agents", "consume", "--unit", UNIT, "--key", str(key)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert {(n["kind"], n["agency_id"]) for n in lines if n["event_id"] == event_id} >= {
        ("DELIVERED", HOUSING), ("ACKNOWLEDGED", "idva-west-mercia")}


def test_two_workers_escalate_once_and_the_survivor_takes_over(deployment):
    """Several workers: one owns deadline tracking; when it dies, another goes on, nothing twice."""
    running, clock = deployment
    env = worker_env(running.deployment, running.bootstrap, running.topics.prefix,
                     MASB_CLOCK=f"file:{clock.path}", MASB_DEADLINE_INTERVAL="0.3")
    env["MASB_DATADIR"] = str(running.deployment.workdir / "worker-b-data")
    first = running.worker
    second = WorkerProcess(env, running.deployment.workdir / "worker-b.log")
    workers = [first, second]
    try:
        second.wait_healthy()
        start = clock.now
        event = fixture_event("MARAC_REFERRAL", unit_id=UNIT, area="shropshire", case_ref="WM-DEADLINE07")
        event_id = event["header"]["event_id"]
        running.publish(event)
        wait_notice(running, event_id, "DELIVERED", HOUSING)
        for agency in ("gp-fed-shropshire", "idva-west-mercia"):
            receipt(running, agency, event_id)

        def owner():
            for worker in workers:
                running.worker = worker
                if metric(running, "masb_deliveries_overdue", agency=HOUSING) is not None:
                    return worker
            return None

        clock.set(start + timedelta(hours=6, seconds=1))
        running.wait_audit(lambda e: e["kind"] == "ESCALATION" and e["event_id"] == event_id)
        owning = running.wait_for(owner, 30, "the worker that owns deadline tracking")
        settle(running, 10)
        assert len(entries(running, "ESCALATION", event_id)) == 1  # two workers, one escalation

        os.killpg(owning.proc.pid, signal.SIGKILL)
        owning.proc.wait()
        survivor = second if owning is workers[0] else workers[0]
        workers = [survivor]
        running.worker = survivor
        clock.set(start + timedelta(hours=24, seconds=1))
        running.wait_audit(lambda e: e["kind"] == "ESCALATION" and e["event_id"] == event_id and e["level"] == 2,
                           timeout=90)
        settle(running, 10)
        assert sorted(e["level"] for e in entries(running, "ESCALATION", event_id)) == [1, 2]
        assert owner() is survivor
    finally:
        for worker in (first, second):  # the fixture stops running.worker
            if worker is not running.worker:
                worker.stop()
