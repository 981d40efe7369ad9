"""Behaviour of the case event codec that publishers, the router and partners rely on."""

from __future__ import annotations

import copy
import io
import json
import struct
from pathlib import Path

import avro.io
import avro.schema
import pytest
from fastavro import schemaless_writer
from fastavro.schema import parse_schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import codec
from streams.codec import (
    EVENT_TYPES, MAX_EVENT_BYTES, EventValidationError, FieldError, WireFormatError, decode_event, encode_event,
    field_paths, get_path, schema_id_of, schema_ref, validate_event,
)
from streams.schema_registry import DEFAULT_SCHEMA_ROOT, Registry

FIXTURES = Path(__file__).parent / "fixtures" / "events"


def load(event_type: str) -> dict:
    return json.loads((FIXTURES / f"{event_type.lower()}.json").read_text())


def errors_of(event: dict) -> list[FieldError]:
    with pytest.raises(EventValidationError) as info:
        validate_event(event)
    return info.value.errors


def assert_only_error(event: dict, path: str, problem_part: str, secret: str | None = None) -> None:
    with pytest.raises(EventValidationError) as info:
        validate_event(event)
    assert [e.path for e in info.value.errors] == [path], info.value.errors
    assert problem_part in info.value.errors[0].problem
    assert f"{path}: " in str(info.value)
    if secret is not None:
        assert secret not in str(info.value)
        assert all(secret not in e.problem for e in info.value.errors)


# ---------------------------------------------------------------- round trips and wire layout

@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_event_type_round_trips_from_its_fixture(event_type: str) -> None:
    event = load(event_type)
    data = encode_event(event)
    assert decode_event(data) == event


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_wire_prefix_is_magic_zero_and_big_endian_latest_id(event_type: str) -> None:
    data = encode_event(load(event_type))
    latest = Registry(DEFAULT_SCHEMA_ROOT).latest(event_type)
    assert data[0] == 0
    assert struct.unpack(">I", data[1:5])[0] == latest.id == schema_id_of(data)
    assert schema_ref(event_type) == f"{event_type}@{latest.id}"


def test_body_is_plain_avro_readable_by_the_reference_implementation() -> None:
    # An independent client (Apache avro) reads the body with the frozen schema file alone.
    event = load("CHILD_NOTIFICATION")
    data = encode_event(event)
    registry = Registry(DEFAULT_SCHEMA_ROOT)
    schema = avro.schema.parse(json.dumps(registry.schema(schema_id_of(data))))
    datum = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(data[5:])))
    assert datum["child"]["name"] == event["child"]["name"]
    assert str(datum["header"]["event_id"]) == event["header"]["event_id"]
    assert datum["notify_by"].isoformat() == event["notify_by"]


def test_registry_covers_exactly_the_event_types() -> None:
    assert Registry(DEFAULT_SCHEMA_ROOT).event_types() == sorted(EVENT_TYPES)


def test_omitted_optional_fields_come_back_as_null() -> None:
    event = load("MARAC_REFERRAL")
    del event["perpetrator"], event["victim"]["nhs_number"], event["children"]
    decoded = decode_event(encode_event(event))
    assert decoded["perpetrator"] is None
    assert decoded["victim"]["nhs_number"] is None
    assert decoded["children"] == []


def test_timestamps_are_normalised_to_utc_with_milliseconds_kept() -> None:
    event = load("CHILD_NOTIFICATION")
    event["incident_at"] = "2026-11-20T22:14:00.007+01:00"
    event["header"]["event_id"] = event["header"]["event_id"].upper()
    decoded = decode_event(encode_event(event))
    assert decoded["incident_at"] == "2026-11-20T21:14:00.007Z"
    assert decoded["header"]["event_id"] == event["header"]["event_id"].lower()


# ---------------------------------------------------------------- validation errors

def test_missing_required_field() -> None:
    event = load("CHILD_NOTIFICATION")
    del event["school"]["urn"]
    assert_only_error(event, "school.urn", "required field is missing")


def test_wrong_type_does_not_echo_the_value() -> None:
    event = load("CHILD_NOTIFICATION")
    event["child"]["name"] = ["Sam", "Example"]
    assert_only_error(event, "child.name", "expected a string", secret="Example")


def test_unknown_event_type() -> None:
    event = load("CASE_CLOSED")
    event["header"]["event_type"] = "VICTIM_MOVED_TO_SECRET_ADDRESS"
    assert_only_error(event, "header.event_type", "unknown event type", secret="SECRET_ADDRESS")


def test_missing_header_is_reported_not_crashed() -> None:
    assert_only_error({"reason": "TRANSFERRED"}, "header", "required field is missing")


def test_bad_enum_lists_allowed_symbols_not_the_value() -> None:
    event = load("RISK_ASSESSMENT_COMPLETED")
    event["header"]["area"] = "Birmingham"
    assert_only_error(event, "header.area", "herefordshire", secret="Birmingham")


def test_bad_date_does_not_echo_a_date_of_birth() -> None:
    event = load("CHILD_NOTIFICATION")
    event["child"]["date_of_birth"] = "14/09/2017"
    assert_only_error(event, "child.date_of_birth", "YYYY-MM-DD", secret="14/09/2017")


@pytest.mark.parametrize("bad", ["2026-11-20 21:14:00", "2026-11-20T21:14:00", "2026-11-20T21:14:00.1234Z", 1763673240000])
def test_bad_timestamp(bad: object) -> None:
    event = load("CHILD_NOTIFICATION")
    event["incident_at"] = bad
    assert_only_error(event, "incident_at", "RFC 3339")


def test_bad_uuid() -> None:
    event = load("CASE_CLOSED")
    event["header"]["event_id"] = "not-a-uuid"
    assert_only_error(event, "header.event_id", "UUID")


def test_case_ref_rejects_a_name_so_it_cannot_become_a_kafka_key() -> None:
    event = load("PROTECTION_ORDER_GRANTED")
    event["header"]["case_ref"] = "Alex Example"
    assert_only_error(event, "header.case_ref", "does not match", secret="Alex Example")


def test_unknown_field_names_the_key_only_when_it_is_an_identifier() -> None:
    event = load("CASE_CLOSED")
    event["notes"] = "free text about the victim"
    assert_only_error(event, "notes", "unknown field", secret="free text")
    event = load("CASE_CLOSED")
    event["Alex Example, 12 Sample Street"] = 1
    assert_only_error(event, "<non-identifier key>", "unknown field", secret="Alex Example")


def test_consent_reason_required_unless_given() -> None:
    event = load("MARAC_REFERRAL")
    event["header"]["consent"] = {"status": "REFUSED"}
    assert_only_error(event, "header.consent.reason", "required when consent status is not GIVEN")


@pytest.mark.parametrize("score", [-1, 25])
def test_dash_score_out_of_range(score: int) -> None:
    event = load("MARAC_REFERRAL")
    event["dash_score"] = score
    assert_only_error(event, "dash_score", "between 0 and 24")


def test_dash_score_must_match_answers_and_level() -> None:
    event = load("RISK_ASSESSMENT_COMPLETED")
    event["score"] = 9
    paths = {e.path for e in errors_of(event)}
    assert paths == {"score", "scored_level"}


def test_professional_judgement_raises_the_level() -> None:
    event = load("RISK_ASSESSMENT_COMPLETED")
    event["answers"] = [{"question_id": f"Q{i}", "answer": "YES" if i <= 5 else "NO", "source": None} for i in range(1, 25)]
    event["score"], event["scored_level"] = 5, "STANDARD"
    event["professional_judgement"] = {"level": "HIGH", "reason": "Escalating stalking"}
    validate_event(event)  # HIGH by judgement over a STANDARD score is valid
    event["professional_judgement"]["level"] = "STANDARD"
    paths = {e.path for e in errors_of(event)}
    assert "professional_judgement.level" in paths


def test_nhs_number_check_digit() -> None:
    event = load("MARAC_REFERRAL")
    event["victim"]["nhs_number"] = "9434765918"
    assert_only_error(event, "victim.nhs_number", "check digit", secret="9434765918")


def test_every_problem_is_reported_at_once() -> None:
    event = load("MARAC_REFERRAL")
    event["header"]["case_ref"] = "john smith"
    event["victim"]["date_of_birth"] = "yesterday"
    event["children"][0]["school"]["urn"] = 12
    event["incidents"][1]["occurred_at"] = "soon"
    del event["referrer"]
    paths = {e.path for e in errors_of(event)}
    assert paths == {"header.case_ref", "victim.date_of_birth", "children[0].school.urn",
                     "incidents[1].occurred_at", "referrer"}


def test_oversized_event_is_refused() -> None:
    event = load("MARAC_REFERRAL")
    event["risks_and_triggers"] = ["x" * 1000] * (MAX_EVENT_BYTES // 1000)
    assert_only_error(event, "<event>", "MAX_EVENT_BYTES")


def test_encode_refuses_invalid_events_too() -> None:
    event = load("CHILD_NOTIFICATION")
    event["child_present"] = "yes"
    with pytest.raises(EventValidationError):
        encode_event(event)


def test_validate_does_not_mutate_the_event() -> None:
    event = load("CHILD_NOTIFICATION")
    before = copy.deepcopy(event)
    validate_event(event)
    assert event == before


# ---------------------------------------------------------------- decoding errors

def test_garbage_bytes() -> None:
    with pytest.raises(WireFormatError, match="magic"):
        decode_event(b"\x7bnot avro at all")


def test_short_message() -> None:
    with pytest.raises(WireFormatError, match="prefix"):
        decode_event(b"\x00\x00")


def test_unknown_schema_id() -> None:
    data = encode_event(load("CASE_CLOSED"))
    with pytest.raises(WireFormatError, match="unknown schema id 99999"):
        decode_event(b"\x00" + struct.pack(">I", 99999) + data[5:])


def test_truncated_body() -> None:
    data = encode_event(load("MARAC_REFERRAL"))
    for cut in (6, len(data) // 2, len(data) - 1):
        with pytest.raises(WireFormatError, match="undecodable"):
            decode_event(data[:cut])


def test_header_event_type_must_match_the_schema_id() -> None:
    data = encode_event(load("CASE_CLOSED"))
    assert data[42] == 12  # header.event_type enum index 6 (zigzag), see docs/wire-format.md
    forged = data[:42] + bytes([8]) + data[43:]  # index 4 = CHILD_NOTIFICATION
    with pytest.raises(WireFormatError, match="header.event_type"):
        decode_event(forged)


def test_trailing_bytes() -> None:
    with pytest.raises(WireFormatError, match="trailing"):
        decode_event(encode_event(load("CASE_CLOSED")) + b"\x00")


def test_body_from_a_non_conforming_publisher_is_rejected_without_values() -> None:
    # A publisher bypassing this codec writes valid Avro with a name as the case_ref.
    data = encode_event(load("CHILD_NOTIFICATION"))
    registry = Registry(DEFAULT_SCHEMA_ROOT)
    schema = parse_schema(registry.schema(schema_id_of(data)))
    datum = decode_event(data)
    datum["header"]["case_ref"] = "Sam Example"
    for key in ("occurred_at", "published_at"):
        datum["header"][key] = 0
    datum["incident_at"], datum["notify_by"] = 0, 0
    buf = io.BytesIO()
    schemaless_writer(buf, schema, datum)
    forged = data[:5] + buf.getvalue()
    with pytest.raises(WireFormatError) as info:
        decode_event(forged, validate=True)
    assert "header.case_ref" in str(info.value) and "Sam Example" not in str(info.value)
    decoded = decode_event(forged)  # types are fine, so a plain decode succeeds...
    assert decoded["header"]["case_ref"] == "Sam Example"
    with pytest.raises(EventValidationError) as invalid:  # ...and validate_event catches it
        validate_event(decoded)
    assert [e.path for e in invalid.value.errors] == ["header.case_ref"]
    assert "Sam Example" not in str(invalid.value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_arbitrary_bytes_only_raise_wire_format_error(data: bytes) -> None:
    try:
        decode_event(data)
    except WireFormatError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(1, 8)), st.binary(max_size=400))
def test_random_body_under_a_valid_id_only_raises_wire_format_error(schema_id: int, body: bytes) -> None:
    try:
        decode_event(b"\x00" + struct.pack(">I", schema_id) + body, validate=True)
    except WireFormatError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_corrupting_one_byte_never_escapes_as_another_exception(data: st.DataObject) -> None:
    message = bytearray(encode_event(load("RISK_ASSESSMENT_COMPLETED")))
    index = data.draw(st.integers(5, len(message) - 1))
    message[index] = data.draw(st.integers(0, 255))
    try:
        decode_event(bytes(message), validate=True)
    except WireFormatError as exc:
        assert "Alex Example" not in str(exc)


# ---------------------------------------------------------------- field paths

def test_field_paths_recurse_records_and_stop_at_arrays() -> None:
    paths = field_paths("MARAC_REFERRAL")
    assert {"header", "header.case_ref", "header.consent.status", "victim", "victim.name", "victim.address",
            "victim.address.postcode", "perpetrator.address.line1", "children", "police_data.bail"} <= paths
    assert "children.name" not in paths and "incidents.summary" not in paths


def test_field_paths_unknown_type() -> None:
    with pytest.raises(KeyError):
        field_paths("NOT_A_TYPE")


def test_get_path() -> None:
    event = load("MARAC_REFERRAL")
    assert get_path(event, "victim.address.postcode") == "WR1 2AB"
    assert get_path(event, "children") == event["children"]
    event["perpetrator"] = None
    del event["victim"]["nhs_number"]
    assert get_path(event, "perpetrator.address.postcode") is None
    assert get_path(event, "victim.nhs_number") is None
    with pytest.raises(KeyError):
        get_path(event, "victim.shoe_size")
    with pytest.raises(KeyError):
        get_path(event, "children.name")


def test_public_names_exist() -> None:
    for name in ("EVENT_TYPES", "EventValidationError", "FieldError", "WireFormatError", "validate_event",
                 "encode_event", "decode_event", "schema_id_of", "schema_ref", "field_paths", "get_path",
                 "MAX_EVENT_BYTES"):
        assert hasattr(codec, name)
    assert MAX_EVENT_BYTES == 64 * 1024


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_events_doc_lists_every_field_path(event_type: str) -> None:
    doc = (Path(__file__).parent.parent / "docs" / "events.md").read_text()
    missing = sorted(p for p in field_paths(event_type) if f"`{p}`" not in doc)
    assert missing == []
    assert f"## {event_type}" in doc
