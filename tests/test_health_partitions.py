"""The partition states /ready reports (agents/health.py): a partition that was idle for a long time
is not "stalled" the moment records arrive; one whose records wait past the threshold is."""

from __future__ import annotations

import asyncio

import agents.health as health_module
from agents.health import Health
from agents.supervision import Supervisor

TOPIC = "case-events"


class Offsets:
    """The three answers the probe reads from Kafka (committed, end and beginning offsets) for one
    partition, set by the test; the probe's own logic is what is under test."""

    def __init__(self) -> None:
        self.committed_offset, self.end = 0, 0

        class Client:
            async def force_metadata_update(self):
                return True
        self._client = Client()

    def partitions_for_topic(self, topic):
        return {0}

    async def committed(self, tp):
        return self.committed_offset

    async def end_offsets(self, tps):
        return {tp: self.end for tp in tps}

    async def beginning_offsets(self, tps):
        return {tp: 0 for tp in tps}


def probe_at(monkeypatch, health: Health, offsets: Offsets, now: float) -> dict:
    monkeypatch.setattr(health_module.time, "monotonic", lambda: now)
    asyncio.run(health._probe(offsets))
    (state,) = [p for p in health.report()["partitions"] if p["topic"] == TOPIC]
    return state


def make_health(monkeypatch) -> Health:
    monkeypatch.setattr(health_module.time, "monotonic", lambda: 0.0)
    return Health("127.0.0.1:1", "g", [TOPIC], Supervisor(app=None), assigned=lambda: [(TOPIC, 0)],
                  checkpoint_interval=60, stall_seconds=60)


def test_records_arriving_after_a_long_idle_spell_are_not_a_stall(monkeypatch):
    health, offsets = make_health(monkeypatch), Offsets()
    assert probe_at(monkeypatch, health, offsets, 1.0)["state"] == "idle"
    offsets.end = 2                                   # 12 minutes of nothing, then two records
    assert probe_at(monkeypatch, health, offsets, 721.0)["state"] == "moving"
    offsets.committed_offset = 2                      # routed a moment later
    assert probe_at(monkeypatch, health, offsets, 722.0)["state"] == "idle"
    assert "stalled" not in str(health.report()["problems"])


def test_records_that_wait_past_the_threshold_are_a_stall(monkeypatch):
    health, offsets = make_health(monkeypatch), Offsets()
    probe_at(monkeypatch, health, offsets, 1.0)
    offsets.end = 2
    assert probe_at(monkeypatch, health, offsets, 500.0)["state"] == "moving"
    assert probe_at(monkeypatch, health, offsets, 559.0)["state"] == "moving"
    stalled = probe_at(monkeypatch, health, offsets, 561.0)
    assert stalled["state"] == "stalled" and stalled["lag"] == 2
    assert f"partition {TOPIC}/0 is stalled" in health.report()["problems"]
    offsets.committed_offset = 2
    assert probe_at(monkeypatch, health, offsets, 562.0)["state"] == "idle"


def wedged_worker(monkeypatch, router_doing="waiting for records"):
    monkeypatch.setattr(health_module.time, "monotonic", lambda: 0.0)
    supervisor = Supervisor(app=None)
    supervisor.doing("router", router_doing)
    given_up = []
    monkeypatch.setattr(supervisor, "give_up", lambda name, why=None: given_up.append((name, why)))
    health = Health("127.0.0.1:1", "g", [TOPIC], supervisor, assigned=lambda: [(TOPIC, 0)],
                    checkpoint_interval=60, stall_seconds=60, wedged_seconds=300)
    health._broker(True, None)
    return health, given_up


def test_a_worker_whose_records_wait_while_its_router_idles_stops_to_be_restarted(monkeypatch):
    health, given_up = wedged_worker(monkeypatch)
    offsets = Offsets()
    probe_at(monkeypatch, health, offsets, 1.0)
    offsets.end = 5
    probe_at(monkeypatch, health, offsets, 10.0)
    probe_at(monkeypatch, health, offsets, 300.0)
    assert given_up == []                              # stalled, not yet wedged
    probe_at(monkeypatch, health, offsets, 311.0)
    ((name, why),) = given_up
    assert name == "router" and "5 wait on its partition case-events/0" in why


def test_a_busy_router_or_a_broker_that_was_away_is_not_a_wedged_consumer(monkeypatch):
    health, given_up = wedged_worker(monkeypatch, router_doing="sending 12 records")
    offsets = Offsets()
    probe_at(monkeypatch, health, offsets, 1.0)
    offsets.end = 5
    probe_at(monkeypatch, health, offsets, 10.0)
    probe_at(monkeypatch, health, offsets, 400.0)
    assert given_up == []                              # the router is at work: a stall, not a wedge

    health, given_up = wedged_worker(monkeypatch)
    probe_at(monkeypatch, health, offsets := Offsets(), 1.0)
    offsets.end = 5
    probe_at(monkeypatch, health, offsets, 10.0)
    monkeypatch.setattr(health_module.time, "monotonic", lambda: 200.0)
    health._broker(False, "KafkaConnectionError")      # the broker went away and came back
    monkeypatch.setattr(health_module.time, "monotonic", lambda: 250.0)
    health._broker(True, None)
    probe_at(monkeypatch, health, offsets, 400.0)
    assert given_up == []


def test_a_router_that_routed_other_partitions_after_the_stall_began_still_counts_as_idle(monkeypatch):
    """The stall began, the router then routed another partition's batch and has idled since: once
    both last longer than the threshold, the consumer is wedged."""
    health, given_up = wedged_worker(monkeypatch)
    offsets = Offsets()
    probe_at(monkeypatch, health, offsets, 1.0)
    offsets.end = 5
    probe_at(monkeypatch, health, offsets, 10.0)
    monkeypatch.setattr(health_module.time, "monotonic", lambda: 20.0)
    health.supervisor.doing("router", "sending 3 records")
    health.supervisor.doing("router", "waiting for records")
    probe_at(monkeypatch, health, offsets, 315.0)
    assert given_up == []                              # idle for 295 s only
    probe_at(monkeypatch, health, offsets, 321.0)
    assert [name for name, _ in given_up] == ["router"]


def test_a_stall_that_began_with_a_broker_outage_is_a_wedge_once_the_broker_has_answered_long_enough(monkeypatch):
    health, given_up = wedged_worker(monkeypatch)
    offsets = Offsets()
    probe_at(monkeypatch, health, offsets, 1.0)
    offsets.end = 5
    probe_at(monkeypatch, health, offsets, 10.0)     # the stall begins as a broker stops ...
    monkeypatch.setattr(health_module.time, "monotonic", lambda: 10.5)
    health._broker(False, "KafkaConnectionError")
    monkeypatch.setattr(health_module.time, "monotonic", lambda: 11.0)
    health._broker(True, None)                       # ... and the cluster answers again at once
    probe_at(monkeypatch, health, offsets, 305.0)
    assert given_up == []
    probe_at(monkeypatch, health, offsets, 312.0)
    assert [name for name, _ in given_up] == ["router"]
