"""File-based schema registry and the BACKWARD_TRANSITIVE evolution gate.

Layout under a schema root (normally ``<repo>/schemas``):

- ``events/*.avsc``: editable source schemas. A file whose top-level record has a ``header``
  field is an event schema; its event type is the file stem upper-cased. Every other file
  holds shared named types (one schema or a JSON array of them), referenced by full name.
- ``registry/<id>.avsc``: frozen, fully expanded (self-contained) registered versions.
  They are never edited, so data written with any id stays readable forever.
- ``registry.json``: the list of registered versions (see docs/wire-format.md).

The runtime codec reads only the frozen files; the source files matter only to the gate.

The gate is Apache Avro's BACKWARD_TRANSITIVE check plus MASB's own refusals of changes Avro
resolves silently but that change what stored bytes mean (docs/wire-format.md, section 4):
removing an enum symbol (even with an enum default), a logical type change, a lossy numeric
promotion, a changed field default, and any alias (a rename).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from streams import jsonin
from streams.errors import CheckFailed, InvalidInput
from streams.resources import SCHEMA_ROOT

# The schemas shipped in the package (streams/schemas/); MASB_SCHEMA_ROOT overrides it (an empty
# value counts as unset, as for every MASB_* setting). Commands use schema_root(), which checks it.
DEFAULT_SCHEMA_ROOT = Path(os.environ.get("MASB_SCHEMA_ROOT") or SCHEMA_ROOT)

COMPATIBILITY_MODE = "BACKWARD_TRANSITIVE"
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})


class SchemaSourceError(InvalidInput, ValueError):
    """A source schema or the registry files are malformed (unknown type, redefinition, bad JSON)."""


def schema_root() -> Path:
    """The schema root the codec and commands use: MASB_SCHEMA_ROOT if set, else the package's schemas.

    A MASB_SCHEMA_ROOT that is missing, not a directory or holds no registry.json is refused with
    SchemaSourceError (exit 2) naming the variable and the path: without it every event type would
    be "unknown" (a registry with no entries), far from the cause.
    """
    value = os.environ.get("MASB_SCHEMA_ROOT")
    if not value:
        return SCHEMA_ROOT
    root = Path(value)
    if not root.exists():
        raise SchemaSourceError(f"MASB_SCHEMA_ROOT {root}: not found")
    if not root.is_dir():
        raise SchemaSourceError(f"MASB_SCHEMA_ROOT {root}: not a directory")
    if not (root / "registry.json").is_file():
        raise SchemaSourceError(f"MASB_SCHEMA_ROOT {root}: holds no registry.json "
                                f"(a schemas directory holds registry.json, registry/ and events/)")
    return root


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
    fingerprint: str                   # SHA-256 of the Parsing Canonical Form (drops logicalType, defaults, doc)
    schema_sha256: str | None = None   # SHA-256 of the whole frozen schema, canonical JSON: any edit shows


_ENTRY_KEYS = {"id": int, "event_type": str, "version": int, "file": str, "fingerprint": str, "schema_sha256": str}


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
    """A schema or registry file, read strictly: a repeated key ("type" twice) is refused with its line."""
    try:
        return jsonin.load_file(path)
    except OSError as exc:
        raise SchemaSourceError(f"{path.name}: cannot read schema JSON ({type(exc).__name__})") from exc
    except jsonin.JsonInputError as exc:
        problems = "; ".join(str(p) for p in exc.problems)
        raise SchemaSourceError(f"{path.name}: not accepted as schema JSON: {problems}") from None


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


def schema_digest(schema: Any) -> str:
    """SHA-256 (hex) of the whole schema as canonical JSON (docs/wire-format.md, "Integrity digest").

    Unlike the fingerprint it covers every attribute (logicalType, default, aliases, doc, order):
    any edit of a frozen file changes it, layout and key order do not.
    """
    # RFC 8785 (JCS) for what schemas hold (integers, BMP keys): sorted keys, no whitespace, UTF-8.
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- registry

class Registry:
    """The registered versions under a schema root: ids, event types and frozen schemas."""

    def __init__(self, root: Path = DEFAULT_SCHEMA_ROOT):
        self.root = Path(root)
        path = self.root / "registry.json"
        rows = _read_json(path) if path.exists() else []
        self.entries: list[RegistryEntry] = [_entry(row, i) for i, row in enumerate(rows if isinstance(rows, list) else [None])]
        self._by_id = {e.id: e for e in self.entries}
        self._schemas: dict[int, dict] = {}

    def entry(self, schema_id: int) -> RegistryEntry | None:
        return self._by_id.get(schema_id)

    def schema(self, schema_id: int, *, verify: bool = True) -> dict:
        """The frozen, fully expanded schema JSON of a registered id (KeyError if unknown).

        With ``verify`` (the default, what the codec uses) a frozen file that no longer matches its
        schema_sha256 is refused with SchemaSourceError: data is never read with an edited schema.
        """
        if schema_id not in self._schemas:
            entry = self._by_id[schema_id]
            self._schemas[schema_id] = _read_json(self.root / entry.file)
        schema = self._schemas[schema_id]
        if verify:
            entry = self._by_id[schema_id]
            if entry.schema_sha256 is not None and schema_digest(schema) != entry.schema_sha256:
                raise SchemaSourceError(f"{entry.file} (schema id {schema_id}) does not match its schema_sha256 "
                                        f"in registry.json: a frozen schema was edited")
        return schema

    def versions(self, event_type: str) -> list[RegistryEntry]:
        return sorted((e for e in self.entries if e.event_type == event_type), key=lambda e: e.version)

    def latest(self, event_type: str) -> RegistryEntry | None:
        versions = self.versions(event_type)
        return versions[-1] if versions else None

    def event_types(self) -> list[str]:
        return sorted({e.event_type for e in self.entries})

    def integrity_problems(self) -> list[str]:
        """Ids unique and increasing, versions consecutive, each frozen file at registry/<id>.avsc, present,
        matching its fingerprint and its integrity digest (schema_sha256)."""
        problems = []
        ids = [e.id for e in self.entries]
        if ids != sorted(set(ids)):
            problems.append("registry.json: ids must be unique and listed in increasing order")
        for event_type in self.event_types():
            if [e.version for e in self.versions(event_type)] != list(range(1, len(self.versions(event_type)) + 1)):
                problems.append(f"{event_type}: versions must be 1, 2, 3... without gaps")
        for e in self.entries:
            if e.file != f"registry/{e.id}.avsc":
                problems.append(f"{e.event_type}@{e.id}: file must be registry/{e.id}.avsc (one frozen file per id)")
            try:
                frozen = self.schema(e.id, verify=False)
            except (SchemaSourceError, KeyError):
                problems.append(f"{e.event_type}@{e.id}: frozen file {e.file} is missing or unreadable")
                continue
            if schema_fingerprint(frozen) != e.fingerprint:
                problems.append(f"{e.event_type}@{e.id}: frozen file {e.file} does not match its fingerprint (edited?)")
            elif e.schema_sha256 is None:
                problems.append(f"{e.event_type}@{e.id}: registry.json has no schema_sha256 for {e.file}, so edits of "
                                f"logical types, defaults or aliases would go unnoticed; review the file, then run "
                                f"`masb schemas register` to record it")
            elif schema_digest(frozen) != e.schema_sha256:
                problems.append(f"{e.event_type}@{e.id}: frozen file {e.file} does not match its schema_sha256 "
                                f"(edited? a frozen file never changes, not even its logical types or defaults)")
        return problems


def _entry(row: Any, index: int) -> RegistryEntry:
    """One registry.json row, checked: known keys of the right types (schema_sha256 may be absent)."""
    where = f"registry.json: entry {index + 1}"
    if not isinstance(row, dict):
        raise SchemaSourceError(f"{where}: must be an object")
    unknown = sorted(set(row) - set(_ENTRY_KEYS))
    if unknown:
        raise SchemaSourceError(f"{where}: unknown key {jsonin.key_label(unknown[0])}")
    for key, kind in _ENTRY_KEYS.items():
        if key not in row:
            if key != "schema_sha256":
                raise SchemaSourceError(f"{where}: missing key {key}")
        elif not isinstance(row[key], kind) or isinstance(row[key], bool):
            raise SchemaSourceError(f"{where}: {key} must be {'an integer' if kind is int else 'a string'}")
    return RegistryEntry(**row)


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
        renames = [f"{event_type}: {p}" for p in alias_problems(source)]
        if not versions:
            changes.append(SchemaChange(event_type, "incompatible" if renames else "new", tuple(renames)))
            continue
        if _canonical_json(registry.schema(versions[-1].id, verify=False)) == _canonical_json(source):
            changes.append(SchemaChange(event_type, "unchanged"))
            continue
        problems = list(renames)
        for entry in versions:  # transitive: the new reader must read every older writer
            written = registry.schema(entry.id, verify=False)
            for reason in _incompatibilities(source, written) + meaning_changes(source, written):
                problems.append(f"{event_type}: cannot read data written with version {entry.version} "
                                f"(id {entry.id}): {reason}")
        changes.append(SchemaChange(event_type, "incompatible" if problems else "pending", tuple(problems)))
    return changes


# ---------------------------------------------------------------- changes Avro resolves but MASB refuses

_NUMBERS = ("int", "long", "float", "double")


def _named_index(schema: Any) -> dict[str, dict]:
    """Every named type of a frozen (expanded) schema by full name."""
    out: dict[str, dict] = {}

    def visit(node: Any) -> None:
        if isinstance(node, list):
            for branch in node:
                visit(branch)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in _NAMED:
                out.setdefault(node["name"], node)
                for field in node.get("fields", []):
                    visit(field["type"])
            elif kind == "array":
                visit(node["items"])
            elif kind == "map":
                visit(node["values"])
            elif isinstance(kind, (dict, list)):
                visit(kind)

    visit(schema)
    return out


def _kind(node: Any) -> str:
    """'string', 'long', 'record:masb.events.X', 'array', ... of a resolved node."""
    if isinstance(node, str):
        return node
    kind = node["type"]
    if kind in _NAMED:
        return f"{kind}:{node['name']}"
    return kind if isinstance(kind, str) else _kind(kind)


def _logical(node: Any) -> tuple:
    if not isinstance(node, dict):
        return (None,)
    return (node.get("logicalType"), node.get("precision"), node.get("scale"))


def _branch_for(reader_branches: list, writer_node: Any, resolve) -> Any:
    """The reader union branch Avro resolution picks for a writer type: same kind, else a promotion."""
    wkind = _kind(writer_node)
    for branch in reader_branches:
        if _kind(resolve(branch)) == wkind:
            return branch
    if wkind in _NUMBERS:
        for branch in reader_branches:
            rkind = _kind(resolve(branch))
            if rkind in _NUMBERS and _NUMBERS.index(rkind) > _NUMBERS.index(wkind):
                return branch
    return None


def meaning_changes(reader: dict, writer: dict) -> list[str]:
    """Changes that Avro schema resolution accepts but that change what data written with ``writer``
    means when read with ``reader`` (each as 'field <path>: <why> (<KIND>)'):

    - ENUM_SYMBOL_REMOVED: a symbol of the writer is gone; with an enum default, old data silently
      reads as the default (docs/wire-format.md promises removed symbols are refused);
    - LOGICAL_TYPE_CHANGED: e.g. date -> timestamp-millis (int days read as long milliseconds, so
      Java reads old dates as instants in January 1970), timestamp-millis -> timestamp-micros;
    - LOSSY_PROMOTION: int/long -> float/double (integers above 2**24 / 2**53 are rounded);
    - DEFAULT_CHANGED: a field's default differs, so data written before the field existed reads
      differently than it did.
    """
    rnamed, wnamed = _named_index(reader), _named_index(writer)
    problems: list[str] = []
    seen: set[tuple[int, int]] = set()

    def rres(node: Any) -> Any:
        return rnamed.get(node, node) if isinstance(node, str) else node

    def wres(node: Any) -> Any:
        return wnamed.get(node, node) if isinstance(node, str) else node

    def compare(r: Any, w: Any, path: str) -> None:
        r, w = rres(r), wres(w)
        if (id(r), id(w)) in seen:
            return
        seen.add((id(r), id(w)))
        label = path or "<root>"
        if isinstance(w, list):
            for branch in w:
                if wres(branch) != "null":
                    compare(r, branch, path)
            return
        if isinstance(r, list):
            branch = _branch_for(r, w, rres)
            if branch is not None:
                compare(branch, w, path)
            return
        rkind, wkind = _kind(r), _kind(w)
        if _logical(r) != _logical(w):
            before, after = _logical(w)[0] or "no logical type", _logical(r)[0] or "no logical type"
            problems.append(f"field {label}: logical type changes from {before} to {after}; stored values would "
                            f"be read with another meaning (LOGICAL_TYPE_CHANGED)")
        if wkind in ("int", "long") and rkind in ("float", "double"):
            problems.append(f"field {label}: {wkind} promoted to {rkind} loses integer precision (LOSSY_PROMOTION)")
        if isinstance(r, dict) and isinstance(w, dict) and rkind == wkind:
            kind = r["type"]
            if kind in ("record", "error"):
                written = {f["name"]: f for f in w["fields"]}
                for field in r["fields"]:
                    old = written.get(field["name"])
                    if old is None:
                        continue
                    here = f"{path}.{field['name']}" if path else field["name"]
                    if "default" in old and "default" in field and old["default"] != field["default"]:
                        problems.append(f"field {here}: default changes, so data written without the field would "
                                        f"read differently (DEFAULT_CHANGED)")
                    compare(field["type"], old["type"], here)
            elif kind == "enum":
                removed = [symbol for symbol in w["symbols"] if symbol not in r["symbols"]]
                if removed:
                    fallback = f"; with the enum default they would silently read as {r['default']}" \
                        if "default" in r else ""
                    problems.append(f"field {label}: enum symbols {', '.join(removed)} removed: stored data may hold "
                                    f"them{fallback} (ENUM_SYMBOL_REMOVED)")
            elif kind == "array":
                compare(r["items"], w["items"], f"{path}[]")
            elif kind == "map":
                compare(r["values"], w["values"], f"{path}{{}}")

    compare(reader, writer, "")
    return sorted(set(problems))


def alias_problems(schema: dict) -> list[str]:
    """Aliases (renames) in a source schema: MASB refuses them (docs/wire-format.md, section 4)."""
    problems: list[str] = []

    def visit(node: Any, path: str) -> None:
        if isinstance(node, list):
            for branch in node:
                visit(branch, path)
        elif isinstance(node, dict):
            kind = node.get("type")
            if "aliases" in node and kind in _NAMED:
                problems.append(f"type {node['name']}: aliases are not allowed: MASB does not rename types or fields "
                                f"(FIELD_RENAMED)")
            for field in node.get("fields", []) if kind in ("record", "error") else ():
                here = f"{path}.{field['name']}" if path else field["name"]
                if "aliases" in field:
                    problems.append(f"field {here}: aliases are not allowed: a rename changes the field name that "
                                    f"sharing policies, validation rules and partners' JSON use; add a new field and "
                                    f"retire the old one instead (FIELD_RENAMED)")
                visit(field["type"], here)
            if kind == "array":
                visit(node["items"], f"{path}[]")
            elif kind == "map":
                visit(node["values"], f"{path}{{}}")
            elif isinstance(kind, (dict, list)):
                visit(kind, path)

    visit(schema, "")
    return problems


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


def _row(registry: Registry, entry: RegistryEntry) -> dict[str, Any]:
    """An existing registry.json row; a missing schema_sha256 is recorded from the frozen file as it is
    now, if its fingerprint still matches (the digest then protects it from here on)."""
    row = {k: v for k, v in entry.__dict__.items() if v is not None}
    if entry.schema_sha256 is None:
        frozen = registry.schema(entry.id, verify=False)
        if schema_fingerprint(frozen) != entry.fingerprint:
            raise SchemaSourceError(f"{entry.file} does not match its fingerprint; restore it before registering")
        row["schema_sha256"] = schema_digest(frozen)
    return row


def register_pending(root: Path = DEFAULT_SCHEMA_ROOT) -> list[int]:
    """Freeze every new or compatibly changed source schema as a new version; return the new ids.

    All or nothing: if any change is incompatible, nothing is written and IncompatibleSchemaError
    lists every reason. Entries registered before schema_sha256 existed get it recorded.
    """
    root = Path(root)
    changes = plan(root)
    refused = [p for c in changes if c.status == "incompatible" for p in c.problems]
    if refused:
        raise IncompatibleSchemaError(refused)
    registry = Registry(root)
    sources = load_source_schemas(root)
    rows = [_row(registry, e) for e in registry.entries]
    backfilled = any(e.schema_sha256 is None for e in registry.entries)
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
                     "file": file, "fingerprint": schema_fingerprint(schema), "schema_sha256": schema_digest(schema)})
        new_ids.append(next_id)
        next_id += 1
    if new_ids or backfilled:
        body = "[\n" + ",\n".join("  " + json.dumps(r) for r in rows) + "\n]\n"
        (root / "registry.json").write_text(body, encoding="utf-8")
    return new_ids
