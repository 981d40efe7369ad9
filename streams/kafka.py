"""Small aiokafka helpers shared by the publisher, partner and auditor clients and the worker.

Every Kafka client MASB makes comes from :func:`producer`, :func:`consumer` or :func:`admin`, so
that connection settings live in one place. Explicit lifecycles: a client is started with
:func:`start_client` (which closes it again and raises a clear error if the broker cannot be
reached) and stopped in a ``finally`` by the function that started it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    AuthenticationFailedError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

from streams.errors import AccessDenied, BrokerUnavailable, InvalidInput, MasbError

log = logging.getLogger(__name__)

_DENIED = (TopicAuthorizationFailedError, GroupAuthorizationFailedError, ClusterAuthorizationFailedError,
           TransactionalIdAuthorizationFailed, SaslAuthenticationFailed, AuthenticationFailedError)


def broker_error(exc: BaseException, bootstrap: str) -> MasbError:
    """The MASB error for an aiokafka failure: AccessDenied for authentication and authorization
    refusals, BrokerUnavailable for everything else (connection, timeouts, broker errors)."""
    if isinstance(exc, MasbError):
        return exc
    name = type(exc).__name__
    if isinstance(exc, _DENIED):
        return AccessDenied(f"Kafka at {bootstrap} refused the operation ({name})",
                            hint="check the client's credentials and the ACLs granted to its principal")
    if isinstance(exc, (KafkaError, asyncio.TimeoutError, OSError)):
        return BrokerUnavailable(bootstrap, name)
    raise TypeError(f"not a broker error: {name}")


async def start_client(client, bootstrap: str) -> None:
    """Start an aiokafka client; if that fails, close it (no 'Unclosed' warnings) and raise a
    MASB error naming the broker."""
    try:
        await client.start()
    except BaseException as exc:
        await stop_quietly(client)
        if isinstance(exc, (KafkaError, asyncio.TimeoutError, OSError)):
            raise broker_error(exc, bootstrap) from None
        raise


async def stop_quietly(client, timeout: float = 3.0) -> None:
    """Stop (or close) a client that may never have connected, ignoring its complaints."""
    try:
        close = getattr(client, "stop", None) or client.close
        await asyncio.wait_for(close(), timeout)
    except Exception:  # noqa: BLE001 - a client that never connected may fail to stop cleanly
        pass


def admin(bootstrap: str, **overrides) -> AIOKafkaAdminClient:
    options = {"bootstrap_servers": bootstrap}
    options.update(overrides)
    return AIOKafkaAdminClient(**options)


def consumer(bootstrap: str, **overrides) -> AIOKafkaConsumer:
    """A consumer without auto-commit: callers decide what has been handled."""
    options = {"bootstrap_servers": bootstrap, "enable_auto_commit": False}
    options.update(overrides)
    return AIOKafkaConsumer(**options)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1
    config: dict[str, str] | None = None
    replication: int = 1
    # The partition count is part of the deployment (co-partitioned topics and tables): an existing
    # topic with another count is refused, never used as it is.
    exact_partitions: bool = False


class TopologyMismatch(InvalidInput):
    """The cluster's topics or brokers disagree with the deployment's settings."""


async def ensure_topics(bootstrap: str, specs: Iterable[TopicSpec]) -> None:
    """Create the topics that do not exist yet; refuse (TopologyMismatch) if an existing topic that
    must have an exact partition count has another one, or a replication factor exceeds the number
    of brokers. Existing topics are otherwise left as they are."""
    specs = list(specs)
    client = admin(bootstrap)
    await start_client(client, bootstrap)
    try:
        brokers = len((await client.describe_cluster()).get("brokers") or [])
        wanted = max((s.replication for s in specs), default=1)
        if brokers and wanted > brokers:
            raise TopologyMismatch(f"replication factor {wanted} needs {wanted} brokers, but the cluster at {bootstrap} "
                                   f"has {brokers}", hint="set MASB_REPLICATION_FACTOR (and MASB_MIN_INSYNC_REPLICAS) "
                                                          "to fit the cluster; 1 for a single broker")
        existing = set(await client.list_topics())
        await _check_partitions(client, [s for s in specs if s.exact_partitions and s.name in existing])
        for spec in (s for s in specs if s.name not in existing):  # one at a time: another creator may race
            try:
                await client.create_topics([NewTopic(spec.name, spec.partitions, spec.replication,
                                                     topic_configs=spec.config or {})])
            except TopicAlreadyExistsError:
                pass
            except Exception as exc:
                # Some brokers (Tansu) refuse some topic configs; the topic still matters more.
                if spec.config:
                    log.warning("creating topic %s with config failed (%s); creating without", spec.name, type(exc).__name__)
                    await client.create_topics([NewTopic(spec.name, spec.partitions, spec.replication)])
                else:
                    raise
    finally:
        await client.close()


async def _check_partitions(client, specs: list[TopicSpec]) -> None:
    if not specs:
        return
    described = {t["topic"]: len(t.get("partitions") or []) for t in await client.describe_topics([s.name for s in specs])}
    for spec in specs:
        actual = described.get(spec.name)
        if actual and actual != spec.partitions:
            raise TopologyMismatch(f"topic {spec.name} has {actual} partitions, but this deployment uses "
                                   f"{spec.partitions}", hint="set MASB_PARTITIONS to the topic's partition count on "
                                                              "every worker (it cannot change once data flows)")


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
    partitions: Iterable[int] | None = None,
    committed_only: bool = False,
) -> AsyncIterator[Record]:
    """Yield a topic's records from the beginning (or ``from_offsets``), partition by partition order.

    Without ``follow`` it reads at least to the end offsets seen when it started, then stops at
    the first poll that brings nothing new. With ``follow`` it keeps waiting for new records, until
    ``idle_timeout`` seconds pass with none (if given). ``partitions`` limits the read to those
    partitions; ``committed_only`` skips records of aborted transactions (read_committed).
    """
    wanted = set(partitions) if partitions is not None else None
    reader = consumer(bootstrap, group_id=None, auto_offset_reset="earliest", fetch_max_bytes=16 * 1024 * 1024,
                      isolation_level="read_committed" if committed_only else "read_uncommitted")
    await start_client(reader, bootstrap)
    try:
        available = reader.partitions_for_topic(topic)
        if available is None:
            # Metadata may not be loaded yet for a topic created a moment ago.
            await reader._client.force_metadata_update()
            available = reader.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(available) if wanted is None or p in wanted]
        if not tps:
            return
        reader.assign(tps)
        for tp in tps:
            if from_offsets and tp.partition in from_offsets:
                reader.seek(tp, from_offsets[tp.partition])
            else:
                await reader.seek_to_beginning(tp)
        end = await reader.end_offsets(tps)
        remaining = {tp for tp in tps if await reader.position(tp) < end[tp]}
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        while True:
            batch = await reader.getmany(timeout_ms=500 if (follow or remaining) else 200)
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
                if tp in remaining and await reader.position(tp) >= end[tp]:
                    remaining.discard(tp)
    finally:
        await reader.stop()
