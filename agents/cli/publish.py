"""`masb publish`: validate JSON case events against the schemas, sign, seal to the router, publish."""

from __future__ import annotations

import asyncio

from agents.cli.common import (
    UsageError,
    bootstrap,
    existing_dir,
    existing_topics,
    given,
    kafka_flags,
    load_policy,
    print_json,
    pseudonym_flag,
    pseudonym_keys,
    read_events,
    topics,
)
from agents.settings import env_or
from streams.errors import InvalidInput, shown


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
        keys_dir = existing_dir(env_or(args.keys_dir, "MASB_KEYS_DIR", "keys"), "keys directory")
        unit_key = Keyring.load_dir(keys_dir, args.unit, kind="signing").current
    if unit_key.owner != args.unit or unit_key.kind != "signing":
        raise UsageError(f"the key given is not a signing key of unit {shown(args.unit)}")
    return unit_key


def cmd_publish(args) -> int:
    from streams.codec import EventValidationError
    from streams.publisher import Publisher, prepare_publication

    given(args.unit, "--as", "the publishing unit's id")
    policy = load_policy(args)
    if policy.unit(args.unit) is None:
        raise UsageError(f"unit {shown(args.unit)} is not a unit of policy version {policy.version}",
                         hint="unit ids are listed under units: in the policy")
    unit_key = unit_signing_key(args)
    events = read_events(args.file)
    pseudonyms = pseudonym_keys(args)
    prepared, refusals = [], []  # refusals: (event line, its problem lines)
    for number, event in enumerate(events, 1):
        try:
            prepared.append(prepare_publication(event, policy, unit_key, pseudonyms))
        except EventValidationError as exc:
            refusals.append((f"event {number}: invalid ({len(exc.errors)} problem(s)):",
                             [f"{e.path}: {e.problem}" for e in exc.errors]))
        except InvalidInput as exc:  # valid, but the policy does not let this unit publish it
            refusals.append((f"event {number}: refused: {exc}", []))
        except (TypeError, KeyError, AttributeError):
            refusals.append((f"event {number}: refused: not a case event object (see docs/events.md)", []))
    if refusals:
        raise InvalidInput("\n".join([f"{len(refusals)} of {len(events)} events refused; nothing was published:",
                                      *_refusal_lines(refusals)]))
    existing_topics(args, "WRITE", topics(args).case_events)  # a mistyped prefix must not create a topic

    async def send() -> None:
        async with Publisher(bootstrap(args), policy, unit_key, topics(args), pseudonyms=pseudonyms) as publisher:
            for ready in prepared:
                await publisher.send_raw(ready.key, ready.value)
                # The id as the log stores it (lower-case), so `status` and `audit prove` find it.
                print_json({"published": ready.event_id, "event_type": ready.event_type})

    asyncio.run(send())
    return 0


def _refusal_lines(refusals: list[tuple[str, list[str]]]) -> list[str]:
    """Each refused event, indented problems under it; at most streams.problems.MAX_SHOWN problems
    (a refused event counts as one), then `... and N more problems`."""
    from streams.problems import MAX_SHOWN, more_line

    lines, shown_count, left_out = [], 0, 0
    for event_line, problems in refusals:
        room = MAX_SHOWN - shown_count
        if room <= 0:
            left_out += len(problems) or 1
            continue
        lines.append(event_line)
        lines += [f"  {p}" for p in problems[:room]]
        shown_count += min(len(problems), room) or 1
        left_out += max(0, len(problems) - room)
    return lines + ([more_line(left_out)] if left_out else [])
