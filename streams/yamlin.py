"""Strict YAML for configuration MASB reads (the sharing policy, the demo policy template): a
document must mean what it says, to this reader and to any other YAML reader a reviewer uses.

Refused, each problem naming the file, the line and the key (its path in the document):

- a repeated key in any mapping (PyYAML silently keeps the last one);
- merge keys (``<<: *anchor``): the merged entries silently give way to, or override, others;
- plain (unquoted) scalars that YAML 1.1 and YAML 1.2 readers read differently, or that are not
  what they look like: booleans other than ``true``/``false`` (``yes``, ``no``, ``on``, ``off``,
  ``y``, ``n`` in any case), integers other than plain decimal (``010`` is 8 in YAML 1.1 and 10 in
  YAML 1.2; ``0x10``, ``0o10``, ``1_000``, ``1:30`` = 90), floats other than plain decimal
  (``.inf``, ``.nan``, ``1_0.5``). Quote a scalar to mean the text.

Dates are not converted: ``2026-11-01`` stays the text "2026-11-01", so the reader that expects a
date converts and checks it and names the key when it is not one (YAML 1.1's own conversion of
``2026-13-01`` fails with "month must be in 1..12", naming nothing). Anchors and aliases (``&x``,
``*x``) are allowed: an alias repeats a value, it cannot override one.

    load(text, source) -> YamlDocument(data, lines)   data: plain Python values
                                                      lines: path -> 1-based line of that key or item
    load_all(text, source) -> [YamlDocument, ...]     a stream of documents separated by ``---``
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from streams.errors import InvalidInput

__all__ = ["YamlDocument", "YamlConfigError", "load", "load_all", "load_file", "format_path"]

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"

_PLAIN_BOOL = re.compile(r"true|True|TRUE|false|False|FALSE")
_PLAIN_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)", re.ASCII)
_PLAIN_FLOAT = re.compile(r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?", re.ASCII)
_OTHER_BOOLEANS = re.compile(r"y|Y|n|N|yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF")


class _Loader(yaml.SafeLoader):
    """SafeLoader that leaves dates as text (see the module docstring)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def format_path(path: tuple) -> str:
    """('agreements', 1, 'shares', 'X') -> 'agreements[1].shares.X'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<document>"


@dataclass
class YamlDocument:
    data: Any
    lines: dict[tuple, int] = field(default_factory=dict)  # path -> 1-based line of that key or item

    def line_of(self, path: tuple) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())


class YamlConfigError(InvalidInput, ValueError):
    """A configuration file is not strict YAML; ``problems`` lists each, as 'file: line N: key: problem'."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class _Checker:
    """Walks the composed node tree once: records lines, finds repeated keys and ambiguous scalars."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[tuple, int] = {}
        self.problems: list[str] = []
        self._seen: set[int] = set()  # each node once: aliases share nodes (and may nest exponentially)

    def problem(self, line: int, path: tuple, message: str) -> None:
        self.problems.append(f"{self.source}: line {line}: {format_path(path)}: {message}")

    def walk(self, node: yaml.Node, path: tuple) -> None:
        if id(node) in self._seen:
            return
        self._seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if key_node.tag == _MERGE:
                    self.problem(line, path, "merge key '<<' is not allowed: merged entries silently give way to "
                                             "or override others; write the entries out")
                    continue
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else f"<{key_node.id} key>"
                here = path + (key,)
                if isinstance(key_node, yaml.ScalarNode):
                    self.scalar(key_node, here)
                    identity = (key_node.tag, key_node.value)
                    if identity in first:
                        self.problem(line, here, f"repeated key {key!r} (first at line {first[identity]}): "
                                                 "a later entry would silently replace the earlier one")
                        continue
                    first[identity] = line
                self.lines.setdefault(here, line)
                self.walk(value_node, here)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                here = path + (index,)
                self.lines.setdefault(here, item.start_mark.line + 1)
                self.walk(item, here)
        elif isinstance(node, yaml.ScalarNode):
            self.scalar(node, path)

    def scalar(self, node: yaml.ScalarNode, path: tuple) -> None:
        if node.style is not None:  # quoted or block scalars are text, as written
            return
        line, value = node.start_mark.line + 1, node.value
        if node.tag == _BOOL and not _PLAIN_BOOL.fullmatch(value) or node.tag == _STR and _OTHER_BOOLEANS.fullmatch(value):
            self.problem(line, path, f"{value!r} is a boolean to some YAML readers and text to others: write true "
                                     "or false, or quote it to mean the text")
        elif node.tag == _INT and not _PLAIN_INT.fullmatch(value):
            self.problem(line, path, f"{value!r} is read as a different number by YAML 1.1 and 1.2 readers (leading "
                                     "zero, 0x/0o/0b, '_' or ':'): write a plain decimal number, or quote it")
        elif node.tag == _FLOAT and not _PLAIN_FLOAT.fullmatch(value):
            self.problem(line, path, f"{value!r} is not a plain decimal number: write one, or quote it")


def load(text: str, source: str = "<config>") -> YamlDocument:
    """Parse one YAML document strictly; YamlConfigError lists every problem (file, line, key)."""
    loader = _Loader(text)
    try:
        node = _next_node(loader, source, single=True)
        return YamlDocument(None) if node is None else _document(loader, node, source)
    finally:
        loader.dispose()


def load_all(text: str, source: str = "<config>") -> list[YamlDocument]:
    """Parse a stream of YAML documents (separated by ``---``, as Kubernetes manifests are) strictly,
    each by the rules of :func:`load`; empty documents are skipped. Lines count from the stream's start."""
    loader = _Loader(text)
    documents = []
    try:
        while (node := _next_node(loader, source, single=False)) is not None:
            document = _document(loader, node, source)
            if document.data is not None:
                documents.append(document)
        return documents
    finally:
        loader.dispose()


def _next_node(loader: _Loader, source: str, *, single: bool) -> yaml.Node | None:
    try:
        if single:
            return loader.get_single_node()
        return loader.get_node() if loader.check_node() else None
    except yaml.MarkedYAMLError as exc:
        # The position only: the parser's description may quote the document.
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise YamlConfigError([f"{source}: not valid YAML{where}"]) from None
    except yaml.YAMLError:
        raise YamlConfigError([f"{source}: not valid YAML"]) from None


def _document(loader: _Loader, node: yaml.Node, source: str) -> YamlDocument:
    checker = _Checker(source)
    checker.lines[()] = node.start_mark.line + 1
    checker.walk(node, ())
    if checker.problems:
        raise YamlConfigError(checker.problems)
    try:
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:  # e.g. an explicit tag this loader does not construct
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise YamlConfigError([f"{source}: {where}cannot be read ({getattr(exc, 'problem', None) or 'YAML error'})"]) \
            from None
    return YamlDocument(data, checker.lines)


def load_file(path: str | Path) -> YamlDocument:
    """A UTF-8 YAML file read strictly; problems name the file."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlConfigError([f"{path.name}: not UTF-8 (invalid byte at offset {exc.start})"]) from None
    return load(text, path.name)
