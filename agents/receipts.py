"""The receipts agent: partner receipts -> RECEIPT entries of the exchange log (or refusals).

Receipts are few (one or two per envelope) and each is recorded before its offset may be
committed, so this agent handles them one at a time.
"""

from __future__ import annotations

import asyncio
import logging

import faust

from agents import metrics
from streams.routing import InputRecord, Refusal

log = logging.getLogger("masb.receipts")


def install(app: faust.App, runtime) -> None:
    topics = runtime.topics
    source = app.topic(topics.receipts, key_serializer="raw", value_serializer="raw")
    audit = app.topic(topics.audit, key_serializer="raw", value_serializer="raw")
    dead_letter = app.topic(topics.dead_letter, key_serializer="raw", value_serializer="raw")

    @app.agent(source, name="receipts")
    async def record_receipts(stream):
        async for event in stream.events():
            message = event.message
            record = InputRecord(message.topic, message.partition, message.offset, event.key, event.value)
            result = runtime.router.receipt(record)
            if isinstance(result, Refusal):
                sends = [await dead_letter.send(value=result.dead_letter), await audit.send(value=result.audit_entry)]
                metrics.REFUSED.labels(result.reason_code).inc()
                metrics.AUDIT_ENTRIES.labels("REFUSAL").inc()
                log.warning("refused receipt %s: %s", result.reason_code, result.reason)
            else:
                sends = [await audit.send(value=result)]
                metrics.AUDIT_ENTRIES.labels("RECEIPT").inc()
            await asyncio.gather(*sends)  # recorded before the offset may be committed
