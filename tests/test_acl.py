"""ACLs derived from the sharing policy (docs/security.md, "ACLs"): least privilege for each
principal, nothing for anyone else, in Kafka's JSON, kafka-acls and Strimzi forms; compared with
a cluster's ACLs; shown by `masb policy diff`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from agents.cli import main
from streams.acl import AclBinding, Principals, compare, plan, render_json, render_kafka_acls, render_strimzi
from streams.acl_admin import MAX_LISTED_CHANGES, acl_change_reason
from streams.policy import load_policy
from streams.topics import Topics

VALID = Path(__file__).resolve().parent / "fixtures" / "policy" / "valid.yaml"
POLICY = load_policy(VALID)
TOPICS = Topics("p.")
WHO = Principals()
PLAN = plan(POLICY, TOPICS, WHO)


def grants(principal: str) -> set[tuple[str, str, str]]:
    return {(b.resource_type, b.resource_name, b.operation) for b in PLAN if b.principal == principal}


def test_each_unit_may_only_write_case_events_and_read_its_own_notices():
    for unit in ("hau-north", "hau-south"):
        assert grants(f"User:masb-unit-{unit}") == {("TOPIC", "p.case-events", "WRITE"),
                                                     ("TOPIC", "p.case-events", "DESCRIBE"),
                                                     ("TOPIC", f"p.unit.{unit}", "READ"),
                                                     ("TOPIC", f"p.unit.{unit}", "DESCRIBE")}


def test_each_agency_may_read_only_its_own_feed_and_group_and_write_receipts():
    for agency in ("nhs-test-health", "council-housing", "oak-school", "spare-probation"):
        assert grants(f"User:masb-agency-{agency}") == {
            ("TOPIC", f"p.partner.{agency}", "READ"), ("TOPIC", f"p.partner.{agency}", "DESCRIBE"),
            ("GROUP", f"p.partner.{agency}", "READ"),
            ("TOPIC", "p.receipts", "WRITE"), ("TOPIC", "p.receipts", "DESCRIBE")}


def test_the_auditor_reads_the_audit_topics_and_asks_for_shreds_and_redrives():
    reads = ("p.audit.exchange", "p.audit.checkpoints", "p.audit.case-keys", "p.case-events.dlq")
    requests = ("p.audit.case-key-shreds", "p.case-events.dlq.redrive")
    assert grants("User:masb-auditor") == (
        {("TOPIC", n, o) for n in reads for o in ("READ", "DESCRIBE")}
        | {("TOPIC", n, o) for n in requests for o in ("WRITE", "DESCRIBE")})


def test_the_router_gets_what_the_worker_needs_and_no_create():
    router = grants("User:masb-router")
    reads = {n for t, n, o in router if o == "READ"}
    writes = {n for t, n, o in router if o == "WRITE"}
    groups = {"p.masb-router", "p.masb-router-checkpointer", "p.masb-deadlines"}
    state = {"p.audit.exchange", "p.audit.checkpoints", "p.audit.case-keys", "p.deadlines.state", "p.case-events.dlq",
             "p.masb-router-seen-events-changelog", "p.masb-router-__assignor-__leader"}
    assert reads == {"p.case-events", "p.receipts", "p.audit.case-key-shreds", "p.case-events.dlq.redrive",
                     *state, *groups}
    assert writes == {*state, *(f"p.partner.{a.id}" for a in POLICY.agencies),
                      *(f"p.unit.{u.id}" for u in POLICY.units), "p.masb-router-checkpointer"}
    assert {("GROUP", g, "READ") for g in groups} <= router
    assert {("TRANSACTIONAL_ID", "p.masb-router-checkpointer", o) for o in ("WRITE", "DESCRIBE")} <= router
    assert {n for t, n, o in router if o == "DESCRIBE" and t == "TOPIC"} == (reads | writes) - groups - {
        "p.masb-router-checkpointer"}


def test_nobody_else_gets_anything_and_nothing_is_broader_than_named():
    assert {b.principal for b in PLAN} == {
        "User:masb-router", "User:masb-auditor", "User:masb-unit-hau-north", "User:masb-unit-hau-south",
        *(f"User:masb-agency-{a.id}" for a in POLICY.agencies)}
    assert {b.operation for b in PLAN} == {"READ", "WRITE", "DESCRIBE"}
    assert {b.pattern_type for b in PLAN} == {"LITERAL"} and {b.permission for b in PLAN} == {"ALLOW"}
    assert not any("*" in b.resource_name for b in PLAN)


def test_prefixes_are_configurable():
    other = plan(POLICY, Topics(""), Principals("wm-"))
    assert "User:wm-router" in {b.principal for b in other}
    assert ("TOPIC", "case-events") in {(b.resource_type, b.resource_name) for b in other}


def test_json_is_a_list_of_bindings_with_kafkas_names():
    items = json.loads(render_json(PLAN))
    assert len(items) == len(PLAN)
    assert all(set(i) == {"principal", "resource_type", "resource_name", "pattern_type", "operation", "permission"}
               for i in items)
    assert [AclBinding(**i) for i in items] == PLAN


def test_kafka_acls_commands_grant_exactly_the_plan():
    found = set()
    for line in render_kafka_acls(PLAN).splitlines():
        if not line.startswith("kafka-acls.sh"):
            continue
        principal = re.search(r"--allow-principal (\S+)", line).group(1)
        kind, name = re.search(r"--(topic|group|transactional-id) (\S+)", line).groups()
        assert "--resource-pattern-type literal" in line
        for op in re.findall(r"--operation (\w+)", line):
            found.add(AclBinding(principal, kind.upper().replace("-", "_"), name, "LITERAL", op.upper()))
    assert found == set(PLAN)


def test_strimzi_kafka_users_carry_the_plan():
    documents = list(yaml.safe_load_all(render_strimzi(PLAN, WHO, cluster="wm-kafka", authentication="tls")))
    assert {d["metadata"]["name"] for d in documents} == {WHO.user_name(b.principal) for b in PLAN}
    found = set()
    for d in documents:
        assert (d["apiVersion"], d["kind"]) == ("kafka.strimzi.io/v1beta2", "KafkaUser")
        assert d["metadata"]["labels"] == {"strimzi.io/cluster": "wm-kafka"}
        assert d["spec"]["authentication"] == {"type": "tls"} and d["spec"]["authorization"]["type"] == "simple"
        for acl in d["spec"]["authorization"]["acls"]:
            assert acl["resource"]["patternType"] == "literal" and acl["host"] == "*" and acl["type"] == "allow"
            for op in acl["operations"]:
                kind = {"transactionalId": "TRANSACTIONAL_ID"}.get(acl["resource"]["type"], acl["resource"]["type"].upper())
                found.add(AclBinding(f"User:{d['metadata']['name']}", kind, acl["resource"]["name"], "LITERAL",
                                     op.upper()))
    assert found == set(PLAN)


def test_compare_reports_what_is_missing_and_what_is_beyond_within_masbs_scope():
    on_cluster = [b for b in PLAN if b.principal != "User:masb-auditor"] + [
        AclBinding("User:masb-agency-gone", "TOPIC", "p.partner.gone", "LITERAL", "READ"),   # a revoked agency
        AclBinding("User:monitoring", "TOPIC", "p.case-events", "LITERAL", "READ"),          # anyone on a MASB topic
        AclBinding("User:masb-unit-hau-north", "TOPIC", "p.", "PREFIXED", "READ"),           # broader than named
        AclBinding("User:other-app", "TOPIC", "other-topic", "LITERAL", "WRITE"),            # not MASB's business
    ]
    diff = compare(PLAN, on_cluster, WHO)
    assert diff.missing == sorted(b for b in PLAN if b.principal == "User:masb-auditor")
    assert [b.principal for b in diff.extra] == ["User:masb-agency-gone", "User:masb-unit-hau-north", "User:monitoring"]
    assert "+ ALLOW User:masb-auditor READ TOPIC p.audit.exchange" in diff.render()
    assert "- ALLOW User:masb-unit-hau-north READ TOPIC p. (PREFIXED)" in diff.render()
    assert compare(PLAN, PLAN, WHO).is_empty


def test_the_audit_reason_of_an_applied_change_is_bounded():
    diff = compare(PLAN, [], WHO)
    reason = acl_change_reason(POLICY, PLAN, diff)
    assert reason.startswith(f"ACL_CHANGE: Kafka ACLs applied for policy version 4: {len(PLAN)} granted, 0 removed")
    assert reason.count("+ALLOW") == MAX_LISTED_CHANGES and f"and {len(PLAN) - MAX_LISTED_CHANGES} more" in reason


@pytest.fixture
def changed_policy(tmp_path) -> Path:
    """Version 5: a new agency (with an agreement) and spare-probation gone."""
    text = VALID.read_text().replace("policy_version: 4", "policy_version: 5")
    start = text.index("  - id: spare-probation")
    end = text.index("agreements:")
    new_agency = text[start:end].replace("spare-probation", "idva-new").replace("kind: probation", "kind: idva")
    text = text[:start] + new_agency + text[end:]
    path = tmp_path / "new.yaml"
    path.write_text(text)
    return path


def test_policy_diff_shows_the_acl_changes_with_the_sharing_changes(changed_policy, capsys):
    assert main(["policy", "diff", str(VALID), str(changed_policy), "--topic-prefix", "p."]) == 0
    out = capsys.readouterr().out
    assert "Newly shared" in out and "Kafka ACL changes" in out
    assert "+ ALLOW User:masb-agency-idva-new READ TOPIC p.partner.idva-new" in out
    assert "+ ALLOW User:masb-router WRITE TOPIC p.partner.idva-new" in out
    assert "- ALLOW User:masb-agency-spare-probation READ TOPIC p.partner.spare-probation" in out
    assert "- ALLOW User:masb-router WRITE TOPIC p.partner.spare-probation" in out


def test_acl_plan_command_prints_each_format(capsys):
    assert main(["acl", "plan", "--policy", str(VALID), "--topic-prefix", "p."]) == 0
    assert [AclBinding(**i) for i in json.loads(capsys.readouterr().out)] == PLAN
    assert main(["acl", "plan", "--policy", str(VALID), "--format", "strimzi", "--principal-prefix", "x-"]) == 0
    assert "name: x-router" in capsys.readouterr().out


def test_the_plan_covers_every_topic_the_worker_creates():
    """A topic added to the worker (agents/app.py topic_specs) without its ACLs would fail only on a
    locked-down cluster: the plan must give the router rights on each one."""
    from agents.app import topic_specs

    router = grants("User:masb-router")
    for spec in topic_specs(TOPICS, POLICY, 1):
        assert ("TOPIC", spec.name, "DESCRIBE") in router, spec.name
        assert {("TOPIC", spec.name, "READ"), ("TOPIC", spec.name, "WRITE")} & router, spec.name


def test_every_table_of_the_worker_has_its_changelog_provisioned_and_granted(tmp_path):
    """faust creates no topic (topic_allow_declare=False): each table's changelog must be known."""
    from agents.app import build_app, topic_specs
    from agents.deployment import prepare_deployment
    from agents.settings import Settings
    from streams.topics import WORKER_TABLES

    deployment = prepare_deployment(tmp_path / "deployment")
    app = build_app(Settings(bootstrap="127.0.0.1:1", policy_path=deployment.policy_path,
                             keys_dir=deployment.keys_dir, datadir=tmp_path / "data", topic_prefix="p."))
    assert app.conf.topic_allow_declare is False
    assert set(app.tables) == set(WORKER_TABLES)
    planned = plan(deployment.policy, TOPICS, WHO)
    created = {s.name for s in topic_specs(TOPICS, deployment.policy, 1)}
    for table in app.tables.values():
        name = table.changelog_topic.get_topic_name()
        assert name in created
        assert AclBinding("User:masb-router", "TOPIC", name, "LITERAL", "WRITE") in planned
