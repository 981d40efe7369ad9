"""The parsed, validated policy: parties, keys, agreements, and the routing index built from them."""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from streams.errors import InvalidInput

from .calendar import DeadlineSettings, SchoolCalendar

RECEIVED = "RECEIVED"
ACKNOWLEDGED = "ACKNOWLEDGED"
RECEIPT_LEVELS = (RECEIVED, ACKNOWLEDGED)  # what an agreement may require before its deadline


class PolicyError(InvalidInput, ValueError):
    """A policy file is invalid. `.problems` lists every problem found, each naming where and what."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        count = len(self.problems)
        super().__init__(f"invalid policy ({count} problem{'s' if count != 1 else ''}):\n" + "\n".join(self.problems))


@dataclass(frozen=True)
class KeyEntry:
    key_id: str
    public_key: bytes
    status: str  # active | retired | revoked


def active_keys(keys: tuple[KeyEntry, ...]) -> tuple[KeyEntry, ...]:
    return tuple(k for k in keys if k.status == "active")


@dataclass(frozen=True)
class RouterKeySet:
    """The broker's own public keys: it signs envelopes (Ed25519) and receives publications (X25519)."""

    id: str
    signing_keys: tuple[KeyEntry, ...]
    exchange_keys: tuple[KeyEntry, ...]

    @property
    def active_exchange_key(self) -> KeyEntry:
        return active_keys(self.exchange_keys)[0]  # the parser guarantees exactly one

    def verify_key(self, key_id: str) -> bytes | None:
        """Public signing key for key_id if its signatures are trusted (active or retired), else None."""
        for key in self.signing_keys:
            if key.key_id == key_id and key.status != "revoked":
                return key.public_key
        return None


@dataclass(frozen=True)
class Unit:
    """A harm assessment unit allowed to publish some event types for some areas."""

    id: str
    areas: tuple[str, ...]
    event_types: tuple[str, ...]
    signing_keys: tuple[KeyEntry, ...]
    # X25519 keys the router seals the unit's notices to (docs/deadlines.md); optional.
    exchange_keys: tuple[KeyEntry, ...] = ()

    @property
    def active_exchange_key(self) -> KeyEntry | None:
        active = active_keys(self.exchange_keys)
        return active[0] if len(active) == 1 else None


@dataclass(frozen=True)
class Agency:
    id: str
    name: str
    kind: str
    areas: tuple[str, ...]
    exchange_keys: tuple[KeyEntry, ...]

    @property
    def active_exchange_key(self) -> KeyEntry | None:
        active = active_keys(self.exchange_keys)
        return active[0] if len(active) == 1 else None


@dataclass(frozen=True)
class Agreement:
    """An information sharing agreement: what one agency receives, why, under which law, for how long."""

    id: str
    version: int
    agency: str
    purpose: str
    legal_basis: str
    retention: str
    deadline: str
    shares: dict[str, tuple[str, ...]] = field(hash=False)  # event type -> sorted field paths
    # Deadline terms (docs/deadlines.md): the receipt that must come before the deadline, and how
    # long after the deadline a second escalation (level 2) follows if it still has not come.
    required_receipt: str = RECEIVED
    escalate_again_after: str | None = None


@dataclass(frozen=True)
class Share:
    """What one agency receives of one event type, and on what terms: one envelope per event."""

    agency_id: str
    agency_kind: str
    recipient_key_id: str
    recipient_public_key: bytes
    agreement_id: str
    agreement_version: int
    purpose: str
    legal_basis: str
    retention: str
    deadline: str
    fields: tuple[str, ...]
    # The policy's school calendar, for `next_school_day` deadlines (None: every weekday counts).
    school_calendar: SchoolCalendar | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class WitnessMember:
    """A witness of the exchange log (C2SP tlog-witness): who runs it, where the log submits
    checkpoints, and its C2SP cosignature/v1 verifier key (signed-note vkey of type 0x04)."""

    id: str
    url: str   # submission prefix: the log POSTs to <url>/add-checkpoint
    key: str   # "<name>+<8 hex key id>+<base64(0x04 || Ed25519 public key)>"


@dataclass(frozen=True)
class WitnessSet:
    """The witnesses the policy names and how many of them must cosign a checkpoint before
    auditors and partners rely on it (0: cosignatures are collected but not required)."""

    quorum: int = 0
    members: tuple[WitnessMember, ...] = ()

    def member(self, witness_id: str) -> WitnessMember | None:
        return next((m for m in self.members if m.id == witness_id), None)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _keys_doc(keys: tuple[KeyEntry, ...]) -> list[dict[str, str]]:
    return [{"key_id": k.key_id, "public_key": _b64(k.public_key), "status": k.status}
            for k in sorted(keys, key=lambda k: k.key_id)]


class Policy:
    """A validated policy. Build it with parse_policy/load_policy, never directly."""

    def __init__(self, *, version: int, effective_from: date, router: RouterKeySet, units: tuple[Unit, ...],
                 agencies: tuple[Agency, ...], agreements: tuple[Agreement, ...],
                 witnesses: WitnessSet = WitnessSet(), deadlines: DeadlineSettings = DeadlineSettings()):
        self.version = version
        self.effective_from = effective_from
        self.router = router
        self.units = tuple(sorted(units, key=lambda u: u.id))
        self.agencies = tuple(sorted(agencies, key=lambda a: a.id))
        self.agreements = tuple(sorted(agreements, key=lambda a: a.id))
        self.witnesses = WitnessSet(witnesses.quorum, tuple(sorted(witnesses.members, key=lambda m: m.id)))
        self.deadlines = deadlines
        self._units = {u.id: u for u in self.units}
        self._agencies = {a.id: a for a in self.agencies}
        self._agreements = {a.id: a for a in self.agreements}
        # Hot-path indexes: routing and publisher checks are single dict/set lookups.
        self._routes = self._build_routes()
        self._may_publish = frozenset((u.id, t, area) for u in self.units for t in u.event_types for area in u.areas)
        self._unit_keys = {(u.id, k.key_id): k.public_key for u in self.units for k in u.signing_keys
                           if k.status != "revoked"}
        self.digest = hashlib.sha256(canonical_json(self.to_document())).hexdigest()

    def _build_routes(self) -> dict[tuple[str, str], tuple[Share, ...]]:
        routes: dict[tuple[str, str], list[Share]] = {}
        for agreement in self.agreements:
            agency = self._agencies[agreement.agency]
            key = agency.active_exchange_key
            if key is None:  # the parser refuses this; a policy never routes to a key that is not active
                continue
            for event_type, fields in agreement.shares.items():
                share = Share(agency.id, agency.kind, key.key_id, key.public_key, agreement.id, agreement.version,
                              agreement.purpose, agreement.legal_basis, agreement.retention, agreement.deadline, fields,
                              self.deadlines.school_calendar)
                for area in agency.areas:
                    routes.setdefault((event_type, area), []).append(share)
        return {k: tuple(sorted(v, key=lambda s: s.agency_id)) for k, v in routes.items()}

    def routing(self, event_type: str, area: str) -> tuple[Share, ...]:
        """Every agency that receives this event type for this area, sorted by agency id (empty if none)."""
        return self._routes.get((event_type, area), ())

    def unit(self, unit_id: str) -> Unit | None:
        return self._units.get(unit_id)

    def unit_may_publish(self, unit_id: str, event_type: str, area: str) -> bool:
        return (unit_id, event_type, area) in self._may_publish

    def unit_verify_key(self, unit_id: str, key_id: str) -> bytes | None:
        """The unit's public signing key for key_id; None if unknown or revoked (retired keys still verify)."""
        return self._unit_keys.get((unit_id, key_id))

    def agency(self, agency_id: str) -> Agency | None:
        return self._agencies.get(agency_id)

    def agreement(self, agreement_id: str) -> Agreement | None:
        return self._agreements.get(agreement_id)

    def publishers(self, event_type: str, area: str) -> tuple[str, ...]:
        """Ids of the units allowed to publish this event type for this area."""
        return tuple(u.id for u in self.units if (u.id, event_type, area) in self._may_publish)

    def to_document(self) -> dict[str, Any]:
        """The normalised policy (the input of `digest`): every list sorted, keys re-encoded in standard base64.
        `witnesses` appears only when the policy has the section, so older policies keep their digest."""
        document = {
            "policy_version": self.version,
            "effective_from": self.effective_from.isoformat(),
            "router": {"id": self.router.id, "signing_keys": _keys_doc(self.router.signing_keys),
                       "exchange_keys": _keys_doc(self.router.exchange_keys)},
            "units": [_unit_doc(u) for u in self.units],
            "agencies": [{"id": a.id, "name": a.name, "kind": a.kind, "areas": sorted(a.areas),
                          "exchange_keys": _keys_doc(a.exchange_keys)} for a in self.agencies],
            "agreements": [_agreement_doc(g) for g in self.agreements],
        }
        if self.witnesses.members or self.witnesses.quorum:
            document["witnesses"] = {"quorum": self.witnesses.quorum,
                                     "members": [{"id": m.id, "url": m.url, "key": m.key}
                                                 for m in self.witnesses.members]}
        deadlines = self.deadlines.to_document()
        if deadlines is not None:
            document["deadlines"] = deadlines
        return document


# Keys added after the first policy format appear in the normalised document only when they differ
# from their default, so that a policy without them keeps its digest.
def _unit_doc(u: Unit) -> dict[str, Any]:
    document = {"id": u.id, "areas": sorted(u.areas), "event_types": sorted(u.event_types),
                "signing_keys": _keys_doc(u.signing_keys)}
    if u.exchange_keys:
        document["exchange_keys"] = _keys_doc(u.exchange_keys)
    return document


def _agreement_doc(g: Agreement) -> dict[str, Any]:
    document = {"id": g.id, "version": g.version, "agency": g.agency, "purpose": g.purpose,
                "legal_basis": g.legal_basis, "retention": g.retention, "deadline": g.deadline,
                "shares": {t: list(f) for t, f in sorted(g.shares.items())}}
    if g.required_receipt != RECEIVED:
        document["required_receipt"] = g.required_receipt
    if g.escalate_again_after is not None:
        document["escalate_again_after"] = g.escalate_again_after
    return document


def canonical_json(document: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8 (same bytes as RFC 8785 for documents without floats)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
