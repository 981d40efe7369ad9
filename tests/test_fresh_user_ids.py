"""Event ids and calendar dates as a fresh user met them (docs/events.md "Shape", docs/cli.md).

- An event id sent upper-case is the id every door returns lower-case, as the exchange log stores
  it, and every command that takes an event id (status, audit prove, dlq --event-id) finds it in
  any case.
- Every event-id argument refuses what is not a UUID (a case reference typed by mistake, the nil
  UUID) with exit 2 before any broker is contacted, and never echoes the value.
- The nil UUID is refused as header.event_id by every door and by the router (INVALID_EVENT).
- A date or time of the right syntax that does not exist says so ("not a calendar date").
- `dlq redrive` says that the number it prints is the dead letter's offset.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from streams import codec
from streams.codec import EventValidationError
from streams.crypto.pseudonym import PseudonymKeys
from streams.ingest import IngestService, build_ingest_app
from streams.publisher import Publisher, prepare
from streams.routing import Refusal
from streams.topics import Topics
from tests.harness import fixture_event, run, running_deployment
from tests.test_audit_kafka import wait_covered
from tests.test_door import forged, routed
from tests.test_door import router as router  # noqa: F401 - the shared Router fixture

UNIT = "hau-worcestershire"
NO_BROKER = "127.0.0.1:1"  # nothing listens on port 1
NIL = "00000000-0000-0000-0000-000000000000"
CASE_REF = "WM-7Q2K9D4XJ3"


def masb(*args, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agents", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, check=False, env={**os.environ, **(env or {})})


def with_header(event_type: str, **header) -> dict:
    event = fixture_event(event_type)
    event["header"].update(header)
    return event


def problems_of(event: dict) -> dict[str, str]:
    with pytest.raises(EventValidationError) as info:
        codec.validate_event(event)
    return {e.path: e.problem for e in info.value.errors}


def post(deployment, unit_key, bootstrap: str, body, topics: Topics = Topics("ids.")) -> tuple[int, dict]:
    service = IngestService(bootstrap, deployment.policy, unit_key, topics, send_timeout=10,
                            pseudonyms=PseudonymKeys.load_dir(deployment.keys_dir))

    async def go():
        async with TestClient(TestServer(build_ingest_app(service))) as client:
            response = await client.post("/events", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            return response.status, await response.json()

    return run(go())


def publish_file(deployment, path: Path, bootstrap: str = NO_BROKER, prefix: str = "") -> subprocess.CompletedProcess:
    return masb("publish", "--as", UNIT, "--keys-dir", deployment.keys_dir, "--policy", deployment.policy_path,
                "--bootstrap", bootstrap, "--topic-prefix", prefix, path)


# -- 1. the id a door returns is the one the log stores ---------------------------------------------
def test_the_python_door_gives_back_an_upper_case_event_id_lower_case(deployment, unit_key, pseudonyms):
    from streams.publisher import prepare_publication

    event = fixture_event("MARAC_REFERRAL")
    lower = event["header"]["event_id"]
    event["header"]["event_id"] = lower.upper()
    ready = prepare_publication(event, deployment.policy, unit_key, pseudonyms)
    assert ready.event_id == lower and ready.event_type == "MARAC_REFERRAL"
    assert event["header"]["event_id"] == lower.upper()  # the caller's event is left as it was
    assert (ready.key, ready.value)[0] == prepare(event, deployment.policy, unit_key, pseudonyms)[0]


# -- 2. one argparse type for every event-id argument -----------------------------------------------
def event_id_commands(root: Path) -> list[tuple[str, list]]:
    """Every command and flag that takes an event id, with {} where the id goes."""
    return [
        ("status", ["status", "{}", "--as", UNIT, "--key", root / "no.key"]),
        ("audit prove", ["audit", "prove", "{}", "--no-index", "--no-state"]),
        ("audit prove (second id)", ["audit", "prove", "3f0c1b2a-9d4e-4c1a-8f00-5b7e2d9a6c10", "{}"]),
        ("dlq list", ["dlq", "list", "--event-id", "{}"]),
        ("dlq redrive", ["dlq", "redrive", "--event-id", "{}", "--dry-run"]),
    ]


@pytest.mark.parametrize("value", [CASE_REF, "not-a-uuid", NIL, "3f0c1b2a-9d4e-4c1a-8f00-5b7e2d9a6c1",
                                   "3f0c1b2a_9d4e-4c1a-8f00-5b7e2d9a6c10", "３f0c1b2a-9d4e-4c1a-8f00-5b7e2d9a6c10"])
def test_every_event_id_argument_refuses_a_non_uuid_before_any_broker_without_echoing_it(tmp_path, value):
    for name, template in event_id_commands(tmp_path):
        args = [value if a == "{}" else a for a in template]
        started = time.monotonic()
        result = masb(*args, env={"MASB_BOOTSTRAP": NO_BROKER, "MASB_POLICY": str(tmp_path / "policy.yaml")},
                      timeout=30)
        assert result.returncode == 2, (name, result.stderr)
        first = result.stderr.splitlines()[0]
        assert first.startswith("masb: ") and "not an event id" in first, (name, result.stderr)
        assert value not in result.stderr and value.lower() not in result.stderr, (name, result.stderr)
        assert "Traceback" not in result.stderr and "Kafka" not in result.stderr, (name, result.stderr)
        assert time.monotonic() - started < 20, name


def test_the_event_id_type_reads_any_case_and_form_into_the_canonical_one():
    from agents.cli import build_parser

    lower = "7be1b4e8-0c2d-4e5f-8a6b-19c6c31b0f2a"
    forms = [lower.upper(), lower, "{" + lower.upper() + "}", "urn:uuid:" + lower, lower.replace("-", "").upper()]
    parser = build_parser()
    for form in forms:
        assert parser.parse_args(["audit", "prove", form, form]).event_id == [lower, lower]
        assert parser.parse_args(["dlq", "list", "--event-id", form]).event_id == lower
        assert parser.parse_args(["dlq", "redrive", "--event-id", form]).event_id == lower
        assert parser.parse_args(["status", form, "--as", UNIT, "--key", "k"]).event_id == lower


# -- 3. the nil UUID, at every door and at the router -------------------------------------------------
def test_the_nil_uuid_is_refused_as_header_event_id_by_the_rules(deployment, unit_key, pseudonyms):
    problems = problems_of(with_header("CASE_CLOSED", event_id=NIL))
    assert list(problems) == ["header.event_id"] and problems["header.event_id"].startswith("is the nil UUID")
    with pytest.raises(EventValidationError) as info:
        prepare(with_header("CASE_CLOSED", event_id=NIL), deployment.policy, unit_key, pseudonyms)
    assert [e.path for e in info.value.errors] == ["header.event_id"] and info.value.event_id is None


def test_the_nil_uuid_is_refused_by_masb_publish_and_http_ingest(deployment, unit_key, tmp_path):
    path = tmp_path / "nil.json"
    path.write_text(json.dumps(with_header("CASE_CLOSED", event_id=NIL)))
    result = publish_file(deployment, path)
    assert result.returncode == 2 and "header.event_id: is the nil UUID" in result.stderr, result.stderr
    assert NIL not in result.stderr and "Traceback" not in result.stderr

    status, body = post(deployment, unit_key, NO_BROKER, with_header("CASE_CLOSED", event_id=NIL))
    assert status == 400 and [e["path"] for e in body["errors"]] == ["header.event_id"], body
    assert NIL not in json.dumps(body)


def test_the_router_refuses_the_nil_uuid_as_the_doors_do(deployment, unit_key, router):  # noqa: F811
    key, value = forged(deployment, unit_key, fixture_event("RISK_ASSESSMENT_COMPLETED"),
                        lambda d: d["header"].update(event_id=NIL))
    refusal = routed(router, key, value)
    assert isinstance(refusal, Refusal) and refusal.reason_code == "INVALID_EVENT"
    assert "\nheader.event_id: is the nil UUID" in refusal.reason and NIL not in refusal.reason


# -- 4. dates and times that do not exist ---------------------------------------------------------
@pytest.mark.parametrize("path, value, says", [
    (("victim", "date_of_birth"), "1991-02-29", "not a calendar date"),
    (("victim", "date_of_birth"), "1991-13-01", "not a calendar date"),
    (("victim", "date_of_birth"), "1991-04-31", "not a calendar date"),
    (("victim", "date_of_birth"), "1991-2-28", "expected a date YYYY-MM-DD"),
    (("victim", "date_of_birth"), "1992-02-29", None),  # a leap year
    (("header", "occurred_at"), "2026-02-29T10:00:00Z", "not a calendar date and time"),
    (("header", "occurred_at"), "2026-11-20T24:00:00Z", "not a calendar date and time"),
    (("header", "occurred_at"), "2026-11-20T21:14:60Z", "not a calendar date and time"),
    (("header", "occurred_at"), "2026-11-20T21:14:00+00:99", "not a calendar date and time"),
    (("header", "occurred_at"), "2026-11-20T21:14:00+24:00", "not a calendar date and time"),
    (("header", "occurred_at"), "2026-11-20 21:14:00Z", "expected an RFC 3339 timestamp"),
])
def test_a_date_or_time_that_does_not_exist_says_so(path, value, says):
    event = fixture_event("RISK_ASSESSMENT_COMPLETED")
    event[path[0]][path[1]] = value
    dotted = ".".join(path)
    if says is None:
        codec.validate_event(event)
        return
    problems = problems_of(event)
    assert says in problems[dotted] and value not in problems[dotted], problems


def test_an_impossible_date_is_named_so_at_masb_publish_and_http_ingest(deployment, unit_key, tmp_path):
    event = fixture_event("RISK_ASSESSMENT_COMPLETED")
    event["victim"]["date_of_birth"] = "1991-02-29"
    path = tmp_path / "leap.json"
    path.write_text(json.dumps(event))
    result = publish_file(deployment, path)
    assert result.returncode == 2 and "victim.date_of_birth: not a calendar date" in result.stderr, result.stderr
    assert "1991" not in result.stderr

    status, body = post(deployment, unit_key, NO_BROKER, event)
    assert status == 400, body
    assert [(e["path"], e["problem"].startswith("not a calendar date")) for e in body["errors"]] == [
        ("victim.date_of_birth", True)], body
    assert "1991" not in json.dumps(body)


# -- on Apache Kafka: upper-case ids through every door and every command ----------------------------
@pytest.fixture(scope="module")
def running(kafka, tmp_path_factory):
    with running_deployment(kafka, tmp_path_factory.mktemp("ids-kafka")) as running:
        yield running


def cli(running, *args) -> subprocess.CompletedProcess:
    return masb(*args, env={"MASB_BOOTSTRAP": running.bootstrap, "MASB_TOPIC_PREFIX": running.topics.prefix,
                            "MASB_POLICY": str(running.deployment.policy_path)}, timeout=120)


@pytest.mark.kafka
def test_an_upper_case_event_id_is_returned_lower_case_by_every_door_and_found_by_every_command(running, tmp_path):
    deployment = running.deployment
    unit_key = running.unit_key(UNIT)
    # masb publish
    by_cli = fixture_event("MARAC_REFERRAL", case_ref="WM-IDSCLI0001")
    by_cli["header"]["event_id"] = by_cli["header"]["event_id"].upper()
    path = tmp_path / "upper.json"
    path.write_text(json.dumps(by_cli))
    published = publish_file(deployment, path, running.bootstrap, running.topics.prefix)
    assert published.returncode == 0, published.stderr
    cli_id = by_cli["header"]["event_id"].lower()
    assert json.loads(published.stdout)["published"] == cli_id
    # HTTP ingest
    by_http = fixture_event("MARAC_REFERRAL", case_ref="WM-IDSHTTP001", event_id="7BE1B4E8-0C2D-4E5F-8A6B-19C6C31B0F2A")
    status, body = post(deployment, unit_key, running.bootstrap, by_http, running.topics)
    assert (status, body) == (202, {"event_id": "7be1b4e8-0c2d-4e5f-8a6b-19c6c31b0f2a"})
    # the Python client
    by_python = fixture_event("MARAC_REFERRAL", case_ref="WM-IDSPY00001", event_id="19C6C31B-0F2A-4E5F-8A6B-7BE1B4E80C2D")

    async def publish() -> str:
        async with Publisher(running.bootstrap, running.policy, unit_key, running.topics,
                             pseudonyms=running.pseudonyms) as publisher:
            return await publisher.publish(copy.deepcopy(by_python))

    assert run(publish()) == "19c6c31b-0f2a-4e5f-8a6b-7be1b4e80c2d"

    ids = [cli_id, "7be1b4e8-0c2d-4e5f-8a6b-19c6c31b0f2a", "19c6c31b-0f2a-4e5f-8a6b-7be1b4e80c2d"]
    for event_id in ids:
        running.wait_audit(lambda e, event_id=event_id: e["kind"] == "DELIVERY" and e["event_id"] == event_id)
    wait_covered(running)
    proved = cli(running, "audit", "prove", *(i.upper() for i in ids), "--no-index", "--no-state",
                 "--out", tmp_path / "proof.json")
    assert proved.returncode == 0, proved.stderr
    deliveries = [e for e in running.audit_entries() if e["kind"] == "DELIVERY" and e["event_id"] in ids]
    assert {e["event_id"] for e in deliveries} == set(ids)
    assert len(json.loads((tmp_path / "proof.json").read_text())["inclusions"]) == len(deliveries)
    exchange_key = next(deployment.keys_dir.glob(f"{UNIT}.exchange.*.key"))
    for event_id in ids:  # `status` finds each too (any case), once the unit's notice feed has it
        def shown(event_id=event_id):
            result = cli(running, "status", event_id.upper(), "--as", UNIT, "--format", "json", "--key", exchange_key)
            return result if result.returncode == 0 else None

        assert json.loads(running.wait_for(shown, 60, "a notice").stdout)["event_id"] == event_id


@pytest.mark.kafka
def test_dlq_finds_a_dead_letter_by_an_upper_case_event_id_and_prints_its_offset_as_such(running):
    event = fixture_event("RISK_ASSESSMENT_COMPLETED", case_ref="WM-IDSDLQ0001")
    event_id = event["header"]["event_id"]
    key, value = forged(running.deployment, running.unit_key(UNIT), event,
                        lambda d: d["victim"].update(nhs_number="９４３４７６５９１９"))
    running.send_raw(running.pseudonyms.current.pseudonym(event["header"]["case_ref"]), value)
    running.wait_audit(lambda e: e["kind"] == "REFUSAL" and e["event_id"] == event_id)
    [letter] = [d for d in json.loads(cli(running, "dlq", "list", "--format", "json").stdout)["records"]
                if d["event_id"] == event_id]

    listed = cli(running, "dlq", "list", "--format", "json", "--event-id", event_id.upper())
    assert listed.returncode == 0, listed.stderr
    assert [r["offset"] for r in json.loads(listed.stdout)["records"]] == [letter["offset"]]

    dry = cli(running, "dlq", "redrive", "--event-id", event_id.upper(), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert [json.loads(line) for line in dry.stdout.splitlines()] == [
        {"dead_letter_offset": letter["offset"], "reason_code": "INVALID_EVENT", "event_id": event_id,
         "to": running.topics.case_events, "dry_run": True}]

    done = cli(running, "dlq", "redrive", "--event-id", event_id.upper())
    assert done.returncode == 0, done.stderr
    [line] = [json.loads(x) for x in done.stdout.splitlines()]
    assert line["dead_letter_offset"] == letter["offset"] and line["event_id"] == event_id and line["recorded_at"]
    assert "redriven" not in line
