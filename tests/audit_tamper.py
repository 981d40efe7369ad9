"""Tampering with a real exchange log in Kafka, the way an operator with broker access could:
copy the audit topic and its checkpoints to a new prefix, changing the entries on the way."""

from __future__ import annotations

import base64
import json
import uuid

import nacl.signing

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


def forged_checkpoint_record(record: bytes) -> bytes:
    """The record with its note's root replaced and re-signed by a key that is not the log's, under
    the log key's name and key ID (what a forger without the private key can do)."""
    doc = json.loads(record)
    body, _, signatures = doc["note"].rpartition("\n\n")
    origin, size, _root = body.split("\n")
    name, sig_b64 = signatures.strip().split(" ")[1:3]
    key_id = base64.b64decode(sig_b64)[:4]
    forged_body = f"{origin}\n{size}\n{base64.b64encode(bytes(32)).decode()}\n"
    signature = nacl.signing.SigningKey(bytes(range(32))).sign(forged_body.encode()).signature
    doc["note"] = f"{forged_body}\n\u2014 {name} {base64.b64encode(key_id + signature).decode()}\n"
    return json.dumps(doc, sort_keys=True).encode()


def copy_log_with(running: Running, how: str, index: int) -> str:
    """Copy the deployment's audit log and checkpoints to a fresh prefix, tampered; return the prefix.
    how: alter, delete, insert, reorder, truncate (entry `index`, 0-based) or forge (checkpoint `index`)."""
    entries = [r.value for r in running.records(running.topics.audit)]
    checkpoints = [r.value for r in running.records(running.topics.checkpoints)]
    if how == "forge":
        checkpoints[index] = forged_checkpoint_record(checkpoints[index])
    else:
        entries = tampered_entries(entries, how, index)
    target = Topics(f"tampered-{uuid.uuid4().hex[:8]}.")

    async def write() -> None:
        p = producer(running.bootstrap)
        await p.start()
        try:
            for value in entries:
                await p.send_and_wait(target.audit, value)
            for value in checkpoints:
                await p.send_and_wait(target.checkpoints, value)
        finally:
            await p.stop()

    run(write())
    return target.prefix
