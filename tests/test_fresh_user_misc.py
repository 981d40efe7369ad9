"""What a fresh user found trying to break the installed `masb`: generated scripts that run what a
setting smuggles in, refusals in two shapes, events lost to a mistyped topic prefix, and small
wording and exit-code slips. Each is run as a user runs `masb` (docs/cli.md)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from agents.deployment import prepare_deployment
from streams.acl import AclBinding, render_kafka_acls
from tests.harness import fixture_event

NO_BROKER = "127.0.0.1:1"  # nothing listens on port 1: a command that connects fails with exit 3
EVENT = fixture_event("MARAC_REFERRAL")
PERSONAL = [EVENT["victim"]["name"], EVENT["header"]["case_ref"], EVENT["victim"]["nhs_number"]]
RFC1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fresh-user")
    deployment = prepare_deployment(root / "deployment")
    (root / "good.json").write_text(json.dumps(EVENT))
    bad = json.loads(json.dumps(EVENT))
    bad["header"]["area"] = "nowhere"
    bad["victim"]["name"] = " "
    elsewhere = json.loads(json.dumps(EVENT))
    elsewhere["header"]["area"] = "shropshire"  # valid, but hau-worcestershire may not publish there
    (root / "bad.json").write_text(json.dumps(bad))
    (root / "mixed.json").write_text(json.dumps([EVENT, bad, elsewhere, 5]))
    return root, deployment


def masb(*args, cwd: Path, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MASB_")}
    return subprocess.run([sys.executable, "-m", "agents", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False, env={**clean, **(env or {})})


def settings(deployment, bootstrap: str = NO_BROKER, **more) -> dict:
    return {"MASB_POLICY": str(deployment.policy_path), "MASB_KEYS_DIR": str(deployment.keys_dir),
            "MASB_BOOTSTRAP": bootstrap, **more}


def refused_in_one_line(result, code: int = 2) -> str:
    """The refusal's `masb:` line; at most a hint after it; no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = result.stderr.splitlines()
    assert lines and lines[0].startswith("masb: "), result.stderr
    assert all(line.startswith("  ") for line in lines[1:]) and len(lines) <= 2, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def key_file(deployment, owner: str, kind: str = "exchange") -> Path:
    (path,) = deployment.keys_dir.glob(f"{owner}.{kind}.*.key")
    return path


# -- 1. acl plan: settings that would run in the admin's shell or break Kubernetes names ----------
@pytest.mark.parametrize("flags, named", [
    (["--format", "kafka-acls", "--principal-prefix", "x;touch /tmp/PWNED;"], "--principal-prefix"),
    (["--format", "kafka-acls", "--principal-prefix", "x$(id)"], "--principal-prefix"),
    (["--format", "kafka-acls", "--principal-prefix", "masb-`id`-"], "--principal-prefix"),
    (["--format", "strimzi", "--principal-prefix", "A B"], "--principal-prefix"),
    (["--format", "strimzi", "--principal-prefix", "Masb-"], "--principal-prefix"),
    (["--format", "strimzi", "--principal-prefix", "masb_"], "--principal-prefix"),
    (["--format", "strimzi", "--principal-prefix", "masb..x"], "--principal-prefix"),
    (["--format", "json", "--principal-prefix", "m" * 101], "--principal-prefix"),
    (["--format", "strimzi", "--strimzi-cluster", ""], "--strimzi-cluster"),
    (["--format", "strimzi", "--strimzi-cluster", "My Cluster"], "--strimzi-cluster"),
    (["--format", "strimzi", "--strimzi-cluster", "c" * 64], "--strimzi-cluster"),
])
def test_acl_plan_refuses_names_that_are_not_kafka_and_kubernetes_names(setup, flags, named):
    root, deployment = setup
    result = masb("acl", "plan", "--policy", deployment.policy_path, *flags, cwd=root)
    line = refused_in_one_line(result)
    assert named in line
    assert result.stdout == ""  # no partial script an admin could run
    assert len(line) < 400


def test_an_empty_principal_prefix_is_refused_not_replaced_by_the_default(setup):
    root, deployment = setup
    line = refused_in_one_line(masb("acl", "plan", "--policy", deployment.policy_path, "--principal-prefix", "",
                                    cwd=root))
    assert "--principal-prefix" in line and "empty" in line


def test_a_bad_principal_prefix_in_the_environment_is_named(setup):
    root, deployment = setup
    result = masb("policy", "diff", deployment.policy_path, deployment.policy_path, cwd=root,
                  env={"MASB_PRINCIPAL_PREFIX": "x;id;"})
    assert "MASB_PRINCIPAL_PREFIX" in refused_in_one_line(result)


def test_a_valid_prefix_and_cluster_make_valid_kubernetes_names(setup):
    root, deployment = setup
    result = masb("acl", "plan", "--policy", deployment.policy_path, "--format", "strimzi", "--principal-prefix",
                  "wm.masb-", "--strimzi-cluster", "west-mercia", cwd=root)
    assert result.returncode == 0, result.stderr
    users = list(yaml.safe_load_all(result.stdout))
    assert users
    for user in users:
        name = user["metadata"]["name"]
        assert name.startswith("wm.masb-") and RFC1123_SUBDOMAIN.fullmatch(name) and len(name) <= 253, name
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == "west-mercia"


def test_the_kafka_acls_script_quotes_every_name_it_interpolates():
    """Defence in depth: whatever reaches the renderer stays one shell word."""
    hostile = AclBinding("User:x;touch /tmp/PWNED;", "TOPIC", "t$(id) `id` 'q'", "LITERAL", "READ")
    (line,) = [line for line in render_kafka_acls([hostile]).splitlines() if line.startswith("kafka-acls.sh")]
    words = shlex.split(line)
    assert words[words.index("--allow-principal") + 1] == "User:x;touch /tmp/PWNED;"
    assert words[words.index("--topic") + 1] == "t$(id) `id` 'q'"


def test_the_kafka_acls_script_runs_no_command_smuggled_into_a_name(tmp_path):
    """The script as the admin runs it (`sh this-file`), with a kafka-acls.sh that only records its
    arguments: no command from a name runs, every name arrives as one argument."""
    marker = tmp_path / "PWNED"
    hostile = AclBinding(f"User:x;touch {marker};", "GROUP", f"g$(touch {marker})", "LITERAL", "READ")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recorder = bin_dir / "kafka-acls.sh"
    recorder.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done >> "$RECORD"\n')
    recorder.chmod(0o755)
    script = tmp_path / "acls.sh"
    script.write_text(render_kafka_acls([hostile]))
    subprocess.run(["sh", str(script)], check=True, timeout=30, env={
        "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(tmp_path / "args"), "BOOTSTRAP": "b:1",
        "ADMIN_CONFIG": "a.properties"})
    assert not marker.exists()
    args = (tmp_path / "args").read_text().splitlines()
    assert f"User:x;touch {marker};" in args and f"g$(touch {marker})" in args


# -- 2. publish: refused events in the shape of every other error -------------------------------
def test_refused_events_are_one_error_with_indented_problems(setup):
    root, deployment = setup
    result = masb("publish", "--as", "hau-worcestershire", root / "mixed.json", cwd=root, env=settings(deployment))
    assert result.returncode == 2 and result.stdout == "", result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "masb: 3 of 4 events refused; nothing was published:", result.stderr
    assert all(line.startswith("  ") for line in lines[1:]), result.stderr
    assert sum(line.startswith("masb:") for line in lines) == 1
    text = result.stderr
    assert "  event 2: invalid (2 problem(s)):" in lines
    assert "    header.area: expected one of herefordshire, shropshire, telford_and_wrekin, worcestershire" in lines
    assert any(line.startswith("    victim.name: must not be empty or blank") for line in lines)
    assert any(line.startswith("  event 3: refused: unit hau-worcestershire is not registered") for line in lines)
    assert any(line.startswith("  event 4: ") for line in lines)
    assert "invalid case event" not in text  # the header is not repeated under each event
    for value in PERSONAL:
        assert value not in text


def test_a_single_invalid_event(setup):
    root, deployment = setup
    result = masb("publish", "--as", "hau-worcestershire", root / "bad.json", cwd=root, env=settings(deployment))
    lines = result.stderr.splitlines()
    assert result.returncode == 2
    assert lines[:2] == ["masb: 1 of 1 events refused; nothing was published:", "  event 1: invalid (2 problem(s)):"]
    assert len(lines) == 4 and all(line.startswith("    ") for line in lines[2:]), result.stderr


@pytest.mark.parametrize("unit, words", [
    ("hau-nope", ["unit hau-nope is not a unit of policy version", "hint: unit ids are listed under units:"]),
    ("", ["--as", "empty"]),
    ("   ", ["--as is empty"]),
    ("h" * 5000, ["\u2026", "is not a unit of policy version"]),
])
def test_publish_as_a_unit_that_is_not_one(setup, unit, words):
    root, deployment = setup
    result = masb("publish", "--as", unit, root / "good.json", cwd=root, env=settings(deployment))
    line = refused_in_one_line(result)
    for word in words:
        assert word in result.stderr
    assert len(line) < 300


# -- 4. small items ------------------------------------------------------------------------------
def test_a_missing_keys_dir_is_not_found(setup):
    root, deployment = setup
    line = refused_in_one_line(masb("publish", "--as", "hau-worcestershire", "--keys-dir", root / "nonexist",
                                    root / "good.json", cwd=root, env=settings(deployment)))
    assert "keys directory" in line and "nonexist not found" in line


def test_an_empty_path_is_called_empty_not_a_directory(setup):
    root, _ = setup
    line = refused_in_one_line(masb("policy", "check", "", cwd=root))
    assert "empty" in line and "directory" not in line


def test_a_key_of_the_wrong_owner_reads_an_exchange_key(setup):
    root, deployment = setup
    line = refused_in_one_line(masb("consume", "--bootstrap", NO_BROKER, "--policy", deployment.policy_path,
                                    "--unit", "hau-worcestershire", "--key",
                                    key_file(deployment, "gp-fed-shropshire"), cwd=root))
    assert "is an exchange key of gp-fed-shropshire" in line


def test_dlq_refuses_an_unknown_reason_code_before_connecting(setup):
    root, _ = setup
    for action in ("list", "redrive"):
        result = masb("dlq", action, "--bootstrap", NO_BROKER, "--reason", "NOPE", cwd=root)
        line = refused_in_one_line(result)  # 2, not 3: the flag is wrong whatever the broker says
        assert "--reason NOPE" in line
        assert "WIRE_FORMAT" in result.stderr and "INVALID_EVENT" in result.stderr  # the valid ones


def test_dlq_redrive_refuses_a_negative_offset(setup):
    root, _ = setup
    result = masb("dlq", "redrive", "--bootstrap", NO_BROKER, "--offset", "-5", cwd=root)
    assert result.returncode == 2 and "--offset" in result.stderr and "'-5'" in result.stderr, result.stderr


def test_reason_codes_are_those_docs_routing_lists():
    from streams.routing import REASON_CODES

    text = (Path(__file__).parent.parent / "docs" / "routing.md").read_text()
    section = text.split("## 2. Reason codes", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([A-Z_]+)` \|", section, flags=re.MULTILINE)
    assert set(documented) == set(REASON_CODES) and len(set(REASON_CODES)) == len(REASON_CODES)


def test_schemas_check_says_ok_on_stdout_and_has_its_own_help(setup):
    root, _ = setup
    result = masb("schemas", "check", cwd=root)
    assert result.returncode == 0 and result.stdout.strip().endswith(": OK") and result.stderr == "", result
    helped = masb("schemas", "check", "--help", cwd=root)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: masb schemas check"), helped.stdout
    assert "BACKWARD_TRANSITIVE" in helped.stdout
    assert masb("schemas", "register", "--help", cwd=root).stdout.startswith("usage: masb schemas register")
    old_order = masb("schemas", "--root", root / "nope", "check", cwd=root)  # --root before the action, as before
    assert old_order.returncode == 2 and "nope not found" in old_order.stderr


@pytest.mark.parametrize("args", [
    ["keys", "generate", "--kind", "signing", "--owner", "A" * 5000],
    ["audit", "report", "--bootstrap", NO_BROKER, "--event-type", "E" * 5000],
    ["dlq", "list", "--bootstrap", "h" * 5000],
    ["dlq", "list", "--bootstrap", NO_BROKER, "--topic-prefix", "x y" * 2000],
    ["dlq", "list", "--bootstrap", NO_BROKER, "--format", "f" * 5000],  # argparse's own message
])
def test_an_over_long_value_is_not_echoed_in_full(setup, args):
    root, deployment = setup
    result = masb(*args, cwd=root, env={"MASB_POLICY": str(deployment.policy_path)})
    assert result.returncode == 2, result.stderr
    assert len(result.stderr) < 1000, len(result.stderr)
    assert "\u2026" in result.stderr


# -- 3. a mistyped topic prefix: refused, nothing created -----------------------------------------
def _topic_list(bootstrap: str) -> set[str]:
    from streams.kafka import admin, start_client

    async def go():
        client = admin(bootstrap)
        await start_client(client, bootstrap)
        try:
            return set(await client.list_topics())
        finally:
            await client.close()

    return asyncio.run(go())


def _mistyped_prefix_is_refused(bootstrap: str, setup, env: dict) -> None:
    from streams.kafka import TopicSpec, ensure_topics
    from streams.topics import Topics

    root, deployment = setup
    typo = f"nosuch{uuid.uuid4().hex[:8]}."
    base = settings(deployment, bootstrap, **env)
    agency_key = key_file(deployment, "idva-west-mercia")
    unit_key = key_file(deployment, "hau-worcestershire")
    commands = [
        (["publish", "--as", "hau-worcestershire", root / "good.json"], f"{typo}case-events"),
        (["consume", "--agency", "idva-west-mercia", "--key", agency_key], f"{typo}partner.idva-west-mercia"),
        (["consume", "--unit", "hau-worcestershire", "--key", unit_key], f"{typo}unit.hau-worcestershire"),
        (["dlq", "list"], f"{typo}case-events.dlq"),
        (["dlq", "redrive"], f"{typo}case-events.dlq"),
    ]
    for flags, topic in commands:
        result = masb(*flags, "--topic-prefix", typo, cwd=root, env=base)
        line = refused_in_one_line(result)
        assert f"topic {topic} does not exist" in line and bootstrap in line, line
        hint = result.stderr.splitlines()[1]
        assert "--topic-prefix" in hint and "MASB_TOPIC_PREFIX" in hint and typo in hint and "worker" in hint
        assert result.stdout == ""
    assert not any(name.startswith(typo) for name in _topic_list(bootstrap)), "a refused command created a topic"

    # With the topics there (a worker started), the same publish goes through.
    good = f"t{uuid.uuid4().hex[:8]}."
    asyncio.run(ensure_topics(bootstrap, [TopicSpec(Topics(good).case_events)]))
    published = masb("publish", "--as", "hau-worcestershire", "--topic-prefix", good, root / "good.json",
                     cwd=root, env=base)
    assert published.returncode == 0, published.stderr
    assert json.loads(published.stdout)["published"] == EVENT["header"]["event_id"]


@pytest.mark.kafka
def test_a_mistyped_topic_prefix_is_refused_on_kafka(kafka, setup):
    _mistyped_prefix_is_refused(kafka, setup, {})


@pytest.mark.tansu
def test_a_mistyped_topic_prefix_is_refused_on_tansu(tansu, setup):
    _mistyped_prefix_is_refused(tansu, setup, {"MASB_KAFKA_ENABLE_IDEMPOTENCE": "false"})


def test_kafka_jars_of_an_installed_package_go_to_the_user_cache_not_into_site_packages(tmp_path, monkeypatch):
    """`masb demo --secure` from a wheel wrote 43 MB into site-packages (read-only on many hosts)."""
    from deploy import brokers

    installed = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "deploy" / "kafka"
    installed.mkdir(parents=True)
    monkeypatch.setattr(brokers, "KAFKA_DIR", installed)
    monkeypatch.delenv("MASB_KAFKA_LIB", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert brokers.kafka_lib_dir() == tmp_path / "cache" / "masb" / "kafka-lib"
    monkeypatch.setenv("MASB_KAFKA_LIB", str(tmp_path / "mine"))
    assert brokers.kafka_lib_dir() == tmp_path / "mine"
    checkout = tmp_path / "src" / "deploy" / "kafka"
    monkeypatch.setattr(brokers, "KAFKA_DIR", checkout)
    monkeypatch.delenv("MASB_KAFKA_LIB")
    assert brokers.kafka_lib_dir() == checkout / "lib"
