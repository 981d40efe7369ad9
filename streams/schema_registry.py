"""File-based schema registry and the BACKWARD_TRANSITIVE evolution gate.

Layout under a schema root (normally ``<repo>/schemas``):

- ``events/*.avsc``: editable source schemas. A file whose top-level record has a ``header``
  field is an event schema; its event type is the file stem upper-cased. Every other file
  holds shared named types (one schema or a JSON array of them), referenced by full name.
- ``registry/<id>.avsc``: frozen, fully expanded (self-contained) registered versions.
  They are never edited, so data written with any id stays readable forever.
- ``registry.json``: the list of registered versions (see docs/wire-format.md).

The runtime codec reads only the frozen files; the source files matter only to the gate.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from streams.errors import CheckFailed, InvalidInput
from streams.resources import SCHEMA_ROOT

# The schemas shipped in the package (streams/schemas/); MASB_SCHEMA_ROOT overrides it.
DEFAULT_SCHEMA_ROOT = Path(os.environ.get("MASB_SCHEMA_ROOT", SCHEMA_ROOT))

COMPATIBILITY_MODE = "BACKWARD_TRANSITIVE"
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})


class SchemaSourceError(InvalidInput, ValueError):
    """A source schema or the registry files are malformed (unknown type, redefinition, bad JSON)."""


class IncompatibleSchemaError(CheckFailed, ValueError):
    """register_pending refused: at least one changed schema breaks BACKWARD_TRANSITIVE."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("schema registration refused:\n" + "\n".join(problems))


@dataclass(frozen=True)
class RegistryEntry:
    id: int
    event_type: str
    version: int
    file: str
    fingerprint: str


@dataclass(frozen=True)
class SchemaChange:
    """Status of one event type's source schema against the registry."""

    event_type: str
    status: str  # "unchanged" | "new" | "pending" (compatible change) | "incompatible"
    problems: tuple[str, ...] = ()


# ---------------------------------------------------------------- names and expansion

def _fullname(name: str, namespace: str | None) -> str:
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


def _namespace_of(fullname: str) -> str | None:
    return fullname.rsplit(".", 1)[0] if "." in fullname else None


def _collect_named(node: Any, namespace: str | None, out: dict[str, tuple[dict, str | None]]) -> None:
    """Index every named type defined anywhere in ``node`` by full name."""
    if isinstance(node, list):
        for branch in node:
            _collect_named(branch, namespace, out)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind in _NAMED:
        full = _fullname(node["name"], node.get("namespace", namespace))
        if full in out:
            raise SchemaSourceError(f"named type {full} is defined more than once in the source schemas")
        out[full] = (node, namespace)
        inner_ns = _namespace_of(full)
        for field in node.get("fields", []):
            _collect_named(field["type"], inner_ns, out)
    elif kind == "array":
        _collect_named(node["items"], namespace, out)
    elif kind == "map":
        _collect_named(node["values"], namespace, out)
    elif isinstance(kind, (dict, list)):
        _collect_named(kind, namespace, out)


def _expand(node: Any, namespace: str | None, library: dict[str, tuple[dict, str | None]], defined: set[str]) -> Any:
    """Inline named types at their first use (later uses stay references), with full names.

    Avro forbids defining a name twice in one schema, so repeated uses must be references.
    """
    if isinstance(node, str):
        if node in _PRIMITIVES:
            return node
        full = _fullname(node, namespace)
        if full in defined:
            return full
        if full not in library:
            raise SchemaSourceError(f"unknown type {full}")
        definition, def_ns = library[full]
        return _expand(definition, def_ns, library, defined)
    if isinstance(node, list):
        return [_expand(branch, namespace, library, defined) for branch in node]
    if not isinstance(node, dict):
        raise SchemaSourceError("schema nodes must be strings, arrays or objects")
    kind = node["type"]
    out = {k: v for k, v in node.items() if k != "namespace"}
    if kind in _NAMED:
        full = _fullname(node["name"], node.get("namespace", namespace))
        if full in defined:
            raise SchemaSourceError(f"named type {full} is defined more than once")
        defined.add(full)
        out["name"] = full
        if kind in ("record", "error"):
            inner_ns = _namespace_of(full)
            out["fields"] = [{**f, "type": _expand(f["type"], inner_ns, library, defined)} for f in node["fields"]]
    elif kind == "array":
        out["items"] = _expand(node["items"], namespace, library, defined)
    elif kind == "map":
        out["values"] = _expand(node["values"], namespace, library, defined)
    elif isinstance(kind, (dict, list, str)) and kind not in _PRIMITIVES:
        return _expand(kind, namespace, library, defined)
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SchemaSourceError(f"{path.name}: cannot read schema JSON ({type(exc).__name__})") from exc


def _is_event_schema(schema: Any) -> bool:
    return (isinstance(schema, dict) and schema.get("type") == "record"
            and any(f.get("name") == "header" for f in schema.get("fields", [])))


def load_source_schemas(root: Path = DEFAULT_SCHEMA_ROOT) -> dict[str, dict]:
    """Expanded (self-contained) source schema of every event type, keyed by event type."""
    events_dir = Path(root) / "events"
    raw = {p: _read_json(p) for p in sorted(events_dir.glob("*.avsc"))}
    library: dict[str, tuple[dict, str | None]] = {}
    for schema in raw.values():
        _collect_named(schema, None, library)
    expanded: dict[str, dict] = {}
    for path, schema in raw.items():
        if _is_event_schema(schema):
            result = _expand(schema, None, library, set())
            try:
                parse_schema(result, _write_hint=False)  # fastavro rejects anything malformed
            except Exception as exc:  # noqa: BLE001 - schema text holds no personal data
                raise SchemaSourceError(f"{path.name}: invalid Avro schema: {exc}") from exc
            expanded[path.stem.upper()] = result
    return expanded


def schema_fingerprint(schema: dict) -> str:
    """SHA-256 (hex) of the Avro Parsing Canonical Form."""
    return fingerprint(to_parsing_canonical_form(schema), "SHA-256")


# ---------------------------------------------------------------- registry

class Registry:
    """The registered versions under a schema root: ids, event types and frozen schemas."""

    def __init__(self, root: Path = DEFAULT_SCHEMA_ROOT):
        self.root = Path(root)
        path = self.root / "registry.json"
        rows = _read_json(path) if path.exists() else []
        self.entries: list[RegistryEntry] = [RegistryEntry(**row) for row in rows]
        self._by_id = {e.id: e for e in self.entries}
        self._schemas: dict[int, dict] = {}

    def entry(self, schema_id: int) -> RegistryEntry | None:
        return self._by_id.get(schema_id)

    def schema(self, schema_id: int) -> dict:
        """The frozen, fully expanded schema JSON of a registered id (KeyError if unknown)."""
        if schema_id not in self._schemas:
            entry = self._by_id[schema_id]
            self._schemas[schema_id] = _read_json(self.root / entry.file)
        return self._schemas[schema_id]

    def versions(self, event_type: str) -> list[RegistryEntry]:
        return sorted((e for e in self.entries if e.event_type == event_type), key=lambda e: e.version)

    def latest(self, event_type: str) -> RegistryEntry | None:
        versions = self.versions(event_type)
        return versions[-1] if versions else None

    def event_types(self) -> list[str]:
        return sorted({e.event_type for e in self.entries})

    def integrity_problems(self) -> list[str]:
        """Ids unique and increasing, versions consecutive, frozen files present and matching their fingerprints."""
        problems = []
        ids = [e.id for e in self.entries]
        if ids != sorted(set(ids)):
            problems.append("registry.json: ids must be unique and listed in increasing order")
        for event_type in self.event_types():
            if [e.version for e in self.versions(event_type)] != list(range(1, len(self.versions(event_type)) + 1)):
                problems.append(f"{event_type}: versions must be 1, 2, 3... without gaps")
        for e in self.entries:
            try:
                actual = schema_fingerprint(self.schema(e.id))
            except (SchemaSourceError, KeyError):
                problems.append(f"{e.event_type}@{e.id}: frozen file {e.file} is missing or unreadable")
                continue
            if actual != e.fingerprint:
                problems.append(f"{e.event_type}@{e.id}: frozen file {e.file} does not match its fingerprint (edited?)")
        return problems


# ---------------------------------------------------------------- compatibility gate

def _field_path(schema: dict, location: str) -> str:
    """Turn an avro checker location such as /fields/1/type/fields/3 into a dotted field path."""
    parts = [p for p in location.split("/") if p]
    names: list[str] = []
    node: Any = schema
    named: dict[str, Any] = {}
    i = 0
    while i < len(parts):
        if isinstance(node, str):
            node = named.get(node, node)
        if isinstance(node, dict) and node.get("type") in _NAMED:
            named[node["name"]] = node
        part = parts[i]
        if part == "fields" and i + 1 < len(parts) and isinstance(node, dict):
            field = node["fields"][int(parts[i + 1])]
            names.append(field["name"])
            node = field["type"]
            i += 2
            if i < len(parts) and parts[i] == "type":  # the field's type, which `node` already is
                i += 1
            continue
        if isinstance(node, list) and part.isdigit():
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        i += 1
    return ".".join(names) or "<root>"


def _incompatibilities(reader: dict, writer: dict) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader`` (empty if it can)."""
    result = ReaderWriterCompatibilityChecker().get_compatibility(
        avro.schema.parse(json.dumps(reader)), avro.schema.parse(json.dumps(writer)))
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    # The checker's merged result also carries the root location "/"; keep it only if alone.
    fields = sorted({_field_path(reader, loc) for loc in result.locations} - {"<root>"}) or ["<root>"]
    kinds = sorted({t.name.upper() for t in result.incompatibilities})
    label = "field" if len(fields) == 1 else "fields"
    return [f"{label} {', '.join(fields)}: {'; '.join(sorted(result.messages))} ({', '.join(kinds)})"]


def _canonical_json(schema: dict) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def plan(root: Path = DEFAULT_SCHEMA_ROOT) -> list[SchemaChange]:
    """Compare every source event schema with all its registered versions."""
    registry = Registry(root)
    changes = []
    for event_type, source in sorted(load_source_schemas(root).items()):
        versions = registry.versions(event_type)
        if not versions:
            changes.append(SchemaChange(event_type, "new"))
            continue
        if _canonical_json(registry.schema(versions[-1].id)) == _canonical_json(source):
            changes.append(SchemaChange(event_type, "unchanged"))
            continue
        problems = []
        for entry in versions:  # transitive: the new reader must read every older writer
            for reason in _incompatibilities(source, registry.schema(entry.id)):
                problems.append(f"{event_type}: cannot read data written with version {entry.version} "
                                f"(id {entry.id}): {reason}")
        changes.append(SchemaChange(event_type, "incompatible" if problems else "pending", tuple(problems)))
    return changes


def check_compatibility(root: Path = DEFAULT_SCHEMA_ROOT) -> list[str]:
    """Problems that should fail CI: registry integrity, incompatible changes, unregistered changes."""
    problems = Registry(root).integrity_problems()
    for change in plan(root):
        if change.status == "incompatible":
            problems.extend(change.problems)
        elif change.status in ("new", "pending"):
            problems.append(f"{change.event_type}: pending: source schema differs from the registry "
                            f"({change.status}); run `masb schemas register`")
    return problems


def register_pending(root: Path = DEFAULT_SCHEMA_ROOT) -> list[int]:
    """Freeze every new or compatibly changed source schema as a new version; return the new ids.

    All or nothing: if any change is incompatible, nothing is written and IncompatibleSchemaError
    lists every reason.
    """
    root = Path(root)
    changes = plan(root)
    refused = [p for c in changes if c.status == "incompatible" for p in c.problems]
    if refused:
        raise IncompatibleSchemaError(refused)
    registry = Registry(root)
    sources = load_source_schemas(root)
    rows = [e.__dict__ for e in registry.entries]
    next_id = max((e.id for e in registry.entries), default=0) + 1
    new_ids = []
    (root / "registry").mkdir(exist_ok=True)
    for change in changes:
        if change.status not in ("new", "pending"):
            continue
        schema = sources[change.event_type]
        latest = registry.latest(change.event_type)
        file = f"registry/{next_id}.avsc"
        if (root / file).exists():
            raise SchemaSourceError(f"{file} already exists; ids are never reused")
        (root / file).write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
        rows.append({"id": next_id, "event_type": change.event_type,
                     "version": latest.version + 1 if latest else 1,
                     "file": file, "fingerprint": schema_fingerprint(schema)})
        new_ids.append(next_id)
        next_id += 1
    if new_ids:
        body = "[\n" + ",\n".join("  " + json.dumps(r) for r in rows) + "\n]\n"
        (root / "registry.json").write_text(body, encoding="utf-8")
    return new_ids
