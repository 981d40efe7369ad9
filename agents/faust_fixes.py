"""Fixes to faust-streaming 0.15's consumer, which otherwise loses records in a rebalance.

faust reads records in a background loop (``Consumer._drain_messages``) that hands each one to the
streams and then marks its offset as read. When a rebalance begins, the flow is suspended while a
record is being handed over; faust 0.15 abandons that hand-over but still marks the record, and
every later record of the same fetch, as read. After the rebalance the partition is fetched again
from its committed offset, and the records below the "read" mark are dropped as already seen,
although no stream ever had them. Their offsets are then committed with the next records that
are handled (a partition with no committed offset yet has no gap check at all), so they are never
routed and never read again: found by tests/test_scale_out.py (a worker killed during a
rebalance; some events reached no agency and left no audit entry).

Three fixes, found one loss at a time by the scale-out test; the third (the commit guard) makes
any other such loss a stall instead. The fixed loop below is faust 0.15.3's, with one change: a record whose hand-over did not complete
before the flow was suspended or the partitions were sought is not marked as read (a record handed
over into a stream's queue while the flow is suspended is emptied out with the queue when the flow
resumes), and the rest of that fetch is left too. After the rebalance they are
fetched again from the committed offset and handed over then; a record a stream already had is at
worst routed twice, which the dedupe table and the partners' dedupe by event id absorb.

A fourth change is for latency, not loss: faust's worker consumer long-polls with a fixed
``fetch_max_wait_ms=1500``, and aiokafka sends one fetch at a time to a broker, leaving out
partitions whose fetched records are still buffered. When a fetch is formed while case-events
records wait in the buffer, it asks only for the worker's quiet partitions (receipts, redrive,
shreds, the leader topic), and the broker holds it for the whole 1.5 s; the case-events records
that arrive meanwhile wait for it, and the next fetch repeats the pattern (bench_worker_cpu.py saw
publish-to-partner latency flip between about 70 ms and 1.2 s). :data:`FETCH_MAX_WAIT_MS` bounds
that wait.

Installed once per process by :func:`install`, only on the faust version it was written for.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import faust
from faust.transport.consumer import CONSUMER_FETCHING, Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from mode import Service

log = logging.getLogger("masb.faust")

FIXED_VERSIONS = ("0.15.3",)
# The longest a fetch of the worker's consumer waits at the broker for records: what a record that
# arrives during a fetch for other partitions may wait (an idle worker sends ten fetches a second).
FETCH_MAX_WAIT_MS = 100


_ORIGINAL = {"perform_seek": Consumer.perform_seek, "_new_offset": Consumer._new_offset}


def install() -> bool:
    """Replace ``Consumer._drain_messages``, ``perform_seek`` and ``_new_offset`` (the commit
    guard, for the topics given to :func:`guard`); False (and a warning) on another faust version."""
    if faust.__version__ not in FIXED_VERSIONS:
        log.warning("faust-streaming %s is not %s: its consumer is used unfixed (records may be lost in a "
                    "rebalance; see agents/faust_fixes.py)", faust.__version__, " or ".join(FIXED_VERSIONS))
        return False
    Consumer._drain_messages = _drain_messages
    Consumer.perform_seek = _perform_seek
    Consumer._new_offset = _new_offset
    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer
    return True


_CREATE_WORKER_CONSUMER = AIOKafkaConsumerThread._create_worker_consumer


def _create_worker_consumer(self, transport):
    consumer = _CREATE_WORKER_CONSUMER(self, transport)
    consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when it starts (aiokafka 0.12-0.14)
    return consumer


# The second fix: faust seeks only partitions that have a committed offset when they are assigned,
# so records of a never-committed partition abandoned in a rebalance are not fetched again. Here
# such a partition of a guarded topic is sought to its earliest offset (its floor, below).

async def _perform_seek(self) -> None:
    await _ORIGINAL["perform_seek"](self)
    floors = self.__dict__.setdefault("_masb_floors", {})
    floors.clear()
    fresh = [tp for tp in self.assignment() if tp.topic in _GUARDED and self._committed_offset.get(tp) is None]
    if fresh:
        floors.update(await self.earliest_offsets(*fresh))
        for tp, earliest in floors.items():
            await self.seek(tp, earliest)


def _new_offset(self, tp):
    if tp.topic in _GUARDED:
        return _handled_offset(self, tp)
    return _ORIGINAL["_new_offset"](self, tp)


# The third fix, the commit guard: faust commits past records never acknowledged (its check for an
# unacknowledged record at the committed offset is off by one, as a committed offset names the next
# record to read; it does not check at all on a partition never committed; and it counts offsets it
# skipped as done). For the topics of MASB's input agents, the offset to commit comes instead from
# MASB's own record of the records its agents handled (agents.sending.acknowledged_batches): an
# offset is committed only when every record from the committed offset (or, for a partition never
# committed, its earliest offset) up to it was handled in this process. A record lost on any path
# through faust stalls its partition (reported by /ready, healed by the wedged-consumer restart)
# instead of being committed past.

_GUARDED: set[str] = set()
_HANDLED: dict = {}  # TP -> offsets handled in this process and not yet committed


def guard(topics) -> None:
    """Commit offsets of these topics only as far as :func:`handled` says records were handled."""
    _GUARDED.update(topics)


def handled(messages) -> None:
    """Record that these messages' records were handled: their outputs are acknowledged by Kafka."""
    for message in messages:
        _HANDLED.setdefault(message.tp, set()).add(message.offset)


def _handled_offset(self, tp):
    committed = self._committed_offset[tp]
    head = committed if committed is not None else self.__dict__.get("_masb_floors", {}).get(tp)
    done = _HANDLED.get(tp)
    if head is None or not done:
        return None
    if min(done) < head:  # committed (here or by another worker): forget them
        done = _HANDLED[tp] = {o for o in done if o >= head}
        # faust's own acknowledgements are not used for this topic: keep them from growing
        self._acked[tp][:] = [o for o in self._acked[tp] if o >= head]
        self._acked_index[tp] = {o for o in self._acked_index[tp] if o >= head}
    offset = head
    while offset in done:
        offset += 1
    return offset if offset > head else None


async def _drain_messages(self, fetcher) -> None:  # pragma: no cover - exercised by the Kafka tests
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = cast(Service, self)._stopped.is_set
    fetcher_should_stop = cast(Service, fetcher)._stopped.is_set

    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(CONSUMER_FETCHING)
            ait = getmany(timeout=1.0)
            await self.sleep(0)
            if not self.should_stop:
                try:
                    await _hand_over(self, ait, callback, get_read_offset, set_read_offset, commit_every,
                                     acks_enabled_for)
                finally:
                    aclose = getattr(ait, "aclose", None)
                    if aclose is not None:
                        await aclose()
                unset_flag(CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(CONSUMER_FETCHING)


async def _hand_over(self, ait, callback, get_read_offset, set_read_offset, commit_every, acks_enabled_for) -> None:
    """Hand one fetch's records to the streams, in order, until the flow is suspended."""
    since_yield = 0
    async for tp, message in ait:
        since_yield += 1
        if since_yield > 100:
            await asyncio.sleep(0)
            since_yield = 0
        offset = message.offset
        r_offset = get_read_offset(tp)
        if r_offset is not None and offset < r_offset:
            self.log.dev("DROPPED MESSAGE ROFF %r", offset)
            continue
        if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
            await self._add_gap(tp, r_offset + 1, offset)
        if commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            await self.commit()
        handover = callback(message)
        outcome = await self.wait_first(handover, self.suspend_flow.wait())
        if handover not in outcome.done or self.suspend_flow.is_set():
            # The flow was suspended (a rebalance began) or the consumer stopped while this record
            # was handed over: a stream may not have it, or has it in a queue that resuming the flow
            # empties. It stays unread, and so does the rest of this fetch; they are fetched again
            # from the committed offset after the rebalance.
            return
        set_read_offset(tp, offset)
