"""Acknowledged sends for the worker's agents: every message of a batch is acknowledged by the broker
before the batch's input offsets may be committed.

Two kinds of failure, told apart (docs/routing.md, "When the broker refuses"):

- the broker is away or busy (connection, timeout, leader moving): the messages not yet
  acknowledged are sent again with capped exponential backoff and jitter, for as long as it
  takes: nothing is lost, and the health monitor reports the partition as stalled meanwhile;
- the broker will never take this record (too large, invalid): retrying cannot help, so the
  caller replaces it (a small dead letter that references it) and the batch goes on.

Stopping never waits for an absent broker: sends still unacknowledged after ``stop_timeout`` are
abandoned. Their input offsets were not committed, so they are sent again after the restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiokafka.errors import KafkaError

from agents import faust_fixes
from agents.supervision import backoff
from streams.kafka import BREAKS_THE_PRODUCER, NEVER_ACCEPTED, REFUSED_WITH_ITS_BATCH, producer, start_client

log = logging.getLogger("masb.sending")

RETRY_LOG_EVERY = 30.0  # while retrying, one line when it starts and one every this many seconds


@dataclass(frozen=True)
class Message:
    topic: str
    key: bytes | None
    value: bytes | None
    origin: object = None  # what the caller needs to replace it if the broker refuses it for good
    partition: int | None = None  # None: the producer's partitioner chooses (by key)


def cancelled_from_outside() -> bool:
    """Whether the running task itself is being cancelled (worker stopping, faust rebalancing), as
    opposed to a CancelledError coming out of an awaited client future (aiokafka cancels its
    pending futures when a broker connection closes)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def forget(events: Iterable) -> None:
    """Make sure faust never commits the offsets of these events: their batch was abandoned.

    faust acknowledges a taken batch when its generator is closed, even after an exception; a
    message already flagged as acknowledged is skipped by the consumer's bookkeeping (faust 0.15),
    so its offset is never marked done and never committed: the records are read again after the
    restart.
    """
    for event in events:
        event.message.acked = True


async def until_done(what: str, attempt_once):
    """Run ``attempt_once()`` until it succeeds: a broker failure is retried with capped backoff and
    jitter (one log line when it starts and every RETRY_LOG_EVERY seconds), anything else raised."""
    from streams.errors import BrokerUnavailable

    attempt, started, last_log = 0, time.monotonic(), 0.0
    while True:
        try:
            return await attempt_once()
        except (BrokerUnavailable, KafkaError, asyncio.TimeoutError, OSError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and cancelled_from_outside():
                raise
            now = time.monotonic()
            if now - last_log >= RETRY_LOG_EVERY:
                last_log = now
                log.error("%s failed (%s); retrying with backoff%s", what, type(exc).__name__, _for(now - started))
            await asyncio.sleep(backoff(attempt, 0.5, 10.0))
            attempt += 1


def _for(seconds: float) -> str:
    """How long retries have gone on, for the periodic retry line; nothing on the first one."""
    return f" (for {seconds:.0f}s now)" if seconds >= 1 else ""


def crash_stops_worker(runtime, name: str, exc: BaseException) -> None:
    """An agent's loop failed outside the per-record decisions (a bug): its batch was not committed,
    and faust would go on past it, so stop the worker (exit 1): after the restart the batch is read
    again from the committed offsets (docs/operations.md, "Supervision")."""
    if isinstance(exc, asyncio.CancelledError) and cancelled_from_outside():
        return  # the worker is stopping or faust is rebalancing: nothing was skipped
    # faust restarts a crashed agent but not the batch it held, and its take_events buffer of the
    # dead stream keeps consuming: a restart of the process is the safe way on.
    runtime.supervisor.give_up(name, f"failed outside a record's decision ({type(exc).__name__})")


class AcknowledgedSender:
    def __init__(self, bootstrap: str, *, stop_timeout: float = 5.0, **producer_options) -> None:
        self.bootstrap = bootstrap
        self.stop_timeout = stop_timeout
        self._options = producer_options
        self.producer = None  # made by start(): an aiokafka client never started still warns when collected
        self.retrying_since: float | None = None
        self.abandon = asyncio.Event()  # set when the worker stops: give up on a batch being retried
        self._renewing = asyncio.Lock()

    async def start(self) -> None:
        """Start the producer, waiting for the broker if it is away (an agent restarted during an
        outage must wait for it, not crash)."""
        async def attempt() -> None:
            candidate = producer(self.bootstrap, **self._options)  # a client that failed to start is closed
            await start_client(candidate, self.bootstrap)
            self.producer = candidate

        await until_done("starting a producer", attempt)

    async def send_all(self, messages: list[Message],
                       replace: Callable[[Message, Exception], list[Message]]) -> None:
        """Send every message and wait until each is acknowledged or replaced.

        ``replace(message, error)`` is called for a message the broker will never accept and
        returns what to send in its place (a small dead letter and its audit entry; nothing, after
        the caller logged why, if even that was refused). Raises asyncio.CancelledError when the
        worker stops while the broker is away.
        """
        pending = list(messages)
        alone: set[int] = set()  # ids of the records to send in a batch of their own
        attempt = 0
        last_log = 0.0
        while pending:
            producer = self.producer
            futures: list[asyncio.Future | Exception] = []
            for m in pending:
                try:
                    future = await producer.send(m.topic, m.value, key=m.key, partition=m.partition)
                    if id(m) in alone:  # acknowledged (or refused) before the next record can join its batch
                        await asyncio.wait([future])
                    futures.append(future)
                except Exception as exc:  # noqa: BLE001 - sorted below: never accepted, or retried
                    futures.append(exc)
            results = await asyncio.gather(*(f for f in futures if not isinstance(f, Exception)),
                                           return_exceptions=True)
            outcomes = iter(results)
            again: list[Message] = []
            error: Exception | None = None
            for m, f in zip(pending, futures):
                outcome = f if isinstance(f, Exception) else next(outcomes)
                if not isinstance(outcome, BaseException):
                    continue
                if isinstance(outcome, REFUSED_WITH_ITS_BATCH) and id(m) not in alone:
                    alone.add(id(m))
                    again.append(m)
                elif isinstance(outcome, NEVER_ACCEPTED):
                    log.error("the broker refused a %d-byte record for %s for good (%s); sending a dead letter "
                              "in its place", len(m.value or b""), m.topic, type(outcome).__name__)
                    again += replace(m, outcome)
                elif isinstance(outcome, (KafkaError, asyncio.TimeoutError, OSError, asyncio.CancelledError)):
                    # A send future cancelled by aiokafka (its connection closed) is a broker
                    # failure too: our own cancellation is raised by the gather, not returned.
                    again.append(m)
                    error = outcome
                else:
                    raise outcome
            pending = again
            if any(isinstance(f, BREAKS_THE_PRODUCER) for f in [*futures, *results]):
                await self._renew(producer)
            if not pending:
                break
            if error is not None:  # the broker is away or busy: wait, then send what is left
                now = time.monotonic()
                if self.retrying_since is None:
                    self.retrying_since = now
                if now - last_log >= RETRY_LOG_EVERY:
                    last_log = now
                    log.error("broker did not acknowledge %d records (%s); retrying with backoff%s",
                              len(pending), type(error).__name__, _for(now - self.retrying_since))
                await self._wait(backoff(attempt, 0.5, 10.0))
                attempt += 1
        if self.retrying_since is not None:
            log.warning("broker acknowledged again after %.0fs of retries", time.monotonic() - self.retrying_since)
            self.retrying_since = None

    async def _renew(self, broken) -> None:
        """Replace ``broken`` with a new producer (BREAKS_THE_PRODUCER), unless a concurrent
        send_all did already; ``broken`` is closed once its other sends are acknowledged or failed."""
        async with self._renewing:
            if self.producer is not broken:
                return
            log.warning("replacing the producer after the broker refused a batch (a new producer id)")
            await self.start()
        await self._close(broken)

    async def _wait(self, delay: float) -> None:
        try:
            await asyncio.wait_for(self.abandon.wait(), delay)
        except asyncio.TimeoutError:
            return
        raise asyncio.CancelledError("worker stopping: batch abandoned, its offsets stay uncommitted")

    async def stop(self) -> None:
        """Close the producer; sends the broker has not acknowledged within stop_timeout are abandoned."""
        self.abandon.set()
        if self.producer is not None and not await self._close(self.producer):
            log.warning("abandoned unacknowledged sends at shutdown; their input is routed again after the restart")

    async def _close(self, producer) -> bool:
        """Stop ``producer``; False if its sends were abandoned after stop_timeout."""
        closing = asyncio.ensure_future(producer.stop())
        done, _ = await asyncio.wait({closing}, timeout=self.stop_timeout)
        if done:
            if not closing.cancelled() and closing.exception() is not None:  # a broken one: closed all the same
                log.info("producer closed (%s)", type(closing.exception()).__name__)
            return True
        # aiokafka's stop() waits for every pending batch; there is no public way to drop them, so
        # end its sender task and close its connections ourselves (aiokafka 0.14).
        sender = getattr(producer, "_sender", None)
        if sender is not None and sender.sender_task is not None:
            sender.sender_task.cancel()
        closing.cancel()
        try:
            await asyncio.wait_for(producer.client.close(), 2)
        except Exception:  # noqa: BLE001 - the connections are going away anyway
            pass
        return False


async def acknowledged_batches(stream, runtime, name: str, handle, *, batch: int, within: float,
                               **sender_options) -> None:
    """The body of a batch agent: each batch taken from ``stream`` (at most ``batch`` events, or
    what arrived within ``within`` seconds) goes to ``await handle(events, sender)``, which sends
    what it makes through ``sender`` (an AcknowledgedSender, started here and stopped on exit) and
    returns once the broker acknowledged it: only then may the batch's offsets be committed.
    Stopping or a crash abandons the batch uncommitted (:func:`forget`), and a crash stops the
    worker (:func:`crash_stops_worker`); ``name`` is the agent's task name for the supervisor."""
    sender = AcknowledgedSender(runtime.settings.bootstrap, **sender_options)
    await sender.start()
    runtime.supervisor.beat(name)
    try:
        async for events in stream.take_events(batch, within=within):
            try:
                await handle(events, sender)
            except BaseException as exc:
                forget(events)  # stopping, or a crash: never committed, so read again
                crash_stops_worker(runtime, name, exc)
                raise
            faust_fixes.handled(event.message for event in events)  # their offsets may be committed
    finally:
        await sender.stop()
