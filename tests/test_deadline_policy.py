"""The policy's deadline terms (docs/policy.md, docs/deadlines.md): unit exchange keys, the receipt an
agreement requires, the second threshold, expiry and the school calendar; their checks, digest and diff."""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from streams.policy import PolicyError, deliver_by, diff, parse_policy
from streams.policy.calendar import SchoolCalendar, Term

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "tests/fixtures/policy/valid.yaml").read_text())
LONDON = ZoneInfo("Europe/London")
KNOWN_DIGEST = "0c9b02c454c4677d9d78c3532350c8c6e9fc157724bfde51855cb3007a726a40"  # docs/policy.md
UNIT_X25519 = {"key_id": "0272088efe0ccd55", "public_key": "kMCW2eilG4lyPZqNx9epnmZJ1HLNUKxLI1JAIPqfOFs=",
               "status": "active"}
CALENDAR = {"terms": [{"start": "2026-09-02", "end": "2026-10-23"}, {"start": "2026-11-02", "end": "2026-12-18"}],
            "closed": ["2026-11-30"]}


def doc(**top) -> dict:
    d = copy.deepcopy(BASE)
    d.update(top)
    return d


def agreement(d: dict, agreement_id: str) -> dict:
    return next(a for a in d["agreements"] if a["id"] == agreement_id)


def problems(d: dict) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(d)
    return caught.value.problems


def test_defaults_keep_the_known_digest_and_mean_receipt_by_deadline_and_five_days():
    policy = parse_policy(doc())
    assert policy.digest == KNOWN_DIGEST
    assert policy.deadlines.expiry == "P5D" and policy.deadlines.school_calendar is None
    housing = policy.agreement("isa-housing")
    assert (housing.required_receipt, housing.escalate_again_after) == ("RECEIVED", None)
    assert policy.unit("hau-north").exchange_keys == () and policy.unit("hau-north").active_exchange_key is None


def test_writing_the_defaults_out_keeps_the_digest():
    d = doc(deadlines={"expiry": "P5D"})
    agreement(d, "isa-housing")["required_receipt"] = "RECEIVED"
    assert parse_policy(d).digest == KNOWN_DIGEST


def test_every_new_term_changes_the_digest_and_shows_in_the_diff():
    old = parse_policy(doc())
    d = doc(deadlines={"expiry": "P7D", "school_calendar": CALENDAR})
    agreement(d, "isa-housing").update(required_receipt="ACKNOWLEDGED", escalate_again_after="PT18H")
    d["units"][0]["exchange_keys"] = [UNIT_X25519]
    new = parse_policy(d)
    assert new.digest != KNOWN_DIGEST
    assert new.unit("hau-north").active_exchange_key.key_id == "0272088efe0ccd55"
    changes = diff(old, new).other_changes
    for line in ("agreement isa-housing: required_receipt 'RECEIVED' -> 'ACKNOWLEDGED'",
                 "agreement isa-housing: escalate_again_after None -> 'PT18H'",
                 "deadlines expiry: P5D -> P7D", "school calendar added",
                 "unit hau-north exchange keys: added 0272088efe0ccd55 (active)"):
        assert line in changes
    d2 = copy.deepcopy(d)
    d2["deadlines"]["school_calendar"]["closed"] = ["2026-12-01"]
    assert "school calendar: +closed 2026-12-01, -closed 2026-11-30" in diff(new, parse_policy(d2)).other_changes


@pytest.mark.parametrize("mutate, message", [
    (lambda d: agreement(d, "isa-housing").update(required_receipt="READ"),
     "agreements[1] (isa-housing): required_receipt: must be RECEIVED or ACKNOWLEDGED, not 'READ'"),
    (lambda d: agreement(d, "isa-housing").update(escalate_again_after="P1M"),
     "agreements[1] (isa-housing): escalate_again_after: 'P1M': uses years or months, which have no fixed "
     "length; use weeks, days, hours or minutes"),
    (lambda d: agreement(d, "isa-housing").update(escalate_again_after=6),
     "agreements[1] (isa-housing): escalate_again_after: must be an ISO 8601 duration string like PT18H"),
    (lambda d: d.update(deadlines={"expiry": "P0D"}), "deadlines: expiry: 'P0D': must be longer than zero"),
    (lambda d: d.update(deadlines={"expiry": "P5D", "holidays": []}), "deadlines: unknown key 'holidays'"),
    (lambda d: d.update(deadlines={"school_calendar": {"terms": []}}),
     "deadlines.school_calendar: terms: must be a non-empty list of {start, end} dates"),
    (lambda d: d.update(deadlines={"school_calendar": {"terms": [{"start": "2026-10-23", "end": "2026-09-02"}]}}),
     "deadlines.school_calendar.terms[0]: end 2026-09-02 is before start 2026-10-23"),
    (lambda d: d.update(deadlines={"school_calendar": {"terms": [{"start": "2026-09-02", "end": "2026-10-23"},
                                                                 {"start": "2026-10-01", "end": "2026-12-18"}]}}),
     "deadlines.school_calendar.terms[1]: overlaps terms[0] (2026-09-02 to 2026-10-23)"),
    (lambda d: d.update(deadlines={"school_calendar": {"terms": [{"start": "2026-09-02"}]}}),
     "deadlines.school_calendar.terms[0]: missing required key 'end'"),
    (lambda d: d.update(deadlines={"school_calendar": {"terms": [{"start": "soon", "end": "2026-10-23"}]}}),
     "deadlines.school_calendar.terms[0]: start: must be a date like 2026-09-02"),
    (lambda d: d.update(deadlines={"school_calendar": {**CALENDAR, "closed": ["2026-10-28"]}}),
     "deadlines.school_calendar.closed[0]: 2026-10-28 is not inside a term (days between terms are holidays already)"),
    (lambda d: d.update(deadlines={"school_calendar": {**CALENDAR, "closed": ["2026-11-30", "2026-11-30"]}}),
     "deadlines.school_calendar.closed[1]: 2026-11-30 listed twice"),
    (lambda d: d["units"][0].update(exchange_keys=[UNIT_X25519, {**UNIT_X25519, "key_id": "3e7b7076d6173182",
                                                                 "public_key": "i47fKpKxfV0UbhpeF8daWlhth0vjkdfq3S9I9Ylgoz0="}]),
     "units[0] (hau-north): 2 active exchange keys; exactly one may receive notices"),
])
def test_each_check_reports_its_exact_message(mutate, message):
    d = doc()
    mutate(d)
    assert message in problems(d)


CAL = SchoolCalendar((Term(datetime(2026, 9, 2).date(), datetime(2026, 10, 23).date()),
                      Term(datetime(2026, 11, 2).date(), datetime(2026, 12, 18).date())),
                     frozenset({datetime(2026, 11, 30).date()}))


def london(*args) -> datetime:
    return datetime(*args, tzinfo=LONDON)


@pytest.mark.parametrize("sent, due", [
    (london(2026, 11, 27, 19, 30), london(2026, 12, 1, 8, 0)),   # Friday evening, Monday an INSET day: Tuesday
    (london(2026, 12, 4, 19, 30), london(2026, 12, 7, 8, 0)),    # the Friday after: Monday
    (london(2026, 10, 23, 18, 0), london(2026, 11, 2, 8, 0)),    # last day before half term: after the holiday
    (london(2026, 12, 18, 16, 0), london(2026, 12, 21, 8, 0)),   # after the last term: every weekday counts
    (london(2026, 9, 4, 19, 30), london(2026, 9, 7, 8, 0)),      # summer time: 08:00 BST is 07:00 UTC
    (london(2026, 8, 28, 12, 0), london(2026, 8, 31, 8, 0)),     # before the first term: weekdays
    (london(2026, 11, 29, 23, 59), london(2026, 12, 1, 8, 0)),   # Sunday night before the INSET day
])
def test_next_school_day_follows_the_calendar(sent, due):
    d = doc(deadlines={"school_calendar": {"terms": [{"start": "2026-09-02", "end": "2026-10-23"},
                                                      {"start": "2026-11-02", "end": "2026-12-18"}],
                                           "closed": ["2026-11-30"]}})
    [share] = [s for s in parse_policy(d).routing("CHILD_NOTIFICATION", "worcestershire") if s.agency_id == "oak-school"]
    assert deliver_by(share, sent.astimezone(timezone.utc)) == due
    assert CAL.is_school_day(due.date()) and not CAL.is_school_day(datetime(2026, 11, 30).date())


def test_without_a_calendar_friday_evening_is_due_monday_morning():
    [share] = [s for s in parse_policy(doc()).routing("CHILD_NOTIFICATION", "worcestershire")
               if s.agency_id == "oak-school"]
    assert deliver_by(share, london(2026, 11, 27, 19, 30)) == london(2026, 11, 30, 8, 0)


def test_a_units_exchange_key_is_revoked_like_any_other(tmp_path):
    from streams.policy import load_policy
    from streams.policy.revoke import revoke_key_text

    d = doc()
    d["units"][0]["exchange_keys"] = [UNIT_X25519]
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    edit = revoke_key_text(path.read_text(), "hau-north", "0272088efe0ccd55")
    assert (edit.key_list, edit.previous_status, edit.new_version) == ("exchange_keys", "active", 5)
    path.write_text(edit.text)
    unit = load_policy(path).unit("hau-north")
    assert unit.exchange_keys[0].status == "revoked" and unit.active_exchange_key is None  # no more notices
