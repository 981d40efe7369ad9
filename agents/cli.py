"""`masb`: the single command-line door for people (units, partners, auditors, operators).

Every command takes its settings from flags first, then MASB_* environment variables:
MASB_BOOTSTRAP, MASB_POLICY, MASB_KEYS_DIR, MASB_TOPIC_PREFIX. Errors go to stderr as one clear
line per problem, with a non-zero exit code; no command prints personal data except the
decrypted events `masb consume` exists to show to their entitled recipient.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from agents.settings import DEFAULT_BOOTSTRAP, env_or

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A user-facing failure: printed as 'masb: <message>' with exit code 1."""


def _bootstrap(args) -> str:
    return env_or(getattr(args, "bootstrap", None), "MASB_BOOTSTRAP", DEFAULT_BOOTSTRAP)


def _policy(args):
    from streams.policy import PolicyError, load_policy

    path = Path(env_or(getattr(args, "policy", None), "MASB_POLICY", "policy.yaml"))
    if not path.exists():
        raise CommandError(f"policy file {path} not found (use --policy or MASB_POLICY)")
    try:
        return load_policy(path)
    except PolicyError as exc:
        raise CommandError(f"policy file {path} is invalid:\n{exc}") from None


def _topics(args):
    from streams.topics import Topics

    return Topics(env_or(getattr(args, "topic_prefix", None), "MASB_TOPIC_PREFIX", ""))


def _read_events(source: str) -> list[dict]:
    """JSON events from a file or '-' (stdin): one object, an array, or one object per line."""
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    text = text.strip()
    if not text:
        raise CommandError("no event given")
    try:
        value = json.loads(text)
        return value if isinstance(value, list) else [value]
    except json.JSONDecodeError:
        events = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CommandError(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        return events


# -- worker and demo -----------------------------------------------------------------------------
def cmd_worker(args) -> int:
    import faust

    from agents.app import Runtime, build_app, topic_specs
    from agents.settings import Settings
    from streams.kafka import ensure_topics

    settings = Settings.from_args(args)
    runtime = Runtime(settings)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(ensure_topics(settings.bootstrap, topic_specs(runtime.topics, runtime.policy,
                                                                          settings.partitions)))
    app = build_app(settings, runtime)
    worker = faust.Worker(app, loop=loop, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()
    return EXIT_OK


def cmd_demo(args) -> int:
    from agents.demo import run_demo

    return run_demo(bootstrap=env_or(args.bootstrap, "MASB_BOOTSTRAP", None), workdir=Path(args.workdir))


# -- publishing and consuming --------------------------------------------------------------------
def cmd_publish(args) -> int:
    from streams.codec import EventValidationError
    from streams.crypto.keys import Keyring, load_private_key
    from streams.publisher import Publisher, PublishRefused, prepare

    policy = _policy(args)
    if args.key:
        unit_key = load_private_key(args.key)
    else:
        keys_dir = env_or(args.keys_dir, "MASB_KEYS_DIR", "keys")
        unit_key = Keyring.load_dir(keys_dir, args.unit, kind="signing").current
    if unit_key.owner != args.unit or unit_key.kind != "signing":
        raise CommandError(f"the key given is not a signing key of unit {args.unit}")
    events = _read_events(args.file)
    prepared, failures = [], 0
    for number, event in enumerate(events, 1):
        try:
            prepared.append((event, prepare(event, policy, unit_key)))
        except EventValidationError as exc:
            failures += 1
            print(f"event {number}: invalid:\n{exc}", file=sys.stderr)
        except PublishRefused as exc:
            failures += 1
            print(f"event {number}: refused: {exc}", file=sys.stderr)
        except (TypeError, KeyError, AttributeError):
            failures += 1
            print(f"event {number}: invalid: not a case event object (see docs/events.md)", file=sys.stderr)
    if failures:
        print(f"masb: {failures} of {len(events)} events refused; nothing was published", file=sys.stderr)
        return EXIT_FAIL

    async def send() -> None:
        async with Publisher(_bootstrap(args), policy, unit_key, _topics(args)) as publisher:
            for event, (key, value) in prepared:
                await publisher.send_raw(key, value)
                print(json.dumps({"published": event["header"]["event_id"],
                                  "event_type": event["header"]["event_type"]}))

    asyncio.run(send())
    return EXIT_OK


def cmd_consume(args) -> int:
    from streams.crypto.envelope import assemble
    from streams.crypto.keys import Keyring, load_private_key
    from streams.partner import PartnerFeed, ReceiptSender, opener_for

    policy = _policy(args)
    records = [load_private_key(path) for path in args.key]
    if any(r.kind != "exchange" for r in records):
        raise CommandError("--key must be exchange key files (signing keys cannot decrypt envelopes)")
    foreign = sorted({r.owner for r in records if r.owner != args.agency})
    if foreign:
        print(f"masb: the key given belongs to {', '.join(foreign)}, not {args.agency}: it cannot decrypt "
              f"{args.agency}'s feed; reading it anyway to show what is refused", file=sys.stderr)
    keyring = Keyring(args.agency, [r for r in records if r.owner == args.agency], kind="exchange")
    feed = PartnerFeed(_bootstrap(args), opener_for(args.agency, keyring, policy), _topics(args))
    counts = {"ok": 0, "refused": 0}

    async def run() -> None:
        if args.ack and keyring:
            async with ReceiptSender(_bootstrap(args), policy, keyring.current, _topics(args)) as receipts:
                await read(receipts)
        else:
            await read(None)

    async def read(receipts) -> None:
        async for item in feed.items(follow=args.follow, idle_timeout=args.idle_timeout):
            if item.ok:
                env = item.envelope
                counts["ok"] += 1
                if receipts is not None:  # the transport receipt: verified and decrypted
                    await receipts.send(env, "RECEIVED")
                print(json.dumps({
                    "event_id": env.event_id, "event_type": env.event_type, "case_ref": env.case_ref,
                    "agreement": f"{env.agreement_id} v{env.agreement_version}", "policy_version": env.policy_version,
                    "legal_basis": env.legal_basis, "sent_at": env.sent_at.isoformat(),
                    "deliver_by": env.deliver_by.isoformat() if env.deliver_by else None,
                    "event": assemble(env.fields),
                }, default=str), flush=True)
            else:
                counts["refused"] += 1
                print(f"offset {item.offset}: refused: {type(item.error).__name__}: {item.error}", file=sys.stderr)
            if args.max and counts["ok"] >= args.max:
                return

    asyncio.run(run())
    print(f"masb: {counts['ok']} events decrypted, {counts['refused']} envelopes refused", file=sys.stderr)
    return EXIT_OK if counts["refused"] == 0 and not foreign else EXIT_FAIL


# -- keys, policy, schemas -----------------------------------------------------------------------
def cmd_keys(args) -> int:
    from streams.crypto.keys import (
        generate_key,
        load_private_key,
        public_record,
        write_private_key,
    )

    if args.action in ("generate", "rotate"):
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        kinds = ["signing", "exchange"] if args.kind == "both" else [args.kind]
        for kind in kinds:
            record = generate_key(args.owner, kind)
            path = out / f"{args.owner}.{kind}.{record.key_id}.key"
            write_private_key(path, record)
            print(json.dumps({"wrote": str(path), **public_record(record)}))
        if args.action == "rotate":
            print("masb: add the new public key to the policy as active and mark the old one retired "
                  "(docs/keys.md); old data stays readable while the old key file is kept", file=sys.stderr)
        return EXIT_OK
    if args.action == "export-public":
        print(json.dumps(public_record(load_private_key(args.key_file)), indent=2))
        return EXIT_OK
    if args.action == "revoke":
        return _revoke_key(args)
    raise CommandError(f"unknown keys action {args.action}")


def _revoke_key(args) -> int:
    """Mark one key revoked by editing only its status and policy_version (comments and layout kept)."""
    import os
    import tempfile

    from streams.policy import PolicyError, diff, load_policy
    from streams.policy.revoke import RevokeError, revoke_key_text

    path = Path(args.policy)
    try:
        edit = revoke_key_text(path.read_text(encoding="utf-8"), args.owner, args.key_id)
    except RevokeError as exc:
        raise CommandError(f"policy file {path}: {exc}") from None
    if edit is None:
        print(f"masb: key {args.key_id} of {args.owner} is already revoked; nothing changed", file=sys.stderr)
        return EXIT_OK
    try:
        old_policy = load_policy(path)
    except PolicyError:
        old_policy = None  # e.g. two active keys while replacing one: only the result must pass the checks
    out = Path(args.out_policy) if args.out_policy else path
    fd, temp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(edit.text)
        try:
            new_policy = load_policy(temp_name)
        except PolicyError as exc:
            raise CommandError(f"refused: with key {args.key_id} revoked the policy fails its checks; "
                               f"nothing written\n{exc}\n(to replace an agency's only active key, add the "
                               f"new key as active first; docs/operations.md)") from None
        os.chmod(temp_name, path.stat().st_mode & 0o777)
        os.replace(temp_name, out)
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
    print(json.dumps({"revoked": args.key_id, "owner": args.owner, "key_list": edit.key_list,
                      "previous_status": edit.previous_status,
                      "policy_version": [edit.old_version, edit.new_version], "wrote": str(out)}))
    if old_policy is not None:
        print(diff(old_policy, new_policy).render())
    print(f"masb: review with `masb policy diff <policy in force> {out}` and get it approved before "
          f"deploying it (docs/operations.md)", file=sys.stderr)
    return EXIT_OK


def cmd_policy(args) -> int:
    from streams.policy import PolicyError, diff, explain, load_policy

    try:
        if args.action == "check":
            policy = load_policy(args.file)
            print(f"policy {args.file}: version {policy.version}, {len(policy.agencies)} agencies, "
                  f"{len(policy.agreements)} agreements: OK")
        elif args.action == "explain":
            print(explain(load_policy(args.file), args.event_type, args.area))
        elif args.action == "diff":
            print(diff(load_policy(args.old), load_policy(args.new)).render())
    except PolicyError as exc:
        print(f"masb: policy refused:\n{exc}", file=sys.stderr)
        return EXIT_FAIL
    except ValueError as exc:  # explain: unknown event type or area
        print(f"masb: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def cmd_schemas(args) -> int:
    from streams import schema_registry

    root = Path(args.root) if args.root else None
    if args.action == "check":
        problems = schema_registry.check_compatibility(root) if root else schema_registry.check_compatibility()
        for problem in problems:
            print(problem)
        print("schemas: OK" if not problems else f"schemas: {len(problems)} problem(s)", file=sys.stderr)
        return EXIT_OK if not problems else EXIT_FAIL
    if args.action == "register":
        ids = schema_registry.register_pending(root) if root else schema_registry.register_pending()
        print(json.dumps({"registered": ids}))
        return EXIT_OK
    raise CommandError(f"unknown schemas action {args.action}")


def cmd_audit(args) -> int:
    from agents.audit_cli import run_audit_command

    return run_audit_command(args, _bootstrap(args), _topics(args), _policy)


# -- parser --------------------------------------------------------------------------------------
def _kafka_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", help="Kafka bootstrap servers host:port (env MASB_BOOTSTRAP)")
    p.add_argument("--topic-prefix", help="prefix of every topic name (env MASB_TOPIC_PREFIX)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="masb", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the scripted end-to-end demo on the embedded broker")
    p.add_argument("--bootstrap", help="use this Kafka instead of starting the embedded broker")
    p.add_argument("--workdir", default=".masb-demo", help="where demo keys and policy are written")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("worker", help="run the Faust worker (router, checkpointer, policy reload)")
    _kafka_flags(p)
    p.add_argument("--policy", help="sharing policy YAML (env MASB_POLICY)")
    p.add_argument("--keys-dir", help="directory of the router's private key files (env MASB_KEYS_DIR)")
    p.add_argument("--web-port", type=int, help="port of /metrics and /health (env MASB_WEB_PORT, default 6066)")
    p.add_argument("--datadir", help="Faust data directory (env MASB_DATADIR)")
    p.add_argument("--checkpoint-interval", type=float, help="seconds between audit checkpoints")
    p.add_argument("--log-level", choices=["crit", "error", "warn", "info", "debug"], default="warn")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("publish", help="validate, sign, seal and publish case events (JSON)")
    _kafka_flags(p)
    p.add_argument("--as", dest="unit", required=True, help="publishing harm assessment unit id")
    p.add_argument("--key", help="the unit's private signing key file")
    p.add_argument("--keys-dir", help="directory holding <unit>*.key files if --key is not given")
    p.add_argument("--policy", help="sharing policy YAML (env MASB_POLICY)")
    p.add_argument("file", help="JSON file (object, array or JSON lines) or - for stdin")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("consume", help="print the decrypted events an agency received, as JSON lines")
    _kafka_flags(p)
    p.add_argument("--agency", required=True)
    p.add_argument("--key", required=True, action="append",
                   help="the agency's private exchange key file (repeat for rotated keys)")
    p.add_argument("--policy", help="sharing policy YAML, for the router's public keys (env MASB_POLICY)")
    p.add_argument("--follow", action="store_true", help="keep waiting for new envelopes")
    p.add_argument("--idle-timeout", type=float, default=None, help="with --follow: stop after this many idle seconds")
    p.add_argument("--max", type=int, default=0, help="stop after this many events")
    p.add_argument("--ack", action="store_true",
                   help="send a RECEIVED receipt for each event decrypted (recorded in the exchange log)")
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("keys", help="generate, rotate, export or revoke keys")
    p.add_argument("action", choices=["generate", "rotate", "export-public", "revoke"])
    p.add_argument("--owner", help="unit, agency or router id")
    p.add_argument("--policy", help="with revoke: the policy file to edit")
    p.add_argument("--key-id", help="with revoke: the key id to mark revoked")
    p.add_argument("--output", dest="out_policy",
                   help="with revoke: write the edited policy here instead of in place (to diff before deploying)")
    p.add_argument("--kind", choices=["signing", "exchange", "both"], default="both")
    p.add_argument("--out", default="keys", help="directory for the private key files (written 0600)")
    p.add_argument("key_file", nargs="?", help="with export-public: the private key file")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("policy", help="check, explain or diff sharing policies")
    psub = p.add_subparsers(dest="action", required=True)
    q = psub.add_parser("check")
    q.add_argument("file")
    q = psub.add_parser("explain")
    q.add_argument("file")
    q.add_argument("event_type")
    q.add_argument("area")
    q = psub.add_parser("diff")
    q.add_argument("old")
    q.add_argument("new")
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser("schemas", help="check schema evolution or register changed schemas")
    p.add_argument("action", choices=["check", "register"])
    p.add_argument("--root", help="schemas directory (default: the project's schemas/)")
    p.set_defaults(func=cmd_schemas)

    p = sub.add_parser("audit", help="verify, prove, report on or export the exchange log")
    from agents.audit_cli import add_audit_parsers

    add_audit_parsers(p, _kafka_flags)
    p.set_defaults(func=cmd_audit)

    from agents.ingest_cli import add_ingest_parser

    add_ingest_parser(sub, _kafka_flags)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "keys" and args.action in ("generate", "rotate") and not args.owner:
        parser.error("keys generate/rotate need --owner")
    if args.command == "keys" and args.action == "export-public" and not args.key_file:
        parser.error("keys export-public needs the private key file")
    if args.command == "keys" and args.action == "revoke" and not (args.policy and args.owner and args.key_id):
        parser.error("keys revoke needs --policy, --owner and --key-id")
    try:
        return args.func(args)
    except CommandError as exc:
        print(f"masb: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except Exception as exc:  # key file, broker and similar errors: one clear line, no traceback
        from streams.crypto.keys import KeyFileError

        if isinstance(exc, (KeyFileError, FileNotFoundError, PermissionError)):
            print(f"masb: {exc}", file=sys.stderr)
            return EXIT_FAIL
        raise


if __name__ == "__main__":
    sys.exit(main())
