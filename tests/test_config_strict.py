"""Configuration means what it says: a policy (or any YAML/JSON file MASB reads) that another reader
could take differently is refused, naming the file, the line and the key.

The field case: a policy with the same event type twice under one agreement's `shares` was accepted
and the later entry silently replaced the earlier one, widening what housing receives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agents.deployment import DEMO_DIR, prepare_deployment
from streams.crypto.keys import KeyFileError, generate_key, load_private_key, write_private_key
from streams.policy import PolicyError, load_policy
from streams.policy.revoke import RevokeError, revoke_key_text
from streams.schema_registry import DEFAULT_SCHEMA_ROOT, SchemaSourceError, load_source_schemas

FIELD = Path(__file__).parent / "fixtures" / "field"
VALID = Path(__file__).parent / "fixtures" / "policy" / "valid.yaml"


def problems(tmp_path: Path, text: str, name: str = "policy.yaml") -> list[str]:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return info.value.problems


def test_masb_policy_check_refuses_the_field_case_naming_file_line_and_key():
    result = subprocess.run([sys.executable, "-m", "agents", "policy", "check",
                             str(FIELD / "06_policy_duplicate_yaml_key_shares.yaml")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and result.stdout == ""
    assert ("06_policy_duplicate_yaml_key_shares.yaml: line 68: agreements[1].shares.MARAC_REFERRAL: "
            "repeated key 'MARAC_REFERRAL' (first at line 67)") in result.stderr, result.stderr


@pytest.mark.parametrize("old, new, expected", [
    # A repeated key anywhere: top level, nested, inside a flow mapping, in a list item.
    ("policy_version: 4\n", "policy_version: 4\npolicy_version: 5\n",
     "policy.yaml: line 3: policy_version: repeated key 'policy_version' (first at line 2)"),
    ("    kind: health\n", "    kind: health\n    kind: housing\n",
     "policy.yaml: line 26: agencies[0].kind: repeated key 'kind' (first at line 25)"),
    ("kMCW2eilG4lyPZqNx9epnmZJ1HLNUKxLI1JAIPqfOFs=, status: active}",
     "kMCW2eilG4lyPZqNx9epnmZJ1HLNUKxLI1JAIPqfOFs=, status: revoked, status: active}",
     "policy.yaml: line 28: agencies[0].exchange_keys[0].status: repeated key 'status' (first at line 28)"),
    # YAML 1.1 surprises: octal, sexagesimal, underscores, yes/no/on/off.
    ("policy_version: 4\n", "policy_version: 010\n",
     "policy.yaml: line 2: policy_version: '010' is read as a different number by YAML 1.1 and 1.2 readers"),
    ("policy_version: 4\n", "policy_version: 1_0\n", "policy.yaml: line 2: policy_version: '1_0' is read as"),
    ("policy_version: 4\n", "policy_version: 1:30\n", "policy.yaml: line 2: policy_version: '1:30' is read as"),
    ("    kind: health\n", "    kind: no\n", "policy.yaml: line 25: agencies[0].kind: 'no' is a boolean to some YAML"),
    ("    kind: health\n", "    kind: On\n", "policy.yaml: line 25: agencies[0].kind: 'On' is a boolean to some YAML"),
    # A date that is not one names the key (YAML 1.1 said only "month must be in 1..12").
    ("effective_from: 2026-11-01\n", "effective_from: 2026-13-01\n",
     "policy.yaml: line 3: effective_from: '2026-13-01' is not a calendar date (month must be in 1..12)"),
    ("effective_from: 2026-11-01\n", "effective_from: 2026-11-0１\n",
     "policy.yaml: line 3: effective_from: must be a date like 2026-11-01"),
    # Ordinary checks name the line too.
    ("    areas: [shropshire, telford_and_wrekin]\n", "    areas: [shropshire, powys]\n",
     "policy.yaml: line 12: units[0] (hau-north): areas: unknown area 'powys'"),
    ("    retention: P8Y\n", "    retention: P８Y\n",
     "policy.yaml: line 54: agreements[0] (isa-health): retention: 'P８Y': not an ISO 8601 duration"),
])
def test_policy_that_means_something_else_is_refused_naming_file_line_and_key(tmp_path, old, new, expected):
    text = VALID.read_text()
    assert old in text
    found = problems(tmp_path, text.replace(old, new, 1))
    assert any(p.startswith(expected) for p in found), found


def test_merge_keys_are_refused_because_they_silently_override(tmp_path):
    text = VALID.read_text().replace(
        "  - id: council-housing\n    name: Test Council Housing Options\n",
        "  - &housing\n    id: council-housing\n    name: Test Council Housing Options\n", 1)
    text += "extra: {<<: *housing, kind: health}\n"
    found = problems(tmp_path, text)
    assert any("line 79: extra: merge key '<<' is not allowed" in p for p in found), found


def test_a_key_id_yaml_reads_as_a_number_says_to_quote_it(tmp_path):
    # An all-digit key id is an int to YAML; its problem names the line and what to do.
    text = VALID.read_text().replace("{key_id: 0272088efe0ccd55,", "{key_id: 1234567812345678,", 1)
    found = problems(tmp_path, text)
    assert any(p.startswith("policy.yaml: line 28: agencies[0] (nhs-test-health): exchange_keys[0]: key_id: must be "
                            "a string (quote") for p in found), found


def test_quoting_says_what_is_meant(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(VALID.read_text().replace("policy_version: 4\n", "policy_version: 4  # 'yes' and 010 in a comment\n"))
    assert load_policy(path).version == 4
    assert load_policy(VALID).effective_from.isoformat() == "2026-11-01"  # dates still read as dates


def test_the_demo_template_is_read_strictly_too(tmp_path):
    template = tmp_path / "policy.template.yaml"
    text = (DEMO_DIR / "policy.template.yaml").read_text()
    assert "    kind: housing\n" in text
    template.write_text(text.replace("    kind: housing\n", "    kind: housing\n    kind: health\n", 1))
    with pytest.raises(PolicyError, match=r"policy.yaml: line \d+: agencies\[\d\]\.kind: repeated key 'kind'"):
        prepare_deployment(tmp_path / "demo", template)
    prepare_deployment(tmp_path / "fine")  # the shipped template passes


def test_a_stream_of_documents_is_read_strictly_each_problem_on_its_own_line():
    """Kubernetes manifests and similar files hold several documents separated by ``---``."""
    from streams import yamlin

    text = "kind: A\nspec: {replicas: 1}\n---\n# second\nkind: B\nmode: 0400\nkind: C\n---\n"
    with pytest.raises(yamlin.YamlConfigError) as caught:
        yamlin.load_all(text, "manifests.yaml")
    assert caught.value.problems == [
        "manifests.yaml: line 6: mode: '0400' is read as a different number by YAML 1.1 and 1.2 readers "
        "(leading zero, 0x/0o/0b, '_' or ':'): write a plain decimal number, or quote it",
        "manifests.yaml: line 7: kind: repeated key 'kind' (first at line 5): a later entry would silently "
        "replace the earlier one"]
    documents = yamlin.load_all(text.replace("mode: 0400\nkind: C\n", "mode: 256\n"), "manifests.yaml")
    assert [d.data for d in documents] == [{"kind": "A", "spec": {"replicas": 1}}, {"kind": "B", "mode": 256}]
    assert documents[1].line_of(("mode",)) == 6


def test_revoke_refuses_to_edit_an_ambiguous_policy(tmp_path):
    text = VALID.read_text().replace("policy_version: 4\n", "policy_version: 4\npolicy_version: 3\n")
    with pytest.raises(RevokeError, match="line 3: policy_version: repeated key"):
        revoke_key_text(text, "oak-school", "de9f63352991261c")
    with pytest.raises(RevokeError, match="no integer policy_version"):
        revoke_key_text(VALID.read_text().replace("policy_version: 4\n", "policy_version: '４'\n"),
                        "oak-school", "de9f63352991261c")
    assert revoke_key_text(VALID.read_text(), "oak-school", "de9f63352991261c").new_version == 5


def test_json_files_with_a_repeated_key_are_refused_naming_file_and_line(tmp_path):
    # A private key file ("kind" twice) ...
    path = tmp_path / "unit.key"
    write_private_key(path, generate_key("hau-north", "signing"))
    doc = path.read_text()
    path.write_text(doc.replace('"kind": "signing"', '"kind": "signing", "kind": "exchange"'))
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match=r"unit\.key: .*kind: repeated key \(first at line 4\).*\(line 4, column \d+\)"):
        load_private_key(path)
    # ... and a source schema ("type" twice in a field).
    root = tmp_path / "schemas"
    (root / "events").mkdir(parents=True)
    for source in (DEFAULT_SCHEMA_ROOT / "events").glob("*.avsc"):
        (root / "events" / source.name).write_text(source.read_text())
    schema = json.loads((root / "events" / "case_closed.avsc").read_text())
    text = json.dumps(schema, indent=2).replace('"name": "transferred_to",', '"name": "transferred_to",\n "type": "int",')
    (root / "events" / "case_closed.avsc").write_text(text)
    with pytest.raises(SchemaSourceError, match=r"case_closed\.avsc: .*fields\[2\]\.type: repeated key"):
        load_source_schemas(root)


@pytest.mark.parametrize("name, value", [("MASB_CHECKPOINT_INTERVAL", "nan"), ("MASB_CHECKPOINT_INTERVAL", "inf"),
                                         ("MASB_WEB_PORT", "６０６６"), ("MASB_ROUTER_BATCH", "1_000"),
                                         ("MASB_SESSION_TIMEOUT", "-6"), ("MASB_WEB_PORT", "70000"),
                                         ("MASB_ROUTER_BATCH_WINDOW", "0"), ("MASB_ROUTER_BATCH_WINDOW", "20ms")])
def test_worker_settings_from_the_environment_must_be_plain_positive_numbers(monkeypatch, name, value):
    import argparse

    from agents.settings import Settings
    from streams.errors import InvalidInput

    monkeypatch.setenv(name, value)
    with pytest.raises(InvalidInput, match=f"^{name}: must be a (whole )?number in ASCII digits"):
        Settings.from_args(argparse.Namespace())
    monkeypatch.setenv(name, "6")
    Settings.from_args(argparse.Namespace())


@pytest.mark.parametrize("value, ok", [("127.0.0.1:9092", True), ("kafka-0.kafka:9093,kafka-1.kafka:9093", True),
                                       ("[::1]:9092", True), ("h:1, h:65535", True), ("127.0.0.1:abc", False),
                                       ("127.0.0.1:99999", False), ("h:0", False), ("h", False), (":9092", False),
                                       ("h:9092,", False), ("h:９０９２", False), ("h:+9", False)])
def test_bootstrap_servers_must_be_host_port_with_ports_in_range(value, ok):
    from agents.settings import bootstrap_servers
    from streams.errors import InvalidInput

    if ok:
        assert bootstrap_servers(value, "--bootstrap") == value
    else:
        with pytest.raises(InvalidInput, match=r"^--bootstrap .*: not HOST:PORT"):
            bootstrap_servers(value, "--bootstrap")
