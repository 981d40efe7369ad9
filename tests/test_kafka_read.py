"""Reading a whole topic ends, also where the topic ends in a transaction marker (the checkpoint
topic: the fenced checkpointer commits one transaction per checkpoint, docs/operations.md)."""
from __future__ import annotations

import asyncio
import os

from agents.lease import FencedPublisher
from streams.kafka import TopicSpec, ensure_topics, producer, read_topic


def test_reading_a_topic_written_in_transactions_ends_after_its_last_record(kafka) -> None:
    topic = f"tx{os.urandom(4).hex()}.checkpoints"

    async def go() -> list[bytes]:
        await ensure_topics(kafka, [TopicSpec(topic, partitions=1, replication=1)])
        publisher = FencedPublisher(kafka, f"{topic}-writer")
        await publisher.start()
        try:
            assert publisher.fenced_by_transactions
            for n in range(3):
                await publisher.publish(topic, b"checkpoint %d" % n)
        finally:
            await publisher.stop()
        reads = []
        for _ in range(5):  # the marker arrives with the last record or in a fetch of its own: both must end
            reads.append([r.value async for r in read_topic(kafka, topic)])
        return reads

    reads = asyncio.run(asyncio.wait_for(go(), timeout=60))
    assert reads == [[b"checkpoint 0", b"checkpoint 1", b"checkpoint 2"]] * 5


def test_reading_committed_records_of_a_topic_with_only_an_aborted_transaction_ends(kafka) -> None:
    # The fetches bring only skipped batches (the aborted record and the markers): the reader's position
    # reaches the end without a record ever being returned.
    topic = f"tx{os.urandom(4).hex()}.aborted"

    async def go() -> tuple[list[bytes], list[bytes]]:
        await ensure_topics(kafka, [TopicSpec(topic, partitions=1, replication=1)])
        writer = producer(kafka, transactional_id=f"{topic}-writer", enable_idempotence=True)
        await writer.start()
        try:
            await writer.begin_transaction()
            await writer.send_and_wait(topic, b"withdrawn")
            await writer.abort_transaction()
        finally:
            await writer.stop()
        committed = [r.value async for r in read_topic(kafka, topic, committed_only=True)]
        everything = [r.value async for r in read_topic(kafka, topic)]
        return committed, everything

    committed, everything = asyncio.run(asyncio.wait_for(go(), timeout=60))
    assert committed == []
    assert everything == [b"withdrawn"]
