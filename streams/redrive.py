"""Dead-letter redrive: send refused records back through the router once the cause is fixed.

Pure functions (no Kafka): what can be redriven, the request an operator sends (schemas/
redrive_request.avsc on ``case-events.dlq.redrive``) and the REDRIVE audit entry the worker writes
when it sends a dead letter's kept bytes back to the topic they came from. Format and rules:
docs/deadlines.md, "Redrive".

A redrive is idempotent where it matters: the router decides the record again from its first check,
and its dedupe by event id means an event reaches each agency once however often it is redriven, or
if it was meanwhile published again and routed.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import fastavro

from streams.audit.entry import make_entry
from streams.deadlines import deterministic_id
from streams.errors import InvalidInput
from streams.policy import Policy
from streams.resources import schema_file
from streams.topics import Topics

_REQUEST = fastavro.schema.load_schema(str(schema_file("redrive_request.avsc")))

# Refusals that sending the same bytes again can never turn into a delivery: the record itself is
# at fault (or, for CONFLICTING_DUPLICATE, the event id is taken for good).
NEVER_REDRIVABLE = {
    "EMPTY_RECORD": "the record had no value",
    "OVERSIZED": "the record is too large and always will be",
    "MALFORMED": "the bytes are not a publication",
    "UNSEALED_FAILED": "the sealed box does not open",
    "BAD_SIGNATURE": "the signature does not verify",
    "UNIT_MISMATCH": "the unit signed another unit's event",
    "KEY_MISMATCH": "the record key is not the case reference",
    "CONFLICTING_DUPLICATE": "the event id was already routed with other content",
    "SEND_REFUSED": "the input was routed; only an output was refused",
}


class RedriveError(InvalidInput, ValueError):
    """A redrive request that cannot be read."""


def dead_letter_sha256(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()


def why_not_redrivable(letter: dict[str, Any], topics: Topics) -> str | None:
    """None if the dead letter can be sent back as it was kept; else why not, in one phrase."""
    if letter["reason_code"] in NEVER_REDRIVABLE:
        return f"{letter['reason_code']}: {NEVER_REDRIVABLE[letter['reason_code']]}"
    if letter["payload"] is None:
        return ("the original value was not kept (over 262144 bytes, or a null value): it stays at "
                f"{letter['source_topic']}/{letter['source_partition']}/{letter['source_offset']} while that "
                "topic retains it")
    if letter["source_topic"] not in (topics.case_events, topics.receipts):
        return f"it came from {letter['source_topic']}, not from this deployment's case-events or receipts"
    return None


def encode_request(dead_letter_offset: int, dead_letter_digest: str, requested_at: datetime) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, _REQUEST, {"version": 1, "dead_letter_offset": dead_letter_offset,
                                               "dead_letter_sha256": dead_letter_digest,
                                               "requested_at": requested_at})
    return buf.getvalue()


def decode_request(data: bytes) -> dict[str, Any]:
    buf = io.BytesIO(data)
    try:
        request = fastavro.schemaless_reader(buf, _REQUEST)
    except Exception:  # noqa: BLE001 - any decoder failure means a malformed request
        raise RedriveError("redrive request is not valid Avro") from None
    if buf.read(1) or request["version"] != 1:
        raise RedriveError("redrive request has trailing bytes or an unknown version")
    return request


def redrive_action_id(dead_letter_source: str, request_source: str) -> str:
    """The REDRIVE entry's id: one per request record, so a request read again after a crash
    (at least once) is recorded with the same id."""
    return deterministic_id("MASB-REDRIVE", dead_letter_source, request_source)


@dataclass(frozen=True)
class Redrive:
    """What the worker sends for one redrive request: the kept bytes to their topic, and the entry."""

    topic: str
    key: bytes | None
    value: bytes
    entry: dict[str, Any]


def plan_redrive(letter: dict[str, Any], dead_letter_source: str, request_source: str, policy: Policy,
                 now: datetime) -> Redrive:
    """The redrive of a dead letter that `why_not_redrivable` accepted."""
    refused_at = letter["received_at"].isoformat().replace("+00:00", "Z")
    # `source` names the refused input record, as the REFUSAL entry did: the report links the two.
    refused = f"{letter['source_topic']}/{letter['source_partition']}/{letter['source_offset']}"
    entry = make_entry(
        "REDRIVE", recorded_at=now, event_id=letter["event_id"], unit_id=letter["unit_id"],
        policy_version=policy.version, policy_digest=policy.digest, reason_code=letter["reason_code"],
        reason=(f"dead letter {dead_letter_source} (refused {letter['reason_code']} at {refused_at}) sent back to "
                f"{letter['source_topic']}"),
        source=refused, action_id=redrive_action_id(dead_letter_source, request_source),
    )
    return Redrive(letter["source_topic"], letter["original_key"], letter["payload"], entry)
