"""The evolution gate: compatible changes get new frozen versions, incompatible ones are refused,
and data written with any registered version stays readable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from streams.codec import Codec, WireFormatError
from streams.schema_registry import (
    DEFAULT_SCHEMA_ROOT, IncompatibleSchemaError, Registry, check_compatibility, register_pending, schema_fingerprint,
)

FIXTURES = Path(__file__).parent / "fixtures" / "events"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    copy = tmp_path / "schemas"
    shutil.copytree(DEFAULT_SCHEMA_ROOT / "events", copy / "events")
    shutil.copytree(DEFAULT_SCHEMA_ROOT / "registry", copy / "registry")
    shutil.copy(DEFAULT_SCHEMA_ROOT / "registry.json", copy / "registry.json")
    return copy


def load(event_type: str) -> dict:
    return json.loads((FIXTURES / f"{event_type.lower()}.json").read_text())


def edit_source(root: Path, file: str, change) -> None:
    path = root / "events" / file
    schema = json.loads(path.read_text())
    change(schema)
    path.write_text(json.dumps(schema, indent=2))


def add_field(field: dict):
    return lambda schema: schema["fields"].append(field) if isinstance(schema, dict) else None


def field_of(schema: dict, name: str) -> dict:
    return next(f for f in schema["fields"] if f["name"] == name)


OPTIONAL_DSL = {"name": "dsl_acknowledged", "type": ["null", "boolean"], "default": None,
                "doc": "Whether the designated safeguarding lead acknowledged."}


def test_repository_schemas_pass_the_gate() -> None:
    # What CI runs: sources match the registry, frozen files match their fingerprints.
    assert check_compatibility(DEFAULT_SCHEMA_ROOT) == []


def test_compatible_change_is_pending_then_registered_and_old_data_still_decodes(root: Path) -> None:
    event = load("CHILD_NOTIFICATION")
    v1_bytes = Codec(root).encode(event)
    old_id = Codec(root).registry.latest("CHILD_NOTIFICATION").id

    edit_source(root, "child_notification.avsc", add_field(OPTIONAL_DSL))
    assert any("CHILD_NOTIFICATION: pending" in p for p in check_compatibility(root))

    new_ids = register_pending(root)
    registry = Registry(root)
    assert new_ids == [max(e.id for e in registry.entries)] and new_ids[0] > old_id
    entry = registry.entry(new_ids[0])
    assert (entry.event_type, entry.version) == ("CHILD_NOTIFICATION", 2)
    assert entry.fingerprint == schema_fingerprint(registry.schema(entry.id))
    assert check_compatibility(root) == []

    codec = Codec(root)
    decoded = codec.decode(v1_bytes)  # written with v1, read as v2
    assert decoded["dsl_acknowledged"] is None
    assert {k: v for k, v in decoded.items() if k != "dsl_acknowledged"} == event
    assert codec.schema_ref("CHILD_NOTIFICATION") == f"CHILD_NOTIFICATION@{new_ids[0]}"
    assert "dsl_acknowledged" in codec.field_paths("CHILD_NOTIFICATION")

    event["dsl_acknowledged"] = True
    v2_bytes = codec.encode(event)
    assert v2_bytes[1:5] == new_ids[0].to_bytes(4, "big")
    assert codec.decode(v2_bytes) == event


def test_frozen_versions_survive_later_source_edits(root: Path) -> None:
    v1_bytes = Codec(root).encode(load("CASE_CLOSED"))
    edit_source(root, "case_closed.avsc", add_field({"name": "closed_by", "type": ["null", "string"], "default": None,
                                                     "doc": "Closing unit."}))
    register_pending(root)
    # Even if the source is later deleted, v1 data still decodes from the frozen file.
    (root / "events" / "case_closed.avsc").unlink()
    assert Codec(root).decode(v1_bytes)["reason"] == "TRANSFERRED"


def test_required_field_without_default_is_refused_naming_type_and_field(root: Path) -> None:
    before = (root / "registry.json").read_text()
    edit_source(root, "child_notification.avsc", add_field({"name": "year_group", "type": "int", "doc": "School year."}))
    with pytest.raises(IncompatibleSchemaError) as info:
        register_pending(root)
    message = str(info.value)
    assert "CHILD_NOTIFICATION" in message and "year_group" in message
    assert "READER_FIELD_MISSING_DEFAULT_VALUE" in message
    assert (root / "registry.json").read_text() == before  # nothing registered
    assert any("year_group" in p for p in check_compatibility(root))


def test_type_change_is_refused(root: Path) -> None:
    edit_source(root, "child_notification.avsc",
                lambda s: field_of(s, "child_present").update(type="string"))
    with pytest.raises(IncompatibleSchemaError) as info:
        register_pending(root)
    assert "child_present" in str(info.value) and "TYPE_MISMATCH" in str(info.value)


def test_removing_an_area_symbol_breaks_every_event_type(root: Path) -> None:
    def drop_area(schema: dict) -> None:
        area = field_of(schema, "area")["type"]
        area["symbols"].remove("shropshire")

    edit_source(root, "case_header.avsc", drop_area)
    problems = check_compatibility(root)
    broken = {p.split(":")[0] for p in problems}
    assert broken == {"CASE_CLOSED", "CHILD_NOTIFICATION", "MARAC_REFERRAL", "PROTECTION_NOTICE_ISSUED",
                      "PROTECTION_ORDER_GRANTED", "RISK_ASSESSMENT_COMPLETED", "SAFETY_PLAN_UPDATED"}
    assert all("header.area" in p for p in problems)


def test_shared_type_change_creates_versions_only_for_types_that_use_it(root: Path) -> None:
    def add_flat(schemas: list) -> None:
        address = next(s for s in schemas if s["name"] == "Address")
        address["fields"].append({"name": "flat", "type": ["null", "string"], "default": None, "doc": "Flat number."})

    edit_source(root, "subjects.avsc", add_flat)
    new_ids = register_pending(root)
    registry = Registry(root)
    assert sorted(registry.entry(i).event_type for i in new_ids) == [
        "MARAC_REFERRAL", "PROTECTION_NOTICE_ISSUED", "RISK_ASSESSMENT_COMPLETED"]


def test_gate_is_transitive_against_all_earlier_versions(root: Path) -> None:
    # v2 adds an optional field; v3 makes it required. v3 can read v2 data, but not v1 data.
    edit_source(root, "case_closed.avsc", add_field({"name": "closed_by", "type": ["null", "string"], "default": None,
                                                     "doc": "Closing unit."}))
    register_pending(root)
    edit_source(root, "case_closed.avsc", lambda s: (field_of(s, "closed_by").update(type="string"),
                                                     field_of(s, "closed_by").pop("default")))
    with pytest.raises(IncompatibleSchemaError) as info:
        register_pending(root)
    assert "version 1" in str(info.value) and "closed_by" in str(info.value)


def test_tampered_frozen_file_is_detected(root: Path) -> None:
    entry = Registry(root).latest("CHILD_NOTIFICATION")
    frozen = json.loads((root / entry.file).read_text())
    field_of(frozen, "child_present")["type"] = "string"
    (root / entry.file).write_text(json.dumps(frozen))
    assert any("does not match its fingerprint" in p for p in check_compatibility(root))


def test_ids_are_never_reused_after_a_type_is_dropped(root: Path) -> None:
    rows = json.loads((root / "registry.json").read_text())
    highest = max(r["id"] for r in rows)
    edit_source(root, "case_closed.avsc", add_field({"name": "closed_by", "type": ["null", "string"], "default": None,
                                                     "doc": "Closing unit."}))
    assert register_pending(root) == [highest + 1]
    assert register_pending(root) == []  # nothing pending any more


def test_decoding_an_id_from_another_registry_fails_cleanly(root: Path) -> None:
    data = Codec(root).encode(load("CASE_CLOSED"))
    (root / "registry.json").write_text("[]")
    with pytest.raises(WireFormatError, match="unknown schema id"):
        Codec(root).decode(data)
