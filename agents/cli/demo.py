"""`masb demo`: the scripted end-to-end demo (agents/demo.py), on the embedded broker by default."""

from __future__ import annotations

from pathlib import Path

from agents.cli.common import UsageError
from agents.settings import bootstrap_servers, env_or


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the scripted end-to-end demo on the embedded broker")
    p.add_argument("--bootstrap", help="use this Kafka instead of starting the embedded broker")
    p.add_argument("--workdir", default=".masb-demo", help="where demo keys and policy are written")
    p.add_argument("--secure", action="store_true",
                   help="run the demo on Apache Kafka locked down as in production (SASL_SSL, SCRAM users, ACLs "
                        "derived from the policy; needs Java and Maven, like the tests): docs/security.md")
    p.add_argument("--keep", action="store_true",
                   help="leave the broker and the worker running afterwards (until Ctrl-C) and print the "
                        "settings that make every other masb command work against them")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from agents.demo import run_demo

    if args.secure and args.bootstrap:
        raise UsageError("--secure starts its own locked-down Apache Kafka; it cannot be combined with --bootstrap")
    bootstrap = None if args.secure else env_or(args.bootstrap, "MASB_BOOTSTRAP", None)
    if bootstrap is not None:
        bootstrap = bootstrap_servers(bootstrap, "--bootstrap" if args.bootstrap else "MASB_BOOTSTRAP")
    return run_demo(bootstrap=bootstrap, workdir=Path(args.workdir), keep=args.keep, secure=args.secure)
