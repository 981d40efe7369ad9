"""MASB on a locked-down Apache Kafka (KRaft): SASL_SSL with SCRAM-SHA-512 and mutual TLS
listeners, the standard authorizer with allow.everyone.if.no.acl.found=false, certificates and
SCRAM users made by the test (deploy/brokers.py SecuredKafkaBroker).

The cluster admin provisions topics and ACLs with `masb acl apply`; the worker runs as
User:masb-router; units publish, agencies consume and send receipts (one of them over mutual
TLS), the auditor verifies, each with its own credentials. Everything else is denied, and each
`masb` command says so in one line naming the principal, the operation and the topic (exit 4).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from agents.deployment import Deployment, WorkerProcess, prepare_deployment, worker_env
from deploy.brokers import SecuredKafkaBroker
from deploy.tls import CertificateAuthority
from streams.acl import Principals, plan
from streams.crypto.pseudonym import PseudonymKeys
from streams.errors import AccessDenied
from streams.kafka import read_topic
from streams.topics import Topics
from tests.harness import demo_event

pytestmark = pytest.mark.kafka

PREFIX = "sec."
WHO = Principals()
STRANGER = "masb-stranger"  # a SCRAM user the cluster knows, with no ACL at all
MTLS_AGENCY = "shropshire-housing"


@dataclass
class Secured:
    broker: SecuredKafkaBroker
    deployment: Deployment
    topics: Topics
    properties: dict[str, Path]  # SCRAM user (or "tls:<cn>") -> client properties file
    worker: WorkerProcess | None = None

    def env(self, identity: str, bootstrap: str | None = None) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MASB_KAFKA_")}
        return dict(clean, MASB_BOOTSTRAP=bootstrap or self.broker.bootstrap, MASB_TOPIC_PREFIX=PREFIX,
                    MASB_POLICY=str(self.deployment.policy_path), MASB_KAFKA_CONFIG=str(self.properties[identity]))

    def masb(self, identity: str, *args, bootstrap: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "agents", *map(str, args)], env=self.env(identity, bootstrap),
                              capture_output=True, text=True, timeout=120)

    def key(self, owner: str, kind: str = "exchange") -> Path:
        return next(self.deployment.keys_dir.glob(f"{owner}.{kind}.*.key"))

    def admin_records(self, topic: str) -> list:
        async def go():
            return [r async for r in read_topic(self.broker.bootstrap, topic,
                                                security=self.broker.scram_security(self.broker.ADMIN))]

        return asyncio.run(go())


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("secured")
    deployment = prepare_deployment(workdir / "deployment")
    topics = Topics(PREFIX)
    users = sorted({WHO.user_name(b.principal) for b in plan(deployment.policy, topics, WHO)}) + [STRANGER]
    broker = SecuredKafkaBroker(users=users, workdir=workdir / "broker")
    broker.start()
    try:
        clients = workdir / "clients"
        props = {user: broker.client_properties(user, clients) for user in [*users, broker.ADMIN]}
        props[f"tls:{MTLS_AGENCY}"] = broker.certificate_properties(f"masb-agency-{MTLS_AGENCY}", clients,
                                                                    key_password=b"key-password-" + uuid.uuid4().hex.encode())
        props["tls:no-acl"] = broker.certificate_properties("masb-agency-unlisted", clients)
        foreign = CertificateAuthority.create(workdir / "foreign-ca").issue("masb-agency-idva-west-mercia")
        props["tls:foreign"] = clients / "foreign.properties"
        props["tls:foreign"].write_text(f"security.protocol=SSL\nssl.cafile={broker.ca.cert_path}\n"
                                        f"ssl.certfile={foreign.cert}\nssl.keyfile={foreign.key}\n")
        (clients / "nobody.password").write_text("not-a-password\n")
        (clients / "nobody.password").chmod(0o600)  # a secret: refused if others may read it
        props["masb-nobody"] = clients / "nobody.properties"
        props["masb-nobody"].write_text("security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n"
                                        f"sasl.username=masb-nobody\nsasl.password.file={clients / 'nobody.password'}\n"
                                        f"ssl.cafile={broker.ca.cert_path}\n")
        state = Secured(broker, deployment, topics, props)
        applied = state.masb(broker.ADMIN, "acl", "apply")
        assert applied.returncode == 0, applied.stderr
        env = worker_env(deployment, broker.bootstrap, PREFIX, MASB_KAFKA_CONFIG=str(props["masb-router"]))
        env = {k: v for k, v in env.items() if not k.startswith("MASB_KAFKA_") or k == "MASB_KAFKA_CONFIG"}
        # The worker logs at debug: not even debug lines may hold a case reference or a secret.
        state.worker = WorkerProcess(dict(env, MASB_WORKER_LOG_LEVEL="debug"), workdir / "worker.log")
        try:
            state.worker.wait_healthy(120)
            yield state
        finally:
            state.worker.stop()
    finally:
        broker.cleanup()


def one_line_denial(result: subprocess.CompletedProcess) -> str:
    """The command's refusal: exit 4, no traceback, a first line that says it all."""
    assert result.returncode == 4, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr.splitlines()[0]


@pytest.fixture(scope="module")
def flow(secured, tmp_path_factory):
    """A unit publishes two events; the router delivers; agencies consume with --ack (one over mutual
    TLS); the worker signs a checkpoint."""
    events = [demo_event("01_dash_worcestershire"), demo_event("04_protection_notice_shropshire")]
    files = []
    for event in events:
        path = tmp_path_factory.mktemp("events") / f"{event['header']['event_id']}.json"
        path.write_text(json.dumps(event))
        files.append(path)
        unit = event["header"]["unit_id"]
        published = secured.masb(f"masb-unit-{unit}", "publish", "--as", unit, "--keys-dir",
                                 secured.deployment.keys_dir, path)
        assert published.returncode == 0, published.stderr
    policy = secured.deployment.policy
    expected = {s.agency_id: [] for e in events for s in policy.routing(e["header"]["event_type"], e["header"]["area"])}
    for e in events:
        for share in policy.routing(e["header"]["event_type"], e["header"]["area"]):
            expected[share.agency_id].append(e["header"]["event_id"])
    assert MTLS_AGENCY in expected
    consumed = {}
    for agency, ids in expected.items():
        identity = f"tls:{agency}" if agency == MTLS_AGENCY else f"masb-agency-{agency}"
        bootstrap = secured.broker.mtls_bootstrap if agency == MTLS_AGENCY else None
        result = secured.masb(identity, "consume", "--agency", agency, "--key", secured.key(agency), "--ack",
                              "--follow", "--idle-timeout", "15", "--max", len(ids), bootstrap=bootstrap)
        assert result.returncode == 0, (agency, result.stderr)
        consumed[agency] = [json.loads(line) for line in result.stdout.splitlines()]
    return events, expected, consumed, files


def test_acl_apply_made_the_cluster_grant_exactly_the_plan_and_recorded_it(secured):
    diff = secured.masb(secured.broker.ADMIN, "acl", "diff")
    assert diff.returncode == 0 and "exactly" in diff.stdout, diff.stderr
    from streams.audit.entry import decode_entry

    entries = [decode_entry(r.value) for r in secured.admin_records(secured.topics.audit)]
    recorded = [e for e in entries if e["kind"] == "POLICY_CHANGE" and e["reason"].startswith("ACL_CHANGE:")]
    assert len(recorded) == 1
    assert f"+ALLOW User:masb-agency-idva-west-mercia READ TOPIC {PREFIX}partner.idva-west-mercia" in recorded[0]["reason"]
    planned = len(plan(secured.deployment.policy, secured.topics, Principals()))
    assert f"{planned} granted, 0 removed" in recorded[0]["reason"]
    # Applying again changes nothing and records nothing.
    again = secured.masb(secured.broker.ADMIN, "acl", "apply")
    assert again.returncode == 0 and "nothing changed" in again.stdout


def test_the_whole_flow_works_for_the_permitted_principals(secured, flow):
    events, expected, consumed, _ = flow
    for agency, ids in expected.items():
        assert sorted(item["event_id"] for item in consumed[agency]) == sorted(ids)
        assert all(item["case_ref"] == events[0]["header"]["case_ref"] or item["case_ref"] ==
                   events[1]["header"]["case_ref"] for item in consumed[agency])

    def verified():
        secured.worker.request_checkpoint()
        result = secured.masb("masb-auditor", "audit", "verify")
        return result if result.returncode == 0 and "every entry is covered" in result.stdout else None

    result = None
    for _ in range(30):
        result = verified()
        if result:
            break
    assert result, "the auditor could not verify a checkpoint covering the log"
    from streams.audit.entry import decode_entry

    receipts = [e for e in (decode_entry(r.value) for r in secured.admin_records(secured.topics.audit))
                if e["kind"] == "RECEIPT"]
    assert len(receipts) == sum(len(ids) for ids in expected.values())


@pytest.mark.parametrize("who, command, words", [
    ("agency A reads partner.B", lambda s: ("masb-agency-nhs-worcs-acute", "consume", "--agency", "idva-west-mercia",
                                            "--key", s.key("idva-west-mercia")),
     ["User:masb-agency-nhs-worcs-acute", "READ", f"topic {PREFIX}partner.idva-west-mercia"]),
    ("a unit reads a partner topic", lambda s: ("masb-unit-hau-worcestershire", "consume", "--agency",
                                                "idva-west-mercia", "--key", s.key("idva-west-mercia")),
     ["User:masb-unit-hau-worcestershire", "READ", f"topic {PREFIX}partner.idva-west-mercia"]),
    ("an agency writes case-events", lambda s: ("masb-agency-idva-west-mercia", "publish", "--as",
                                                "hau-worcestershire", "--keys-dir", s.deployment.keys_dir,
                                                s.event_file),
     ["User:masb-agency-idva-west-mercia", "WRITE", f"topic {PREFIX}case-events"]),
    ("a unit reads the audit log", lambda s: ("masb-unit-hau-worcestershire", "audit", "verify"),
     ["User:masb-unit-hau-worcestershire", "READ", f"topic {PREFIX}audit."]),
    ("an agency reads the audit log", lambda s: ("masb-agency-idva-west-mercia", "audit", "report"),
     ["User:masb-agency-idva-west-mercia", "READ", f"topic {PREFIX}audit."]),
    ("a known user with no ACL", lambda s: (STRANGER, "audit", "verify"),
     [f"User:{STRANGER}", "READ", f"topic {PREFIX}audit."]),
    ("an unknown user", lambda s: ("masb-nobody", "audit", "verify"),
     ["refused to authenticate User:masb-nobody"]),
    ("the auditor applies ACLs", lambda s: ("masb-auditor", "acl", "apply"),
     ["User:masb-auditor"]),
])
def test_everything_else_is_denied_in_one_line(secured, tmp_path, who, command, words):
    event = demo_event("01_dash_worcestershire")
    secured.event_file = tmp_path / "event.json"
    secured.event_file.write_text(json.dumps(event))
    identity, *args = command(secured)
    line = one_line_denial(secured.masb(identity, *args))
    assert line.startswith("masb: ")
    for word in words:
        assert word in line, (who, line)
    assert event["header"]["case_ref"] not in line


@pytest.mark.parametrize("identity, words", [
    ("tls:no-acl", ["CN=masb-agency-unlisted", "READ", f"topic {PREFIX}partner.idva-west-mercia"]),
    ("tls:foreign", ["TLS", "refused the client certificate"]),
])
def test_mutual_tls_clients_without_rights_are_denied(secured, identity, words):
    line = one_line_denial(secured.masb(identity, "consume", "--agency", "idva-west-mercia", "--key",
                                        secured.key("idva-west-mercia"), bootstrap=secured.broker.mtls_bootstrap))
    for word in words:
        assert word in line, line


def test_a_unit_may_not_read_case_events_with_the_python_client(secured):
    unit = secured.broker.scram_security("masb-unit-hau-worcestershire")

    async def go():
        return [r async for r in read_topic(secured.broker.bootstrap, secured.topics.case_events, security=unit)]

    with pytest.raises(AccessDenied, match=f"User:masb-unit-hau-worcestershire READ on topic {PREFIX}case-events"):
        asyncio.run(go())


def test_no_topic_holds_a_case_reference_or_personal_data_in_clear(secured, flow):
    events, _, _, _ = flow
    names = [secured.topics.case_events, secured.topics.dead_letter, secured.topics.audit, secured.topics.checkpoints,
             secured.topics.receipts, *(secured.topics.partner(a.id) for a in secured.deployment.policy.agencies),
             secured.topics.changelog("seen-events")]
    raw = b"".join((r.key or b"") + b"\n" + (r.value or b"") for name in names for r in secured.admin_records(name))
    assert len(raw) > 2000
    for event in events:
        assert event["header"]["case_ref"].encode() not in raw
    personal = [events[0]["victim"]["name"], events[0]["victim"]["safe_contact"]["detail"],
                events[1]["protected_address"]["line1"], events[1]["protected_address"]["postcode"]]
    for value in personal:
        assert value.encode() not in raw
    # The records of case-events and the feeds are keyed by the case's pseudonym (docs/keys.md).
    pseudonyms = PseudonymKeys.load_dir(secured.deployment.keys_dir)
    expected = {pseudonyms.pseudonym(e["header"]["case_ref"]) for e in events}
    assert {r.key for r in secured.admin_records(secured.topics.case_events)} == expected
    assert {r.key for r in secured.admin_records(secured.topics.partner(MTLS_AGENCY))} <= expected


def test_no_log_line_or_metric_holds_a_case_reference_or_a_secret(secured, flow):
    events, _, _, _ = flow
    import urllib.request

    with urllib.request.urlopen(secured.worker.url("/metrics"), timeout=5) as response:
        metrics = response.read()
    log = Path(secured.worker.log.name).read_bytes()
    assert b" DEBUG " in log or b"[DEBUG]" in log  # the worker really logged at debug
    secrets = [secured.broker.password("masb-router").encode(), secured.broker.password(secured.broker.ADMIN).encode()]
    for text in (log, metrics):
        for event in events:
            assert event["header"]["case_ref"].encode() not in text
        for secret in secrets:
            assert secret not in text
