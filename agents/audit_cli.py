"""`masb audit ...`: the auditor's commands over the exchange log in Kafka (or an export)."""

from __future__ import annotations

import asyncio
import sys
import time

from agents.settings import env_or
from streams.auditing import DEFAULT_ORIGIN, checkpoint_verifiers, read_log


class Progress:
    """A one-line progress counter on stderr, redrawn at most a few times a second."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._last = 0.0
        self.count = 0

    def __call__(self, count: int) -> None:
        self.count = count
        now = time.monotonic()
        if now - self._last >= 0.25:
            self._last = now
            print(f"\r{self.what}: {count:,}", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.count:
            print(f"\r{self.what}: {self.count:,} done", file=sys.stderr, flush=True)


def add_audit_parsers(parser, kafka_flags) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("verify", help="replay the whole log and check it against the signed checkpoints")
    kafka_flags(p)
    p.add_argument("--policy", help="sharing policy YAML, for the router's checkpoint keys (env MASB_POLICY)")
    p.add_argument("--origin", help="log origin (env MASB_LOG_ORIGIN)")


def origin_of(args) -> str:
    return env_or(getattr(args, "origin", None), "MASB_LOG_ORIGIN", DEFAULT_ORIGIN)


def run_audit_command(args, bootstrap, topics, load_policy) -> int:
    if args.action == "verify":
        return verify(bootstrap, topics, load_policy(args), origin_of(args))
    raise SystemExit(f"masb: unknown audit action {args.action}")


def verify(bootstrap, topics, policy, origin) -> int:
    from streams.audit.verify import verify_log

    progress = Progress("replaying audit entries")
    snapshot = asyncio.run(read_log(bootstrap, topics, progress))
    progress.done()
    report = verify_log(snapshot.entries, snapshot.checkpoints, checkpoint_verifiers(policy, origin), origin)
    problems = list(report.problems)
    problems += [f"checkpoints topic offset {o}: not a checkpoint record" for o in snapshot.malformed_checkpoint_offsets]
    print(f"audit log {topics.audit}: {report.entries} entries, {report.checkpoints_checked} signed checkpoints checked")
    for note in report.notes:
        print(f"  note: {note}")
    if problems:
        for problem in problems:
            print(f"  PROBLEM: {problem}")
        print("audit log NOT intact")
        return 1
    if report.uncovered_entries:
        print(f"audit log intact up to the last signed checkpoint (size {report.verified_size}); "
              f"{report.uncovered_entries} newer entries await the next checkpoint")
    else:
        print("audit log intact: every entry is covered by a valid signed checkpoint")
    return 0
