"""Small aiokafka helpers shared by the publisher, partner and auditor clients and the worker.

Every Kafka client MASB makes comes from :func:`producer`, :func:`consumer` or :func:`admin`, so
that connection settings live in one place. Explicit lifecycles: a client is started with
:func:`start_client` (which closes it again and raises a clear error if the broker cannot be
reached) and stopped in a ``finally`` by the function that started it.
"""

from __future__ import annotations

import asyncio
import os
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    GroupAuthorizationFailedError,
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    RecordListTooLargeError,
    RecordTooLargeError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnknownError,
    UnsupportedForMessageFormatError,
)

from streams.errors import AccessDenied, BrokerUnavailable, InvalidInput, MasbError, shown
from streams.kafka_security import KafkaSecurity

log = logging.getLogger(__name__)

_DENIED = (TopicAuthorizationFailedError, GroupAuthorizationFailedError, ClusterAuthorizationFailedError,
           TransactionalIdAuthorizationFailed, SaslAuthenticationFailed, AuthenticationFailedError)


def broker_error(exc: BaseException, bootstrap: str, *, security: KafkaSecurity | None = None,
                 operation: str | None = None, resource: str | None = None) -> MasbError:
    """The MASB error for an aiokafka failure: AccessDenied for authentication and authorization
    refusals, InvalidInput for a record refused for good (NEVER_ACCEPTED), BrokerUnavailable for
    everything else (connection, timeouts, broker errors).

    ``operation`` and ``resource`` (e.g. "READ", "topic partner.x") say what was refused, so that
    the message names the principal, the operation and the resource in one line.
    """
    if isinstance(exc, MasbError):
        return exc
    name = type(exc).__name__
    if isinstance(exc, (SaslAuthenticationFailed, AuthenticationFailedError)):
        who = _principal(security)
        return AccessDenied(f"Kafka at {bootstrap} refused to authenticate {who}: unknown user or wrong password",
                            hint="check sasl.username and the password file (docs/security.md, client settings)")
    if isinstance(exc, ssl.SSLError) and _tls_refusal(exc):
        return AccessDenied(f"TLS with Kafka at {bootstrap} failed for {_principal(security)}: "
                            f"{_tls_reason(exc)}",
                            hint="check ssl.cafile (the CA of the broker's certificate) and the client certificate")
    if isinstance(exc, _DENIED):
        what = resource or _resource_of(exc)
        action = f"{operation} on {what}" if operation and what else (what and f"access to {what}") or "the operation"
        return AccessDenied(f"Kafka at {bootstrap} denied {_principal(security)} {action} ({name})",
                            hint="the principal's ACLs do not allow it; `masb acl diff` compares the cluster's ACLs "
                                 "with those the policy calls for (docs/security.md)")
    if isinstance(exc, NEVER_ACCEPTED):  # the record is at fault, not the broker: sending it again cannot help
        return InvalidInput(f"Kafka at {bootstrap} refused a record for {resource or 'a topic'} for good ({name})",
                            hint="a record batch larger than the topic's max.message.bytes is never taken "
                                 "(docs/routing.md, SEND_REFUSED)")
    if isinstance(exc, (KafkaError, asyncio.TimeoutError, OSError)):
        return BrokerUnavailable(bootstrap, name)
    raise TypeError(f"not a broker error: {name}")


def _principal(security: KafkaSecurity | None) -> str:
    try:
        return (security or KafkaSecurity.from_env()).principal
    except MasbError:
        return "this client"


def _resource_of(exc: BaseException) -> str | None:
    """The topic or group an aiokafka authorization error names, if it names one."""
    for arg in getattr(exc, "args", ()):
        if isinstance(arg, str) and arg and " " not in arg:
            kind = "group" if isinstance(exc, GroupAuthorizationFailedError) else "topic"
            return f"{kind} {arg}"
        if isinstance(arg, (set, frozenset, list, tuple)) and arg and all(isinstance(a, str) for a in arg):
            return "topic " + ", ".join(sorted(arg))
    if isinstance(exc, ClusterAuthorizationFailedError):
        return "the cluster"
    return None


def _tls_refusal(exc: ssl.SSLError) -> bool:
    """A handshake one side refused (untrusted or missing certificate), not a dropped connection."""
    reason = (getattr(exc, "reason", None) or "").lower()
    return isinstance(exc, ssl.SSLCertVerificationError) or "alert" in reason or "certificate" in reason


def _tls_reason(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the broker's certificate is not trusted ({getattr(exc, 'verify_message', None) or exc})"
    reason = (getattr(exc, "reason", None) or "").lower().replace("_", " ")
    if "certificate" in reason or "alert" in reason:
        return f"the broker refused the client certificate ({reason})"
    return reason or type(exc).__name__


@contextlib.contextmanager
def kafka_operation(bootstrap: str, operation: str, resource: str, security: KafkaSecurity | None = None):
    """Turn aiokafka failures inside the block into MASB errors that name ``operation`` on
    ``resource`` (e.g. "WRITE", "topic case-events") and the principal."""
    try:
        yield
    except MasbError:
        raise
    except (KafkaError, asyncio.TimeoutError, OSError) as exc:
        raise broker_error(exc, bootstrap, security=security, operation=operation, resource=resource) from None


async def start_client(client, bootstrap: str, security: KafkaSecurity | None = None) -> None:
    """Start an aiokafka client; if that fails, close it (no 'Unclosed' warnings) and raise a
    MASB error naming the broker, and the principal if the broker refused its credentials."""
    try:
        await client.start()
    except BaseException as exc:
        await stop_quietly(client)
        if isinstance(exc, UnknownError) and getattr(client, "_txn_manager", None) is not None:
            # An idempotent producer's InitProducerId refused (aiokafka says only UnknownError).
            raise InvalidInput(f"the broker at {bootstrap} does not support idempotent producers",
                               hint=f"set {IDEMPOTENCE_VARIABLE}=false for such a broker (the embedded Tansu "
                                    "is one)") from None
        if isinstance(exc, (KafkaError, asyncio.TimeoutError, OSError)):
            cause = await _diagnose(bootstrap, security) if isinstance(exc, KafkaConnectionError) else None
            raise broker_error(cause or exc, bootstrap, security=security) from None
        raise


async def _diagnose(bootstrap: str, security: KafkaSecurity | None) -> BaseException | None:
    """Why a client could not bootstrap: aiokafka logs a refused login or TLS handshake and then
    only says it could not connect. One connection of our own to the first address tells which."""
    try:
        security = security or KafkaSecurity.from_env()
    except MasbError:
        return None
    if security.protocol == "PLAINTEXT":
        return None
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    try:
        conn = await create_conn(host or "127.0.0.1", int(port), request_timeout_ms=5000,
                                 **security.aiokafka_options())
    except (SaslAuthenticationFailed, AuthenticationFailedError, ssl.SSLError) as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - unreachable or anything else: the original error stands
        # A client certificate the broker refuses shows once the handshake's alert is read: as
        # the cause of the closed connection.
        return exc.__cause__ if isinstance(exc.__cause__, ssl.SSLError) else None
    conn.close()
    return None


# Records the broker refuses for good: sending them again cannot help.
NEVER_ACCEPTED = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError, CorruptRecordException,
                  InvalidTopicError, UnsupportedForMessageFormatError)
# A topic's max.message.bytes limits a record batch: records that fit on their own can be refused together.
REFUSED_WITH_ITS_BATCH = (MessageSizeTooLargeError, RecordListTooLargeError)
# aiokafka numbers an idempotent producer's batches per partition and does not take back the
# numbers of a refused batch: every later batch to that partition is refused as out of order, for
# ever (and its sender task ends). After one of these the producer must be replaced (renewed()).
BREAKS_THE_PRODUCER = (*NEVER_ACCEPTED, OutOfOrderSequenceNumber)


async def renewed(broken: AIOKafkaProducer, bootstrap: str, security: KafkaSecurity | None = None,
                  **overrides) -> AIOKafkaProducer:
    """A started producer (a new producer id, so its batches are numbered afresh) to use instead of
    ``broken`` after one of BREAKS_THE_PRODUCER; ``broken`` is stopped. A broker error (MasbError)
    if the new one cannot start: ``broken`` is then left as it is."""
    fresh = producer(bootstrap, security=security, **overrides)
    await start_client(fresh, bootstrap, security)
    await stop_quietly(broken)
    return fresh


async def stop_quietly(client, timeout: float = 3.0) -> None:
    """Stop (or close) a client that may never have connected, ignoring its complaints."""
    try:
        close = getattr(client, "stop", None) or client.close
        await asyncio.wait_for(close(), timeout)
    except Exception:  # noqa: BLE001 - a client that never connected may fail to stop cleanly
        pass


def connection_options(security: KafkaSecurity | None = None) -> dict:
    """aiokafka keyword arguments for TLS and SASL: ``security``, or the environment's settings
    (MASB_KAFKA_CONFIG, MASB_KAFKA_*; docs/security.md) when None. KafkaSettingsError (exit 2)
    if they are incomplete."""
    return (security or KafkaSecurity.from_env()).aiokafka_options()


def admin(bootstrap: str, *, security: KafkaSecurity | None = None, **overrides) -> AIOKafkaAdminClient:
    options = {"bootstrap_servers": bootstrap, **connection_options(security)}
    options.update(overrides)
    return AIOKafkaAdminClient(**options)


def consumer(bootstrap: str, *, security: KafkaSecurity | None = None, **overrides) -> AIOKafkaConsumer:
    """A consumer without auto-commit: callers decide what has been handled."""
    options = {"bootstrap_servers": bootstrap, "enable_auto_commit": False, **connection_options(security)}
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


async def ensure_topics(bootstrap: str, specs: Iterable[TopicSpec], security: KafkaSecurity | None = None) -> None:
    """Create the topics that do not exist yet; refuse (TopologyMismatch) if an existing topic that
    must have an exact partition count has another one, or a topic to create needs more replicas
    than the cluster has live brokers. Existing topics are otherwise left as they are.

    On a locked-down cluster the worker has no CREATE right: the topics are provisioned up front
    (`masb acl apply`), and a missing one is AccessDenied naming it (docs/security.md).
    """
    specs = list(specs)
    client = admin(bootstrap, security=security)
    await start_client(client, bootstrap, security)
    try:
        with kafka_operation(bootstrap, "DESCRIBE", "the cluster's topics", security):
            existing = set(await client.list_topics())
            await _check_partitions(client, [s for s in specs if s.exact_partitions and s.name in existing])
        missing = [s for s in specs if s.name not in existing]
        # Only a topic to create needs as many live brokers as replicas: a worker restarting while one
        # broker of the cluster is down must still start on the topics that exist.
        wanted = max((s.replication for s in missing), default=1)
        if wanted > 1:
            with kafka_operation(bootstrap, "DESCRIBE", "the cluster", security):
                brokers = len((await client.describe_cluster()).get("brokers") or [])
            if brokers and wanted > brokers:
                raise TopologyMismatch(f"replication factor {wanted} needs {wanted} brokers, but the cluster at "
                                       f"{bootstrap} has {brokers}", hint="set MASB_REPLICATION_FACTOR (and "
                                       "MASB_MIN_INSYNC_REPLICAS) to fit the cluster; 1 for a single broker")
        for spec in missing:  # one at a time: a race with another creator is not an error
            with kafka_operation(bootstrap, "CREATE", f"topic {spec.name}", security):
                await _create_topic(client, spec)
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


async def _create_topic(client, spec: TopicSpec) -> None:
    try:
        await client.create_topics([NewTopic(spec.name, spec.partitions, spec.replication,
                                             topic_configs=spec.config or {})])
    except TopicAlreadyExistsError:
        pass
    except _DENIED:
        raise
    except Exception as exc:
        # Some brokers (Tansu) refuse some topic configs; the topic still matters more.
        if spec.config:
            log.warning("creating topic %s with config failed (%s); creating without", spec.name, type(exc).__name__)
            await client.create_topics([NewTopic(spec.name, spec.partitions, spec.replication)])
        else:
            raise


class TopicMissing(InvalidInput):
    """A topic a command would write or read does not exist (a mistyped topic prefix, or no worker
    has created MASB's topics yet)."""


UNKNOWN_TOPIC_OR_PARTITION = 3


async def require_topics(bootstrap: str, topics: Iterable[str], operation: str, *,
                         security: KafkaSecurity | None = None, hint: str | None = None) -> None:
    """Refuse (TopicMissing, exit 2) if one of ``topics`` does not exist, before a command writes to
    or reads from it: a producer would have the broker auto-create it (the event then sits where
    nothing routes it) and a reader would report an empty topic. Never creates a topic (a metadata
    request that forbids auto-creation). AccessDenied naming ``operation`` (e.g. "WRITE") if the
    principal may not describe a topic: Kafka answers so whether or not it exists."""
    from aiokafka.errors import for_code
    from aiokafka.protocol.metadata import MetadataRequest

    topics = list(topics)
    client = admin(bootstrap, security=security)
    await start_client(client, bootstrap, security)
    try:
        for topic in topics:
            with kafka_operation(bootstrap, operation, f"topic {topic}", security):
                # aiokafka's describe_topics allows auto-creation; this request does not.
                response = await client._send_request(MetadataRequest([topic], allow_auto_topic_creation=False))
                for described in response.to_object()["topics"]:
                    code = described["error_code"]
                    if code == UNKNOWN_TOPIC_OR_PARTITION:
                        raise TopicMissing(f"topic {topic} does not exist on Kafka at {bootstrap}", hint=hint)
                    if issubclass(for_code(code), TopicAuthorizationFailedError):
                        raise TopicAuthorizationFailedError(topic)
                    # Other codes (a leader being elected, ...): the topic exists; the command's own
                    # request reports anything lasting.
    finally:
        await client.close()


def topic_hint(prefix: str) -> str:
    """What to check when one of MASB's topics is missing (``prefix``: the topic prefix in use)."""
    now = f"now {shown(prefix)!r}" if prefix else "now none"
    return (f"check --topic-prefix / MASB_TOPIC_PREFIX ({now}); MASB's topics exist once a worker has started "
            "(`masb worker`) or `masb acl apply` has provisioned them")


IDEMPOTENCE_VARIABLE = "MASB_KAFKA_ENABLE_IDEMPOTENCE"


def idempotence() -> bool:
    """Kafka's enable.idempotence for MASB's producers: on unless MASB_KAFKA_ENABLE_IDEMPOTENCE=false
    (for brokers without idempotent producers, such as the embedded Tansu)."""
    value = os.environ.get(IDEMPOTENCE_VARIABLE, "true").strip().lower()
    if value not in ("true", "false"):
        raise InvalidInput(f"{IDEMPOTENCE_VARIABLE}: must be true or false")
    return value == "true"


def producer(bootstrap: str, *, security: KafkaSecurity | None = None, **overrides) -> AIOKafkaProducer:
    """A producer that waits for all in-sync replicas (a case event must not be lost) and, where the
    broker supports it, is idempotent (a retried send is not written twice)."""
    options = {"bootstrap_servers": bootstrap, "acks": "all", "linger_ms": 5, "enable_idempotence": idempotence(),
               **connection_options(security)}
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
    security: KafkaSecurity | None = None,
    partitions: Iterable[int] | None = None,
    committed_only: bool = False,
) -> AsyncIterator[Record]:
    """Yield a topic's records from the beginning (or ``from_offsets``), partition by partition order.

    Without ``follow`` it reads at least to the end offsets seen when it started, then stops at
    the first poll that brings nothing new. With ``follow`` it keeps waiting for new records, until
    ``idle_timeout`` seconds pass with none (if given). ``partitions`` limits the read to those
    partitions; ``committed_only`` skips records of aborted transactions (read_committed).
    AccessDenied if the principal may not read the topic.
    """
    reader = consumer(bootstrap, security=security, group_id=None, auto_offset_reset="earliest",
                      fetch_max_bytes=16 * 1024 * 1024,
                      isolation_level="read_committed" if committed_only else "read_uncommitted")
    await start_client(reader, bootstrap, security)
    try:
        with kafka_operation(bootstrap, "READ", f"topic {topic}", security):
            async for record in _read(reader, topic, from_offsets, follow, idle_timeout, partitions):
                yield record
    finally:
        await reader.stop()


async def _read(reader: AIOKafkaConsumer, topic: str, from_offsets, follow: bool, idle_timeout,
                wanted: Iterable[int] | None = None) -> AsyncIterator[Record]:
    wanted = set(wanted) if wanted is not None else None
    partitions = reader.partitions_for_topic(topic)
    if partitions is None:
        # Metadata may not be loaded yet for a topic created a moment ago; a topic this
        # principal may not describe is listed as unauthorized, not left out silently.
        await reader._client.add_topic(topic)
        await reader._client.force_metadata_update()
        if topic in reader._client.cluster.unauthorized_topics:
            raise TopicAuthorizationFailedError(topic)
        partitions = reader.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(partitions) if wanted is None or p in wanted]
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
        if not batch and remaining:
            # A poll can move the position without yielding a record: a transaction's commit marker
            # (the checkpoint topic's last offset) is skipped, not returned.
            remaining = {tp for tp in remaining if await reader.position(tp) < end[tp]}
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
