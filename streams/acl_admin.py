"""Read and change a cluster's ACLs through the Kafka admin API, and record applied changes.

aiokafka's admin client has no ACL methods (0.14); it has the protocol's DescribeAcls,
CreateAcls and DeleteAcls requests, which this module sends (version 1, which Kafka 2.0 to 4.x
accept). The principal doing it needs ALTER (and DESCRIBE) on the cluster: a super user, in
practice the cluster's admin (docs/security.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from aiokafka.errors import for_code
from aiokafka.protocol.admin import CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest

from streams.acl import OPERATIONS, PATTERN_TYPES, PERMISSIONS, RESOURCE_TYPES, AclBinding, AclDiff, Principals, compare
from streams.audit.entry import encode_entry, make_entry
from streams.kafka import TopicSpec, admin, ensure_topics, kafka_operation, producer, start_client
from streams.kafka_security import KafkaSecurity
from streams.policy import Policy
from streams.topics import Topics

# Kafka's enum codes (org.apache.kafka.common.resource / acl).
_ANY = 1
_RESOURCE = {"TOPIC": 2, "GROUP": 3, "CLUSTER": 4, "TRANSACTIONAL_ID": 5, "DELEGATION_TOKEN": 6, "USER": 7}
_PATTERN = {"LITERAL": 3, "PREFIXED": 4}
_OPERATION = {name: code for code, name in enumerate(["UNKNOWN", "ANY", *OPERATIONS])}
_PERMISSION = {"DENY": 2, "ALLOW": 3}
assert set(_RESOURCE) == set(RESOURCE_TYPES) and set(_PATTERN) == set(PATTERN_TYPES) and set(_PERMISSION) == set(PERMISSIONS)


def _name(table: dict[str, int], code: int) -> str:
    return next((name for name, value in table.items() if value == code), f"UNKNOWN({code})")


def _check(error_code: int, what: str) -> None:
    if error_code:
        raise for_code(error_code)(what)


async def describe_acls(bootstrap: str, security: KafkaSecurity | None = None) -> list[AclBinding]:
    """Every ACL binding on the cluster."""
    client = admin(bootstrap, security=security)
    await start_client(client, bootstrap, security)
    try:
        with kafka_operation(bootstrap, "DESCRIBE", "the cluster's ACLs", security):
            response = await client._send_request(DescribeAclsRequest(_ANY, None, _ANY, None, None, _ANY, _ANY))
            _check(response.error_code, "describe ACLs")
    finally:
        await client.close()
    found = []
    for rtype, rname, pattern, acls in response.resources:
        for principal, _host, operation, permission in acls:
            found.append(AclBinding(principal, _name(_RESOURCE, rtype), rname, _name(_PATTERN, pattern),
                                    _name(_OPERATION, operation), _name(_PERMISSION, permission)))
    return sorted(found)


async def _change(bootstrap: str, bindings: list[AclBinding], security: KafkaSecurity | None, create: bool) -> None:
    client = admin(bootstrap, security=security)
    await start_client(client, bootstrap, security)
    try:
        with kafka_operation(bootstrap, "ALTER", "the cluster's ACLs", security):
            for b in bindings:
                args = (_RESOURCE[b.resource_type], b.resource_name, _PATTERN[b.pattern_type], b.principal, "*",
                        _OPERATION[b.operation], _PERMISSION[b.permission])
                if create:
                    response = await client._send_request(CreateAclsRequest(*args))
                    for error_code, _message in response.creation_responses:
                        _check(error_code, f"create ACL {b.describe()}")
                else:
                    response = await client._send_request(DeleteAclsRequest(*args))
                    for error_code, _message, _matching in response.filter_responses:
                        _check(error_code, f"delete ACL {b.describe()}")
    finally:
        await client.close()


async def create_acls(bootstrap: str, bindings: list[AclBinding], security: KafkaSecurity | None = None) -> None:
    await _change(bootstrap, bindings, security, create=True)


async def delete_acls(bootstrap: str, bindings: list[AclBinding], security: KafkaSecurity | None = None) -> None:
    await _change(bootstrap, bindings, security, create=False)


@dataclass
class Applied:
    diff: AclDiff              # what was granted (missing) and removed (extra)
    audit_offset: int | None   # where the change was recorded in the exchange log (None: no change)


async def apply_plan(bootstrap: str, planned: list[AclBinding], principals: Principals, *, topics: Topics,
                     topic_specs: list[TopicSpec], policy: Policy, security: KafkaSecurity | None = None) -> Applied:
    """Create the topics MASB needs, then make the cluster's ACLs within MASB's scope equal the
    plan (grant what is missing, remove what is beyond), and record a change in the exchange log."""
    await ensure_topics(bootstrap, topic_specs, security)
    diff = compare(planned, await describe_acls(bootstrap, security), principals)
    if diff.missing:
        await create_acls(bootstrap, diff.missing, security)
    if diff.extra:
        await delete_acls(bootstrap, diff.extra, security)
    offset = None
    if not diff.is_empty:
        offset = await record_acl_change(bootstrap, topics, policy, planned, diff, security)
    return Applied(diff, offset)


def plan_digest(planned: list[AclBinding]) -> str:
    """Hex SHA-256 of the plan's JSON lines: names the exact plan an audit entry says was applied."""
    text = "\n".join(f"{b.principal} {b.permission} {b.operation} {b.resource_type} {b.pattern_type} "
                     f"{b.resource_name}" for b in sorted(planned))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


MAX_LISTED_CHANGES = 40


def acl_change_reason(policy: Policy, planned: list[AclBinding], diff: AclDiff) -> str:
    """The reason text of the POLICY_CHANGE entry that records an applied ACL change (docs/security.md)."""
    changes = [f"+{b.describe()}" for b in diff.missing] + [f"-{b.describe()}" for b in diff.extra]
    listed = "; ".join(changes[:MAX_LISTED_CHANGES])
    more = f"; and {len(changes) - MAX_LISTED_CHANGES} more" if len(changes) > MAX_LISTED_CHANGES else ""
    return (f"ACL_CHANGE: Kafka ACLs applied for policy version {policy.version}: {len(diff.missing)} granted, "
            f"{len(diff.extra)} removed; plan sha256 {plan_digest(planned)}: {listed}{more}")


async def record_acl_change(bootstrap: str, topics: Topics, policy: Policy, planned: list[AclBinding],
                            diff: AclDiff, security: KafkaSecurity | None = None) -> int:
    """Append a POLICY_CHANGE entry whose reason starts with ACL_CHANGE to the exchange log; its offset."""
    entry = make_entry("POLICY_CHANGE", policy_version=policy.version, policy_digest=policy.digest,
                       reason=acl_change_reason(policy, planned, diff))
    sender = producer(bootstrap, security=security)
    await start_client(sender, bootstrap, security)
    try:
        with kafka_operation(bootstrap, "WRITE", f"topic {topics.audit}", security):
            metadata = await sender.send_and_wait(topics.audit, encode_entry(entry))
    finally:
        await sender.stop()
    return metadata.offset
