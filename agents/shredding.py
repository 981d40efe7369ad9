"""The shredding agent: destroys a case's key in the shared store when `masb audit shred` asks.

Requests arrive on ``<prefix>audit.case-key-shreds``, in the partition of the case (the topic is
co-partitioned with case-events), so the worker that routes the case carries them out: it writes a
tombstone and a marker to the compacted case-key topic, waits until the broker acknowledged them,
and forgets the key. Request value: UTF-8 JSON {"format": "masb-case-shred-request-v1",
"lookup": <32 hex>} (the case's lookup name, never the case reference; docs/audit.md).
"""

from __future__ import annotations

import json
import logging
import re

import faust

from agents.router import send_case_keys
from agents.sending import acknowledged_batches, until_done

log = logging.getLogger("masb.shredding")

REQUEST_FORMAT = "masb-case-shred-request-v1"
_LOOKUP = re.compile(r"[0-9a-f]{32}", re.ASCII)


def request_value(lookup: str) -> bytes:
    return json.dumps({"format": REQUEST_FORMAT, "lookup": lookup}, sort_keys=True).encode()


def parse_request(value: bytes | None) -> str | None:
    """The lookup name a request asks to shred, or None for anything else (logged by code only)."""
    try:
        doc = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError):
        return None
    lookup = doc.get("lookup") if isinstance(doc, dict) and doc.get("format") == REQUEST_FORMAT else None
    return lookup if isinstance(lookup, str) and _LOOKUP.fullmatch(lookup) else None


def install(app: faust.App, runtime) -> None:
    source = app.topic(runtime.topics.case_key_shreds, key_serializer="raw", value_serializer="raw")
    case_keys = runtime.case_keys

    @app.agent(source, name="case-key-shreds")
    async def shred(stream):
        await acknowledged_batches(stream, runtime, "case-key-shreds", shred_batch, batch=100, within=0.05)

    async def shred_batch(events, sender) -> None:
        partitions = {event.message.partition for event in events}
        await until_done("reading case keys", lambda: case_keys.load(partitions))
        done, records = [], []
        for event in events:
            lookup = parse_request(event.value)
            if lookup is None:
                log.warning("ignored a malformed shred request at %s/%d/%d", event.message.topic,
                            event.message.partition, event.message.offset)
                continue
            records += case_keys.shred(event.message.partition, lookup)
            done.append((event.message.partition, lookup))
        await send_case_keys(sender, runtime, records)
        for partition, lookup in done:
            case_keys.forget(partition, lookup)
        if records:
            log.warning("destroyed %d case key(s) on request", len(records) // 2)

    runtime.supervisor.watch_agent(shred, "case-key-shreds")
