"""The worker's self-healing parts on their own: task supervision, the log's repeat filter, and dead
letters that always fit on the broker."""

from __future__ import annotations

import asyncio
import hashlib
import logging

import pytest

from agents.logs import RepeatFilter
from agents.supervision import Supervisor, backoff
from streams.routing import (
    MAX_DEAD_LETTER_KEY_BYTES,
    MAX_DEAD_LETTER_PAYLOAD_BYTES,
    MAX_RECEIPT_BYTES,
    InputRecord,
    decode_dead_letter,
)


class App:
    """What the supervisor needs of a faust app: whether it is stopping."""

    should_stop = False

    def task(self, fn):  # the worker registers supervised tasks with faust; here they are run directly
        return fn


def quick_supervisor(**kwargs) -> Supervisor:
    return Supervisor(App(), backoff_initial=0.01, backoff_cap=0.02, **kwargs)


def test_a_task_that_fails_is_restarted_and_counted():
    supervisor = quick_supervisor()
    runs = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("boom")
        supervisor.app.should_stop = True  # third run: the worker stops, the task ends with it
        await asyncio.sleep(0)

    asyncio.run(supervisor.supervise("checkpointer", flaky))
    state = supervisor.tasks["checkpointer"]
    assert len(runs) == 3
    assert state.restarts == 2 and state.last_error == "RuntimeError"  # the third run ended with the worker


def test_a_cancelled_task_is_restarted_unless_the_worker_stops():
    supervisor = quick_supervisor()
    starts = []

    async def long_running() -> None:
        starts.append(1)
        if len(starts) == 2:
            supervisor.app.should_stop = True
        await asyncio.sleep(3600)

    async def main() -> None:
        running = asyncio.ensure_future(supervisor.supervise("health-monitor", long_running))
        await asyncio.sleep(0.05)
        assert supervisor.cancel("health-monitor")  # as an outage did to the checkpointer
        await asyncio.sleep(0.1)
        assert len(starts) == 2 and supervisor.tasks["health-monitor"].up
        running.cancel()  # the worker stops: the supervisor ends with it, no restart
        with pytest.raises(asyncio.CancelledError):
            await running

    asyncio.run(main())
    assert supervisor.tasks["health-monitor"].restarts == 1
    assert not supervisor.tasks["health-monitor"].up


def test_a_task_that_keeps_failing_with_the_broker_up_stops_the_worker(monkeypatch):
    supervisor = quick_supervisor(give_up_after=3)
    stopped = []
    monkeypatch.setattr(supervisor, "give_up", lambda name, why=None: (stopped.append(name), setattr(supervisor, "exit_code", 1)))

    async def broken() -> None:
        raise ValueError("never works")

    asyncio.run(supervisor.supervise("policy-watch", broken))
    assert stopped == ["policy-watch"] and supervisor.exit_code == 1
    assert supervisor.tasks["policy-watch"].failures_in_a_row == 3


def test_failures_while_the_broker_is_away_do_not_stop_the_worker():
    broker = {"up": False}
    supervisor = quick_supervisor(give_up_after=2, broker_up=lambda: broker["up"])
    runs = []

    async def waits_for_the_broker() -> None:
        runs.append(1)
        if len(runs) == 6:
            supervisor.app.should_stop = True
        raise ConnectionError("broker away")

    asyncio.run(supervisor.supervise("checkpointer", waits_for_the_broker))
    assert len(runs) == 6 and supervisor.exit_code is None


def test_backoff_is_exponential_capped_and_jittered():
    delays = [backoff(n, 1.0, 30.0) for n in range(8)]
    assert 0.8 <= delays[0] <= 1.2 and 1.6 <= delays[1] <= 2.4
    assert all(d <= 36.0 for d in delays) and delays[-1] >= 24.0
    assert len({round(backoff(3), 6) for _ in range(20)}) > 1  # jitter: restarts do not march in step


def record(name: str, msg: str, *args) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)


def test_repeats_of_a_client_library_message_are_held_back_then_counted(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("agents.logs.time.monotonic", lambda: clock[0])
    repeat = RepeatFilter(window=60)
    first = record("aiokafka.conn", "Unable connect to node with id %s", 1)
    assert repeat.filter(first)
    assert not any(repeat.filter(record("aiokafka.conn", "Unable connect to node with id %s", n)) for n in range(500))
    assert repeat.filter(record("aiokafka.client", "Unable to update metadata from %s", [1]))  # another template
    clock[0] += 61
    summary = record("aiokafka.conn", "Unable connect to node with id %s", 1)
    assert repeat.filter(summary) and "[and 500 more like it in the last 60s]" in summary.getMessage()


def test_masb_messages_are_never_held_back():
    repeat = RepeatFilter(window=60)
    assert all(repeat.filter(record("masb.router", "refused %s: %s", "WIRE_FORMAT", "x")) for _ in range(10))


# -- dead letters always fit ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def router(tmp_path_factory):
    """The pure router (no Kafka) of a demo deployment with fresh keys."""
    from agents.app import load_identity
    from agents.deployment import prepare_deployment
    from streams.routing import Router
    from streams.topics import Topics

    deployment = prepare_deployment(tmp_path_factory.mktemp("router"))
    return Router(deployment.policy, load_identity(deployment.policy, deployment.keys_dir), Topics())


def test_an_oversized_record_is_referenced_not_copied(router):
    value = b"\x01" * (1024 * 1024)
    key = b"K" * (MAX_DEAD_LETTER_KEY_BYTES + 1)
    refusal = router.admit(InputRecord("case-events", 0, 41, key, value))
    letter = decode_dead_letter(refusal.dead_letter)
    assert refusal.reason_code == "OVERSIZED"
    assert letter["payload"] is None and letter["original_key"] is None
    assert letter["payload_sha256"] == hashlib.sha256(value).hexdigest()
    assert (letter["source_topic"], letter["source_partition"], letter["source_offset"]) == ("case-events", 0, 41)
    assert "not copied" in letter["reason"] and "case-events/0/41" in letter["reason"]
    assert len(refusal.dead_letter) < 4096


def test_a_record_within_the_limit_is_kept_whole(router):
    value = b"\x02" * MAX_DEAD_LETTER_PAYLOAD_BYTES
    key = b"7e991d37fc3c56b7.4a257354b8b06162ba25bbfae45e7f00"  # a case pseudonym (docs/keys.md)
    letter = decode_dead_letter(router.admit(InputRecord("case-events", 0, 1, key, value)).dead_letter)
    assert letter["payload"] == value and letter["original_key"] == key


def test_a_key_in_clear_is_not_kept_in_the_dead_letter_topic(router):
    """The dead-letter topic is kept forever: a case reference used as a key must not be copied."""
    letter = decode_dead_letter(router.admit(InputRecord("case-events", 0, 2, b"WM-ABC123456", b"\x02")).dead_letter)
    assert letter["original_key"] is None and letter["payload"] == b"\x02"
    assert "record key of 12 bytes not copied: not a case pseudonym" in letter["reason"]


def test_an_oversized_receipt_is_refused_before_it_is_decoded(router):
    refusal = router.receipt(InputRecord("receipts", 0, 7, None, b"\x01" * (MAX_RECEIPT_BYTES + 1)))
    assert refusal.reason_code == "OVERSIZED"
    assert decode_dead_letter(refusal.dead_letter)["payload"] == b"\x01" * (MAX_RECEIPT_BYTES + 1)


def test_a_record_the_broker_refused_is_dead_lettered_by_reference(router):
    original = InputRecord("case-events", 0, 9, b"WM-ABC123456", b"sealed publication bytes")
    refusal = router.send_refused(original, "partner.nhs-worcs-acute", 2_000_000, "MessageSizeTooLargeError")
    letter = decode_dead_letter(refusal.dead_letter)
    assert refusal.reason_code == "SEND_REFUSED"
    assert letter["payload"] is None and letter["original_key"] is None
    assert letter["payload_sha256"] == hashlib.sha256(b"sealed publication bytes").hexdigest()
    assert "partner.nhs-worcs-acute" in letter["reason"] and "case-events/0/9" in letter["reason"]


def test_a_rebalance_cancellation_is_one_line_without_a_traceback():
    try:
        raise asyncio.CancelledError()
    except asyncio.CancelledError:
        import sys

        crashed = logging.LogRecord("faust.agents.agent", logging.ERROR, __file__, 1, "Crashed reason=%r",
                                    (asyncio.CancelledError(),), sys.exc_info())
    assert RepeatFilter().filter(crashed) and crashed.exc_info is None
    formatted = logging.Formatter().format(crashed)
    assert "Traceback" not in formatted and formatted.startswith("Crashed reason=CancelledError")
