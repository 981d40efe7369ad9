"""The redrive agent: operators' redrive requests -> the dead letter's kept bytes back to their topic,
and a REDRIVE entry in the exchange log (docs/deadlines.md, "Redrive").

The request only names a dead letter (offset and SHA-256); the worker reads the dead letter from
its own dead-letter topic, so nothing but bytes the router itself once received can be redriven.
Like the other input agents it commits a request only after the broker acknowledged the redriven
record and its entry (at least once: a request read again sends the record again, which the
router then records as a DUPLICATE, and repeats the entry with the same action id).
"""

from __future__ import annotations

import logging

import faust

from agents import metrics
from agents.sending import Message, acknowledged_batches
from streams.audit.entry import encode_entry
from streams.kafka import read_topic
from streams.redrive import RedriveError, dead_letter_sha256, decode_request, plan_redrive, why_not_redrivable
from streams.routing import decode_dead_letter

log = logging.getLogger("masb.redrive")

BATCH = 50
BATCH_WINDOW_SECONDS = 0.05


async def read_dead_letter(bootstrap: str, topic: str, offset: int) -> bytes | None:
    """The value of the dead letter at `offset` of the single DLQ partition, or None if there is none."""
    async for record in read_topic(bootstrap, topic, from_offsets={0: offset}):
        return record.value if record.offset == offset else None
    return None


async def decide(runtime, request_value: bytes, request_source: str) -> list[Message]:
    """What one request becomes: the redriven record and its entry, or nothing (logged)."""
    topics = runtime.topics
    try:
        request = decode_request(request_value or b"")
    except RedriveError as exc:
        log.error("ignoring redrive request %s: %s", request_source, exc)
        return []
    offset = request["dead_letter_offset"]
    value = await read_dead_letter(runtime.settings.bootstrap, topics.dead_letter, offset)
    if value is None or dead_letter_sha256(value) != request["dead_letter_sha256"]:
        log.error("ignoring redrive request %s: no dead letter with that SHA-256 at %s/0/%d", request_source,
                  topics.dead_letter, offset)
        return []
    try:
        letter = decode_dead_letter(value)
    except Exception as exc:  # noqa: BLE001 - fastavro raises many types on bytes that are no dead letter
        # Whoever can write the dead-letter topic must not be able to stop the worker (it did: a
        # crash, a restart and the same request again).
        log.error("ignoring redrive request %s: %s/0/%d cannot be redriven: not a dead letter (%s)",
                  request_source, topics.dead_letter, offset, type(exc).__name__)
        return []
    why_not = why_not_redrivable(letter, topics)
    if why_not is not None:
        log.error("ignoring redrive request %s: %s/0/%d cannot be redriven: %s", request_source,
                  topics.dead_letter, offset, why_not)
        return []
    redrive = plan_redrive(letter, f"{topics.dead_letter}/0/{offset}", request_source, runtime.policy,
                           runtime.clock())
    log.warning("redriving %s/0/%d (%s) to %s", topics.dead_letter, offset, letter["reason_code"], redrive.topic)
    return [Message(redrive.topic, redrive.key, redrive.value),
            Message(topics.audit, None, encode_entry(redrive.entry))]


def install(app: faust.App, runtime) -> None:
    source = app.topic(runtime.topics.redrive_requests, key_serializer="raw", value_serializer="raw")
    supervisor = runtime.supervisor

    @app.agent(source, name="redrive")
    async def redrive_dead_letters(stream):
        await acknowledged_batches(stream, runtime, "redrive", redrive_batch, batch=BATCH, within=BATCH_WINDOW_SECONDS)

    async def redrive_batch(events, sender) -> None:
        messages: list[Message] = []
        for event in events:
            m = event.message
            messages += await decide(runtime, event.value, f"{m.topic}/{m.partition}/{m.offset}")
        await sender.send_all(messages, _never_refused)
        if messages:
            metrics.AUDIT_ENTRIES.labels("REDRIVE").inc(len(messages) // 2)

    supervisor.watch_agent(redrive_dead_letters, "redrive")


def _never_refused(message: Message, error: Exception) -> list[Message]:
    # The redriven value was taken by the broker once, and the entry is small.
    raise RuntimeError(f"the broker refused a {len(message.value)}-byte record for {message.topic} "
                       f"({type(error).__name__})")
