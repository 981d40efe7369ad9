"""The deadline book (streams/deadlines.py) as a pure fold of the exchange log, with a moved clock; the
audit entry format 0x02; the report's view of escalations and redrives; the test clock; redrive rules;
the unit's status view. Kafka-level behaviour is in tests/test_deadlines_kafka.py."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.audit.entry import AuditEntryError, decode_entry, encode_entry, make_entry
from streams.audit.report import Filters, build_report, render_html
from streams.clock import ClockError, FileClock, clock_from_setting
from streams.deadlines import DeadlineBook, Tracking, human_duration
from streams.policy import parse_policy
from streams.redrive import decode_request, encode_request, plan_redrive, why_not_redrivable
from streams.topics import Topics

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 11, 27, 19, 30, tzinfo=timezone.utc)
EVENT = "3f0c1b2a-9d4e-4c1a-8f00-5b7e2d9a6c10"
TOPIC = "audit.exchange"


def policy(required="RECEIVED", again="PT18H", expiry=None):
    d = yaml.safe_load((ROOT / "tests/fixtures/policy/valid.yaml").read_text())
    housing = next(a for a in d["agreements"] if a["id"] == "isa-housing")
    housing["required_receipt"] = required
    if again:
        housing["escalate_again_after"] = again
    if expiry:
        d["deadlines"] = {"expiry": expiry}
    return parse_policy(copy.deepcopy(d))


POLICY = policy()


def entry(kind, at, agency="council-housing", event_id=EVENT, **fields) -> dict:
    """An entry as the agent reads it: encoded and decoded again."""
    return decode_entry(encode_entry(make_entry(kind, recorded_at=at, event_id=event_id, agency_id=agency,
                                                policy_version=4, **fields)))


def delivery(at=T0, agency="council-housing", event_id=EVENT, hours=6):
    return entry("DELIVERY", at, agency, event_id, event_type="MARAC_REFERRAL", unit_id="hau-south",
                 area="worcestershire", agreement_id="isa-housing", agreement_version=1,
                 envelope_sha256="ab" * 32, recipient_key_id="3e7b7076d6173182",
                 deliver_by=at + timedelta(hours=hours), source="case-events/0/7")


def receipt(at, status="RECEIVED", agency="council-housing", event_id=EVENT):
    return entry("RECEIPT", at, agency, event_id, envelope_sha256="ab" * 32, reason=f"{status} at {at.isoformat()}")


class Log:
    """A tiny exchange log: entries at offsets, and a book folded over it with what the agent writes back."""

    def __init__(self, book_policy=POLICY):
        self.entries: list[dict] = []
        self.book = DeadlineBook()
        self.policy = book_policy
        self.notices: list[tuple[str, int]] = []

    def append(self, e: dict, now: datetime | None = None) -> None:
        self.entries.append(e)
        folded = self.book.apply(len(self.entries) - 1, e, self.policy, now or e["recorded_at"])
        self.notices += [(n.kind, n.level) for n in folded.notices]

    def tick(self, now: datetime) -> list:
        actions = self.book.due_actions(now)
        for action in actions:  # the agent writes each action's entry; it comes back through the log
            self.append(decode_entry(encode_entry(action.entry(self.policy, TOPIC, None))), now)
        return [(a.kind, a.level, a.reason_code) for a in actions]


def test_escalated_once_at_the_deadline_again_at_the_second_threshold_then_closed_by_a_late_receipt():
    log = Log()
    log.append(delivery())
    assert log.notices == [("DELIVERED", 0)]
    assert log.tick(T0 + timedelta(hours=6) - timedelta(seconds=1)) == []
    assert log.tick(T0 + timedelta(hours=6)) == [("ESCALATION", 1, "NOT_RECEIVED")]
    assert log.tick(T0 + timedelta(hours=7)) == []  # recorded: never twice
    assert log.book.overdue_by_agency(T0 + timedelta(hours=7)) == {"council-housing": 1}
    assert log.tick(T0 + timedelta(hours=24)) == [("ESCALATION", 2, "NOT_RECEIVED")]
    log.append(receipt(T0 + timedelta(hours=25)))
    assert log.book.overdue_by_agency(T0 + timedelta(hours=25)) == {}
    assert log.tick(T0 + timedelta(hours=25)) == [("ESCALATION_CLOSED", 2, "RECEIVED_LATE")]
    assert log.tick(T0 + timedelta(hours=26)) == []
    assert log.book.open_escalations_by_agency() == {}
    assert log.notices == [("DELIVERED", 0), ("RECEIVED", 0)]  # action notices are sent with the action
    closed = log.entries[-1]
    assert closed["kind"] == "ESCALATION_CLOSED" and closed["reason"].startswith(
        "RECEIVED receipt from council-housing recorded at 2026-11-28T20:30:00Z, 19 h after the deadline")


def test_a_receipt_in_time_means_nothing_happens_and_an_acknowledgement_ends_tracking():
    log = Log()
    log.append(delivery())
    log.append(receipt(T0 + timedelta(hours=1)))
    assert log.tick(T0 + timedelta(days=30)) == []
    assert len(log.book) == 1  # still waiting for the business acknowledgement (for the unit's view)
    log.append(receipt(T0 + timedelta(hours=2), "ACKNOWLEDGED"))
    assert len(log.book) == 0 and log.notices == [("DELIVERED", 0), ("RECEIVED", 0), ("ACKNOWLEDGED", 0)]


def test_an_agreement_that_requires_acknowledgement_escalates_despite_a_receipt():
    log = Log(policy(required="ACKNOWLEDGED"))
    log.append(delivery())
    log.append(receipt(T0 + timedelta(hours=1)))
    assert log.tick(T0 + timedelta(hours=6)) == [("ESCALATION", 1, "NOT_ACKNOWLEDGED")]
    log.append(receipt(T0 + timedelta(hours=8), "ACKNOWLEDGED"))
    assert log.tick(T0 + timedelta(hours=8)) == [("ESCALATION_CLOSED", 1, "ACKNOWLEDGED_LATE")]
    assert len(log.book) == 0


def test_expiry_sends_a_non_delivery_report_and_ends_tracking():
    log = Log(policy(again=None, expiry="P2D"))
    log.append(delivery())
    assert log.tick(T0 + timedelta(hours=6)) == [("ESCALATION", 1, "NOT_RECEIVED")]
    assert log.tick(T0 + timedelta(days=2)) == [("NON_DELIVERY", 1, "NOT_RECEIVED")]
    assert len(log.book) == 0
    log.append(receipt(T0 + timedelta(days=3)))  # too late: recorded as an orphan, dropped in time
    assert log.tick(T0 + timedelta(days=3)) == []
    assert log.book.due_drops(T0 + timedelta(days=5), timedelta(days=2)) == [f"{EVENT}/council-housing"]


def test_expiry_never_comes_before_the_deadline():
    log = Log(policy(again=None, expiry="P1D"))
    log.append(delivery(hours=72))  # e.g. next school day across a long weekend
    assert log.tick(T0 + timedelta(days=2)) == []
    assert log.tick(T0 + timedelta(hours=72)) == [("ESCALATION", 1, "NOT_RECEIVED")]  # first, then expiry
    assert log.tick(T0 + timedelta(hours=72)) == [("NON_DELIVERY", 1, "NOT_RECEIVED")]


def test_a_worker_away_past_every_threshold_escalates_each_then_reports_non_delivery():
    log = Log()
    log.append(delivery())
    assert log.tick(T0 + timedelta(days=10)) == [("ESCALATION", 1, "NOT_RECEIVED"), ("ESCALATION", 2, "NOT_RECEIVED")]
    assert log.tick(T0 + timedelta(days=10)) == [("NON_DELIVERY", 2, "NOT_RECEIVED")]


def test_a_receipt_read_before_its_delivery_still_counts():
    log = Log()
    log.append(receipt(T0 + timedelta(seconds=1)))
    log.append(delivery())
    assert log.tick(T0 + timedelta(hours=30)) == []
    assert log.notices == [("DELIVERED", 0), ("RECEIVED", 0)]


def test_a_redelivery_after_a_crash_is_the_same_delivery():
    log = Log()
    log.append(delivery())
    log.append(delivery(T0 + timedelta(seconds=2)))  # same event and agency, routed again
    assert log.notices == [("DELIVERED", 0)] and len(log.book) == 1
    assert log.book.trackings[f"{EVENT}/council-housing"].deliver_by == T0 + timedelta(hours=6)


def test_a_delivery_older_than_its_expiry_when_first_read_is_not_tracked():
    log = Log()
    log.append(delivery(), now=T0 + timedelta(days=30))
    assert len(log.book) == 0 and log.notices == []


def test_state_records_round_trip():
    log = Log()
    log.append(delivery())
    log.tick(T0 + timedelta(hours=6))
    t = log.book.trackings[f"{EVENT}/council-housing"]
    again = Tracking.from_json(t.to_json())
    assert again == t and again.escalations == {1: T0 + timedelta(hours=6)}
    with pytest.raises(ValueError):
        Tracking.from_json(b'{"format": "something-else"}')


def _scenario() -> list[dict]:
    return [delivery(T0, "council-housing", EVENT), delivery(T0, "nhs-test-health", EVENT, hours=2),
            receipt(T0 + timedelta(hours=1), agency="nhs-test-health"),
            receipt(T0 + timedelta(hours=3), "ACKNOWLEDGED", agency="nhs-test-health"),
            entry("ESCALATION", T0 + timedelta(hours=6), level=1),
            receipt(T0 + timedelta(hours=7)),
            entry("ESCALATION_CLOSED", T0 + timedelta(hours=7, seconds=1), level=1),
            delivery(T0 + timedelta(hours=8), "council-housing", "11111111-1111-4111-8111-111111111111")]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 8), st.integers(0, 8))
def test_folding_again_from_any_earlier_offset_gives_the_same_book(done, replay_from):
    """After a crash the book (from the state topic) may be ahead of the committed offset: folding the
    log again from there must give the book that folding it once gives."""
    entries = _scenario()
    done = min(done, len(entries))
    replay_from = min(replay_from, done)
    once = DeadlineBook()
    for i, e in enumerate(entries):
        once.apply(i, e, POLICY, T0)
    twice = DeadlineBook()
    for i, e in enumerate(entries[:done]):
        twice.apply(i, e, POLICY, T0)
    restored = DeadlineBook({k: Tracking.from_json(t.to_json()) for k, t in twice.trackings.items()})
    for i, e in enumerate(entries[replay_from:], start=replay_from):
        restored.apply(i, e, POLICY, T0)

    def delivered(book):  # a receipt folded again after its delivery ended is only an orphan: no actions
        return {k: t.to_json() for k, t in book.trackings.items() if t.delivered}

    assert delivered(restored) == delivered(once)
    for hours in (1, 6, 24, 30, 24 * 6):
        now = T0 + timedelta(hours=hours)
        assert [(a.kind, a.action_id) for a in restored.due_actions(now)] == \
            [(a.kind, a.action_id) for a in once.due_actions(now)]


def test_human_durations():
    assert [human_duration(s) for s in (0, 1, 61, 3600 * 6 + 1, 86400 * 2 + 60)] == [
        "0 s", "1 s", "1 min 1 s", "6 h 1 s", "2 d 1 min"]


# -- audit entry format 0x02 ---------------------------------------------------------------------
ESCALATION_HEX = (  # docs/audit.md, "Format 0x02": the worked example
    "020ad096b0fcc368406163363032633839623361373835343138353563393133316632613965316538024833663063316232"
    "612d396434652d346331612d386630302d356237653264396136633130000000021c4d415241435f524546455252414c0212"
    "6861752d736f757468021c776f726365737465727368697265021e636f756e63696c2d686f7573696e6702166973612d686f"
    "7573696e67020202080280013063396230326334306339623032633430633962303263343063396230326334306339623032"
    "633430633962303263343063396230326334306339623032633402404352494d455f414e445f4449534f524445525f414354"
    "5f313939385f5331313500028001616261626162616261626162616261626162616261626162616261626162616261626162"
    "61626162616261626162616261626162616261626162616261626162022033653762373037366436313733313832028087b0"
    "fcc36802184e4f545f524543454956454402bc016e6f20524543454956454420726563656970742066726f6d20636f756e63"
    "696c2d686f7573696e67203120732061667465722074686520646561646c696e6520323032362d31312d32385430313a3330"
    "3a30305a20286c6576656c203129022661756469742e65786368616e67652f302f3431020202403962363566303039636134"
    "3764393932653637366332633234373339643336330280016364636463646364636463646364636463646364636463646364"
    "6364636463646364636463646364636463646364636463646364636463646364636463646364"
)


def _escalation() -> dict:
    return make_entry("ESCALATION", recorded_at=T0 + timedelta(hours=6, seconds=1),
                      exchange_id="ac602c89b3a78541855c9131f2a9e1e8", event_id=EVENT,
                      event_type="MARAC_REFERRAL", unit_id="hau-south", area="worcestershire",
                      agency_id="council-housing", agreement_id="isa-housing", agreement_version=1,
                      policy_version=4, policy_digest="0c9b02c4" * 8, legal_basis="CRIME_AND_DISORDER_ACT_1998_S115",
                      envelope_sha256="ab" * 32, recipient_key_id="3e7b7076d6173182",
                      deliver_by=T0 + timedelta(hours=6), reason_code="NOT_RECEIVED",
                      reason="no RECEIVED receipt from council-housing 1 s after the deadline 2026-11-28T01:30:00Z "
                             "(level 1)", source="audit.exchange/0/41", level=1,
                      action_id="9b65f009ca47d992e676c2c24739d363", notice_sha256="cd" * 32)


def test_new_kinds_are_format_0x02_and_the_old_ones_keep_their_exact_bytes():
    data = encode_entry(_escalation())
    assert data.hex() == ESCALATION_HEX
    decoded = decode_entry(data)
    assert (decoded["kind"], decoded["level"], decoded["action_id"]) == ("ESCALATION", 1,
                                                                         "9b65f009ca47d992e676c2c24739d363")
    old = make_entry("RECEIPT", recorded_at=T0, event_id=EVENT, agency_id="council-housing", policy_version=4,
                     reason="RECEIVED at 2026-11-27T19:30:00+00:00")
    encoded = encode_entry(old)
    assert encoded[0] == 0x01 and decode_entry(encoded)["level"] is None
    assert encode_entry(decode_entry(encoded)) == encoded  # round trip: not one byte moves


def test_format_rules_are_enforced_both_ways():
    with pytest.raises(ValueError, match="unknown audit entry fields"):
        make_entry("DELIVERY", level=1)
    v2 = bytearray(encode_entry(_escalation()))
    v2[1] = 0x00  # enum index 0: DELIVERY, which must be written as 0x01
    with pytest.raises(AuditEntryError, match="must be of format 0x01"):
        decode_entry(bytes(v2))
    with pytest.raises(AuditEntryError, match="0x01 or 0x02"):
        decode_entry(b"\x03" + bytes(v2[1:]))


# -- the report ------------------------------------------------------------------------------------
def test_the_report_shows_escalations_closures_non_deliveries_and_redrives():
    log = Log()
    log.append(delivery())
    log.tick(T0 + timedelta(hours=6))
    log.tick(T0 + timedelta(hours=6, minutes=5))  # nothing: not repeated
    log.tick(T0 + timedelta(hours=24))
    log.append(receipt(T0 + timedelta(hours=25)))
    log.tick(T0 + timedelta(hours=25))
    refusal = entry("REFUSAL", T0, agency=None, event_id=None, reason_code="WIRE_FORMAT", reason="unknown schema id",
                    source="case-events/0/3")
    redriven = decode_entry(encode_entry(plan_redrive(
        {"reason_code": "WIRE_FORMAT", "received_at": T0, "event_id": None, "unit_id": "hau-south",
         "source_topic": "case-events", "source_partition": 0, "source_offset": 3, "original_key": b"k",
         "payload": b"p"}, "case-events.dlq/0/0", "case-events.dlq.redrive/0/0", POLICY, T0 + timedelta(hours=30)
    ).entry))
    entries = [refusal] + log.entries + [redriven]
    report = build_report([(i, encode_entry(e)) for i, e in enumerate(entries)], Filters(),
                          as_of=T0 + timedelta(hours=40))
    [row] = report.deliveries
    assert (row["escalated_at"], row["escalation_level"], row["escalation_closed_at"]) == (
        "2026-11-28T01:30:00Z", 2, "2026-11-28T20:30:00Z")
    assert row["deadline"] == "received late"
    assert report.refusals[0]["redriven_at"] == "2026-11-29T01:30:00Z"
    summary = report.summary()
    assert summary["escalations_by_level"] == {"1": 0, "2": 1} and summary["refusals_redriven"] == 1
    page = render_html(report)
    assert "escalated 2026-11-28 01:30" in page and "escalation level 2" in page and "escalation closed" in page
    # Without the receipt the delivery is "escalated", not merely overdue.
    report = build_report([(i, encode_entry(e)) for i, e in enumerate(log.entries[:3])], Filters(),
                          as_of=T0 + timedelta(hours=40))
    assert report.deliveries[0]["deadline"] == "escalated"


# -- the test clock --------------------------------------------------------------------------------
def test_the_file_clock_reads_the_time_a_test_writes(tmp_path):
    path = tmp_path / "clock"
    path.write_text("2026-11-27T19:30:00+00:00\n")
    clock = clock_from_setting(f"file:{path}")
    assert clock() == T0
    path.write_text("2026-11-28T01:30:01+00:00")
    assert clock() == T0 + timedelta(hours=6, seconds=1)
    path.write_text("2026-11-28T01:30:01")
    with pytest.raises(ClockError, match="no UTC offset"):
        clock()
    with pytest.raises(ClockError, match="cannot read"):
        FileClock(tmp_path / "missing")()
    with pytest.raises(ClockError, match="file:PATH"):
        clock_from_setting("+6h")
    assert clock_from_setting("")().tzinfo is not None


# -- redrive rules ---------------------------------------------------------------------------------
def test_what_can_be_redriven():
    topics = Topics("p.")
    letter = {"reason_code": "WIRE_FORMAT", "payload": b"x", "source_topic": "p.case-events", "source_partition": 0,
              "source_offset": 3}
    assert why_not_redrivable(letter, topics) is None
    assert why_not_redrivable({**letter, "source_topic": "p.receipts", "reason_code": "RECEIPT_INVALID"}, topics) is None
    assert "not kept" in why_not_redrivable({**letter, "payload": None}, topics)
    assert why_not_redrivable({**letter, "reason_code": "BAD_SIGNATURE"}, topics).startswith("BAD_SIGNATURE")
    assert "not from this deployment" in why_not_redrivable({**letter, "source_topic": "other.case-events"}, topics)
    request = decode_request(encode_request(7, "ab" * 32, T0))
    assert (request["dead_letter_offset"], request["requested_at"]) == (7, T0)


# -- the unit's view -------------------------------------------------------------------------------
def test_the_units_status_view_from_its_notices():
    from streams.crypto.notice import OpenedNotice
    from streams.unit_feed import event_status

    log = Log()
    log.append(delivery())
    log.tick(T0 + timedelta(hours=6))

    def opened(kind, at, level=0):
        from streams.deadlines import NoticeRequest
        c = NoticeRequest(kind, log.book.trackings[f"{EVENT}/council-housing"], at, level).content()
        return OpenedNotice(c["notice_id"], "hau-south", "k", "r", "s", at, {"version": 1, **c}, "00")

    notices = [opened("DELIVERED", T0), opened("ESCALATED", T0 + timedelta(hours=6), 1)]
    status = event_status(notices, EVENT)["council-housing"]
    assert status.state(T0 + timedelta(hours=7)) == "escalated (level 1)"
    assert status.overdue_since(T0 + timedelta(hours=7)) == T0 + timedelta(hours=6)
    assert status.as_json(T0 + timedelta(hours=7))["escalated_at"] == {"1": "2026-11-28T01:30:00Z"}
    assert event_status(notices, "another-event") == {}
