"""The evolution gate refuses schema changes that Avro resolves silently but that change what stored
bytes mean, and frozen registry files cannot be edited unnoticed, logical types included.

Checked against Apache Avro for Java, the reference implementation partners use: the gate accepts
exactly the changes Java reads with the meaning kept, and refuses those where Java (and fastavro)
would silently read old data as something else. The field cases (tests/fixtures/field/07-09) replace
one source schema in a copy of streams/schemas and run `masb schemas check --root`.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastavro import schemaless_writer
from fastavro.schema import parse_schema

from streams.codec import Codec
from streams.schema_registry import (
    DEFAULT_SCHEMA_ROOT, IncompatibleSchemaError, Registry, check_compatibility, load_source_schemas, plan,
    register_pending, schema_digest, schema_fingerprint,
)
from tests.harness import fixture_event
from tests.java_avro import java_avro

FIELD = Path(__file__).parent / "fixtures" / "field"


def copy_root(target: Path) -> Path:
    root = target / "schemas"
    shutil.copytree(DEFAULT_SCHEMA_ROOT / "events", root / "events")
    shutil.copytree(DEFAULT_SCHEMA_ROOT / "registry", root / "registry")
    shutil.copy(DEFAULT_SCHEMA_ROOT / "registry.json", root / "registry.json")
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return copy_root(tmp_path)


def apply_field_case(root: Path, name: str) -> str:
    case = json.loads((FIELD / name).read_text())
    (root / case["file"]).write_text(json.dumps(case["schema"], indent=2))
    return Path(case["file"]).stem.upper()


def edit_source(root: Path, file: str, change) -> None:
    path = root / "events" / file
    schema = json.loads(path.read_text())
    change(schema)
    path.write_text(json.dumps(schema, indent=2))


def field_of(schema: dict, name: str) -> dict:
    return next(f for f in schema["fields"] if f["name"] == name)


def status(root: Path, event_type: str):
    return next(c for c in plan(root) if c.event_type == event_type)


# -- the field cases, through `masb schemas check` ---------------------------------------------------
@pytest.mark.parametrize("case, event_type, kind", [
    ("07_schema_enum_symbol_removed_with_enum_default.json", "CASE_CLOSED", "ENUM_SYMBOL_REMOVED"),
    ("08_schema_field_renamed_with_alias.json", "CASE_CLOSED", "FIELD_RENAMED"),
    ("09_schema_logical_type_date_to_timestamp.json", "CHILD_NOTIFICATION", "LOGICAL_TYPE_CHANGED"),
])
def test_masb_schemas_check_refuses_each_field_case(root, case, event_type, kind):
    assert apply_field_case(root, case) == event_type
    before = (root / "registry.json").read_text()
    result = subprocess.run([sys.executable, "-m", "agents", "schemas", "check", "--root", str(root)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    refusals = [line for line in result.stdout.splitlines() if line.startswith(f"{event_type}: ") and kind in line]
    assert refusals, result.stdout
    assert "pending" not in result.stdout  # refused, not merely waiting to be registered
    with pytest.raises(IncompatibleSchemaError, match=kind):
        register_pending(root)
    assert (root / "registry.json").read_text() == before


def test_the_enum_refusal_says_what_old_data_would_silently_become(root):
    apply_field_case(root, "07_schema_enum_symbol_removed_with_enum_default.json")
    (problem,) = status(root, "CASE_CLOSED").problems
    assert "field reason: enum symbols DECEASED removed" in problem and "NO_FURTHER_ACTION" in problem


# -- other changes of the same kind ----------------------------------------------------------------
def _drop_symbol(schema):
    field_of(schema, "reason")["type"]["symbols"].remove("DECEASED")


def _to_micros(schema):
    field_of(schema, "incident_at")["type"]["logicalType"] = "timestamp-micros"


def _date_on_plain_int(schema):
    field_of(schema, "plan_version")["type"] = {"type": "int", "logicalType": "date"}


def _int_to(kind):
    return lambda schema: field_of(schema, "plan_version").update(type=kind)


def _alias_type(schema):
    field_of(schema, "reason")["type"]["aliases"] = ["ClosingReason"]


@pytest.mark.parametrize("file, event_type, change, kind", [
    ("case_closed.avsc", "CASE_CLOSED", _drop_symbol, "ENUM_SYMBOL_REMOVED"),
    ("child_notification.avsc", "CHILD_NOTIFICATION", _to_micros, "LOGICAL_TYPE_CHANGED"),
    ("safety_plan_updated.avsc", "SAFETY_PLAN_UPDATED", _date_on_plain_int, "LOGICAL_TYPE_CHANGED"),
    ("safety_plan_updated.avsc", "SAFETY_PLAN_UPDATED", _int_to("float"), "LOSSY_PROMOTION"),
    ("safety_plan_updated.avsc", "SAFETY_PLAN_UPDATED", _int_to("double"), "LOSSY_PROMOTION"),
    ("case_closed.avsc", "CASE_CLOSED", _alias_type, "FIELD_RENAMED"),
])
def test_changes_that_change_meaning_are_refused(root, file, event_type, change, kind):
    edit_source(root, file, change)
    change_status = status(root, event_type)
    assert change_status.status == "incompatible"
    assert any(kind in p for p in change_status.problems), change_status.problems


def test_a_changed_default_is_refused_because_older_data_would_read_differently(root):
    closed_by = {"name": "closed_by", "type": ["null", "string"], "default": None, "doc": "Closing unit."}
    edit_source(root, "case_closed.avsc", lambda s: s["fields"].append(closed_by))
    register_pending(root)
    edit_source(root, "case_closed.avsc", lambda s: field_of(s, "closed_by").update(
        type=["string", "null"], default="UNKNOWN"))
    problems = status(root, "CASE_CLOSED").problems
    assert any("field closed_by: default changes" in p and "version 2" in p for p in problems), problems


@pytest.mark.parametrize("file, event_type, change", [
    ("child_notification.avsc", "CHILD_NOTIFICATION", lambda s: s["fields"].append(
        {"name": "dsl_acknowledged", "type": ["null", "boolean"], "default": None, "doc": "Acknowledged."})),
    ("case_closed.avsc", "CASE_CLOSED", lambda s: field_of(s, "reason")["type"]["symbols"].append("SAFEGUARDING_REVIEW")),
    ("safety_plan_updated.avsc", "SAFETY_PLAN_UPDATED", _int_to("long")),
    ("case_closed.avsc", "CASE_CLOSED", lambda s: field_of(s, "transferred_to").update(doc="Receiving force.")),
    ("case_closed.avsc", "CASE_CLOSED", lambda s: s["fields"].remove(field_of(s, "transferred_to"))),
])
def test_changes_that_keep_meaning_still_pass(root, file, event_type, change):
    edit_source(root, file, change)
    assert status(root, event_type).status == "pending"
    assert register_pending(root)
    assert check_compatibility(root) == []


# -- frozen files -------------------------------------------------------------------------------------
def _edit_frozen(root: Path, event_type: str, change) -> None:
    entry = Registry(root).latest(event_type)
    frozen = json.loads((root / entry.file).read_text())
    change(frozen)
    (root / entry.file).write_text(json.dumps(frozen, indent=2))


def _consent_reason_default(schema: dict) -> None:
    consent = field_of(field_of(schema, "header")["type"], "consent")["type"]
    field_of(consent, "reason").update(type=["string", "null"], default="consent given")


@pytest.mark.parametrize("change", [
    lambda s: field_of(s, "notify_by")["type"].pop("logicalType"),  # days would read as a plain int
    lambda s: field_of(field_of(s, "header")["type"], "event_id")["type"].pop("logicalType"),
    _consent_reason_default,
    lambda s: field_of(s, "child_present").update(aliases=["present"]),
], ids=["date dropped", "uuid dropped", "default", "alias"])
def test_any_meaningful_edit_of_a_frozen_file_is_detected(root, change):
    entry = Registry(root).latest("CHILD_NOTIFICATION")
    _edit_frozen(root, "CHILD_NOTIFICATION", change)
    problems = check_compatibility(root)
    assert any(f"@{entry.id}: frozen file {entry.file} does not match its" in p for p in problems), problems


def test_logical_type_edits_keep_the_old_fingerprint_which_is_why_the_digest_exists(root):
    entry = Registry(root).latest("CHILD_NOTIFICATION")
    _edit_frozen(root, "CHILD_NOTIFICATION", lambda s: field_of(s, "notify_by")["type"].pop("logicalType"))
    edited = Registry(root).schema(entry.id, verify=False)
    assert schema_fingerprint(edited) == entry.fingerprint and schema_digest(edited) != entry.schema_sha256


def test_reformatting_a_frozen_file_is_not_an_edit(root):
    entry = Registry(root).latest("CASE_CLOSED")
    frozen = json.loads((root / entry.file).read_text())
    (root / entry.file).write_text(json.dumps(frozen, indent=7, sort_keys=True))
    assert check_compatibility(root) == []


def test_a_registry_without_digests_is_reported_and_register_records_them_keeping_ids(root):
    rows = json.loads((root / "registry.json").read_text())
    (root / "registry.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "schema_sha256"} for r in rows]))
    assert all("has no schema_sha256" in p for p in check_compatibility(root)) and check_compatibility(root)
    assert register_pending(root) == []
    assert json.loads((root / "registry.json").read_text()) == rows
    assert check_compatibility(root) == []


def test_registry_entries_name_their_own_frozen_file(root):
    rows = json.loads((root / "registry.json").read_text())
    rows[1]["file"] = rows[0]["file"]
    (root / "registry.json").write_text(json.dumps(rows))
    assert any("file must be registry/2.avsc" in p for p in check_compatibility(root))


# -- Java Avro, the reference implementation, as the oracle ---------------------------------------
def _body(schema: dict, event: dict) -> bytes:
    """An event's Avro body written with ``schema`` by MASB's own encoder."""
    wire = Codec(DEFAULT_SCHEMA_ROOT).encode(event)
    assert wire[1:5] == Registry(DEFAULT_SCHEMA_ROOT).latest(event["header"]["event_type"]).id.to_bytes(4, "big")
    if schema == Registry(DEFAULT_SCHEMA_ROOT).schema(int.from_bytes(wire[1:5], "big")):
        return wire[5:]
    out = io.BytesIO()  # an intermediate version: encode the decoded datum with it
    datum = Codec(DEFAULT_SCHEMA_ROOT)._decode_datum(wire)[0]
    schemaless_writer(out, parse_schema(schema), datum)
    return out.getvalue()


def _same_meaning(written, read) -> bool:
    """Every field that both versions have reads as it was written (added fields and removed ones aside)."""
    if isinstance(written, dict) and isinstance(read, dict):
        return all(_same_meaning(written[k], read[k]) for k in written.keys() & read.keys())
    if isinstance(written, list) and isinstance(read, list):
        return len(written) == len(read) and all(map(_same_meaning, written, read))
    return written == read and type(written) is type(read)


def test_the_gate_refuses_exactly_the_changes_java_avro_would_read_with_another_meaning(tmp_path):
    deceased = fixture_event("CASE_CLOSED")
    deceased["reason"] = "DECEASED"
    large_plan = fixture_event("SAFETY_PLAN_UPDATED")
    large_plan["plan_version"] = 2**24 + 1  # not a float: 16777217.0 is read as 16777216.0
    changes = {  # name: (event, file, source change); data is written with the registered version
        "07 enum symbol removed, with enum default": (deceased, None, "07_schema_enum_symbol_removed_with_enum_default.json"),
        "09 date -> timestamp-millis": (fixture_event("CHILD_NOTIFICATION"), None,
                                        "09_schema_logical_type_date_to_timestamp.json"),
        "enum symbol removed, no default": (deceased, "case_closed.avsc", _drop_symbol),
        "timestamp-millis -> timestamp-micros": (fixture_event("CHILD_NOTIFICATION"), "child_notification.avsc", _to_micros),
        "int -> float": (large_plan, "safety_plan_updated.avsc", _int_to("float")),
        "int -> long": (large_plan, "safety_plan_updated.avsc", _int_to("long")),
        "optional field added": (fixture_event("CHILD_NOTIFICATION"), "child_notification.avsc", lambda s: s["fields"].append(
            {"name": "dsl_acknowledged", "type": ["null", "boolean"], "default": None, "doc": "Acknowledged."})),
        "enum symbol added": (deceased, "case_closed.avsc",
                              lambda s: field_of(s, "reason")["type"]["symbols"].append("SAFEGUARDING_REVIEW")),
        "field removed": (fixture_event("CASE_CLOSED"), "case_closed.avsc",
                          lambda s: s["fields"].remove(field_of(s, "transferred_to"))),
    }
    cases, gate = [], {}
    for number, (name, (event, file, change)) in enumerate(changes.items()):
        root = copy_root(tmp_path / f"root{number}")
        event_type = event["header"]["event_type"]
        if file is None:
            apply_field_case(root, change)
        else:
            edit_source(root, file, change)
        gate[name] = status(root, event_type).status
        assert gate[name] in ("pending", "incompatible")
        old = Registry(root).schema(Registry(root).latest(event_type).id)
        case = tmp_path / f"case{number}"
        case.mkdir()
        (case / "old.avsc").write_text(json.dumps(old))
        (case / "new.avsc").write_text(json.dumps(load_source_schemas(root)[event_type]))
        (case / "body.bin").write_bytes(_body(old, event))
        cases.append((name, case))
    verdicts = java_avro([case for _, case in cases])
    for name, case in cases:
        java = verdicts[case.name]
        keeps_meaning = java["compatibility"] == "COMPATIBLE" and java["read"] is not None \
            and _same_meaning(java["written"], java["read"])
        assert (gate[name] == "pending") == keeps_meaning, (name, gate[name], java)
    # The silent ones: Java calls them compatible and reads old data as something else.
    java_07 = verdicts[cases[0][1].name]
    assert java_07["compatibility"] == "COMPATIBLE" and java_07["read"]["reason"] == "NO_FURTHER_ACTION"
    java_09 = verdicts[cases[1][1].name]
    assert java_09["compatibility"] == "COMPATIBLE" and java_09["read"]["notify_by"].startswith("1970-01-01T")
    assert java_09["written"]["notify_by"] == "2026-11-23"


def test_java_honours_the_alias_of_field_case_08_but_masb_refuses_the_rename(tmp_path):
    # Java (and fastavro) resolve the rename; MASB refuses it anyway because its vocabulary is field
    # names: sharing policies, validation rules and partners' JSON all say transferred_to.
    root = copy_root(tmp_path)
    apply_field_case(root, "08_schema_field_renamed_with_alias.json")
    case = tmp_path / "case08"
    case.mkdir()
    old = Registry(root).schema(Registry(root).latest("CASE_CLOSED").id)
    (case / "old.avsc").write_text(json.dumps(old))
    (case / "new.avsc").write_text(json.dumps(load_source_schemas(root)["CASE_CLOSED"]))
    event = fixture_event("CASE_CLOSED")
    (case / "body.bin").write_bytes(_body(old, event))
    java = java_avro([case])["case08"]
    assert java["compatibility"] == "COMPATIBLE" and java["read"]["transferred_to_org"] == event["transferred_to"]
    assert status(root, "CASE_CLOSED").status == "incompatible"
    assert any("field transferred_to_org: aliases are not allowed" in p for p in status(root, "CASE_CLOSED").problems)
    # What registering it would do: the policy vocabulary loses transferred_to.
    renamed = copy.deepcopy(load_source_schemas(root)["CASE_CLOSED"])
    assert "transferred_to" not in [f["name"] for f in renamed["fields"]]


def test_the_codec_never_reads_data_with_an_edited_frozen_schema(root):
    from streams.codec import WireFormatError

    data = Codec(root).encode(fixture_event("CHILD_NOTIFICATION"))
    _edit_frozen(root, "CHILD_NOTIFICATION", lambda s: field_of(s, "notify_by")["type"].pop("logicalType"))
    with pytest.raises(WireFormatError, match="integrity check"):
        Codec(root).decode(data)
