"""`masb acl plan|diff|apply`: the Kafka ACLs the sharing policy calls for (docs/security.md).

    masb acl plan  --policy FILE [--format json|kafka-acls|strimzi]   what each principal may do
    masb acl diff  --policy FILE                                      the cluster against the plan (exit 1 if unlike)
    masb acl apply --policy FILE                                      create the topics, grant and remove ACLs,
                                                                      record the change in the exchange log

diff and apply connect as the cluster admin (MASB_KAFKA_* settings of a super user).
"""

from __future__ import annotations

import asyncio
import os

from agents.cli.common import bootstrap, kafka_flags, load_policy, positive, topics
from streams.errors import CheckFailed


def register(sub) -> None:
    p = sub.add_parser("acl", help="Kafka ACLs derived from the sharing policy: plan, diff, apply")
    asub = p.add_subparsers(dest="action", required=True)
    q = asub.add_parser("plan", help="print the least-privilege ACLs the policy calls for")
    _common(q)
    q.add_argument("--topic-prefix", help="prefix of every topic name (env MASB_TOPIC_PREFIX)")
    q.add_argument("--format", choices=["json", "kafka-acls", "strimzi"], default="json")
    q.add_argument("--strimzi-cluster", default="masb", help="strimzi.io/cluster label of the KafkaUsers")
    q.add_argument("--strimzi-authentication", choices=["scram-sha-512", "tls"], default="scram-sha-512")
    q = asub.add_parser("diff", help="what the cluster grants beyond the plan or lacks of it (exit 1 if any)")
    _common(q)
    kafka_flags(q)
    q = asub.add_parser("apply", help="create MASB's topics, make the cluster's ACLs equal the plan, and record "
                                      "the change in the exchange log")
    _common(q)
    kafka_flags(q)
    q.add_argument("--partitions", type=positive(int, maximum=1000), default=1, help="partitions of case-events and the dedupe changelog "
                                                             "(as the worker's settings; default 1)")
    p.set_defaults(func=cmd_acl)


def _common(q) -> None:
    q.add_argument("--policy", help="sharing policy YAML (env MASB_POLICY)")
    principal_flag(q)


def principal_flag(q) -> None:
    q.add_argument("--principal-prefix", help="prefix of MASB's principal names (env MASB_PRINCIPAL_PREFIX, "
                                              "default masb-: User:masb-router, User:masb-unit-<id>, ...)")


def principals(args):
    """The principal names of --principal-prefix, MASB_PRINCIPAL_PREFIX or the default; a prefix
    that cannot make Kafka user and Kubernetes object names is refused (exit 2) naming where it came from."""
    from streams.acl import DEFAULT_PRINCIPAL_PREFIX, Principals, check_principal_prefix

    flag = getattr(args, "principal_prefix", None)
    if flag is not None:
        return Principals(check_principal_prefix(flag, "--principal-prefix"))
    variable = os.environ.get("MASB_PRINCIPAL_PREFIX")
    if variable:
        return Principals(check_principal_prefix(variable, "MASB_PRINCIPAL_PREFIX"))
    return Principals(DEFAULT_PRINCIPAL_PREFIX)


def cmd_acl(args) -> int:
    from streams.acl import check_strimzi_cluster, plan, render_json, render_kafka_acls, render_strimzi

    who, names = principals(args), topics(args)
    if getattr(args, "format", None) == "strimzi":
        check_strimzi_cluster(args.strimzi_cluster, "--strimzi-cluster")
    policy = load_policy(args)
    planned = plan(policy, names, who)
    if args.action == "plan":
        if args.format == "json":
            print(render_json(planned), end="")
        elif args.format == "kafka-acls":
            print(render_kafka_acls(planned), end="")
        else:
            print(render_strimzi(planned, who, args.strimzi_cluster, args.strimzi_authentication), end="")
        return 0
    if args.action == "diff":
        from streams.acl import compare
        from streams.acl_admin import describe_acls

        result = compare(planned, asyncio.run(describe_acls(bootstrap(args))), who)
        print(result.render(), end="")
        if not result.is_empty:
            raise CheckFailed(f"the ACLs of Kafka at {bootstrap(args)} differ from those policy version "
                              f"{policy.version} calls for", hint="review, then `masb acl apply`")
        return 0
    return _apply(args, policy, planned, who, names)


def _apply(args, policy, planned, who, names) -> int:
    from agents.app import topic_specs
    from streams.acl_admin import apply_plan

    applied = asyncio.run(apply_plan(bootstrap(args), planned, who, topics=names, policy=policy,
                                     topic_specs=topic_specs(names, policy, args.partitions)))
    diff = applied.diff
    if diff.is_empty:
        print(f"ACLs: Kafka at {bootstrap(args)} already grants exactly what policy version {policy.version} "
              "calls for; nothing changed")
        return 0
    for b in diff.missing:
        print(f"granted: {b.describe()}")
    for b in diff.extra:
        print(f"removed: {b.describe()}")
    print(f"ACLs: {len(diff.missing)} granted, {len(diff.extra)} removed for policy version {policy.version}; "
          f"recorded in {names.audit} at offset {applied.audit_offset}")
    return 0


def acl_changes(old_policy, new_policy, args) -> str:
    """The `masb policy diff` section: how the ACLs change between two policies."""
    from streams.acl import diff_plans, plan

    who, names = principals(args), topics(args)
    change = diff_plans(plan(old_policy, names, who), plan(new_policy, names, who))
    prefix = f" (topic prefix {names.prefix})" if names.prefix else ""
    lines = [f"Kafka ACL changes{prefix} ({len(change.missing)} granted, {len(change.extra)} removed; apply with "
             "`masb acl apply` once approved):"]
    lines += [f"  + {b.describe()}" for b in change.missing] + [f"  - {b.describe()}" for b in change.extra]
    if change.is_empty:
        lines.append("  none")
    return os.linesep.join(lines) + os.linesep
