"""What the worker knows about its own health: served as /health and /ready, and as metrics.

Components (docs/operations.md, "Health"):

- broker: a probe every ``health_interval`` seconds asks the cluster for the group's committed
  offsets and the input partitions' end offsets; it is ``ok`` while that answers within 5 s.
- tasks: every supervised task and faust agent, up or waiting to restart (agents/supervision.py).
- partitions: each input partition assigned to this worker (case-events, receipts) is ``idle``
  (nothing waiting), ``moving`` (the committed offset moved recently) or ``stalled`` (records wait
  and the committed offset has not moved for ``stall_seconds``).
- checkpoint: how long audit entries have waited for a signed checkpoint, against the interval.

``/health`` (liveness) answers 200 unless the worker is failing for good (a task that could not be
restarted: the worker is about to exit); its body reports every component, so an outage shows
there while it lasts. ``/ready`` (readiness) answers 200 only when every component is ok.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import TopicPartition
from prometheus_client import Gauge

from streams.kafka import consumer, start_client, stop_quietly

log = logging.getLogger("masb.health")

BROKER_UP = Gauge("masb_broker_up", "1 while the worker's last probe of the Kafka cluster succeeded")
PARTITION_LAG = Gauge("masb_partition_lag", "Records of an assigned input partition after the committed offset",
                      ["topic", "partition"])
PARTITION_STALLED = Gauge("masb_partition_stalled",
                          "1 while records wait on an input partition whose committed offset has not moved for "
                          "the stall threshold", ["topic", "partition"])
PARTITION_PROGRESS_AGE = Gauge("masb_partition_progress_age_seconds",
                               "Seconds since the committed offset of an assigned input partition last moved",
                               ["topic", "partition"])
CHECKPOINT_AGE = Gauge("masb_audit_checkpoint_age_seconds",
                       "Seconds since the last signed checkpoint while audit entries wait for one (0 when none wait)")
UNSIGNED_ENTRIES = Gauge("masb_audit_unsigned_entries", "Audit entries read but not yet covered by a signed checkpoint")

PROBE_TIMEOUT = 5.0
SUMMARY_EVERY = 60.0  # while the broker stays away, one line a minute says so


@dataclass
class PartitionState:
    committed: int = -1
    end: int = 0
    progress_at: float = field(default_factory=lambda: time.monotonic())
    state: str = "idle"
    mine: bool = False   # assigned to this worker (it routes it)

    def as_json(self, topic: str, partition: int) -> dict:
        return {"topic": topic, "partition": partition, "state": self.state, "lag": max(0, self.end - self.committed),
                "seconds_since_progress": round(time.monotonic() - self.progress_at, 1), "this_worker": self.mine}


@dataclass
class CheckpointState:
    interval: float
    active: bool = True         # False on a worker whose checkpointer is on standby
    log_size: int = 0           # entries read from the exchange log
    signed_size: int = 0
    signed_at: float = field(default_factory=time.monotonic)
    halted: str | None = None   # why checkpointing stopped for good (an audit log gap), if it did

    @property
    def stale_after(self) -> float:
        return 3 * self.interval + 10

    def age(self) -> float:
        return time.monotonic() - self.signed_at if self.active and self.log_size > self.signed_size else 0.0

    def ok(self) -> bool:
        return self.halted is None and self.age() <= self.stale_after

    def as_json(self) -> dict:
        return {"active": self.active, "unsigned_entries": max(0, self.log_size - self.signed_size),
                "signed_size": self.signed_size, "age_seconds": round(self.age(), 1),
                "interval_seconds": self.interval, "stale": self.age() > self.stale_after, "halted": self.halted}


class Health:
    def __init__(self, bootstrap: str, group_id: str, input_topics: Iterable[str], supervisor, *,
                 assigned: Callable[[], Iterable[tuple[str, int]]], checkpoint_interval: float,
                 interval: float = 5.0, stall_seconds: float = 60.0, wedged_seconds: float = 300.0) -> None:
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.input_topics = set(input_topics)
        self.supervisor = supervisor
        self.assigned = assigned
        self.interval = interval
        self.stall_seconds = stall_seconds
        self.wedged_seconds = wedged_seconds
        self.broker_ok: bool | None = None  # None until the first probe
        self.broker_since = time.monotonic()
        self._outage_logged_at = self.broker_since  # when the log last said the broker is away
        self.broker_error: str | None = None
        self.partitions: dict[tuple[str, int], PartitionState] = {}
        self._gauged: set[tuple[str, int]] = set()  # partitions whose gauges this worker serves
        self.checkpoint = CheckpointState(checkpoint_interval)
        CHECKPOINT_AGE.set_function(self.checkpoint.age)
        UNSIGNED_ENTRIES.set_function(lambda: max(0, self.checkpoint.log_size - self.checkpoint.signed_size))

    # -- the checkpointer reports here ------------------------------------------------------
    def checkpoint_read(self, log_size: int) -> None:
        self.checkpoint.log_size = log_size

    def checkpoint_signed(self, size: int) -> None:
        self.checkpoint.signed_size, self.checkpoint.signed_at = size, time.monotonic()

    # -- probing -----------------------------------------------------------------------------
    def _offsets_client(self):
        # A consumer of the worker's group that never joins it: it only asks for the group's
        # committed offsets (OffsetFetch) and the partitions' end offsets.
        return consumer(self.bootstrap, group_id=self.group_id, request_timeout_ms=int(PROBE_TIMEOUT * 1000))

    async def run(self) -> None:
        """Probe forever (a supervised task); one client, closed on exit."""
        offsets = self._offsets_client()
        started = False
        try:
            while True:
                try:
                    if not started:
                        await start_client(offsets, self.bootstrap)
                        started = True
                    await asyncio.wait_for(self._probe(offsets), PROBE_TIMEOUT * 2)
                    self._broker(True, None)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any failure of the probe means the broker is away
                    self._broker(False, type(exc).__name__)
                    if not started:  # a client that failed to start is closed: make a fresh one
                        offsets = self._offsets_client()
                await asyncio.sleep(self.interval)
        finally:
            await stop_quietly(offsets)

    def _broker(self, ok: bool, error: str | None) -> None:
        """Record one probe's outcome; log when the broker goes away or comes back, and once every
        SUMMARY_EVERY seconds of an outage how long it has lasted (counted from the first failed probe)."""
        BROKER_UP.set(1 if ok else 0)
        now = time.monotonic()
        if ok != self.broker_ok:
            if ok and self.broker_ok is False:
                log.warning("Kafka at %s reachable again after %.0fs", self.bootstrap, now - self.broker_since)
            elif not ok:
                log.error("Kafka at %s %s (%s); routing waits and resumes by itself", self.bootstrap,
                          "is unreachable" if self.broker_ok is None else "became unreachable", error)
            self.broker_ok, self.broker_since, self._outage_logged_at = ok, now, now
        elif not ok and now - self._outage_logged_at >= SUMMARY_EVERY:
            self._outage_logged_at = now
            log.error("Kafka at %s still unreachable, for %.0fs now (%s); routing resumes by itself when it is back",
                      self.bootstrap, now - self.broker_since, error)
        self.broker_error = error

    async def _probe(self, offsets) -> None:
        # Every partition of the input topics, not only this worker's: a partition no worker moves
        # (its owner died, or a rebalance did not finish) must show on every worker's /ready.
        mine = {(t, p) for t, p in self.assigned() if t in self.input_topics}
        await offsets._client.force_metadata_update()
        everyone = {(t, p) for t in self.input_topics for p in (offsets.partitions_for_topic(t) or ())}
        tps = sorted(mine | everyone)
        kafka_tps = [TopicPartition(t, p) for t, p in tps]
        committed = {tp: await offsets.committed(tp) for tp in kafka_tps}
        ends = await offsets.end_offsets(kafka_tps) if kafka_tps else {}
        begins = await offsets.beginning_offsets(kafka_tps) if kafka_tps else {}
        now = time.monotonic()
        for tp in kafka_tps:
            key = (tp.topic, tp.partition)
            offset = committed.get(tp)
            position = max(offset if offset is not None and offset >= 0 else 0, begins.get(tp, 0))
            state = self.partitions.setdefault(key, PartitionState(committed=position))
            state.mine = key in mine
            if position != state.committed:
                state.committed, state.progress_at = position, now
            state.end = ends.get(tp, state.end)
            waiting = state.end > state.committed
            if waiting and state.state == "idle":  # records just arrived: the stall clock starts now
                state.progress_at = now
            stalled = waiting and now - state.progress_at > self.stall_seconds
            previous, state.state = state.state, ("stalled" if stalled else "moving" if waiting else "idle")
            owner = "this worker" if state.mine else "another worker"
            if state.state == "stalled" and previous != "stalled":
                log.error("partition %s/%d (%s) is stalled: %d records wait and its committed offset has not moved "
                          "for %.0fs", tp.topic, tp.partition, owner, state.end - state.committed,
                          now - state.progress_at)
            elif previous == "stalled" and state.state != "stalled":
                log.warning("partition %s/%d moves again", tp.topic, tp.partition)
            labels = (tp.topic, str(tp.partition))
            if state.mine:  # each partition's gauges come from the worker that routes it
                PARTITION_LAG.labels(*labels).set(max(0, state.end - state.committed))
                PARTITION_STALLED.labels(*labels).set(1 if stalled else 0)
                PARTITION_PROGRESS_AGE.labels(*labels).set(now - state.progress_at)
        self._restart_if_wedged(now)
        for key in set(self.partitions) - set(tps):  # the topic shrank or went away
            del self.partitions[key]
        for key in self._gauged - mine:  # revoked: another worker reports it now
            for gauge in (PARTITION_LAG, PARTITION_STALLED, PARTITION_PROGRESS_AGE):
                gauge.remove(key[0], str(key[1]))
        self._gauged = mine

    def _restart_if_wedged(self, now: float) -> None:
        # Records of this worker's own partitions have waited `wedged_seconds`, the broker has answered
        # for as long, and so long has the router had nothing to do: its Kafka consumer is wedged
        # (aiokafka can stay stuck after a group coordinator dies mid-rebalance, aiokafka#1154), and
        # only a new process gets the records moving. The service manager restarts the worker.
        if not self.wedged_seconds or not self.broker_ok:
            return
        router = self.supervisor.tasks.get("router")
        if router is None or router.doing != "waiting for records":
            return
        for (topic, partition), state in sorted(self.partitions.items()):
            waited = now - state.progress_at
            if (state.mine and state.state == "stalled" and waited > self.wedged_seconds
                    and now - self.broker_since > self.wedged_seconds and now - router.doing_since > self.wedged_seconds):
                self.supervisor.give_up("router", f"has been waiting for records for {waited:.0f}s while "
                                        f"{state.end - state.committed} wait on its partition {topic}/{partition} "
                                        "(a wedged Kafka consumer)")
                return

    # -- reporting ---------------------------------------------------------------------------
    def report(self) -> dict:
        tasks = {name: state.as_json() for name, state in sorted(self.supervisor.tasks.items())}
        partitions = [state.as_json(t, p) for (t, p), state in sorted(self.partitions.items())]
        broker = {"ok": bool(self.broker_ok), "since_seconds": round(time.monotonic() - self.broker_since, 1),
                  "error": self.broker_error, "bootstrap": self.bootstrap}
        problems = []
        if not self.broker_ok:
            problems.append("broker unreachable" if self.broker_ok is False else "broker not probed yet")
        problems += [f"task {name} is not running" for name, t in tasks.items() if not t["up"]]
        problems += [f"partition {p['topic']}/{p['partition']} is stalled"
                     + ("" if p["this_worker"] else " (routed by another worker, or by none)")
                     for p in partitions if p["state"] == "stalled"]
        if self.checkpoint.halted:
            problems.append(f"checkpointing halted: {self.checkpoint.halted}")
        elif not self.checkpoint.ok():
            problems.append("audit entries wait longer than the checkpoint interval allows")
        failing = self.supervisor.exit_code is not None
        status = "failing" if failing else "degraded" if problems else "ok"
        return {"status": status, "problems": problems, "broker": broker, "tasks": tasks,
                "partitions": partitions, "checkpoint": self.checkpoint.as_json()}
