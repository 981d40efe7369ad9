"""What the router's sender does when Apache Kafka refuses records for their size (agents/sending.py).

A topic's max.message.bytes limits a record *batch*, and the producer puts the records it has for a
partition into one batch: several records that each fit can be refused together. Only a record
refused when sent on its own is refused for good (a dead letter in its place, SEND_REFUSED); the
others must be delivered, not dead-lettered with it.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from agents.sending import AcknowledgedSender, Message
from streams.kafka import TopicSpec, ensure_topics, read_topic

pytestmark = pytest.mark.kafka

LIMIT = 8_000  # the topic's max.message.bytes: one 3,000-byte record fits, three in a batch do not


async def _topic(bootstrap: str) -> str:
    name = f"small-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [TopicSpec(name, config={"max.message.bytes": str(LIMIT)})])
    return name


async def _send(bootstrap: str, *rounds: list[Message], linger_ms: int = 200) -> list[Message]:
    """Send each round with one sender, as the router does (a long linger by default, so a round's
    records share a batch); return what the sender asked to replace."""
    replaced: list[Message] = []

    def replace(message: Message, error: Exception) -> list[Message]:
        replaced.append(message)
        return []

    sender = AcknowledgedSender(bootstrap, linger_ms=linger_ms, max_batch_size=512 * 1024)
    await sender.start()
    try:
        for messages in rounds:
            await asyncio.wait_for(sender.send_all(messages, replace), 60)
    finally:
        await sender.stop()
    return replaced


async def _values(bootstrap: str, topic: str) -> list[bytes]:
    return [record.value async for record in read_topic(bootstrap, topic)]


def test_records_that_fit_alone_are_delivered_though_their_batch_was_too_large(kafka):
    async def scenario():
        topic = await _topic(kafka)
        messages = [Message(topic, b"k", bytes([i]) * 3_000, partition=0) for i in range(6)]
        replaced = await _send(kafka, messages)
        return replaced, await _values(kafka, topic), messages

    replaced, delivered, messages = asyncio.run(scenario())
    assert replaced == []
    assert sorted(delivered) == sorted(m.value for m in messages)


def test_only_the_record_too_large_on_its_own_is_replaced(kafka):
    async def scenario():
        topic = await _topic(kafka)
        fits = [Message(topic, b"k", bytes([i]) * 3_000, partition=0) for i in range(3)]
        too_large = Message(topic, b"k", b"\xff" * (LIMIT + 1_000), partition=0)
        replaced = await _send(kafka, [fits[0], too_large, *fits[1:]])
        return replaced, await _values(kafka, topic), fits, too_large

    replaced, delivered, fits, too_large = asyncio.run(scenario())
    assert replaced == [too_large]
    assert sorted(delivered) == sorted(m.value for m in fits)


def test_a_refused_record_does_not_stall_its_partition(kafka):
    """After a refusal, later records to the same partition are acknowledged (aiokafka's idempotent
    producer would refuse them as out of order for ever: the sender replaces it)."""
    async def scenario():
        topic = await _topic(kafka)
        first = await _send(kafka, [Message(topic, b"k", b"before", partition=0)],
                            [Message(topic, b"k", b"\xff" * (LIMIT + 1_000), partition=0)],
                            [Message(topic, b"k", b"after", partition=0)], linger_ms=5)
        return first, await _values(kafka, topic)

    replaced, delivered = asyncio.run(scenario())
    assert [len(m.value) for m in replaced] == [LIMIT + 1_000]
    assert delivered == [b"before", b"after"]



def test_a_publisher_goes_on_publishing_after_the_broker_refused_a_record(kafka, tmp_path):
    """The Python client (`masb publish`, long-running unit systems): a record refused for its
    size is one clear error, and the next events of the same case are acknowledged."""
    from agents.deployment import prepare_deployment
    from streams.crypto.keys import Keyring
    from streams.crypto.pseudonym import PseudonymKeys
    from streams.errors import InvalidInput
    from streams.publisher import Publisher
    from streams.topics import Topics
    from tests.harness import fixture_event

    deployment = prepare_deployment(tmp_path)
    topics = Topics(f"p{uuid.uuid4().hex[:8]}.")
    unit_key = Keyring.load_dir(deployment.keys_dir, "hau-worcestershire", kind="signing").current

    async def scenario():
        await ensure_topics(kafka, [TopicSpec(topics.case_events, config={"max.message.bytes": str(LIMIT)})])
        events = [fixture_event("CASE_CLOSED", case_ref="WM-T2CASE0003") for _ in range(2)]
        async with Publisher(kafka, deployment.policy, unit_key, topics,
                             pseudonyms=PseudonymKeys.load_dir(deployment.keys_dir)) as publisher:
            await asyncio.wait_for(publisher.publish(events[0]), 30)
            key = publisher.pseudonyms.pseudonym("WM-T2CASE0003")
            with pytest.raises(InvalidInput) as refused:
                await asyncio.wait_for(publisher.send_raw(key, b"\x00" * (LIMIT + 1_000)), 30)
            await asyncio.wait_for(publisher.publish(events[1]), 30)
        return refused.value, events, len(await _values(kafka, topics.case_events))

    error, events, count = asyncio.run(scenario())
    assert str(error).endswith(f"refused a record for topic {topics.case_events} for good (MessageSizeTooLargeError)")
    assert error.exit_code == 2 and "\n" not in str(error)
    assert count == 2
