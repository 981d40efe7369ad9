"""Integration-test harness: a real deployment (keys, policy, `masb worker` child process) on a
real broker, with helpers to publish, read partner feeds, dead letters, audit entries and raw bytes.

Start one with `running_deployment(...)` (a context manager); fixtures in conftest.py build on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.deployment import DEMO_DIR, Deployment, WorkerProcess, prepare_deployment, worker_env
from streams.audit.entry import decode_entry
from streams.crypto.keys import Keyring
from streams.crypto.pseudonym import PseudonymKeys
from streams.kafka import Record, producer, read_topic
from streams.partner import FeedItem, PartnerFeed, opener_for
from streams.publisher import Publisher
from streams.routing import decode_dead_letter
from streams.topics import Topics
from streams.unit_feed import NoticeItem, UnitFeed, unit_opener

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "events"


def fixture_event(event_type: str, **header: Any) -> dict:
    """A valid event of that type (tests/fixtures/events) with a fresh id and the header overrides."""
    event = json.loads((FIXTURES / f"{event_type.lower()}.json").read_text())
    event["header"]["event_id"] = str(uuid.uuid4())
    event["header"].update(header)
    return event


def demo_event(name: str) -> dict:
    """One of the demo scenario's events (deploy/demo/events/<name>.json) with a fresh id."""
    event = json.loads((DEMO_DIR / "events" / f"{name}.json").read_text())
    event["header"]["event_id"] = str(uuid.uuid4())
    return event


def run(coro):
    return asyncio.run(coro)


@dataclass
class Running:
    bootstrap: str
    deployment: Deployment
    topics: Topics
    worker: WorkerProcess

    @property
    def policy(self):
        return self.deployment.policy

    def unit_key(self, unit_id: str):
        return Keyring.load_dir(self.deployment.keys_dir, unit_id, kind="signing").current

    def keyring(self, agency_id: str) -> Keyring:
        return Keyring.load_dir(self.deployment.keys_dir, agency_id)

    @property
    def pseudonyms(self) -> PseudonymKeys:
        """The case pseudonym keys the units and the router share (docs/keys.md)."""
        return PseudonymKeys.load_dir(self.deployment.keys_dir)

    def publish(self, *events: dict, unit_id: str | None = None) -> None:
        async def go() -> None:
            unit = unit_id or events[0]["header"]["unit_id"]
            async with Publisher(self.bootstrap, self.policy, self.unit_key(unit), self.topics,
                                 pseudonyms=self.pseudonyms) as publisher:
                for event in events:
                    await publisher.publish(event)

        run(go())

    def send_raw(self, key: bytes | None, value: bytes | None) -> None:
        async def go() -> None:
            async with Publisher(self.bootstrap, self.policy, self.unit_key(self.policy.units[0].id),
                                 self.topics, pseudonyms=self.pseudonyms) as publisher:
                await publisher.send_raw(key, value)

        run(go())

    def produce(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Put bytes on any topic of the deployment, as someone with produce rights could."""
        async def go() -> None:
            p = producer(self.bootstrap)
            await p.start()
            try:
                await p.send_and_wait(topic, value, key=key)
            finally:
                await p.stop()

        run(go())

    def unit_keyring(self, unit_id: str) -> Keyring:
        """The unit's exchange keys: its notices (docs/deadlines.md) open with them."""
        return Keyring.load_dir(self.deployment.keys_dir, unit_id, kind="exchange")

    def notices(self, unit_id: str, keyring: Keyring | None = None) -> list[NoticeItem]:
        """Everything on the unit's notice feed now, opened with its own keys (or the keyring given)."""
        opener = unit_opener(unit_id, keyring or self.unit_keyring(unit_id), self.policy)

        async def go() -> list[NoticeItem]:
            return [item async for item in UnitFeed(self.bootstrap, opener, self.topics).items()]

        return run(go())

    def feed(self, agency_id: str, keyring: Keyring | None = None) -> list[FeedItem]:
        """Everything on the agency's feed now, opened with its own keyring (or the one given)."""
        opener = opener_for(agency_id, keyring or self.keyring(agency_id), self.policy)

        async def go() -> list[FeedItem]:
            return [item async for item in PartnerFeed(self.bootstrap, opener, self.topics).items()]

        return run(go())

    def records(self, topic: str) -> list[Record]:
        async def go() -> list[Record]:
            return [r async for r in read_topic(self.bootstrap, topic)]

        return run(go())

    def audit_entries(self) -> list[dict]:
        return [decode_entry(r.value) for r in self.records(self.topics.audit)]

    def dead_letters(self) -> list[dict]:
        return [decode_dead_letter(r.value) for r in self.records(self.topics.dead_letter)]

    def own_label_values(self) -> set[str]:
        """Metric label values that are the worker's own identifiers (input topics, their partition
        numbers, supervised task names, the release in masb_build_info): never anything from an event."""
        from importlib.metadata import version

        return ({self.topics.case_events, self.topics.receipts} | {str(p) for p in range(64)}
                | {"router", "receipts", "checkpointer", "health-monitor", "policy-watch", "deadlines", "redrive",
                   "case-key-shreds"}
                | {"DELIVERED", "RECEIVED", "ACKNOWLEDGED", "ESCALATED", "ESCALATION_CLOSED", "NON_DELIVERY"} | {version("masb")})

    def health(self) -> dict:
        """The worker's /health document (status and the policy version in force)."""
        with urllib.request.urlopen(self.worker.url("/health"), timeout=5) as response:
            return json.load(response)

    def wait_for(self, condition, timeout: float = 30.0, what: str = "condition"):
        """Poll until condition() returns something truthy; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = condition()
            if result:
                return result
            time.sleep(0.3)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")

    def wait_feed(self, agency_id: str, event_id: str, timeout: float = 30.0) -> FeedItem:
        def found():
            return next((i for i in self.feed(agency_id) if i.ok and i.envelope.event_id == event_id), None)

        return self.wait_for(found, timeout, f"event {event_id} on {agency_id}'s feed")

    def wait_audit(self, predicate, timeout: float = 30.0) -> list[dict]:
        return self.wait_for(lambda: [e for e in self.audit_entries() if predicate(e)], timeout, "audit entries")

    def all_topic_bytes(self) -> bytes:
        """The raw keys, values and headers of every record in every topic of this deployment."""
        async def go() -> bytes:
            from aiokafka.admin import AIOKafkaAdminClient

            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await admin.start()
            try:
                names = [t for t in await admin.list_topics() if t.startswith(self.topics.prefix)]
            finally:
                await admin.close()
            chunks = []
            for name in names:
                async for record in read_topic(self.bootstrap, name):
                    chunks += [record.key or b"", record.value or b""]
            return b"\n".join(chunks)

        return run(go())


@contextlib.contextmanager
def running_deployment(bootstrap: str, workdir: Path, topic_prefix: str | None = None,
                       template: Path = DEMO_DIR / "policy.template.yaml", deployment: Deployment | None = None,
                       **env: str):
    """A worker on ``bootstrap`` for a fresh deployment in ``workdir`` (or the ``deployment`` given, to
    start another worker of the same one)."""
    workdir.mkdir(parents=True, exist_ok=True)
    deployment = deployment or prepare_deployment(workdir, template)
    prefix = topic_prefix or f"t{uuid.uuid4().hex[:10]}."
    worker = WorkerProcess(worker_env(deployment, bootstrap, prefix, **env), workdir / "worker.log")
    running = None
    try:
        worker.wait_healthy()
        running = Running(bootstrap, deployment, Topics(prefix), worker)
        yield running
    finally:
        worker.stop()
        if running is not None and running.worker is not worker:  # a test restarted it: stop that one too
            running.worker.stop()


def stderr_after_signal(proc: subprocess.Popen, signum: int, timeout: float = 30) -> str:
    """Send ``signum`` to a running command, wait for it to end and return its stderr (text); a
    command still running after ``timeout`` seconds is killed (and the wait's TimeoutExpired raised)."""
    try:
        proc.send_signal(signum)
        return proc.communicate(timeout=timeout)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def replace_file(path: Path, text: str) -> None:
    """Write the whole new file at once, as an editor's save or a deploy does (no half-written file)."""
    temp = path.with_name(f".{path.name}.new")
    temp.write_text(text)
    os.replace(temp, path)


def deep(event: dict) -> dict:
    return copy.deepcopy(event)


async def set_topic_config(bootstrap: str, topic: str, **config: str) -> None:
    """Alter a topic's configuration (``max_message_bytes="200"``) and wait until the broker applies it."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    wanted = {k.replace("_", "."): v for k, v in config.items()}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, wanted)])
        for _ in range(100):  # KRaft: the broker applies the change a moment after the controller took it
            described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            entries = {e[0]: e[1] for e in described[0].resources[0][4]}
            if all(entries.get(k) == v for k, v in wanted.items()):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"the broker did not apply {wanted} to {topic}")
    finally:
        await admin.close()
