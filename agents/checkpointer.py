"""The checkpointer: follows audit.exchange, keeps its Merkle tree's compact range, and publishes
signed checkpoints (C2SP signed notes) to audit.checkpoints every few seconds while entries
arrive, and at once when asked (POST /audit/checkpoint).

It reads the audit partition with its own consumer at explicit offsets (not a consumer group):
its position must always match the tree it has signed, including after a restart, when it resumes
from the last checkpoint record it can verify.
"""

from __future__ import annotations

import asyncio
import logging
import time

import faust
from aiokafka import TopicPartition

from agents import metrics
from agents.lease import FencedPublisher, Lease, LeaseLost
from streams.audit.checkpoint import Checkpoint, sign_checkpoint
from streams.audit.checkpoint_record import CheckpointRecordError, encode_checkpoint_record, open_checkpoint_record
from streams.audit.merkle import CompactRange, leaf_hash
from streams.auditing import checkpoint_verifiers
from streams.kafka import consumer as kafka_consumer
from streams.kafka import read_topic, start_client, stop_quietly

from agents.witnessing import Witnessing

log = logging.getLogger("masb.checkpointer")


async def resume_state(runtime) -> tuple[CompactRange, int]:
    """The tree and audit offset of the last valid checkpoint record, or an empty tree at offset 0."""
    verifiers = checkpoint_verifiers(runtime.policy, runtime.settings.log_origin)
    state = (CompactRange(), 0)
    async for record in read_topic(runtime.settings.bootstrap, runtime.topics.checkpoints, committed_only=True):
        try:
            opened = open_checkpoint_record(record.value, verifiers, runtime.settings.log_origin)
        except CheckpointRecordError as exc:
            log.warning("ignoring checkpoint record at offset %d: %s", record.offset, exc)
            continue
        state = (opened.compact_range, opened.next_offset)
    return state


def install(app: faust.App, runtime) -> None:
    requested = asyncio.Event()
    app.masb_checkpoint_requested = requested
    runtime.supervisor.run("checkpointer", lambda: run_checkpointer(runtime, requested))


async def run_checkpointer(runtime, requested: asyncio.Event) -> None:
    """Sign checkpoints while this worker holds the checkpointer lease; stand by otherwise (a
    supervised task). Exactly one worker of a cluster signs: the lease picks it, and its fenced
    publisher stops a former holder that did not notice it lost the lease (agents/lease.py)."""
    settings = runtime.settings
    name = runtime.topics.checkpointer_lease
    lease = Lease(settings.bootstrap, name, runtime.topics.checkpoints,
                  session_timeout_ms=int(settings.session_timeout * 1000))
    keeper = asyncio.ensure_future(lease.run())
    try:
        while True:
            runtime.health.checkpoint.active = False
            await _first(lease.held.wait(), keeper)
            runtime.health.checkpoint.active = True
            try:
                await sign_while_held(runtime, requested, lease, keeper, name)
            except LeaseLost as exc:
                log.warning("checkpointer standing by: %s", exc)
    finally:
        runtime.health.checkpoint.active = False
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)


async def _first(waiting, keeper: asyncio.Future) -> None:
    """Wait for ``waiting``; if the lease keeper ends first, raise what ended it."""
    waiter = asyncio.ensure_future(waiting)
    try:
        await asyncio.wait({waiter, keeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if keeper.done():
        keeper.result()  # raises its exception
        raise RuntimeError("the checkpointer lease keeper ended")


async def sign_while_held(runtime, requested: asyncio.Event, lease: Lease, keeper: asyncio.Future, name: str) -> None:
    """Follow the exchange log and sign checkpoints until the lease is lost."""
    settings = runtime.settings
    health = runtime.health
    tree, next_offset = await resume_state(runtime)
    signed_size = tree.size
    health.checkpoint_signed(signed_size)
    health.checkpoint_read(tree.size)
    origin = settings.log_origin
    consumer = kafka_consumer(settings.bootstrap, group_id=None)
    publisher = FencedPublisher(settings.bootstrap, name)
    witnessing = Witnessing(runtime, tree)
    await start_client(consumer, settings.bootstrap)
    try:
        await publisher.start()
        tp = TopicPartition(runtime.topics.audit, 0)
        consumer.assign([tp])
        consumer.seek(tp, next_offset)
        last_signed = time.monotonic()
        while lease.held.is_set():
            if keeper.done():
                keeper.result()
                raise RuntimeError("the checkpointer lease keeper ended")
            batch = await consumer.getmany(tp, timeout_ms=250)
            for message in batch.get(tp, []):
                if message.offset != next_offset:
                    await halt_on_gap(runtime, next_offset, message.offset)
                leaf = leaf_hash(message.value)
                tree.append(leaf)
                witnessing.append(leaf)
                next_offset = message.offset + 1
            health.checkpoint_read(tree.size)
            unsigned = tree.size - signed_size
            due = unsigned >= settings.checkpoint_max_entries or (
                time.monotonic() - last_signed >= settings.checkpoint_interval)
            if unsigned > 0 and (due or requested.is_set()) and lease.held.is_set():
                signing_key = runtime.identity.signing.current.signing_key()
                checkpoint = Checkpoint(origin, tree.size, tree.root())
                note = sign_checkpoint(checkpoint, origin, signing_key)
                note = await witnessing.cosign(note, checkpoint, previous_size=signed_size)
                await publisher.publish(runtime.topics.checkpoints, encode_checkpoint_record(note, next_offset, tree))
                signed_size = tree.size
                last_signed = time.monotonic()
                metrics.CHECKPOINT_SIZE.set(tree.size)
                health.checkpoint_signed(signed_size)
            elif unsigned == 0 and (more := await witnessing.retry(settings.checkpoint_interval)):
                # The same checkpoint again, now with enough cosignatures (same size and root).
                await publisher.publish(runtime.topics.checkpoints, encode_checkpoint_record(more, next_offset, tree))
            if requested.is_set() and tree.size == signed_size:
                requested.clear()
    finally:
        await witnessing.close()
        await stop_quietly(consumer)
        await publisher.stop()


async def halt_on_gap(runtime, expected: int, got: int) -> None:
    """Never sign over a hole: entries were deleted or compacted away. Checkpointing halts (routing
    goes on), /health says why, and an operator must look (docs/operations.md)."""
    log.error("audit log gap: expected offset %d, got %d; checkpointing halted", expected, got)
    runtime.health.checkpoint.halted = f"audit log gap at offset {expected} (next entry at {got})"
    await asyncio.Event().wait()
