"""`masb consume`: an agency's verified, decrypted events as JSON lines (refusals on stderr)."""

from __future__ import annotations

import asyncio
import json
import sys

from agents.cli.common import (
    UsageError,
    bootstrap,
    existing_file,
    existing_topics,
    kafka_flags,
    load_policy,
    non_negative,
    topics,
)
from streams.errors import CheckFailed, shown


def register(sub) -> None:
    p = sub.add_parser("consume", help="print the decrypted events an agency received (or a unit's notices), "
                                       "as JSON lines")
    kafka_flags(p)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--agency", help="read this agency's feed")
    who.add_argument("--unit", help="read this unit's notice feed instead (docs/deadlines.md)")
    p.add_argument("--key", required=True, action="append",
                   help="the agency's (or unit's) private exchange key file (repeat for rotated keys)")
    p.add_argument("--policy", help="sharing policy YAML, for the router's public keys (env MASB_POLICY)")
    p.add_argument("--follow", action="store_true", help="keep waiting for new envelopes (Ctrl-C to stop)")
    p.add_argument("--idle-timeout", type=non_negative(float), default=None, help="with --follow: stop after this many idle seconds")
    p.add_argument("--max", type=non_negative(int), default=0, help="stop after this many events (0: no limit)")
    p.add_argument("--ack", action="store_true",
                   help="send a RECEIVED receipt for each event decrypted (recorded in the exchange log)")
    p.set_defaults(func=cmd_consume)


def cmd_consume(args) -> int:
    if args.unit is not None:
        from agents.cli.status import consume_unit

        if args.ack:
            raise UsageError("--ack is for agencies: units do not acknowledge notices")
        return consume_unit(args)
    return consume_agency(args)


def _line(env) -> str:
    from streams.crypto.envelope import assemble

    return json.dumps({
        "event_id": env.event_id, "event_type": env.event_type, "case_ref": env.case_ref,
        "agreement": f"{env.agreement_id} v{env.agreement_version}", "policy_version": env.policy_version,
        "legal_basis": env.legal_basis, "sent_at": env.sent_at.isoformat(),
        "deliver_by": env.deliver_by.isoformat() if env.deliver_by else None,
        "event": assemble(env.fields),
    }, default=str)


def consume_agency(args) -> int:
    from streams.crypto.keys import Keyring, load_private_key
    from streams.partner import PartnerFeed, ReceiptSender, opener_for

    policy = load_policy(args)
    if policy.agency(args.agency) is None:
        raise UsageError(f"agency {shown(args.agency)} is not an agency of policy version {policy.version}",
                         hint="agency ids are listed under agencies: in the policy")
    records = [load_private_key(existing_file(path, "key file")) for path in args.key]
    if any(r.kind != "exchange" for r in records):
        raise UsageError("--key must be exchange key files (signing keys cannot decrypt envelopes)")
    foreign = sorted({r.owner for r in records if r.owner != args.agency})
    if foreign:
        print(f"masb: the key given belongs to {', '.join(foreign)}, not {args.agency}: it cannot decrypt "
              f"{args.agency}'s feed; reading it anyway to show what is refused", file=sys.stderr)
    keyring = Keyring(args.agency, [r for r in records if r.owner == args.agency], kind="exchange")
    existing_topics(args, "READ", topics(args).partner(args.agency))
    if args.ack:
        existing_topics(args, "WRITE", topics(args).receipts)
    feed = PartnerFeed(bootstrap(args), opener_for(args.agency, keyring, policy), topics(args))
    counts = {"ok": 0, "refused": 0}

    async def run() -> None:
        if args.ack and keyring:
            async with ReceiptSender(bootstrap(args), policy, keyring.current, topics(args)) as receipts:
                await read(receipts)
        else:
            await read(None)

    async def read(receipts) -> None:
        async for item in feed.items(follow=args.follow, idle_timeout=args.idle_timeout):
            if item.ok:
                counts["ok"] += 1
                if receipts is not None:  # the transport receipt: verified and decrypted
                    await receipts.send(item.envelope, "RECEIVED")
                print(_line(item.envelope), flush=True)
            else:
                counts["refused"] += 1
                print(f"offset {item.offset}: refused: {type(item.error).__name__}: {item.error}", file=sys.stderr)
            if args.max and counts["ok"] >= args.max:
                return

    try:
        asyncio.run(run())
    except BaseException:
        if counts["ok"] or counts["refused"]:  # what was done before the failure; the failure says itself
            print(f"masb: {counts['ok']} events decrypted, {counts['refused']} envelopes refused", file=sys.stderr)
        raise
    print(f"masb: {counts['ok']} events decrypted, {counts['refused']} envelopes refused", file=sys.stderr)
    if foreign:
        raise CheckFailed(f"the key given belongs to {', '.join(foreign)}: {args.agency}'s feed cannot be read with it")
    if counts["refused"]:
        raise CheckFailed(f"{counts['refused']} envelopes on {args.agency}'s feed were refused")
    return 0
