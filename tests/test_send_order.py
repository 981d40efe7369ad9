"""The order in which the router sends a batch (agents/router.py send_routed).

An audit entry is sealed with its case's key, so the keys of new cases must be acknowledged by
the broker before any entry of theirs is sent (else a worker taking the case over after a crash
would make a different key and the entries could not be opened together). Envelopes carry nothing
sealed with a case key: they must not wait for the keys (a broker round trip of latency).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from agents import router
from agents.sending import Message
from streams.audit.shared_case_keys import KeyRecord
from streams.topics import Topics

TOPICS = Topics("order.")


class RecordingSender:
    """Stands in for AcknowledgedSender: records each record as sent and as acknowledged, the
    acks of one send_all call arriving together after a short delay; refuses records named in
    ``refuse`` once (as the broker does with a too-large record)."""

    def __init__(self, refuse=()) -> None:
        self.log: list[tuple[str, str]] = []
        self.refuse = set(refuse)

    async def send_all(self, messages, replace) -> None:
        pending = list(messages)
        while pending:
            for m in pending:
                self.log.append(("sent", m.topic + ":" + (m.value or b"").decode()))
            await asyncio.sleep(0.01)
            again = []
            for m in pending:
                name = (m.value or b"").decode()
                if name in self.refuse:
                    self.refuse.discard(name)
                    again += replace(m, ValueError("too large"))
                else:
                    self.log.append(("acked", m.topic + ":" + name))
            pending = again

    def index(self, what: str, record: str) -> int:
        return self.log.index((what, record))


class CaseKeys:
    def __init__(self, records) -> None:
        self.records = list(records)
        self.confirmed = False

    def new_records(self):
        return self.records

    def confirm_new(self) -> None:
        self.confirmed = True


def runtime():
    def send_refused(origin, topic, size, error):
        return SimpleNamespace(dead_letter=b"dead-" + origin, audit_entry=b"refusal-" + origin,
                               reason_code="SEND_REFUSED")

    return SimpleNamespace(topics=TOPICS, router=SimpleNamespace(send_refused=send_refused))


def batch() -> list[Message]:
    return [Message(TOPICS.partner("nhs"), b"k", b"envelope-1", origin=b"1"),
            Message(TOPICS.audit, None, b"entry-1"),
            Message(TOPICS.partner("police"), b"k", b"envelope-2", origin=b"2"),
            Message(TOPICS.audit, None, b"entry-2")]


def key_record() -> KeyRecord:
    return KeyRecord(partition=0, key=b"case-key-id", value=b"key-1")


def test_entries_wait_for_new_case_keys_but_envelopes_do_not():
    sender, keys = RecordingSender(), CaseKeys([key_record()])
    asyncio.run(router.send_routed(sender, runtime(), batch(), keys))
    key_acked = sender.index("acked", f"{TOPICS.case_keys}:key-1")
    for entry in ("entry-1", "entry-2"):
        assert sender.index("sent", f"{TOPICS.audit}:{entry}") > key_acked
    for envelope, agency in (("envelope-1", "nhs"), ("envelope-2", "police")):
        assert sender.index("sent", f"{TOPICS.partner(agency)}:{envelope}") < key_acked
        assert ("acked", f"{TOPICS.partner(agency)}:{envelope}") in sender.log
    assert keys.confirmed


def test_a_refused_envelopes_refusal_entry_also_waits_for_the_case_key():
    sender, keys = RecordingSender(refuse={"envelope-2"}), CaseKeys([key_record()])
    asyncio.run(router.send_routed(sender, runtime(), batch(), keys))
    key_acked = sender.index("acked", f"{TOPICS.case_keys}:key-1")
    assert sender.index("sent", f"{TOPICS.audit}:refusal-2") > key_acked
    assert ("acked", f"{TOPICS.dead_letter}:dead-2") in sender.log
    assert ("acked", f"{TOPICS.audit}:refusal-2") in sender.log


def test_without_new_keys_the_batch_goes_out_at_once():
    sender, keys = RecordingSender(), CaseKeys([])
    asyncio.run(router.send_routed(sender, runtime(), batch(), keys))
    sent = [record for what, record in sender.log[:4] if what == "sent"]
    assert len(sent) == 4 and f"{TOPICS.audit}:entry-1" in sent


def test_a_failed_case_key_send_stops_the_envelopes_still_waiting():
    class Failing(RecordingSender):
        async def send_all(self, messages, replace):
            if any(m.topic == TOPICS.case_keys for m in messages):
                raise RuntimeError("the broker refused a case-key record")
            self.log.append(("started", "envelopes"))
            await asyncio.sleep(1)
            self.log.append(("finished", "envelopes"))

    sender = Failing()
    with pytest.raises(RuntimeError, match="case-key"):
        asyncio.run(router.send_routed(sender, runtime(), batch(), CaseKeys([key_record()])))
    assert ("finished", "envelopes") not in sender.log
