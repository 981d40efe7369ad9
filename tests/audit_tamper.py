"""Tampering with a real exchange log in Kafka, the way an operator with broker access could:
copy the audit topic and its checkpoints to a new prefix, changing the entries on the way."""

from __future__ import annotations

import uuid

from streams.audit.entry import decode_entry, encode_entry
from streams.kafka import producer
from streams.topics import Topics
from tests.harness import Running, run


def tampered_entries(entries: list[bytes], how: str, index: int) -> list[bytes]:
    out = list(entries)
    if how == "alter":  # change what an entry says (here: which agency received)
        entry = decode_entry(out[index])
        entry["agency_id"] = "someone-else"
        entry["reason"] = "altered"
        out[index] = encode_entry(entry)
    elif how == "delete":
        del out[index]
    elif how == "insert":
        entry = decode_entry(out[index])
        entry["exchange_id"] = "f" * 32
        out.insert(index, encode_entry(entry))
    elif how == "reorder":
        out[index], out[index + 1] = out[index + 1], out[index]
    elif how == "truncate":
        out = out[:index]
    else:
        raise ValueError(how)
    return out


def copy_log_with(running: Running, how: str, index: int) -> str:
    """Copy the deployment's audit log and checkpoints to a fresh prefix, tampered; return the prefix."""
    entries = [r.value for r in running.records(running.topics.audit)]
    checkpoints = [r.value for r in running.records(running.topics.checkpoints)]
    target = Topics(f"tampered-{uuid.uuid4().hex[:8]}.")

    async def write() -> None:
        p = producer(running.bootstrap)
        await p.start()
        try:
            for value in tampered_entries(entries, how, index):
                await p.send_and_wait(target.audit, value)
            for value in checkpoints:
                await p.send_and_wait(target.checkpoints, value)
        finally:
            await p.stop()

    run(write())
    return target.prefix
