"""The router's case keys (streams/audit/shared_case_keys.py) are read once per assignment, ahead of
the first record (agents/router.py starts the read when partitions are assigned), and a read that
a revocation overtakes leaves nothing behind: the partition's next owner may have made keys since."""
from __future__ import annotations

import asyncio
import os

import pytest

from streams.audit.case_keys import CaseKeyError
from streams.audit.shared_case_keys import CaseKeySecrets, SharedCaseKeys
from streams.kafka import TopicSpec, ensure_topics, producer


def _store(kafka: str, topic: str, tmp_path) -> SharedCaseKeys:
    return SharedCaseKeys(kafka, topic, CaseKeySecrets.create(tmp_path / "secrets"))


async def _write_key_of(kafka: str, store: SharedCaseKeys, case_ref: str) -> str:
    """Seal ``case_ref`` once in a store that owns partition 0 and write its new key record, as a
    router does; the key id."""
    await store.load({0})
    key_id = store.seal(case_ref, None, 0).case_key_id
    writer = producer(kafka)
    await writer.start()
    try:
        for record in store.new_records():
            await writer.send_and_wait(store.topic, record.value, key=record.key, partition=record.partition)
    finally:
        await writer.stop()
    store.confirm_new()
    return key_id


def test_a_case_key_made_by_one_worker_is_found_by_the_next_owner(kafka, tmp_path) -> None:
    topic = f"ck{os.urandom(4).hex()}.case-keys"

    async def go() -> tuple[str, str]:
        await ensure_topics(kafka, [TopicSpec(topic, partitions=2, replication=1)])
        first = _store(kafka, topic, tmp_path)
        made = await _write_key_of(kafka, first, "WM-0001")
        nxt = SharedCaseKeys(kafka, topic, first.secrets)
        await asyncio.gather(nxt.load({0}), nxt.load({0, 1}))  # a prefetch and the first batch at once
        return made, nxt.seal("WM-0001", None, 0).case_key_id

    made, found = asyncio.run(asyncio.wait_for(go(), 60))
    assert found == made


def test_keys_read_while_the_partition_is_revoked_are_not_kept(kafka, tmp_path) -> None:
    topic = f"ck{os.urandom(4).hex()}.case-keys"

    async def go() -> SharedCaseKeys:
        await ensure_topics(kafka, [TopicSpec(topic, partitions=2, replication=1)])
        first = _store(kafka, topic, tmp_path)
        await _write_key_of(kafka, first, "WM-0002")
        store = SharedCaseKeys(kafka, topic, first.secrets)
        reading = asyncio.ensure_future(store.load({0}))
        await asyncio.sleep(0.05)  # the read has begun: a consumer starts, then reads to the end
        assert not reading.done()
        store.revoke({0})
        await reading
        return store

    store = asyncio.run(asyncio.wait_for(go(), 60))
    with pytest.raises(CaseKeyError, match="not loaded"):
        store.seal("WM-0002", None, 0)
