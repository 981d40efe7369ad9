"""The router agent: case-events -> one envelope per entitled agency, an audit entry per exchange.

At-least-once: the input offset is committed only after every send of the event is acknowledged,
so a crash re-routes the event; the dedupe table (event id -> content digest) and partners'
dedupe by event id make each agency see each event once.
"""

from __future__ import annotations

import asyncio
import logging
import time

import faust
from aiokafka.errors import KafkaError

from agents import metrics
from streams.routing import Admitted, InputRecord, Refusal, INTERNAL_ERROR

log = logging.getLogger("masb.router")


def install(app: faust.App, runtime) -> None:
    topics = runtime.topics
    source = app.topic(topics.case_events, key_serializer="raw", value_serializer="raw")
    seen = app.Table("seen-events",  # raw bytes: the app default serializers
                     partitions=runtime.settings.partitions)
    app.masb_seen = seen
    out_topics: dict[str, faust.types.TopicT] = {}

    def topic(name: str):
        if name not in out_topics:
            out_topics[name] = app.topic(name, key_serializer="raw", value_serializer="raw")
        return out_topics[name]

    async def send_all(messages: list[tuple[str, bytes | None, bytes]]) -> None:
        """Send, then wait until the broker acknowledged every one of them."""
        pending = [await topic(name).send(key=key, value=value) for name, key, value in messages]
        await asyncio.gather(*pending)

    async def refuse(refusal: Refusal) -> None:
        await send_all([(topics.dead_letter, None, refusal.dead_letter), (topics.audit, None, refusal.audit_entry)])
        metrics.REFUSED.labels(refusal.reason_code).inc()
        metrics.AUDIT_ENTRIES.labels("REFUSAL").inc()
        log.warning("refused %s: %s", refusal.reason_code, refusal.reason)

    async def handle(record: InputRecord) -> None:
        router = runtime.router
        result = router.admit(record)
        if isinstance(result, Refusal):
            await refuse(result)
            return
        admitted: Admitted = result
        event_key = admitted.event_id.encode()
        prior = seen.get(event_key)
        if prior is not None:
            if prior.decode() == admitted.digest:
                await send_all([(topics.audit, None, router.duplicate(admitted))])
                metrics.DUPLICATES.labels(admitted.header["event_type"]).inc()
                metrics.AUDIT_ENTRIES.labels("DUPLICATE").inc()
            else:
                await refuse(router.conflict(admitted))
            return
        started = time.perf_counter()
        deliveries = router.deliver(admitted)
        metrics.ENCRYPT_SECONDS.observe(time.perf_counter() - started)
        messages = [(d.topic, d.key, d.envelope) for d in deliveries]
        messages += [(topics.audit, None, d.audit_entry) for d in deliveries]
        await send_all(messages)
        seen[event_key] = admitted.digest.encode()
        event_type = admitted.header["event_type"]
        metrics.EVENTS_ROUTED.labels(event_type).inc()
        for d in deliveries:
            metrics.ENVELOPES.labels(event_type, d.agency_id).inc()
        metrics.AUDIT_ENTRIES.labels("DELIVERY").inc(len(deliveries))

    @app.agent(source, name="router")
    async def route(stream):
        async for event in stream.events():
            message = event.message
            record = InputRecord(message.topic, message.partition, message.offset, event.key, event.value)
            started = time.perf_counter()
            try:
                await handle(record)
            except KafkaError:
                # The broker, not the record, failed: let the agent restart and re-read the
                # uncommitted offset rather than dead-letter an event that can still be delivered.
                raise
            except Exception as exc:  # a bug must not stop the flow: keep the record, say why, go on
                log.error("internal error routing %s: %s", record.source, type(exc).__name__)
                await refuse(runtime.router.refuse(
                    record, INTERNAL_ERROR, f"internal error while routing ({type(exc).__name__}); record kept"))
            metrics.ROUTING_SECONDS.observe(time.perf_counter() - started)
