"""The one Faust app of MASB: build_app(settings) wires the agents of the data flow.

    case-events --router--> partner.<agency> (+ audit.exchange, case-events.dlq)
    audit.exchange --checkpointer--> audit.checkpoints
    audit.exchange --deadlines--> audit.exchange (escalations), unit.<unit> (notices), deadlines.state
    case-events.dlq.redrive --redrive--> case-events / receipts (+ audit.exchange)
    policy file --policy watcher--> router (next event uses the new version)
"""

from __future__ import annotations

import faust

from pathlib import Path

from agents import faust_fixes
from agents.faults import Faults
from agents.health import Health
from agents.settings import Settings
from agents.supervision import Supervisor

from streams.audit.case_keys import store_dir
from streams.audit.shared_case_keys import CaseKeySecrets, SharedCaseKeys
from streams.clock import clock_from_setting
from streams.crypto.keys import Keyring, KeyFileError, load_private_key
from streams.crypto.pseudonym import PseudonymKeys
from streams.kafka_security import KafkaSecurity
from streams.policy import Policy, load_policy
from streams.routing import Router, RouterIdentity
from streams.topics import COMPACTED, FOREVER, WORKER_TABLES, Topics
from streams.kafka import TopicSpec


def load_identity(policy: Policy, keys_dir, case_keys=None) -> RouterIdentity:
    """The router's private keys: the key files in keys_dir whose key ids the policy names as the router's.

    ``case_keys``: the store of per-case audit keys the router seals case references with (the
    shared Kafka store in a worker; none for a router that writes no audit entries)."""
    wanted = {
        "exchange": {k.key_id for k in policy.router.exchange_keys if k.status != "revoked"},
        "signing": {k.key_id for k in policy.router.signing_keys if k.status != "revoked"},
    }
    found: dict[str, list] = {"exchange": [], "signing": []}
    for path in sorted(Path(keys_dir).glob("*.key")):
        record = load_private_key(path)
        if record.key_id in wanted.get(record.kind, ()):
            found[record.kind].append(record)
    for kind, records in found.items():
        if not records:
            raise KeyFileError(f"{keys_dir}: no private {kind} key of the router named in the policy "
                               f"(key ids {sorted(wanted[kind])})")
    owner = found["signing"][0].owner
    return RouterIdentity(
        exchange=Keyring(owner, found["exchange"], kind="exchange"),
        signing=Keyring(owner, found["signing"], kind="signing"),
        case_keys=case_keys,
        # Record keys are case pseudonyms (docs/keys.md): the router checks them with every key it holds.
        pseudonyms=PseudonymKeys.load_dir(keys_dir),
    )


# The shared case-key store is compacted; these bound how long a destroyed key's bytes stay on a
# broker's disk: a segment is closed within an hour, cleaned within a day, and the tombstone itself
# is kept a day so that every reader sees it (docs/audit.md, "Case keys").
CASE_KEYS_CONFIG = {"cleanup.policy": "compact", "segment.ms": str(3600_000), "max.compaction.lag.ms": str(86_400_000),
                    "delete.retention.ms": str(86_400_000), "min.cleanable.dirty.ratio": "0.1"}
SHRED_REQUESTS_CONFIG = {"retention.ms": str(7 * 86_400_000)}


def topic_specs(topics: Topics, policy: Policy, partitions: int, replication: int = 1,
                min_insync: int = 1) -> list[TopicSpec]:
    """Every topic the worker reads or writes, faust's internal topics included, with the settings
    it needs; created up front so that the worker needs no right to create topics."""
    def spec(name: str, count: int = 1, config: dict | None = None, exact: bool = False) -> TopicSpec:
        return TopicSpec(name, count, {**(config or {}), "min.insync.replicas": str(min_insync)}, replication, exact)

    specs = [
        spec(topics.case_events, partitions, exact=True),
        spec(topics.case_keys, partitions, CASE_KEYS_CONFIG, exact=True),
        spec(topics.case_key_shreds, partitions, SHRED_REQUESTS_CONFIG, exact=True),
        spec(topics.dead_letter, 1, FOREVER),
        spec(topics.audit, 1, FOREVER),        # one partition: its order is the tree's order
        spec(topics.checkpoints, 1, FOREVER),
        spec(topics.receipts, 1),             # partner receipts, recorded in the exchange log
    ]
    specs += [spec(topics.partner(a.id)) for a in policy.agencies]
    # faust's own topics: made here, not by faust (topic_allow_declare=False), so that on a
    # locked-down cluster, where they are provisioned up front, the worker needs no CREATE right.
    specs += [spec(topics.changelog(t), partitions, COMPACTED, exact=True) for t in WORKER_TABLES]
    specs += [spec(topics.assignor_leader)]
    # The deadline agent's state, the units' notice feeds and redrive requests (docs/deadlines.md).
    specs += [spec(topics.deadline_state, 1, COMPACTED), spec(topics.redrive_requests)]
    specs += [spec(topics.unit(u.id)) for u in policy.units]
    return specs


def worker_topic_specs(runtime_or_settings, topics: Topics, policy: Policy) -> list[TopicSpec]:
    settings = getattr(runtime_or_settings, "settings", runtime_or_settings)
    return topic_specs(topics, policy, settings.partitions, settings.replication_factor, settings.min_insync_replicas)


def assigned_partitions(app: faust.App) -> set[tuple[str, int]]:
    """(topic, partition) of every partition faust's consumer holds now (none before it started)."""
    try:
        return {(tp.topic, tp.partition) for tp in app.consumer.assignment()}
    except Exception:  # noqa: BLE001 - ConsumerNotStarted and friends: nothing assigned yet
        return set()


class Runtime:
    """What the agents share: settings, topics, the policy in force and the router applying it."""

    def __init__(self, settings: Settings, policy: Policy | None = None) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        from agents.policy_watch import file_signature

        # Before loading: a later edit is seen. None if the file cannot be read (then loading fails).
        self.policy_mtime, self.policy_problem = file_signature(settings.policy_path)
        self.policy = policy or load_policy(settings.policy_path)
        # The audit side's per-case keys (crypto-shredding), shared by every worker through Kafka: the
        # router seals each entry's case reference with them (docs/audit.md, "Case keys").
        self.case_keys = SharedCaseKeys(settings.bootstrap, self.topics.case_keys,
                                        CaseKeySecrets.load(store_dir(settings.keys_dir)))
        self.identity = load_identity(self.policy, settings.keys_dir, self.case_keys)
        self.clock = clock_from_setting(settings.clock)  # the system clock unless a test moves one
        self.router = Router(self.policy, self.identity, self.topics, clock=self.clock)
        self.supervisor: Supervisor | None = None  # set by build_app
        self.health: Health | None = None


def build_app(settings: Settings, runtime: Runtime | None = None) -> faust.App:
    runtime = runtime or Runtime(settings)
    faust_fixes.install()  # faust 0.15 loses records in a rebalance without it
    app = faust.App(
        runtime.topics.worker_app_id,
        broker=f"kafka://{settings.bootstrap}",
        broker_credentials=KafkaSecurity.from_env().faust_credentials(),  # TLS, SASL (docs/security.md)
        topic_allow_declare=False,   # topic_specs() creates every topic, or they were provisioned
        # Tables (the dedupe table) live in RocksDB under the data directory, a cache of their
        # changelog topics: memory stays bounded, and a restart reads only the changelog's tail.
        store=f"{settings.table_store}://",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        datadir=str(settings.datadir),
        autodiscover=False,
        broker_commit_every=100,
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=min(3.0, settings.session_timeout / 3),
    )
    app.masb = runtime  # the agents below reach the shared runtime through the app
    runtime.supervisor = Supervisor(app, broker_up=lambda: runtime.health.broker_ok is not False)
    runtime.health = Health(
        settings.bootstrap, app.conf.id, [runtime.topics.case_events, runtime.topics.receipts], runtime.supervisor,
        assigned=lambda: assigned_partitions(app),
        checkpoint_interval=settings.checkpoint_interval, interval=settings.health_interval,
        stall_seconds=settings.stall_seconds, wedged_seconds=settings.wedged_seconds,
    )
    runtime.supervisor.run("health-monitor", runtime.health.run)
    runtime.faults = Faults() if settings.fault_injection else None

    from agents import checkpointer, deadlines, policy_watch, receipts, redrive, router, shredding, web

    router.install(app, runtime)
    shredding.install(app, runtime)
    receipts.install(app, runtime)
    deadlines.install(app, runtime)
    redrive.install(app, runtime)
    checkpointer.install(app, runtime)
    policy_watch.install(app, runtime)
    web.install(app, runtime)
    # Every input agent handles its records through agents.sending.acknowledged_batches: their
    # offsets are committed only as far as records were handled (the commit guard, faust_fixes).
    faust_fixes.guard(topic for agent in app.agents.values() for topic in agent.channel.topics)
    # faust creates no topic here (topic_allow_declare=False): a table's changelog exists only if
    # topic_specs() (and the ACL plan) know the table.
    unlisted = sorted(set(app.tables) - set(WORKER_TABLES))
    if unlisted:
        raise RuntimeError(f"faust tables {unlisted} are not in streams.topics.WORKER_TABLES: their changelog "
                           "topics would be neither created nor granted (docs/security.md)")
    return app
