"""The receipts agent: partner receipts -> RECEIPT entries of the exchange log (or refusals).

Like the router, it handles receipts in small batches and commits a batch's offsets only after the
broker acknowledged every entry and dead letter made from it (agents/sending.py): a receipt is
never lost, even when its dead letter cannot be written as it was (too large) or the broker is away.
"""

from __future__ import annotations

import logging

import faust

from agents import metrics
from agents.router import replacement_for
from agents.sending import Message, acknowledged_batches
from streams.routing import INTERNAL_ERROR, InputRecord, Refusal

log = logging.getLogger("masb.receipts")

BATCH = 100
BATCH_WINDOW_SECONDS = 0.05


def decide(runtime, record: InputRecord) -> tuple[list[Message], list[str]]:
    """What one receipt becomes: an entry (RECEIPT) or a dead letter and an entry (REFUSAL)."""
    topics = runtime.topics
    try:
        result = runtime.router.receipt(record)
    except Exception as exc:  # a bug must not lose the receipt: keep it, say why, go on
        log.error("internal error recording receipt %s: %s", record.source, type(exc).__name__)
        result = runtime.router.refuse(record, INTERNAL_ERROR,
                                       f"internal error while recording a receipt ({type(exc).__name__}); record kept")
    if isinstance(result, Refusal):
        log.warning("refused receipt %s: %s", result.reason_code, result.reason)
        metrics.REFUSED.labels(result.reason_code).inc()
        return ([Message(topics.dead_letter, None, result.dead_letter, record),
                 Message(topics.audit, None, result.audit_entry, record)], ["REFUSAL"])
    return [Message(topics.audit, None, result, record)], ["RECEIPT"]


def install(app: faust.App, runtime) -> None:
    source = app.topic(runtime.topics.receipts, key_serializer="raw", value_serializer="raw")
    supervisor = runtime.supervisor
    hold = runtime.faults.hold if getattr(runtime, "faults", None) else None

    @app.agent(source, name="receipts")
    async def record_receipts(stream):
        await acknowledged_batches(stream, runtime, "receipts", receipts_batch, batch=BATCH,
                                   within=BATCH_WINDOW_SECONDS)

    async def receipts_batch(events, sender) -> None:
        messages, kinds = [], []
        for event in events:
            m = event.message
            made, made_kinds = decide(runtime, InputRecord(m.topic, m.partition, m.offset, event.key, event.value))
            messages += made
            kinds += made_kinds
        if hold is not None:
            await hold("receipts")
        await sender.send_all(messages, lambda msg, err: replacement_for(runtime, msg, err))
        for kind in kinds:
            metrics.AUDIT_ENTRIES.labels(kind).inc()

    supervisor.watch_agent(record_receipts, "receipts")
