"""The worker's book in RocksDB (streams/deadline_store.py) answers exactly as the book in a dict.

Random exchange logs (deliveries with and without deadlines, receipts before and after their
delivery, escalations, closures, non-deliveries, the agent's own actions written back, drops) are
folded into a book over each store, and after every step both must agree on what is tracked, what
is due at several times, what is dropped, what is overdue and what is escalated. The RocksDB book
must also keep its indexes exact: a tracking changed or removed leaves no index key behind.
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.audit.entry import decode_entry, encode_entry
from streams.deadline_store import RocksTrackings
from streams.deadlines import DeadlineBook, MemoryTrackings
from tests.test_deadlines import POLICY, T0, TOPIC, delivery, entry, receipt

EVENTS = ["3f0c1b2a-9d4e-4c1a-8f00-5b7e2d9a6c10", "11111111-1111-4111-8111-111111111111"]
AGENCIES = ["council-housing", "nhs-test-health"]
HOURS = st.integers(0, 24 * 40)


def steps():
    target = st.tuples(st.sampled_from(EVENTS), st.sampled_from(AGENCIES))
    return st.lists(st.one_of(
        st.tuples(st.just("delivery"), target, HOURS, st.sampled_from([2, 6, 30])),
        st.tuples(st.just("receipt"), target, HOURS, st.sampled_from(["RECEIVED", "ACKNOWLEDGED"])),
        st.tuples(st.just("tick"), target, HOURS, st.just(0)),
        st.tuples(st.just("drop"), target, HOURS, st.just(0)),
    ), max_size=25)


class EveryTracking(MemoryTrackings):
    """The book as it was before the index by next due time: every look reads every tracking."""

    def due(self, now):
        return sorted(self.items.values(), key=lambda t: t.key)


def _same(memory: DeadlineBook, rocks: DeadlineBook, now) -> None:
    assert len(rocks) == len(memory)
    assert {k: t.to_json() for k, t in rocks.trackings.items()} == {k: t.to_json() for k, t in memory.trackings.items()}
    for at in (now, now + timedelta(hours=7), now + timedelta(days=3), now + timedelta(days=60)):
        assert [(a.kind, a.action_id) for a in rocks.due_actions(at)] == [(a.kind, a.action_id) for a in memory.due_actions(at)]
        assert rocks.due_drops(at, timedelta(days=30)) == memory.due_drops(at, timedelta(days=30))
        assert rocks.overdue_by_agency(at) == memory.overdue_by_agency(at)
    assert rocks.open_escalations_by_agency() == memory.open_escalations_by_agency()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps())
def test_the_rocksdb_book_answers_as_the_book_in_memory(tmp_path_factory, plan):
    store = RocksTrackings(tmp_path_factory.mktemp("book") / "db")
    memory, rocks, scan = DeadlineBook(), DeadlineBook(store=store), DeadlineBook(store=EveryTracking())
    position = 0
    try:
        for kind, (event_id, agency), hours, extra in plan:
            now = T0 + timedelta(hours=hours)
            if kind == "delivery":
                folded = [delivery(now, agency, event_id, hours=extra)]
            elif kind == "receipt":
                folded = [receipt(now, extra, agency, event_id)]
            elif kind == "tick":  # the agent's actions, written to the log and folded back
                actions = memory.due_actions(now)
                assert [a.action_id for a in rocks.due_actions(now)] == [a.action_id for a in actions]
                folded = [decode_entry(encode_entry(a.entry(POLICY, TOPIC, None))) for a in actions]
            else:
                for key in memory.due_drops(now, timedelta(days=30)):
                    memory.drop(key)
                    rocks.drop(key)
                    scan.drop(key)
                folded = []
            for e in folded:
                memory.apply(position, e, POLICY, now)
                rocks.apply(position, e, POLICY, now)
                scan.apply(position, e, POLICY, now)
                position += 1
            _same(memory, rocks, now)
            _same(scan, memory, now)  # next_due never hides a tracking that has something due
        # Remove everything: no index key may be left behind.
        for key in list(memory.trackings):
            rocks.drop(key)
        assert len(rocks) == 0 and list(store.db.keys()) == []
    finally:
        store.close()


def test_a_look_at_the_clock_reads_only_what_is_due(tmp_path):
    store = RocksTrackings(tmp_path / "db")
    book = DeadlineBook(store=store)
    try:
        for i in range(200):
            event_id = f"00000000-0000-4000-8000-{i:012d}"
            book.apply(i, delivery(T0 + timedelta(minutes=i), event_id=event_id, hours=6), POLICY, T0)
        assert len(store.due(T0 + timedelta(hours=6, minutes=9, seconds=30))) == 10  # the first ten deadlines
        assert book.overdue_by_agency(T0 + timedelta(hours=6, minutes=4)) == {"council-housing": 5}
        kinds = {a.kind for a in book.due_actions(T0 + timedelta(hours=6, minutes=1))}
        assert kinds == {"ESCALATION"}
        book.apply(200, entry("ESCALATION", T0 + timedelta(hours=6), event_id="00000000-0000-4000-8000-000000000000",
                              level=1), POLICY, T0)
        assert book.open_escalations_by_agency() == {"council-housing": 1}
    finally:
        store.close()
