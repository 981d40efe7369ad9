"""Every field of every Avro schema MASB ships has a `doc`: the schemas are the contract partners code to."""

from __future__ import annotations

import json

import pytest

from streams.resources import SCHEMA_ROOT


def undocumented(node, path: str = "") -> list[str]:
    """Dotted paths of record fields without a doc, anywhere in the schema."""
    missing: list[str] = []
    if isinstance(node, list):
        for branch in node:
            missing += undocumented(branch, path)
    elif isinstance(node, dict):
        kind = node.get("type")
        if kind in ("record", "error"):
            for field in node.get("fields", []):
                field_path = f"{path}.{field['name']}" if path else f"{node['name']}.{field['name']}"
                if not str(field.get("doc", "")).strip():
                    missing.append(field_path)
                missing += undocumented(field["type"], field_path)
        elif kind == "array":
            missing += undocumented(node["items"], path)
        elif kind == "map":
            missing += undocumented(node["values"], path)
        elif isinstance(kind, (dict, list)):
            missing += undocumented(kind, path)
    return missing


SCHEMA_FILES = sorted(SCHEMA_ROOT.rglob("*.avsc"))


def test_the_package_ships_every_kind_of_schema():
    names = {p.relative_to(SCHEMA_ROOT).as_posix() for p in SCHEMA_FILES}
    for expected in ("envelope.avsc", "publication.avsc", "receipt.avsc", "dead_letter.avsc",
                     "audit/audit_entry_v1.avsc", "events/case_header.avsc"):
        assert expected in names
    assert any(n.startswith("registry/") for n in names)


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.relative_to(SCHEMA_ROOT).as_posix())
def test_every_field_has_a_doc(path):
    assert undocumented(json.loads(path.read_text(encoding="utf-8"))) == []
