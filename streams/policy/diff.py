"""Compare two policies: what a governance board must approve, and a summary for the audit log."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streams.codec import field_paths

from .model import KeyEntry, Policy

# (agency id, event type, field path, area)
Flow = tuple[str, str, str, str]


@dataclass
class PolicyDiff:
    old_version: int
    new_version: int
    old_digest: str
    new_digest: str
    newly_shared: list[Flow] = field(default_factory=list)      # the new policy shares it, the old did not
    no_longer_shared: list[Flow] = field(default_factory=list)  # the old policy shared it, the new does not
    other_changes: list[str] = field(default_factory=list)      # keys, parties, agreement terms
    warnings: list[str] = field(default_factory=list)           # things an approver should refuse or query
    # (agency, event type) -> "agreement-id vN (LEGAL_BASIS)" in the old / new policy, to show under what terms.
    old_terms: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)
    new_terms: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)

    @property
    def is_empty(self) -> bool:
        return not (self.newly_shared or self.no_longer_shared or self.other_changes)

    def render(self) -> str:
        lines = [f"Policy v{self.old_version} ({self.old_digest[:16]}) -> v{self.new_version} ({self.new_digest[:16]})"]
        for title, items in (("Warnings", self.warnings),):
            if items:
                lines += ["", f"{title} ({len(items)}):", *(f"  ! {w}" for w in items)]
        lines += ["", f"Newly shared, needs approval ({len(self.newly_shared)} field-area pairs):",
                  *_render_flows(self.newly_shared, "+", self.new_terms)]
        lines += ["", f"No longer shared ({len(self.no_longer_shared)} field-area pairs):",
                  *_render_flows(self.no_longer_shared, "-", self.old_terms)]
        lines += ["", f"Other changes ({len(self.other_changes)}):", *(f"  * {c}" for c in self.other_changes or ["none"])]
        return "\n".join(lines) + "\n"


def _render_flows(flows: list[Flow], sign: str, terms: dict[tuple[str, str], str]) -> list[str]:
    """One block per (agency, event type) naming the agreement, then one line per field with its areas."""
    grouped: dict[tuple[str, str], dict[str, list[str]]] = {}
    for agency, event_type, path, area in flows:
        grouped.setdefault((agency, event_type), {}).setdefault(path, []).append(area)
    if not grouped:
        return ["  none"]
    lines = []
    for (agency, event_type), paths in sorted(grouped.items()):
        under = terms.get((agency, event_type))
        lines.append(f"  {agency} {event_type}" + (f" under {under}" if under else "") + ":")
        lines += [f"    {sign} {path} [{', '.join(sorted(areas))}]" for path, areas in sorted(paths.items())]
    return lines


def _terms(policy: Policy) -> dict[tuple[str, str], str]:
    return {(g.agency, event_type): f"{g.id} v{g.version} ({g.legal_basis})"
            for g in policy.agreements for event_type in g.shares}


def _flows(policy: Policy) -> dict[tuple[str, str, str], tuple[str, ...]]:
    """(agency, event type, area) -> listed field paths."""
    flows = {}
    for agreement in policy.agreements:
        agency = policy.agency(agreement.agency)
        if agency is None:
            continue
        for event_type, fields in agreement.shares.items():
            for area in agency.areas:
                flows[(agency.id, event_type, area)] = fields
    return flows


def _covered(path: str, fields: tuple[str, ...]) -> bool:
    return any(path == f or path.startswith(f + ".") for f in fields)


def _gained(event_type: str, now: tuple[str, ...], before: tuple[str, ...]) -> list[str]:
    """Paths listed in `now` whose data `before` did not include, at the finest granularity that is exact."""
    gained = []
    for path in now:
        if _covered(path, before):
            continue
        partial = [f for f in before if f.startswith(path + ".")]
        if not partial:
            gained.append(path)
            continue
        # Only part of this record was shared before: name the leaves that are new.
        paths = field_paths(event_type)
        leaves = [p for p in paths if p.startswith(path + ".") and not any(q.startswith(p + ".") for q in paths)]
        gained += [leaf for leaf in leaves if not _covered(leaf, before)]
    return sorted(gained)


def diff(old: Policy, new: Policy) -> PolicyDiff:
    result = PolicyDiff(old.version, new.version, old.digest, new.digest,
                        old_terms=_terms(old), new_terms=_terms(new))
    old_flows, new_flows = _flows(old), _flows(new)
    for key in sorted(old_flows.keys() | new_flows.keys()):
        agency, event_type, area = key
        before, now = old_flows.get(key, ()), new_flows.get(key, ())
        result.newly_shared += [(agency, event_type, p, area) for p in _gained(event_type, now, before)]
        result.no_longer_shared += [(agency, event_type, p, area) for p in _gained(event_type, before, now)]
    result.newly_shared.sort()
    result.no_longer_shared.sort()
    result.other_changes = _other_changes(old, new)
    result.warnings = _warnings(old, new)
    return result


def _other_changes(old: Policy, new: Policy) -> list[str]:
    changes: list[str] = []
    if old.version != new.version:
        changes.append(f"policy_version: {old.version} -> {new.version}")
    if old.effective_from != new.effective_from:
        changes.append(f"effective_from: {old.effective_from.isoformat()} -> {new.effective_from.isoformat()}")
    changes += _key_changes("router signing keys", old.router.signing_keys, new.router.signing_keys)
    changes += _key_changes("router exchange keys", old.router.exchange_keys, new.router.exchange_keys)
    changes += _entity_changes("unit", {u.id: u for u in old.units}, {u.id: u for u in new.units},
                               ("areas", "event_types"), "signing_keys")
    for unit in new.units:
        before = old.unit(unit.id)
        if before is not None:
            changes += _key_changes(f"unit {unit.id} exchange keys", before.exchange_keys, unit.exchange_keys)
    changes += _entity_changes("agency", {a.id: a for a in old.agencies}, {a.id: a for a in new.agencies},
                               ("name", "kind", "areas"), "exchange_keys")
    changes += _entity_changes("agreement", {g.id: g for g in old.agreements}, {g.id: g for g in new.agreements},
                               ("version", "agency", "purpose", "legal_basis", "retention", "deadline",
                                "required_receipt", "escalate_again_after"), None)
    changes += _witness_changes(old, new)
    changes += _deadline_changes(old, new)
    for agreement in new.agreements:
        before = old.agreement(agreement.id)
        if before is not None:
            for event_type in sorted(agreement.shares.keys() - before.shares.keys()):
                changes.append(f"agreement {agreement.id}: now shares {event_type}")
            for event_type in sorted(before.shares.keys() - agreement.shares.keys()):
                changes.append(f"agreement {agreement.id}: no longer shares {event_type}")
    return changes


def _entity_changes(noun: str, old: dict[str, Any], new: dict[str, Any], attributes: tuple[str, ...],
                    keys_attribute: str | None) -> list[str]:
    changes = [f"{noun} {i} added" for i in sorted(new.keys() - old.keys())]
    changes += [f"{noun} {i} removed" for i in sorted(old.keys() - new.keys())]
    for ident in sorted(old.keys() & new.keys()):
        for attribute in attributes:
            before, after = getattr(old[ident], attribute), getattr(new[ident], attribute)
            if before == after:
                continue
            if isinstance(before, tuple):
                added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
                detail = ", ".join([*(f"+{a}" for a in added), *(f"-{r}" for r in removed)])
                changes.append(f"{noun} {ident}: {attribute} {detail}")
            else:
                changes.append(f"{noun} {ident}: {attribute} {before!r} -> {after!r}")
        if keys_attribute:
            changes += _key_changes(f"{noun} {ident} {keys_attribute.replace('_', ' ')}",
                                    getattr(old[ident], keys_attribute), getattr(new[ident], keys_attribute))
    return changes


def _witness_changes(old: Policy, new: Policy) -> list[str]:
    changes = []
    if old.witnesses.quorum != new.witnesses.quorum:
        changes.append(f"witness quorum: {old.witnesses.quorum} -> {new.witnesses.quorum}")
    changes += _entity_changes("witness", {m.id: m for m in old.witnesses.members},
                               {m.id: m for m in new.witnesses.members}, ("url", "key"), None)
    return changes


def _deadline_changes(old: Policy, new: Policy) -> list[str]:
    changes = []
    if old.deadlines.expiry != new.deadlines.expiry:
        changes.append(f"deadlines expiry: {old.deadlines.expiry} -> {new.deadlines.expiry}")
    before, after = old.deadlines.school_calendar, new.deadlines.school_calendar
    if before != after:
        if before is None or after is None:
            changes.append(f"school calendar {'added' if before is None else 'removed'}")
        else:
            terms = lambda c: {f"{t.start.isoformat()}..{t.end.isoformat()}" for t in c.terms}  # noqa: E731
            closed = lambda c: {d.isoformat() for d in c.closed}  # noqa: E731
            detail = [f"+term {t}" for t in sorted(terms(after) - terms(before))]
            detail += [f"-term {t}" for t in sorted(terms(before) - terms(after))]
            detail += [f"+closed {d}" for d in sorted(closed(after) - closed(before))]
            detail += [f"-closed {d}" for d in sorted(closed(before) - closed(after))]
            changes.append(f"school calendar: {', '.join(detail)}")
    return changes


def _key_changes(owner: str, old: tuple[KeyEntry, ...], new: tuple[KeyEntry, ...]) -> list[str]:
    before, after = {k.key_id: k for k in old}, {k.key_id: k for k in new}
    changes = [f"{owner}: added {i} ({after[i].status})" for i in sorted(after.keys() - before.keys())]
    changes += [f"{owner}: removed {i} (was {before[i].status})" for i in sorted(before.keys() - after.keys())]
    changes += [f"{owner}: {i} {before[i].status} -> {after[i].status}"
                for i in sorted(before.keys() & after.keys()) if before[i].status != after[i].status]
    return changes


def _warnings(old: Policy, new: Policy) -> list[str]:
    warnings = []
    if new.version <= old.version and new.digest != old.digest:
        warnings.append(f"policy_version did not increase ({old.version} -> {new.version}) although the policy changed")
    if new.witnesses.quorum < old.witnesses.quorum:
        warnings.append(f"witness quorum lowered ({old.witnesses.quorum} -> {new.witnesses.quorum}): fewer "
                        "independent parties must vouch for each audit checkpoint")
    for agreement in new.agreements:
        before = old.agreement(agreement.id)
        if before is not None and before != agreement and agreement.version <= before.version:
            warnings.append(f"agreement {agreement.id} changed but its version did not increase "
                            f"({before.version} -> {agreement.version})")
    return warnings


def policy_change_summary(old: Policy | None, new: Policy) -> dict[str, str | int]:
    """Plain strings and integers (no personal data) describing a policy load or change, for an audit entry."""
    summary: dict[str, str | int] = {
        "change": "initial" if old is None else ("unchanged" if old.digest == new.digest else "changed"),
        "policy_version": new.version,
        "policy_digest": new.digest,
        "effective_from": new.effective_from.isoformat(),
        "units": len(new.units),
        "agencies": len(new.agencies),
        "agreements": len(new.agreements),
    }
    if old is not None:
        changes = diff(old, new)
        summary.update({
            "previous_version": old.version,
            "previous_digest": old.digest,
            "newly_shared": len(changes.newly_shared),
            "no_longer_shared": len(changes.no_longer_shared),
            "other_changes": len(changes.other_changes),
            "warnings": len(changes.warnings),
        })
    return summary
