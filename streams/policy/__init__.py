"""Information sharing agreements as code: the policy model, its checks, explain and diff.

Format and semantics: docs/policy.md.
"""
from .diff import PolicyDiff, diff, policy_change_summary
from .durations import deliver_by, parse_duration
from .explain import explain
from .legal_basis_labels import LEGAL_BASIS_LABELS, legal_basis_label
from .model import (
    Agency,
    Agreement,
    KeyEntry,
    Policy,
    PolicyError,
    RouterKeySet,
    Share,
    Unit,
    WitnessMember,
    WitnessSet,
    canonical_json,
)
from .parse import key_id_for, load_policy, load_policy_text, parse_policy
from .template import render_template, template_placeholders
from .vocab import AGENCY_KINDS, AREAS, KEY_STATUSES, LEGAL_BASES, NEXT_SCHOOL_DAY

__all__ = [
    "AGENCY_KINDS", "AREAS", "KEY_STATUSES", "LEGAL_BASES", "LEGAL_BASIS_LABELS", "NEXT_SCHOOL_DAY",
    "Agency", "Agreement", "KeyEntry", "Policy", "PolicyDiff", "PolicyError", "RouterKeySet", "Share", "Unit",
    "WitnessMember", "WitnessSet",
    "canonical_json", "deliver_by", "diff", "explain", "key_id_for", "legal_basis_label", "load_policy", "load_policy_text",
    "parse_duration", "parse_policy", "policy_change_summary", "render_template", "template_placeholders",
]
