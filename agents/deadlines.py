"""The deadline agent: tracks every delivery against its agreement's deadline and acts when it passes.

It follows the exchange log (DELIVERY, RECEIPT and its own entries) and folds it into a
`streams.deadlines.DeadlineBook`; every few seconds it looks at the clock and writes what is due:
ESCALATION (level 1 at the deadline, 2 at the agreement's second threshold), ESCALATION_CLOSED (the
receipt came late) and NON_DELIVERY (expired), each with a notice to the originating unit on its
feed unit.<unit-id>. Deliveries, receipts and acknowledgements are noticed to the unit as they are
read. Rules and formats: docs/deadlines.md.

One owner in the cluster: the audit topic has one partition, read in the consumer group
``<prefix>masb-deadlines``, so exactly one worker holds it; another takes over when it dies. The
book lives in Kafka: the compacted topic ``deadlines.state`` holds one record per open delivery and
the audit offset the book reflects; a new owner loads it and goes on from there.

Never twice, never lost:
- a batch's notices are acknowledged, then its state records, then its input offset is committed;
  a crash in between folds the batch again (folding is idempotent; a notice may repeat, with the
  same notice id, which units drop);
- an action is taken only when the book reflects the whole log up to the previous action (the
  "barrier": the audit end offset after its entries were acknowledged, or at assignment), and is
  recorded only by folding its own entry back: an action's notice is acknowledged before its entry,
  and a restart before the entry is in the log takes it again, after it never.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from prometheus_client import Counter, Gauge

from agents import metrics
from agents.sending import AcknowledgedSender, Message
from streams.audit.entry import AuditEntryError, decode_entry, encode_entry
from streams.crypto.notice import NoticeSealer, notice_sha256
from streams.deadline_store import RocksTrackings
from streams.deadlines import DeadlineBook, MemoryTrackings, NoticeRequest, Tracking
from streams.kafka import consumer as kafka_consumer
from streams.kafka import read_topic, start_client, stop_quietly
from streams.policy.durations import check_fixed_duration

log = logging.getLogger("masb.deadlines")

POSITION_KEY = b"__position__"  # the state topic's record of the audit offset the book reflects
BATCH = 500
# The deadline agent shares the worker's event loop with the router: folding a batch of 500 entries
# (a notice sealed for each delivery) holds the loop for 100 ms or more, which every event arriving
# meanwhile waits for; it yields after this much work at a time.
SLICE_SECONDS = 0.005

OVERDUE = Gauge("masb_deliveries_overdue", "Deliveries past their deadline without the receipt their agreement "
                "requires (on the worker that owns deadline tracking)", ["agency"])
OPEN_ESCALATIONS = Gauge("masb_escalations_open", "Escalated deliveries whose required receipt has not come",
                         ["agency"])
TRACKED = Gauge("masb_deliveries_tracked", "Deliveries the deadline agent tracks (open)")
ESCALATIONS = Counter("masb_escalations_total", "Deadline escalations written", ["agency", "level"])
ESCALATIONS_CLOSED = Counter("masb_escalations_closed_total", "Escalations closed by a late receipt", ["agency"])
NON_DELIVERIES = Counter("masb_non_deliveries_total", "Deliveries that expired without the required receipt",
                         ["agency"])
NOTICES = Counter("masb_notices_total", "Notices sent to originating units", ["kind"])
NOTICES_UNSENT = Counter("masb_notices_unsent_total", "Notices not sent: the unit has no active exchange key")


def install(app, runtime) -> None:
    runtime.supervisor.run("deadlines", lambda: run_deadlines(runtime))


class _Ownership(ConsumerRebalanceListener):
    """Notes assignment changes; the agent's loop acts on them between batches."""

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.owned = False
        self.changed = False

    async def on_partitions_revoked(self, revoked) -> None:
        if self.tp in revoked or self.owned:
            self.owned, self.changed = False, True

    async def on_partitions_assigned(self, assigned) -> None:
        self.owned, self.changed = self.tp in assigned, True


async def load_state(bootstrap: str, topic: str, store=None) -> tuple[DeadlineBook, int | None]:
    """The book and the audit offset it reflects, from the compacted state topic, into ``store``
    (empty; a MemoryTrackings if None)."""
    book = DeadlineBook(store=store)
    position = None
    async for record in read_topic(bootstrap, topic):
        if record.key == POSITION_KEY:
            position = int(record.value) if record.value else None
            continue
        key = (record.key or b"").decode("utf-8", "replace")
        if record.value is None:
            book.drop(key)
            continue
        try:
            book.store.put(Tracking.from_json(record.value))
        except (ValueError, TypeError, KeyError) as exc:
            log.error("ignoring deadline state record at offset %d: %s", record.offset, type(exc).__name__)
    return book, position


def book_store(settings):
    """Where the owner keeps its book: RocksDB under the data directory (memory that does not grow
    with the open deliveries, streams/deadline_store.py), or a dict with MASB_TABLE_STORE=memory."""
    if settings.table_store == "memory":
        return MemoryTrackings()
    return RocksTrackings(Path(settings.datadir) / "deadline-book")


class DeadlineAgent:
    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.topics = runtime.topics
        self.tp = TopicPartition(runtime.topics.audit, 0)
        self.sealer = NoticeSealer(runtime.identity.signing.current, runtime.identity.exchange.current)
        self.book: DeadlineBook | None = None
        self.barrier = 0  # act only once the book reflects the audit log up to here
        self.ownership = _Ownership(self.tp)
        self._unkeyed_units: set[str] = set()  # warned about once each

    # -- notices -----------------------------------------------------------------------------------
    def notice(self, request: NoticeRequest) -> Message | None:
        """The sealed notice for the unit that published the event, or None if it cannot have one."""
        t = request.tracking
        unit = self.runtime.policy.unit(t.unit_id or "")
        key = unit.active_exchange_key if unit is not None else None
        if key is None:
            NOTICES_UNSENT.inc()
            if t.unit_id not in self._unkeyed_units:
                self._unkeyed_units.add(t.unit_id)
                log.warning("no notices to unit %s: it has no active exchange key in policy version %d "
                            "(docs/keys.md)", t.unit_id, self.runtime.policy.version)
            return None
        value = self.sealer.seal(unit_id=unit.id, unit_key_id=key.key_id, unit_public_key=key.public_key,
                                 content=request.content(), created_at=self.runtime.clock())
        return Message(self.topics.unit(unit.id), request.notice_id.encode(), value)

    # -- the loop ----------------------------------------------------------------------------------
    async def run(self) -> None:
        settings = self.runtime.settings
        consumer = kafka_consumer(
            settings.bootstrap, group_id=self.topics.deadline_group, auto_offset_reset="earliest",
            session_timeout_ms=int(settings.session_timeout * 1000),
            heartbeat_interval_ms=int(min(3.0, settings.session_timeout / 3) * 1000), max_poll_records=BATCH)
        ownership = self.ownership
        sender = AcknowledgedSender(settings.bootstrap)
        await start_client(consumer, settings.bootstrap)
        try:
            await sender.start()
            consumer.subscribe([self.topics.audit], listener=ownership)
            next_tick = time.monotonic()
            while True:
                batch = await consumer.getmany(self.tp, timeout_ms=int(min(1.0, settings.deadline_interval) * 1000))
                if ownership.changed:
                    ownership.changed = False
                    await self.take_or_leave(consumer, ownership.owned)
                    continue
                if self.book is None:
                    continue
                records = batch.get(self.tp, [])
                if records:
                    await self.fold(consumer, sender, records)
                if time.monotonic() >= next_tick and not ownership.changed:
                    next_tick = time.monotonic() + settings.deadline_interval
                    await self.tick(consumer, sender)
        finally:
            self.leave()
            await stop_quietly(consumer)
            await sender.stop()

    async def take_or_leave(self, consumer, owned: bool) -> None:
        if not owned:
            self.leave()
            return
        self._close_book()  # a new assignment: the book is loaded afresh from the state topic
        store = book_store(self.runtime.settings)
        try:
            book, position = await load_state(self.runtime.settings.bootstrap, self.topics.deadline_state, store)
        except BaseException:
            _close(store)
            raise
        if position is None:
            committed = await consumer.committed(self.tp)
            position = committed if committed is not None else 0
        consumer.seek(self.tp, position)
        self.barrier = (await consumer.end_offsets([self.tp]))[self.tp]
        self.book = book
        log.warning("deadline tracking taken over: %d open deliveries, audit offset %d (acting once it reaches %d)",
                    len(book), position, self.barrier)

    def leave(self) -> None:
        if self.book is not None:
            log.warning("deadline tracking released (this worker stops, or another one takes over)")
        self._close_book()
        for gauge in (OVERDUE, OPEN_ESCALATIONS):
            gauge.clear()
        TRACKED.set(0)

    def _close_book(self) -> None:
        if self.book is not None:
            _close(self.book.store)
        self.book = None

    async def fold(self, consumer, sender: AcknowledgedSender, records) -> None:
        """Fold a batch of audit entries; notices, then state, then the input offset."""
        policy, now = self.runtime.policy, self.runtime.clock()
        changed: dict[str, Tracking | None] = {}
        notices: list[Message] = []
        slices = TimeSlices()
        for record in records:
            await slices.share()
            try:
                entry = decode_entry(record.value or b"")
            except AuditEntryError:
                continue  # not ours to judge: `masb audit verify` reports it
            folded = self.book.apply(record.offset, entry, policy, now)
            changed.update(folded.changed)
            for request in folded.notices:
                message = self.notice(request)
                if message is not None:
                    notices.append(message)
                    NOTICES.labels(request.kind).inc()
        next_offset = records[-1].offset + 1
        await sender.send_all(notices, _never_refused)
        state = [Message(self.topics.deadline_state, key.encode(), t.to_json() if t is not None else None)
                 for key, t in changed.items()]
        state.append(Message(self.topics.deadline_state, POSITION_KEY, str(next_offset).encode()))
        await sender.send_all(state, _never_refused)
        try:
            await consumer.commit({self.tp: next_offset})
        except (CommitFailedError, IllegalStateError) as exc:  # rebalanced meanwhile: the next owner folds again
            log.warning("deadline offset not committed (%s); the next owner reads the batch again", type(exc).__name__)

    async def tick(self, consumer, sender: AcknowledgedSender) -> None:
        """Act on what is due, if the book reflects the log up to the barrier; refresh the gauges."""
        now = self.runtime.clock()
        if self.ownership.changed:  # a rebalance happened meanwhile: the loop takes over again first
            return
        try:
            position = await consumer.position(self.tp)
        except IllegalStateError:  # revoked meanwhile: the loop hands over before the next batch
            return
        if position >= self.barrier:
            actions = self.book.due_actions(now)
            if actions:
                await self.act(consumer, sender, actions)
            drops = self.book.due_drops(now, check_fixed_duration(self.runtime.policy.deadlines.expiry))
            if drops:
                for key in drops:
                    self.book.drop(key)
                await sender.send_all([Message(self.topics.deadline_state, key.encode(), None) for key in drops],
                                      _never_refused)
        self.refresh_gauges(now)

    async def act(self, consumer, sender: AcknowledgedSender, actions) -> None:
        policy = self.runtime.policy
        notices, entries, kinds = [], [], []
        slices = TimeSlices()
        for action in actions:
            await slices.share()
            message = self.notice(action.notice())
            if message is not None:
                notices.append(message)
                kinds.append(action.notice().kind)
            digest = notice_sha256(message.value) if message is not None else None
            entries.append(Message(self.topics.audit, None,
                                   encode_entry(action.entry(policy, self.topics.audit, digest))))
        # The notice before the entry: a crash in between takes the action again (same notice id);
        # once the entry is in the log, never again.
        await sender.send_all(notices, _never_refused)
        await sender.send_all(entries, _never_refused)
        self.barrier = (await consumer.end_offsets([self.tp]))[self.tp]
        for kind in kinds:
            NOTICES.labels(kind).inc()
        for action in actions:
            agency = action.tracking.agency_id
            metrics.AUDIT_ENTRIES.labels(action.kind).inc()
            if action.kind == "ESCALATION":
                ESCALATIONS.labels(agency, str(action.level)).inc()
            elif action.kind == "ESCALATION_CLOSED":
                ESCALATIONS_CLOSED.labels(agency).inc()
            else:
                NON_DELIVERIES.labels(agency).inc()
            log.warning("%s %s: %s", action.kind, action.action_id, action.reason())

    def refresh_gauges(self, now) -> None:
        overdue = self.book.overdue_by_agency(now)
        escalated = self.book.open_escalations_by_agency()
        for agency in self.runtime.policy.agencies:  # every agency, 0 included: alert rules see the series
            OVERDUE.labels(agency.id).set(overdue.get(agency.id, 0))
            OPEN_ESCALATIONS.labels(agency.id).set(escalated.get(agency.id, 0))
        TRACKED.set(len(self.book))


class TimeSlices:
    """Synchronous work cut into slices of SLICE_SECONDS, the event loop's other tasks (the
    router) running between them. Only the deadline agent's own task touches its book, so the book
    cannot change while it waits."""

    def __init__(self, seconds: float = SLICE_SECONDS) -> None:
        self.seconds = seconds
        self.until = time.perf_counter() + seconds

    async def share(self) -> None:
        if time.perf_counter() >= self.until:
            await asyncio.sleep(0)
            self.until = time.perf_counter() + self.seconds


async def run_deadlines(runtime) -> None:
    """A supervised task: restarted with backoff if it fails."""
    await DeadlineAgent(runtime).run()


def _close(store) -> None:
    close = getattr(store, "close", None)  # RocksDB: closed and removed; a dict needs nothing
    if close is not None:
        close()


def _never_refused(message: Message, error: Exception) -> list[Message]:
    # Notices, entries and state records are a few hundred bytes: a broker refusing them is misconfigured.
    raise RuntimeError(f"the broker refused a record for {message.topic} ({type(error).__name__})")

