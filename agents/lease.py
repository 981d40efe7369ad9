"""Things that must happen once in a cluster of workers: a lease, and a fenced publisher.

:class:`Lease`: the worker whose consumer in group ``group_id`` is assigned the one partition of a
one-partition topic holds the lease. Kafka's group protocol gives it to exactly one live member and
moves it to another when the holder dies or leaves (after the session timeout). The records of the
topic are not used: polling only keeps the membership alive.

:class:`FencedPublisher`: a transactional producer with a fixed ``transactional.id``. Starting it
fences every earlier producer with the same id, so a holder that lost the lease without knowing it
(a paused or partitioned worker) can no longer publish: its transaction fails with ProducerFenced.
Brokers without transactions (the embedded Tansu) get a plain producer and a warning that only one
worker may run.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaConnectionError, NodeNotReadyError, ProducerFenced

from agents.sending import cancelled_from_outside
from streams.kafka import broker_error, consumer, producer, start_client, stop_quietly

log = logging.getLogger("masb.lease")


class LeaseLost(Exception):
    """The lease moved to another worker, or this worker's publisher was fenced."""


class Lease(ConsumerRebalanceListener):
    def __init__(self, bootstrap: str, group_id: str, topic: str, session_timeout_ms: int = 10_000) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.held = asyncio.Event()
        self._consumer = consumer(bootstrap, group_id=group_id, auto_offset_reset="latest",
                                  session_timeout_ms=session_timeout_ms,
                                  heartbeat_interval_ms=max(1000, session_timeout_ms // 3))

    async def on_partitions_revoked(self, revoked) -> None:
        if self.held.is_set():
            log.warning("lease on %s moved away from this worker", self.topic)
        self.held.clear()

    async def on_partitions_assigned(self, assigned) -> None:
        if assigned:
            log.warning("this worker holds the lease on %s", self.topic)
            self.held.set()

    async def run(self) -> None:
        """Join the group and keep the membership alive until cancelled."""
        await start_client(self._consumer, self.bootstrap)
        try:
            self._consumer.subscribe([self.topic], listener=self)
            while True:
                await self._consumer.getmany(timeout_ms=500, max_records=1)
        finally:
            self.held.clear()
            await stop_quietly(self._consumer)


def _quiet_transactions_probe(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Unexpected error during InitProducerIdRequest")


class FencedPublisher:
    def __init__(self, bootstrap: str, transactional_id: str) -> None:
        self.bootstrap = bootstrap
        self.transactional_id = transactional_id
        self._producer = None
        self.fenced_by_transactions = True

    async def start(self) -> None:
        candidate = producer(self.bootstrap, transactional_id=self.transactional_id, enable_idempotence=True)
        sender_log = logging.getLogger("aiokafka.producer.sender")
        sender_log.addFilter(_quiet_transactions_probe)  # a broker without transactions is explained below
        try:
            await candidate.start()
            self._producer = candidate
            return
        except Exception as exc:  # noqa: BLE001 - sorted below
            await stop_quietly(candidate)
            if isinstance(exc, (KafkaConnectionError, NodeNotReadyError, asyncio.TimeoutError, OSError)):
                raise broker_error(exc, self.bootstrap) from None
            reason = type(exc).__name__  # e.g. UnknownError: InitProducerId is not implemented
        finally:
            sender_log.removeFilter(_quiet_transactions_probe)
        log.warning("the broker does not support transactions (%s): checkpoints are published without fencing, so "
                    "run only one worker on this broker", reason)
        self.fenced_by_transactions = False
        self._producer = producer(self.bootstrap)
        await start_client(self._producer, self.bootstrap)

    async def publish(self, topic: str, value: bytes) -> None:
        """Send one record and wait until it is committed; LeaseLost if this publisher was fenced."""
        try:
            if self.fenced_by_transactions:
                async with self._producer.transaction():
                    await self._producer.send_and_wait(topic, value)
            else:
                await self._producer.send_and_wait(topic, value)
        except ProducerFenced:
            raise LeaseLost(f"another worker's publisher fenced this one ({self.transactional_id})") from None
        except asyncio.CancelledError:
            if cancelled_from_outside():
                raise
            # aiokafka cancelled the send when its connection closed: the broker went away
            raise broker_error(KafkaConnectionError("the connection closed while publishing"), self.bootstrap) from None

    async def stop(self) -> None:
        if self._producer is not None:
            await stop_quietly(self._producer)

