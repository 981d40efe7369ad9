"""Least-privilege Kafka ACLs derived from the sharing policy (docs/security.md, "ACLs").

    bindings = plan(policy, Topics(prefix), Principals("masb-"))
    render_json(bindings) | render_kafka_acls(bindings) | render_strimzi(bindings, cluster="my-cluster")
    compare(bindings, on_cluster, principals, topics) -> AclDiff(missing, extra)

Who gets what (P = topic prefix, W = the worker's faust app id P+"masb-router"):

    User:<pp>unit-<id>      WRITE, DESCRIBE  topic P+case-events;  READ, DESCRIBE topic P+unit.<id> (its notices)
    User:<pp>agency-<id>    READ, DESCRIBE   topic P+partner.<id>;  READ group P+partner.<id>
                            WRITE, DESCRIBE  topic P+receipts
    User:<pp>auditor        READ, DESCRIBE   topics P+audit.exchange, P+audit.checkpoints, P+audit.case-keys
                            WRITE, DESCRIBE  topics P+audit.case-key-shreds (masb audit shred),
                                             P+case-events.dlq.redrive (masb dlq redrive);  READ topic P+case-events.dlq
    User:<pp>router         READ             topics P+case-events, P+receipts, P+audit.case-key-shreds
                            WRITE            topics P+partner.<every agency>, P+unit.<every unit>, P+case-events.dlq
                            READ             topic P+case-events.dlq.redrive
                            READ, WRITE      topics P+audit.exchange, P+audit.checkpoints, P+audit.case-keys,
                                             P+deadlines.state, P+case-events.dlq (redrive reads it)
                                             and faust's own topics W-<table>-changelog, W-__assignor-__leader
                            DESCRIBE         every topic above;  READ groups W, W-checkpointer, P+masb-deadlines
                            WRITE, DESCRIBE  transactional id W-checkpointer (the fenced checkpointer)

and nobody else anything (the cluster runs with allow.everyone.if.no.acl.found=false). Every
binding is LITERAL: no prefix or wildcard grant lets a principal reach a topic it was not given
by name. Pure: no Kafka here (streams/acl_admin.py applies a plan).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import asdict, dataclass, field

from streams.policy import Policy
from streams.topics import WORKER_TABLES, Topics

DEFAULT_PRINCIPAL_PREFIX = "masb-"
RESOURCE_TYPES = ("TOPIC", "GROUP", "CLUSTER", "TRANSACTIONAL_ID", "DELEGATION_TOKEN", "USER")
PATTERN_TYPES = ("LITERAL", "PREFIXED")
OPERATIONS = ("ALL", "READ", "WRITE", "CREATE", "DELETE", "ALTER", "DESCRIBE", "CLUSTER_ACTION",
              "DESCRIBE_CONFIGS", "ALTER_CONFIGS", "IDEMPOTENT_WRITE", "CREATE_TOKENS", "DESCRIBE_TOKENS")
PERMISSIONS = ("ALLOW", "DENY")

# A principal's user name is also its Strimzi KafkaUser's metadata.name: a Kubernetes object name,
# an RFC 1123 subdomain (lowercase letters, digits, '-' and '.'; each dot-separated label starts and
# ends with a letter or digit; at most 253 characters). The prefix begins every such name and the
# rest (unit-<id>, agency-<id>, router, auditor) starts with a letter and ends with one or a digit.
_SUBDOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*", re.ASCII)
PRINCIPAL_PREFIX_MAX = 100  # + "agency-" + a 64-character id stays within 253
# strimzi.io/cluster names the Kafka resource: a label value and an RFC 1123 label (Strimzi derives
# service names from it).
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)


def _shown(value: str) -> str:
    from streams.errors import shown

    return repr(shown(value))


def check_principal_prefix(prefix: str, setting: str = "principal prefix") -> str:
    """``prefix`` if every principal name made with it is a valid Kafka user name and Kubernetes
    object name (see _SUBDOMAIN); else InvalidInput naming ``setting`` (the flag or variable)."""
    from streams.errors import InvalidInput

    if prefix == "":
        raise InvalidInput(f"{setting} is empty: MASB's principals need a prefix of their own (default "
                           f"{DEFAULT_PRINCIPAL_PREFIX})")
    if len(prefix) > PRINCIPAL_PREFIX_MAX or not _SUBDOMAIN.fullmatch(prefix + "x"):
        raise InvalidInput(f"{setting} {_shown(prefix)}: principal names must be Kubernetes object names (RFC 1123: "
                           f"lowercase letters, digits, '-' and '.', starting with a letter or digit; at most "
                           f"{PRINCIPAL_PREFIX_MAX} characters here)")
    return prefix


def check_strimzi_cluster(name: str, setting: str = "Strimzi cluster name") -> str:
    """``name`` if it can be a strimzi.io/cluster label naming a Kafka resource; else InvalidInput."""
    from streams.errors import InvalidInput

    if not _LABEL.fullmatch(name):
        raise InvalidInput(f"{setting} {_shown(name)}: not a Kafka resource name (1-63 lowercase letters, digits or "
                           "'-', starting and ending with a letter or digit)")
    return name


@dataclass(frozen=True, order=True)
class AclBinding:
    """One Kafka ACL binding, in Kafka's own enum names (host is always "*")."""

    principal: str        # "User:masb-router"
    resource_type: str    # TOPIC, GROUP, CLUSTER, ...
    resource_name: str
    pattern_type: str     # LITERAL or PREFIXED
    operation: str        # READ, WRITE, DESCRIBE, ...
    permission: str = "ALLOW"

    def as_json(self) -> dict[str, str]:
        return asdict(self)

    def describe(self) -> str:
        """One line: ``ALLOW User:x READ TOPIC partner.y`` (pattern named when not LITERAL)."""
        pattern = "" if self.pattern_type == "LITERAL" else f" ({self.pattern_type})"
        return f"{self.permission} {self.principal} {self.operation} {self.resource_type} {self.resource_name}{pattern}"


@dataclass(frozen=True)
class Principals:
    """MASB's principal names: User:<prefix>unit-<id>, User:<prefix>agency-<id>, User:<prefix>router,
    User:<prefix>auditor. The SCRAM user name, or the client certificate's CN with the broker's
    principal mapping rule (docs/security.md), is the part after ``User:``."""

    prefix: str = DEFAULT_PRINCIPAL_PREFIX

    def __post_init__(self) -> None:
        check_principal_prefix(self.prefix)

    def unit(self, unit_id: str) -> str:
        return f"User:{self.prefix}unit-{unit_id}"

    def agency(self, agency_id: str) -> str:
        return f"User:{self.prefix}agency-{agency_id}"

    @property
    def router(self) -> str:
        return f"User:{self.prefix}router"

    @property
    def auditor(self) -> str:
        return f"User:{self.prefix}auditor"

    def owns(self, principal: str) -> bool:
        """Whether a principal name is one of MASB's (by its prefix)."""
        return principal.startswith(f"User:{self.prefix}")

    def user_name(self, principal: str) -> str:
        return principal.split(":", 1)[1]


def _topic(principal: str, name: str, *operations: str) -> list[AclBinding]:
    return [AclBinding(principal, "TOPIC", name, "LITERAL", op) for op in operations]


def _group(principal: str, name: str, *operations: str) -> list[AclBinding]:
    return [AclBinding(principal, "GROUP", name, "LITERAL", op) for op in operations]


def plan(policy: Policy, topics: Topics, principals: Principals = Principals()) -> list[AclBinding]:
    """Every ACL binding the policy calls for, sorted; nothing else is granted to anyone."""
    bindings: list[AclBinding] = []
    for unit in policy.units:
        bindings += _topic(principals.unit(unit.id), topics.case_events, "WRITE", "DESCRIBE")
        bindings += _topic(principals.unit(unit.id), topics.unit(unit.id), "READ", "DESCRIBE")
    for agency in policy.agencies:
        who = principals.agency(agency.id)
        bindings += _topic(who, topics.partner(agency.id), "READ", "DESCRIBE")
        bindings += _group(who, topics.partner_group(agency.id), "READ")
        bindings += _topic(who, topics.receipts, "WRITE", "DESCRIBE")
    for name in (topics.audit, topics.checkpoints, topics.case_keys):
        bindings += _topic(principals.auditor, name, "READ", "DESCRIBE")
    for name in (topics.case_key_shreds, topics.redrive_requests):
        bindings += _topic(principals.auditor, name, "WRITE", "DESCRIBE")
    bindings += _topic(principals.auditor, topics.dead_letter, "READ", "DESCRIBE")
    router = principals.router
    for name in (topics.case_events, topics.receipts, topics.case_key_shreds, topics.redrive_requests):
        bindings += _topic(router, name, "READ", "DESCRIBE")
    for name in [*(topics.partner(a.id) for a in policy.agencies), *(topics.unit(u.id) for u in policy.units)]:
        bindings += _topic(router, name, "WRITE", "DESCRIBE")
    for name in [topics.audit, topics.checkpoints, topics.case_keys, topics.deadline_state, topics.dead_letter,
                 *worker_internal_topics(topics)]:
        bindings += _topic(router, name, "READ", "WRITE", "DESCRIBE")
    bindings += _group(router, topics.worker_app_id, "READ")
    bindings += _group(router, topics.deadline_group, "READ")
    bindings += _group(router, topics.checkpointer_lease, "READ")
    bindings += [AclBinding(router, "TRANSACTIONAL_ID", topics.checkpointer_lease, "LITERAL", op)
                 for op in ("WRITE", "DESCRIBE")]
    return sorted(set(bindings))


def worker_internal_topics(topics: Topics) -> list[str]:
    """faust's own topics of the worker, which MASB creates before the worker starts."""
    return [*(topics.changelog(t) for t in WORKER_TABLES), topics.assignor_leader]


# -- comparing with a cluster -------------------------------------------------------------------
@dataclass
class AclDiff:
    missing: list[AclBinding] = field(default_factory=list)  # in the plan, not on the cluster
    extra: list[AclBinding] = field(default_factory=list)    # on the cluster, not in the plan

    @property
    def is_empty(self) -> bool:
        return not (self.missing or self.extra)

    def render(self) -> str:
        if self.is_empty:
            return "ACLs: the cluster grants exactly what the policy calls for\n"
        lines = [f"ACLs short of the plan ({len(self.missing)}): + grant",
                 *(f"  + {b.describe()}" for b in self.missing),
                 f"ACLs beyond the plan ({len(self.extra)}): - remove",
                 *(f"  - {b.describe()}" for b in self.extra)]
        return "\n".join(lines) + "\n"


def in_scope(binding: AclBinding, planned: list[AclBinding], principals: Principals) -> bool:
    """Whether MASB answers for a binding found on the cluster: it names one of MASB's principals,
    or grants anyone anything on a topic or group the plan names (LITERAL)."""
    if principals.owns(binding.principal):
        return True
    resources = {(b.resource_type, b.resource_name) for b in planned}
    return binding.pattern_type == "LITERAL" and (binding.resource_type, binding.resource_name) in resources


def compare(planned: list[AclBinding], on_cluster: list[AclBinding], principals: Principals) -> AclDiff:
    """What the cluster lacks of the plan, and what it grants beyond it (within MASB's scope)."""
    have = {b for b in on_cluster if in_scope(b, planned, principals)}
    want = set(planned)
    return AclDiff(sorted(want - have), sorted(have - want))


def diff_plans(old: list[AclBinding], new: list[AclBinding]) -> AclDiff:
    """How the ACLs change between two plans (``masb policy diff``): missing = granted newly."""
    return AclDiff(sorted(set(new) - set(old)), sorted(set(old) - set(new)))


# -- output formats -----------------------------------------------------------------------------
def render_json(bindings: list[AclBinding]) -> str:
    return json.dumps([b.as_json() for b in bindings], indent=2) + "\n"


_KAFKA_ACLS_RESOURCE = {"TOPIC": "--topic", "GROUP": "--group", "TRANSACTIONAL_ID": "--transactional-id"}


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _grouped(bindings: list[AclBinding]) -> dict[tuple[str, str, str, str, str], list[str]]:
    grouped: dict[tuple[str, str, str, str, str], list[str]] = {}
    for b in bindings:
        grouped.setdefault((b.principal, b.permission, b.resource_type, b.resource_name, b.pattern_type),
                           []).append(b.operation)
    return grouped


def render_kafka_acls(bindings: list[AclBinding]) -> str:
    """kafka-acls.sh commands that grant the plan (one per principal and resource). Every name is
    shell-quoted: the file is run with ``sh``, and names come from settings and the policy."""
    lines = ["# kafka-acls.sh commands for the MASB plan; run as a cluster admin:",
             "#   BOOTSTRAP=host:9093 ADMIN_CONFIG=admin.properties sh this-file", ""]
    for (principal, permission, rtype, name, pattern), ops in _grouped(bindings).items():
        resource = _KAFKA_ACLS_RESOURCE.get(rtype)
        target = f"{resource} {shlex.quote(name)}" if resource else "--cluster"
        verb = "--allow-principal" if permission == "ALLOW" else "--deny-principal"
        operations = " ".join(f"--operation {_camel(op)}" for op in ops)
        lines.append(f'kafka-acls.sh --bootstrap-server "$BOOTSTRAP" --command-config "$ADMIN_CONFIG" --add '
                     f"{verb} {shlex.quote(principal)} {operations} {target} --resource-pattern-type "
                     f"{shlex.quote(pattern.lower())}")
    return "\n".join(lines) + "\n"


# Kafka's names -> Strimzi's (KafkaUser spec.authorization.acls[].resource, kafka.strimzi.io/v1beta2).
STRIMZI_RESOURCE_TYPES = {"TOPIC": "topic", "GROUP": "group", "CLUSTER": "cluster",
                          "TRANSACTIONAL_ID": "transactionalId"}
STRIMZI_PATTERN_TYPES = {"LITERAL": "literal", "PREFIXED": "prefix"}


def render_strimzi(bindings: list[AclBinding], principals: Principals, cluster: str = "masb",
                   authentication: str = "scram-sha-512") -> str:
    """One Strimzi KafkaUser (kafka.strimzi.io/v1beta2) per principal, with its ACLs."""
    import yaml

    check_strimzi_cluster(cluster)
    users: dict[str, list[dict]] = {}
    for (principal, permission, rtype, name, pattern), ops in _grouped(bindings).items():
        resource = {"type": STRIMZI_RESOURCE_TYPES[rtype]} if rtype == "CLUSTER" else \
            {"type": STRIMZI_RESOURCE_TYPES[rtype], "name": name, "patternType": STRIMZI_PATTERN_TYPES[pattern]}
        users.setdefault(principal, []).append({
            "resource": resource, "operations": [_camel(op) for op in ops], "host": "*",
            "type": permission.lower()})
    documents = [{
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaUser",
        "metadata": {"name": principals.user_name(principal), "labels": {"strimzi.io/cluster": cluster}},
        "spec": {"authentication": {"type": authentication},
                 "authorization": {"type": "simple", "acls": acls}},
    } for principal, acls in sorted(users.items())]
    return yaml.safe_dump_all(documents, sort_keys=False, explicit_start=True)
