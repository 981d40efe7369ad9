"""The router agent: case-events -> one envelope per entitled agency, an audit entry per exchange.

Records are routed in small batches (`router_batch`, default 100, or whatever arrived within
`router_batch_window`, default 5 ms): every record of the batch is decided, all resulting messages are sent, and the agent waits
until the broker acknowledged every one of them before the batch's input offsets may be committed.
Waiting once per batch instead of once per event is what makes the worker fast (see
bench/bench_pipeline.py); waiting at all is what makes it at-least-once.

If the broker is away, the messages not yet acknowledged are sent again with backoff until they
are (agents/sending.py): nothing is lost, and the health monitor reports the partition as stalled
meanwhile. A record the broker will never take is replaced by a small dead letter that references
it. Re-sending can duplicate a delivery; the dedupe table (event id -> content digest) and
partners' dedupe by event id make each agency see each event once. When the worker stops while a
batch waits for the broker, the batch is abandoned without committing its offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import weakref

import faust
import faust.streams as faust_streams

from agents import metrics
from agents.sending import AcknowledgedSender, Message, acknowledged_batches, until_done
from streams.routing import INTERNAL_ERROR, Admitted, InputRecord, Refusal

log = logging.getLogger("masb.router")

# The dedupe table's RocksDB memory, per partition: faust's defaults (3 x 64 MiB memtables, a 2 GiB
# block cache) let a worker's memory grow by hundreds of MiB over a long run. A memtable holds about
# 100 bytes per event until it is flushed: at 2 MiB a partition, a worker's memory grew by 19 MiB over
# its first 100,000 events (bench/bench_soak.py) before the memtables filled. Lookups are of recent
# event ids (in the memtables) and misses (answered by the bloom filters): a small cache serves both.
SEEN_EVENTS_ROCKSDB = {"write_buffer_size": 256 * 1024, "max_write_buffer_number": 2,
                       "block_cache_size": 1024 * 1024}


class BatchRouter:
    """Decides a batch of input records; collects what to send and what to remember."""

    def __init__(self, runtime, seen) -> None:
        self.runtime = runtime
        self.seen = seen  # event id -> digest of events routed in earlier batches
        self.messages: list[Message] = []
        self.routed: dict[bytes, tuple[bytes, object]] = {}  # event id -> (digest, input event), this batch
        self.counters: list = []  # (metric, labels, amount) applied once the batch is sent

    def decide(self, record: InputRecord, event=None) -> None:
        router = self.runtime.router  # one policy version per event, even if reloaded meanwhile
        topics = self.runtime.topics
        result = router.admit(record)
        if isinstance(result, Refusal):
            self.refuse(result, record)
            return
        admitted: Admitted = result
        event_key = admitted.event_id.encode()
        prior = self.routed[event_key][0] if event_key in self.routed else self.seen.get(event_key)
        if prior is not None:
            if prior.decode() == admitted.digest:
                self.messages.append(Message(topics.audit, None, router.duplicate(admitted), record))
                self.count(metrics.DUPLICATES, admitted.header["event_type"])
                self.count(metrics.AUDIT_ENTRIES, "DUPLICATE")
            else:
                self.refuse(router.conflict(admitted), record)
            return
        started = time.perf_counter()
        deliveries = router.deliver(admitted)
        metrics.ENCRYPT_SECONDS.observe(time.perf_counter() - started)
        self.messages += [Message(d.topic, d.key, d.envelope, record) for d in deliveries]
        self.messages += [Message(topics.audit, None, d.audit_entry, record) for d in deliveries]
        self.routed[event_key] = (admitted.digest.encode(), event)
        event_type = admitted.header["event_type"]
        self.count(metrics.EVENTS_ROUTED, event_type)
        for d in deliveries:
            self.count(metrics.ENVELOPES, event_type, d.agency_id)
        self.count(metrics.AUDIT_ENTRIES, "DELIVERY", amount=len(deliveries))

    def decide_safely(self, record: InputRecord, event=None) -> None:
        try:
            self.decide(record, event)
        except Exception as exc:  # a bug must not stop the flow: keep the record, say why, go on
            log.error("internal error routing %s: %s", record.source, type(exc).__name__)
            self.refuse(self.runtime.router.refuse(
                record, INTERNAL_ERROR, f"internal error while routing ({type(exc).__name__}); record kept"), record)

    def refuse(self, refusal: Refusal, record: InputRecord) -> None:
        topics = self.runtime.topics
        self.messages += [Message(topics.dead_letter, None, refusal.dead_letter, record),
                          Message(topics.audit, None, refusal.audit_entry, record)]
        self.count(metrics.REFUSED, refusal.reason_code)
        self.count(metrics.AUDIT_ENTRIES, "REFUSAL")
        log.warning("refused %s: %s", refusal.reason_code, refusal.reason)

    def count(self, metric, *labels: str, amount: int = 1) -> None:
        self.counters.append((metric, labels, amount))


def replacement_for(runtime, message: Message, error: Exception) -> list[Message]:
    """What to send instead of a record the broker will never take: a dead letter referencing the
    input record (no copy of it) and its REFUSAL audit entry (docs/routing.md, SEND_REFUSED)."""
    if message.origin is None:  # already a replacement: a few hundred bytes, refused all the same
        log.critical("the broker refused even a minimal dead letter (%s); check message.max.bytes of %s",
                     type(error).__name__, message.topic)
        return []
    refusal = runtime.router.send_refused(message.origin, message.topic, len(message.value), type(error).__name__)
    metrics.REFUSED.labels(refusal.reason_code).inc()
    metrics.AUDIT_ENTRIES.labels("REFUSAL").inc()
    return [Message(runtime.topics.dead_letter, None, refusal.dead_letter),
            Message(runtime.topics.audit, None, refusal.audit_entry)]


async def send_case_keys(sender: AcknowledgedSender, runtime, records) -> None:
    """Write case-key records (agents/shredding.py, streams/audit/shared_case_keys.py) and wait for acks."""
    if records:
        await sender.send_all([Message(runtime.topics.case_keys, r.key, r.value, partition=r.partition)
                               for r in records], _case_key_refused)


async def send_routed(sender: AcknowledgedSender, runtime, messages: list[Message], case_keys) -> None:
    """Send a batch's records and wait for every ack.

    The keys of new cases reach Kafka before any audit entry sealed with them, so that a worker
    that routes the case later (after a crash or a rebalance) finds the same key. Envelopes and
    dead letters carry nothing sealed with a case key: they go out with the keys, not after them
    (one broker round trip less between publication and partner record).
    """
    replace = functools.partial(replacement_for, runtime)
    records = case_keys.new_records()
    if not records:
        await sender.send_all(messages, replace)
        return
    audit = runtime.topics.audit
    held = [m for m in messages if m.topic == audit]

    def replace_holding_entries(message: Message, error: Exception) -> list[Message]:
        # A refused envelope's REFUSAL entry is sealed with the case key too: it waits as well.
        replacement = replace(message, error)
        held.extend(m for m in replacement if m.topic == audit)
        return [m for m in replacement if m.topic != audit]

    await all_of(send_case_keys(sender, runtime, records),
                 sender.send_all([m for m in messages if m.topic != audit], replace_holding_entries))
    case_keys.confirm_new()
    await sender.send_all(held, replace)


async def all_of(*awaitables) -> None:
    """Await all of them concurrently; if one fails, cancel the others and raise its error."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()  # nothing for those done; the rest must not go on sending on their own


async def _prefetch(case_keys, partitions: set[int]) -> None:
    try:
        await case_keys.load(partitions)
    except Exception as exc:  # noqa: BLE001 - the router's own load retries and reports
        log.info("case keys of partitions %s not read ahead (%s); the router reads them", sorted(partitions),
                 type(exc).__name__)


def _case_key_refused(message: Message, error: Exception) -> list[Message]:
    raise RuntimeError(f"the broker refused a case-key record ({type(error).__name__}): check {message.topic}")


@contextlib.contextmanager
def current_event(event):
    """Faust's notion of "the event being processed" (a context variable), for one table write.

    Faust sends a table write to the changelog partition of the current event and refuses writes
    with none; batch iteration has none, so the router names the event whose routing it records.
    """
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)


def install(app: faust.App, runtime) -> None:
    source = app.topic(runtime.topics.case_events, key_serializer="raw", value_serializer="raw")
    # Keys and values are bytes (event id -> content digest): typed, so the changelog holds raw
    # bytes and a restarted worker can recover the table from it.
    seen = app.Table("seen-events", key_type=bytes, value_type=bytes, partitions=runtime.settings.partitions,
                     options={"driver": "rocksdict", **SEEN_EVENTS_ROCKSDB})
    supervisor = runtime.supervisor
    hold = runtime.faults.hold if getattr(runtime, "faults", None) else None
    case_keys = runtime.case_keys

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:
        # Another worker routes these partitions now; it reads their case keys from Kafka.
        case_keys.revoke({tp.partition for tp in revoked if tp.topic == runtime.topics.case_events})

    prefetches: set = set()

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs) -> None:
        # Read the new partitions' case keys now, not when their first record arrives (reading
        # takes most of a second): the rebalance is not held up; the first batch waits for the read
        # only if it is still under way, and reads again if it failed.
        partitions = {tp.partition for tp in assigned if tp.topic == runtime.topics.case_events}
        if partitions:
            task = asyncio.ensure_future(_prefetch(case_keys, partitions))
            prefetches.add(task)
            task.add_done_callback(prefetches.discard)

    @app.agent(source, name="router")
    async def route(stream):
        # The router's own producer (plain aiokafka): its sends are awaited per batch, before the
        # batch's offsets can be committed, so Faust's per-message send machinery is not needed.
        supervisor.doing("router", "waiting for records")
        await acknowledged_batches(stream, runtime, "router", route_batch, batch=runtime.settings.router_batch,
                                   within=runtime.settings.router_batch_window, linger_ms=2, max_batch_size=512 * 1024)

    supervisor.watch_agent(route, "router")

    async def route_batch(events, sender: AcknowledgedSender) -> None:
        started = time.perf_counter()
        batch = BatchRouter(runtime, seen)
        try:
            partitions = {event.message.partition for event in events}
            supervisor.doing("router", f"reading the case keys of partitions {sorted(partitions)}")
            await until_done("reading case keys", lambda: case_keys.load(partitions))
            supervisor.doing("router", f"deciding {len(events)} records")
            for event in events:
                message = event.message
                batch.decide_safely(InputRecord(message.topic, message.partition, message.offset,
                                                event.key, event.value), event)
            if hold is not None:
                await hold("router")
            supervisor.doing("router", f"sending {len(batch.messages)} records")
            await send_routed(sender, runtime, batch.messages, case_keys)
        except BaseException:
            case_keys.discard_new()  # the batch is abandoned (acknowledged_batches): routed again
            raise
        # Only now, with every delivery acknowledged, remember the events as routed. A table
        # write goes to the changelog partition of the event being processed, which Faust
        # knows only inside per-event iteration; in a batch we name that event ourselves.
        for event_key, (digest, event) in batch.routed.items():
            with current_event(event):
                seen[event_key] = digest
        for metric, labels, amount in batch.counters:
            (metric.labels(*labels) if labels else metric).inc(amount)
        supervisor.doing("router", "waiting for records")
        per_event = (time.perf_counter() - started) / max(1, len(events))
        for _ in events:
            metrics.ROUTING_SECONDS.observe(per_event)
