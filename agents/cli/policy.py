"""`masb policy check|explain|diff`: validate a sharing policy, explain who gets what, review a change."""

from __future__ import annotations

from agents.cli.acl import acl_changes, principal_flag
from agents.cli.common import existing_file, load_policy_file
from streams.errors import CheckFailed, InvalidInput


def register(sub) -> None:
    p = sub.add_parser("policy", help="check, explain or diff sharing policies")
    psub = p.add_subparsers(dest="action", required=True)
    q = psub.add_parser("check", help="validate a policy file; exit 1 listing every problem")
    q.add_argument("file")
    q = psub.add_parser("explain", help="who receives which fields of an event type in an area, and why")
    q.add_argument("file")
    q.add_argument("event_type")
    q.add_argument("area")
    q = psub.add_parser("diff", help="what a new policy newly shares, stops sharing, its key and Kafka ACL changes")
    q.add_argument("old")
    q.add_argument("new")
    q.add_argument("--topic-prefix", help="prefix of every topic name, for the ACL changes (env MASB_TOPIC_PREFIX)")
    principal_flag(q)
    p.set_defaults(func=cmd_policy)


def _load(path: str):
    return load_policy_file(path)


def cmd_policy(args) -> int:
    from streams.policy import PolicyError, diff, explain, load_policy

    if args.action == "check":
        path = existing_file(args.file, "policy file")
        try:
            policy = load_policy(path)
        except PolicyError as exc:  # the check ran and found problems: exit 1, not a usage error
            raise CheckFailed(f"policy file {path} refused: {exc}") from None
        print(f"policy {args.file}: version {policy.version}, {len(policy.agencies)} agencies, "
              f"{len(policy.agreements)} agreements: OK")
    elif args.action == "explain":
        try:
            print(explain(_load(args.file), args.event_type, args.area))
        except ValueError as exc:  # unknown event type or area
            if isinstance(exc, InvalidInput):
                raise
            raise InvalidInput(str(exc)) from None
    elif args.action == "diff":
        old, new = _load(args.old), _load(args.new)
        print(diff(old, new).render())
        print(acl_changes(old, new, args), end="")  # the Kafka side of the same change (docs/security.md)
    return 0
