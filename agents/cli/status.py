"""`masb status EVENT_ID --as UNIT --key KEY`: the life of an event its unit published, per agency,
from the unit's notice feed (docs/deadlines.md); and `masb consume --unit UNIT`, that feed as JSON lines.

Only the unit's own notices, sealed to its exchange key, are read: no other unit's events.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime, timezone

from agents.cli.common import (
    UsageError,
    bootstrap,
    event_id,
    existing_file,
    existing_topics,
    kafka_flags,
    load_policy,
    topics,
)
from streams.crypto.keys import kind_phrase
from streams.errors import CheckFailed, shown


def register(sub) -> None:
    p = sub.add_parser("status", help="what happened to an event a unit published: delivered, received, "
                                      "acknowledged, overdue, escalated, per agency")
    kafka_flags(p)
    p.add_argument("event_id", type=event_id, help="the event id the unit published")
    p.add_argument("--as", dest="unit", required=True, help="the publishing unit's id")
    p.add_argument("--key", required=True, action="append",
                   help="the unit's private exchange key file (repeat for rotated keys)")
    p.add_argument("--policy", help="sharing policy YAML, for the router's public keys (env MASB_POLICY)")
    p.add_argument("--at", help="judge overdue at this ISO 8601 time instead of now (UTC if no zone)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_status)


def unit_feed(args, unit_id: str):
    """The unit's feed reader, from the policy and the --key files (UsageError naming what is wrong)."""
    from streams.crypto.keys import Keyring, load_private_key
    from streams.unit_feed import UnitFeed, unit_opener

    policy = load_policy(args)
    unit = policy.unit(unit_id)
    if unit is None:
        raise UsageError(f"unit {shown(unit_id)} is not a unit of policy version {policy.version}",
                         hint="unit ids are listed under units: in the policy")
    records = [load_private_key(existing_file(path, "key file")) for path in args.key]
    wrong = [r for r in records if r.kind != "exchange" or r.owner != unit_id]
    if wrong:
        raise UsageError(f"--key must be exchange key files of {unit_id} (key {wrong[0].key_id} is "
                         f"{kind_phrase(wrong[0].kind)} key of {wrong[0].owner})",
                         hint=f"make one with: masb keys generate --owner {unit_id} --kind exchange, and add it "
                              "to the unit's exchange_keys in the policy (docs/keys.md)")
    keyring = Keyring(unit_id, records, kind="exchange")
    existing_topics(args, "READ", topics(args).unit(unit_id))
    return UnitFeed(bootstrap(args), unit_opener(unit_id, keyring, policy), topics(args))


def _read(feed, follow: bool = False, idle_timeout: float | None = None, on_item=None) -> tuple[list, int]:
    notices, refused = [], 0

    async def go() -> None:
        nonlocal refused
        async for item in feed.items(follow=follow, idle_timeout=idle_timeout):
            if item.ok:
                notices.append(item.notice)
            else:
                refused += 1
                print(f"offset {item.offset}: refused: {type(item.error).__name__}: {item.error}", file=sys.stderr)
            if on_item is not None and item.ok:
                on_item(item.notice)

    asyncio.run(go())
    return notices, refused


def _iso(moment) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if moment else "-"


def _judged_at(text: str | None) -> datetime:
    if not text:
        return datetime.now(timezone.utc)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--at {text}: not an ISO 8601 date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def cmd_status(args) -> int:
    from streams.unit_feed import event_status

    judged_at = _judged_at(args.at)
    notices, refused = _read(unit_feed(args, args.unit))
    statuses = event_status(notices, args.event_id)
    if not statuses:
        raise CheckFailed(f"no notice about event {args.event_id} on {args.unit}'s feed: not an event this unit "
                          "published, or not routed yet", hint="notices are kept as long as the feed topic retains them")
    rows = [s.as_json(judged_at) for s in statuses.values()]
    if args.format == "json":
        print(json.dumps({"event_id": args.event_id, "unit": args.unit, "judged_at": _iso(judged_at),
                          "agencies": rows}, indent=2))
    else:
        first = next(iter(statuses.values()))
        print(f"event {args.event_id} ({first.event_type}) published by {args.unit}: {len(rows)} agencies, "
              f"judged at {_iso(judged_at)}")
        columns = ("agency", "state", "delivered_at", "deliver_by", "received_at", "acknowledged_at",
                   "overdue_since", "escalated")
        table = [columns] + [(r["agency"], r["state"], *(r[c] or "-" for c in columns[2:7]),
                              "; ".join(f"L{level} {at}" for level, at in r["escalated_at"].items()) or "-")
                             for r in rows]
        widths = [max(len(str(row[i])) for row in table) for i in range(len(columns))]
        for row in table:
            print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    if refused:
        raise CheckFailed(f"{refused} notices on {args.unit}'s feed were refused")
    return 0


def consume_unit(args) -> int:
    """`masb consume --unit UNIT --key KEY`: the unit's notices as JSON lines (docs/deadlines.md)."""
    def line(notice) -> None:
        content = {k: (_iso(v) if isinstance(v, datetime) else v) for k, v in notice.content.items()}
        print(json.dumps({**content, "notice_sha256": notice.notice_sha256}), flush=True)
        counts["ok"] += 1
        if args.max and counts["ok"] >= args.max:
            raise _Enough

    counts = {"ok": 0}
    feed = unit_feed(args, args.unit)
    refused = 0
    try:
        _, refused = _read(feed, follow=args.follow, idle_timeout=args.idle_timeout, on_item=line)
    except _Enough:
        pass
    finally:
        print(f"masb: {counts['ok']} notices read, {refused} refused", file=sys.stderr)
    if refused:
        raise CheckFailed(f"{refused} notices on {args.unit}'s feed were refused")
    return 0


class _Enough(Exception):
    """--max reached."""
