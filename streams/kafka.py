"""Small aiokafka helpers shared by the publisher, partner and auditor clients.

Explicit lifecycles: every client is started and stopped inside the function that uses it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1
    config: dict[str, str] | None = None


async def ensure_topics(bootstrap: str, specs: Iterable[TopicSpec]) -> None:
    """Create the topics that do not exist yet (existing ones are left as they are)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        for spec in missing:  # one at a time: a race with another creator is not an error
            try:
                await admin.create_topics([NewTopic(spec.name, spec.partitions, 1, topic_configs=spec.config or {})])
            except TopicAlreadyExistsError:
                pass
            except Exception as exc:
                # Some brokers (Tansu) refuse some topic configs; the topic still matters more.
                if spec.config:
                    log.warning("creating topic %s with config failed (%s); creating without", spec.name, type(exc).__name__)
                    await admin.create_topics([NewTopic(spec.name, spec.partitions, 1)])
                else:
                    raise
    finally:
        await admin.close()


def producer(bootstrap: str, **overrides) -> AIOKafkaProducer:
    """A producer that waits for all in-sync replicas: a case event must not be lost."""
    options = {"bootstrap_servers": bootstrap, "acks": "all", "linger_ms": 5}
    options.update(overrides)
    return AIOKafkaProducer(**options)


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    from_offsets: dict[int, int] | None = None,
    follow: bool = False,
    idle_timeout: float | None = None,
) -> AsyncIterator[Record]:
    """Yield a topic's records from the beginning (or ``from_offsets``), partition by partition order.

    Without ``follow`` it reads at least to the end offsets seen when it started, then stops at
    the first poll that brings nothing new. With ``follow`` it keeps waiting for new records, until
    ``idle_timeout`` seconds pass with none (if given).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
        auto_offset_reset="earliest", fetch_max_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            # Metadata may not be loaded yet for a topic created a moment ago.
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return
        consumer.assign(tps)
        for tp in tps:
            if from_offsets and tp.partition in from_offsets:
                consumer.seek(tp, from_offsets[tp.partition])
            else:
                await consumer.seek_to_beginning(tp)
        end = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if await consumer.position(tp) < end[tp]}
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        while True:
            batch = await consumer.getmany(timeout_ms=500 if (follow or remaining) else 200)
            if not batch:
                if not follow and not remaining:
                    # Past the end offsets seen at the start and nothing more came: done. (Some
                    # brokers, Tansu among them, report an end offset short of multi-record
                    # batches, so the reported end alone is not trusted.)
                    return
                if idle_timeout is not None and loop.time() - idle_since > idle_timeout:
                    return
                continue
            idle_since = loop.time()
            for tp, messages in batch.items():
                for m in messages:
                    yield Record(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
                if tp in remaining and await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
