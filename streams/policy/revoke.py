"""Revoking a key in a policy file: a minimal textual edit, so comments and layout survive review.

Only two scalars change: the key's `status` becomes `revoked` and `policy_version` goes up by one.
The caller checks the result with load_policy before writing it anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from streams import yamlin
from streams.errors import InvalidInput

_VERSION = re.compile(r"[1-9][0-9]*", re.ASCII)  # str.isdigit() and int() accept any Unicode digit


class RevokeError(InvalidInput, ValueError):
    """The policy text has no such party or key, or is not a policy document."""


@dataclass(frozen=True)
class RevokeEdit:
    text: str              # the whole new policy text
    key_list: str          # "signing_keys" or "exchange_keys"
    previous_status: str
    old_version: int
    new_version: int


def _get(node, name: str):
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == name:
                return value
    return None


def _status_node(document, owner: str, kid: str):
    """(key list name, status scalar node) of key `kid` of party `owner` in a composed policy."""
    parties = [_get(document, "router")]
    for section in ("units", "agencies"):
        seq = _get(document, section)
        parties += list(seq.value) if isinstance(seq, yaml.SequenceNode) else []
    party = next((p for p in parties if p is not None and getattr(_get(p, "id"), "value", None) == owner), None)
    if party is None:
        raise RevokeError(f"no router, unit or agency with id {owner} in the policy")
    for list_name in ("signing_keys", "exchange_keys"):
        entries = _get(party, list_name)
        for entry in entries.value if isinstance(entries, yaml.SequenceNode) else []:
            if getattr(_get(entry, "key_id"), "value", None) == kid:
                status = _get(entry, "status")
                if not isinstance(status, yaml.ScalarNode):
                    raise RevokeError(f"key {kid} of {owner} has no status to change")
                return list_name, status
    raise RevokeError(f"{owner} has no key with id {kid} in the policy")


def revoke_key_text(text: str, owner: str, key_id: str) -> RevokeEdit | None:
    """The policy text with that key revoked and the version bumped; None if it is already revoked."""
    try:
        yamlin.load(text, "the policy file")  # strict: with a repeated key, which entry to edit is ambiguous
        document = yaml.compose(text)
    except yamlin.YamlConfigError as exc:
        raise RevokeError(f"{exc}; run masb policy check") from None
    except yaml.YAMLError:
        raise RevokeError("the policy file is not valid YAML; run masb policy check") from None
    version_node = _get(document, "policy_version")
    if not isinstance(version_node, yaml.ScalarNode) or not _VERSION.fullmatch(version_node.value):
        raise RevokeError("the policy file has no integer policy_version; run masb policy check")
    list_name, status = _status_node(document, owner, key_id)
    if status.value == "revoked":
        return None
    old_version = int(version_node.value)
    edits = sorted([(status, "revoked"), (version_node, str(old_version + 1))],
                   key=lambda edit: edit[0].start_mark.index, reverse=True)
    new_text = text
    for node, replacement in edits:  # from the end, so earlier offsets stay valid
        new_text = new_text[:node.start_mark.index] + replacement + new_text[node.end_mark.index:]
    return RevokeEdit(new_text, list_name, status.value, old_version, old_version + 1)
