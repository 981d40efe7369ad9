"""The one Faust app of MASB: build_app(settings) wires the agents of the data flow.

    case-events --router--> partner.<agency> (+ audit.exchange, case-events.dlq)
    audit.exchange --checkpointer--> audit.checkpoints
    policy file --policy watcher--> router (next event uses the new version)
"""

from __future__ import annotations

import faust

from pathlib import Path

from agents.faults import Faults
from agents.health import Health
from agents.settings import Settings
from agents.supervision import Supervisor

from streams.audit.case_keys import CaseKeyStore, store_dir
from streams.crypto.keys import Keyring, KeyFileError, load_private_key
from streams.policy import Policy, load_policy
from streams.routing import Router, RouterIdentity
from streams.topics import FOREVER, Topics
from streams.kafka import TopicSpec


def load_identity(policy: Policy, keys_dir) -> RouterIdentity:
    """The router's private keys: the key files in keys_dir whose key ids the policy names as the router's."""
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
        # The audit side's per-case keys (crypto-shredding): the router seals each entry's case
        # reference with them (docs/audit.md, "Case keys").
        case_keys=CaseKeyStore(store_dir(keys_dir)),
    )


def topic_specs(topics: Topics, policy: Policy, partitions: int) -> list[TopicSpec]:
    """Every topic the worker reads or writes, with the settings it needs."""
    specs = [
        TopicSpec(topics.case_events, partitions),
        TopicSpec(topics.dead_letter, 1, FOREVER),
        TopicSpec(topics.audit, 1, FOREVER),        # one partition: its order is the tree's order
        TopicSpec(topics.checkpoints, 1, FOREVER),
        TopicSpec(topics.receipts, 1),             # partner receipts, recorded in the exchange log
    ]
    specs += [TopicSpec(topics.partner(a.id), 1) for a in policy.agencies]
    return specs


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
        self.policy_mtime = settings.policy_path.stat().st_mtime_ns  # before loading: a later edit is seen
        self.policy = policy or load_policy(settings.policy_path)
        self.identity = load_identity(self.policy, settings.keys_dir)
        self.router = Router(self.policy, self.identity, self.topics)
        self.supervisor: Supervisor | None = None  # set by build_app
        self.health: Health | None = None


def build_app(settings: Settings, runtime: Runtime | None = None) -> faust.App:
    runtime = runtime or Runtime(settings)
    app = faust.App(
        f"{settings.topic_prefix}masb-router",
        broker=f"kafka://{settings.bootstrap}",
        # Tables (the dedupe table) live in RocksDB under the data directory, a cache of their
        # changelog topics: memory stays bounded, and a restart reads only the changelog's tail.
        store=f"{settings.table_store}://",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
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
        stall_seconds=settings.stall_seconds,
    )
    runtime.supervisor.run("health-monitor", runtime.health.run)
    runtime.faults = Faults() if settings.fault_injection else None

    from agents import checkpointer, policy_watch, receipts, router, web

    router.install(app, runtime)
    receipts.install(app, runtime)
    checkpointer.install(app, runtime)
    policy_watch.install(app, runtime)
    web.install(app, runtime)
    return app
