"""`masb publish`: validate JSON case events against the schemas, sign, seal to the router, publish."""

from __future__ import annotations

import asyncio
import sys

from agents.cli.common import (
    UsageError,
    bootstrap,
    kafka_flags,
    load_policy,
    print_json,
    pseudonym_flag,
    pseudonym_keys,
    read_events,
    topics,
)
from agents.settings import env_or
from streams.errors import InvalidInput


def register(sub) -> None:
    p = sub.add_parser("publish", help="validate, sign, seal and publish case events (JSON)")
    kafka_flags(p)
    p.add_argument("--as", dest="unit", required=True, help="publishing harm assessment unit id")
    p.add_argument("--key", help="the unit's private signing key file")
    p.add_argument("--keys-dir", help="directory holding <unit>*.key files if --key is not given, and the case "
                                      "pseudonym key if --pseudonym-key is not given")
    pseudonym_flag(p)
    p.add_argument("--policy", help="sharing policy YAML (env MASB_POLICY)")
    p.add_argument("file", help="JSON file (object, array or JSON lines) or - for stdin")
    p.set_defaults(func=cmd_publish)


def unit_signing_key(args):
    """The unit's signing key from --key, or the current one in --keys-dir / MASB_KEYS_DIR."""
    from streams.crypto.keys import Keyring, load_private_key

    if args.key:
        unit_key = load_private_key(args.key)
    else:
        keys_dir = env_or(args.keys_dir, "MASB_KEYS_DIR", "keys")
        unit_key = Keyring.load_dir(keys_dir, args.unit, kind="signing").current
    if unit_key.owner != args.unit or unit_key.kind != "signing":
        raise UsageError(f"the key given is not a signing key of unit {args.unit}")
    return unit_key


def cmd_publish(args) -> int:
    from streams.codec import EventValidationError
    from streams.publisher import Publisher, prepare

    policy = load_policy(args)
    if policy.unit(args.unit) is None:
        raise UsageError(f"unit {args.unit} is not a unit of policy version {policy.version}")
    unit_key = unit_signing_key(args)
    events = read_events(args.file)
    pseudonyms = pseudonym_keys(args)
    prepared, failures = [], 0
    for number, event in enumerate(events, 1):
        try:
            prepared.append((event, prepare(event, policy, unit_key, pseudonyms)))
        except EventValidationError as exc:
            failures += 1
            print(f"event {number}: invalid:\n{exc}", file=sys.stderr)
        except InvalidInput as exc:  # valid, but the policy does not let this unit publish it
            failures += 1
            print(f"event {number}: refused: {exc}", file=sys.stderr)
        except (TypeError, KeyError, AttributeError):
            failures += 1
            print(f"event {number}: refused: not a case event object (see docs/events.md)", file=sys.stderr)
    if failures:
        raise InvalidInput(f"{failures} of {len(events)} events refused; nothing was published")

    async def send() -> None:
        async with Publisher(bootstrap(args), policy, unit_key, topics(args), pseudonyms=pseudonyms) as publisher:
            for event, (key, value) in prepared:
                await publisher.send_raw(key, value)
                print_json({"published": event["header"]["event_id"], "event_type": event["header"]["event_type"]})

    asyncio.run(send())
    return 0
