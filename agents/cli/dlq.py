"""`masb dlq list|redrive`: the dead letters (reason codes, counts, times, event ids; never personal
data) and sending them back through the router once the cause is fixed (docs/deadlines.md, "Redrive").

`redrive` does not write to any input topic itself: it asks the worker (one request per dead letter
on case-events.dlq.redrive); the worker reads the dead letter from its own dead-letter topic, sends
the kept bytes back to the topic they came from and records a REDRIVE entry in the exchange log,
which this command waits for.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from datetime import datetime, timezone

from agents.cli.common import (UsageError, bootstrap, event_id, existing_topics, kafka_flags, non_negative, print_json,
                               topics)
from streams.errors import CheckFailed, shown


def register(sub) -> None:
    p = sub.add_parser("dlq", help="list dead letters, or send them back through the router")
    dsub = p.add_subparsers(dest="action", required=True)
    q = dsub.add_parser("list", help="dead letters: reason codes, counts, times, event ids, whether redrivable")
    kafka_flags(q)
    _filters(q)
    q.add_argument("--format", choices=["text", "json"], default="text")
    q.set_defaults(func=cmd_list)
    q = dsub.add_parser("redrive", help="send dead letters back through the router (after fixing the cause)")
    kafka_flags(q)
    _filters(q)
    q.add_argument("--offset", type=non_negative(int), action="append",
                   help="only the dead letter at this offset (repeatable)")
    q.add_argument("--again", action="store_true", help="also those whose redrive was requested before")
    q.add_argument("--dry-run", action="store_true", help="say what would be redriven; send nothing")
    q.add_argument("--wait", type=non_negative(float), default=30.0,
                   help="seconds to wait for the worker to record each redrive (0: do not wait)")
    q.set_defaults(func=cmd_redrive)


def _filters(p) -> None:
    p.add_argument("--reason", action="append", metavar="CODE", help="only this reason code (repeatable)")
    p.add_argument("--event-id", type=event_id, help="only dead letters of this event id (a UUID, any case)")


@dataclass
class DeadLetter:
    offset: int
    value: bytes
    letter: dict
    why_not: str | None          # None: can be redriven
    requested_at: datetime | None = None  # the last redrive request for it, if any

    def row(self) -> dict:
        letter = self.letter
        return {"offset": self.offset, "refused_at": _iso(letter["received_at"]), "reason_code": letter["reason_code"],
                "unit": letter["unit_id"], "event_id": letter["event_id"],
                "source": f"{letter['source_topic']}/{letter['source_partition']}/{letter['source_offset']}",
                "payload_kept": letter["payload"] is not None, "redrivable": self.why_not is None,
                "not_redrivable_because": self.why_not, "redrive_requested_at": _iso(self.requested_at)}


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if moment else None


async def _dead_letters(server: str, names) -> list[DeadLetter]:
    from streams.kafka import read_topic
    from streams.redrive import RedriveError, decode_request, why_not_redrivable
    from streams.routing import decode_dead_letter

    letters = []
    async for record in read_topic(server, names.dead_letter):
        try:
            letter = decode_dead_letter(record.value or b"")
        except Exception:  # noqa: BLE001 - a record the router did not write; say so, go on
            print(f"masb: {names.dead_letter} offset {record.offset}: not a dead-letter record; skipped",
                  file=sys.stderr)
            continue
        letters.append(DeadLetter(record.offset, record.value, letter, why_not_redrivable(letter, names)))
    by_offset = {d.offset: d for d in letters}
    async for record in read_topic(server, names.redrive_requests):
        try:
            request = decode_request(record.value or b"")
        except RedriveError:
            continue
        target = by_offset.get(request["dead_letter_offset"])
        if target is not None:
            target.requested_at = max(filter(None, (target.requested_at, request["requested_at"])))
    return letters


def _check_reasons(args) -> None:
    """Refuse an unknown --reason code before reading: a typo must not read as "0 dead letters"."""
    from streams.routing import REASON_CODES

    for code in args.reason or ():
        if code not in REASON_CODES:
            raise UsageError(f"--reason {shown(code)} is not a dead-letter reason code",
                             hint=f"one of {', '.join(REASON_CODES)} (docs/routing.md)")


def _select(letters: list[DeadLetter], args) -> list[DeadLetter]:
    return [d for d in letters
            if (not args.reason or d.letter["reason_code"] in args.reason)
            and (not args.event_id or d.letter["event_id"] == args.event_id)
            and (not getattr(args, "offset", None) or d.offset in args.offset)]


def cmd_list(args) -> int:
    _check_reasons(args)
    names = topics(args)
    existing_topics(args, "READ", names.dead_letter, names.redrive_requests)
    letters = _select(asyncio.run(_dead_letters(bootstrap(args), names)), args)
    summary: dict[str, dict] = {}
    for d in letters:
        code = d.letter["reason_code"]
        s = summary.setdefault(code, {"count": 0, "redrivable": 0, "first": None, "last": None})
        s["count"] += 1
        s["redrivable"] += d.why_not is None
        at = d.letter["received_at"]
        s["first"] = min(filter(None, (s["first"], at)))
        s["last"] = max(filter(None, (s["last"], at)))
    if args.format == "json":
        print(json.dumps({"topic": names.dead_letter, "dead_letters": len(letters),
                          "by_reason": {code: {**s, "first": _iso(s["first"]), "last": _iso(s["last"])}
                                        for code, s in sorted(summary.items())},
                          "records": [d.row() for d in letters]}, indent=2))
        return 0
    print(f"{names.dead_letter}: {len(letters)} dead letters, {sum(d.why_not is None for d in letters)} redrivable")
    if not letters:
        return 0
    _table([("reason code", "count", "redrivable", "first refused", "last refused")]
           + [(code, s["count"], s["redrivable"], _iso(s["first"]), _iso(s["last"]))
              for code, s in sorted(summary.items())])
    print()
    _table([("offset", "refused at", "reason code", "unit", "event id", "redrive")]
           + [(r["offset"], r["refused_at"], r["reason_code"], r["unit"] or "-", r["event_id"] or "-",
               f"requested {r['redrive_requested_at']}" if r["redrive_requested_at"]
               else "yes" if r["redrivable"] else f"no: {r['not_redrivable_because']}")
              for r in (d.row() for d in letters)])
    return 0


def _table(rows) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def cmd_redrive(args) -> int:
    from streams.redrive import dead_letter_sha256, encode_request, redrive_action_id

    _check_reasons(args)
    server, names = bootstrap(args), topics(args)
    existing_topics(args, "READ", names.dead_letter)
    existing_topics(args, "WRITE", names.redrive_requests)
    letters = _select(asyncio.run(_dead_letters(server, names)), args)
    chosen, skipped = [], []
    for d in letters:
        if d.why_not is not None:
            skipped.append((d, f"cannot be redriven: {d.why_not}"))
        elif d.requested_at is not None and not args.again:
            skipped.append((d, f"redrive already requested at {_iso(d.requested_at)} (--again to repeat)"))
        else:
            chosen.append(d)
    for d, why in skipped:
        print(f"masb: dead letter {d.offset} ({d.letter['reason_code']}) {why}", file=sys.stderr)
    if not chosen:
        raise CheckFailed(f"nothing to redrive: {len(letters)} dead letters match, none can be sent back now")
    if args.dry_run:
        for d in chosen:
            print_json({**_redrive_line(d), "dry_run": True})
        return 0

    async def request_all() -> tuple[dict[str, DeadLetter], dict[int, int]]:
        from streams.kafka import producer, start_client

        audit_end = await _end_offsets(server, names.audit)
        p = producer(server)
        await start_client(p, server)
        expected = {}
        try:
            now = datetime.now(timezone.utc)
            for d in chosen:
                meta = await p.send_and_wait(names.redrive_requests, encode_request(
                    d.offset, dead_letter_sha256(d.value), now), key=str(d.offset).encode())
                request_source = f"{names.redrive_requests}/{meta.partition}/{meta.offset}"
                expected[redrive_action_id(f"{names.dead_letter}/0/{d.offset}", request_source)] = d
        finally:
            await p.stop()
        return expected, audit_end

    expected, audit_end = asyncio.run(request_all())
    print(f"masb: asked the worker to redrive {len(expected)} dead letters", file=sys.stderr)
    if args.wait == 0:
        return 0
    recorded = asyncio.run(_wait_recorded(server, names.audit, audit_end, set(expected), args.wait))
    for action, d in expected.items():
        entry = recorded.get(action)
        print_json({**_redrive_line(d), "recorded_at": _iso(entry["recorded_at"]) if entry else None})
    missing = len(expected) - len(recorded)
    if missing:
        raise CheckFailed(f"the worker did not record {missing} of {len(expected)} redrives within {args.wait:.0f}s",
                          hint="is a worker running? it records each redrive once it has read the request "
                               "(see its log)")
    return 0


def _redrive_line(d: DeadLetter) -> dict:
    """What `redrive` prints per dead letter (docs/deadlines.md, "Redrive"): its offset on the
    dead-letter topic (an address, as `dlq list` shows it and `--offset` takes it; not a count)."""
    return {"dead_letter_offset": d.offset, "reason_code": d.letter["reason_code"], "event_id": d.letter["event_id"],
            "to": d.letter["source_topic"]}


async def _end_offsets(server: str, topic: str) -> dict[int, int]:
    from aiokafka import TopicPartition

    from streams.kafka import consumer, start_client

    reader = consumer(server, group_id=None)
    await start_client(reader, server)
    try:
        parts = reader.partitions_for_topic(topic) or {0}
        ends = await reader.end_offsets([TopicPartition(topic, p) for p in parts])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await reader.stop()


async def _wait_recorded(server: str, topic: str, from_offsets: dict[int, int], actions: set[str],
                         timeout: float) -> dict[str, dict]:
    """REDRIVE entries with these action ids, read from the audit log's end as it was before asking."""
    from streams.audit.entry import AuditEntryError, decode_entry
    from streams.kafka import read_topic

    recorded: dict[str, dict] = {}

    async def follow() -> None:
        async for record in read_topic(server, topic, from_offsets=from_offsets, follow=True):
            try:
                entry = decode_entry(record.value or b"")
            except AuditEntryError:
                continue
            if entry["kind"] == "REDRIVE" and entry["action_id"] in actions:
                recorded.setdefault(entry["action_id"], entry)
                if len(recorded) == len(actions):
                    return

    try:
        await asyncio.wait_for(follow(), timeout)
    except asyncio.TimeoutError:
        pass
    return recorded
