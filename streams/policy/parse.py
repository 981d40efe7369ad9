"""Validate a policy document and build a Policy, reporting every problem at once."""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from datetime import date, datetime
from pathlib import Path
from typing import Any, Callable, Mapping

from streams import rules, yamlin
from streams.codec import EVENT_TYPES, field_paths

from .calendar import DEADLINES_KEYS, DEFAULT_EXPIRY, DeadlineSettings, parse_school_calendar
from .durations import check_deadline, check_fixed_duration, parse_duration
from .model import (
    Agency,
    Agreement,
    KeyEntry,
    Policy,
    RECEIPT_LEVELS,
    RECEIVED,
    PolicyError,
    RouterKeySet,
    Unit,
    WitnessMember,
    WitnessSet,
    active_keys,
)
from .vocab import AGENCY_KINDS, AREAS, KEY_STATUSES, LEGAL_BASES

TOP_KEYS = ("policy_version", "effective_from", "router", "units", "agencies", "agreements")
OPTIONAL_TOP_KEYS = ("witnesses", "deadlines")
WITNESSES_KEYS = ("quorum", "members")
WITNESS_KEYS = ("id", "url", "key")
ROUTER_KEYS = ("id", "signing_keys", "exchange_keys")
UNIT_KEYS = ("id", "areas", "event_types", "signing_keys")
OPTIONAL_UNIT_KEYS = ("exchange_keys",)
AGENCY_KEYS = ("id", "name", "kind", "areas", "exchange_keys")
AGREEMENT_KEYS = ("id", "version", "agency", "purpose", "legal_basis", "retention", "deadline", "shares")
OPTIONAL_AGREEMENT_KEYS = ("required_receipt", "escalate_again_after")
KEY_ENTRY_KEYS = ("key_id", "public_key", "status")

# Party ids become Kafka topic names (partner.<agency-id>) and key file names: keep them plain.
ID_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")
PUBLIC_KEY_BYTES = 32  # both Ed25519 and X25519


def key_id_for(public_key: bytes) -> str:
    """Lowercase hex of the first 8 bytes of SHA-256(public key): 16 characters."""
    return hashlib.sha256(public_key).digest()[:8].hex()


def load_policy(path: str | Path) -> Policy:
    """Read a YAML policy file strictly (streams/yamlin.py: no repeated keys, no merge keys, no
    ambiguous scalars); raises PolicyError listing every problem, each naming file, line and key."""
    path = Path(path)
    try:
        document = yamlin.load_file(path)
    except yamlin.YamlConfigError as exc:
        raise PolicyError(exc.problems) from None
    return _Parser(document.line_of, path.name).parse(document.data)


def load_policy_text(text: str, name: str) -> Policy:
    """A policy from YAML text, read as strictly as ``load_policy``; problems name ``name`` (the
    file the text is meant for, e.g. an edited policy not yet written). Raises PolicyError."""
    try:
        document = yamlin.load(text, name)
    except yamlin.YamlConfigError as exc:
        raise PolicyError(exc.problems) from None
    return _Parser(document.line_of, name).parse(document.data)


def parse_policy(document: Mapping[str, Any]) -> Policy:
    """Validate a policy document (the YAML as plain data); raises PolicyError listing every problem."""
    return _Parser().parse(document)


def _is_http_url(value: Any) -> bool:
    from urllib.parse import urlsplit

    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query and not parts.fragment


def _describe(value: Any) -> str:
    return "nothing (the document is empty)" if value is None else type(value).__name__


_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)


class Where(str):
    """Where a problem is, as shown ("units[0] (hau-north): areas"), with its path in the document."""

    path: tuple

    def __new__(cls, text: str, path: tuple = ()) -> "Where":
        where = super().__new__(cls, text)
        where.path = tuple(path)
        return where

    def key(self, name: str, sep: str = ": ") -> "Where":
        return Where(f"{self}{sep}{name}", self.path + (name,))

    def item(self, index: int) -> "Where":
        return Where(f"{self}[{index}]", self.path + (index,))


class _Parser:
    def __init__(self, line_of: Callable[[tuple], int | None] | None = None, source: str | None = None) -> None:
        self.problems: list[str] = []
        self.party_ids: dict[str, str] = {}  # unit, agency and router ids share one namespace
        self.line_of = line_of
        self.source = source

    def problem(self, where: str, message: str, *at: Any) -> None:
        """Record a problem at ``where`` (its key ``at``, if given); with a file, name it and the line."""
        line = None
        if self.line_of is not None and isinstance(where, Where):
            line = self.line_of(where.path + at)
        prefix = f"{self.source}: line {line}: " if line is not None else (f"{self.source}: " if self.source else "")
        self.problems.append(f"{prefix}{where}: {message}")

    # ---- generic shapes -------------------------------------------------------------------------
    def mapping(self, value: Any, where: str, allowed: tuple[str, ...],
                optional: tuple[str, ...] = ()) -> dict[str, Any] | None:
        if not isinstance(value, Mapping):
            self.problem(where, f"must be a mapping, not {_describe(value)}")
            return None
        for key in value:
            if key not in allowed and key not in optional:
                self.problem(where, f"unknown key {str(key)!r}", key)
        for key in allowed:
            if key not in value:
                self.problem(where, f"missing required key {key!r}")
        return dict(value)

    def items(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            self.problem(where, f"must be a list, not {_describe(value)}")
            return []
        return value

    def strings(self, value: Any, where: str, *, allowed: tuple[str, ...] | None = None, noun: str = "value",
                non_empty: bool = True) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(where, "must be a list of strings")
            return ()
        if non_empty and not value:
            self.problem(where, "must not be empty")
        good: list[str] = []
        for item in value:
            if allowed is not None and item not in allowed:
                self.problem(where, f"unknown {noun} {item!r}")
            elif item in good:
                self.problem(where, f"{noun} {item!r} listed twice")
            else:
                good.append(item)
        return tuple(sorted(good))

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            self.problem(where, "must be a non-empty string")
            return ""
        return value

    def positive_int(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.problem(where, "must be a positive integer")
            return 0
        return value

    def party_id(self, value: Any, where: str) -> str | None:
        if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
            self.problem(where, "id: must be 1-64 lowercase letters, digits or hyphens, not starting or ending with a hyphen",
                         "id")
            return None
        if value in self.party_ids:
            self.problem(where, f"duplicate id {value!r} (first used at {self.party_ids[value]})", "id")
            return None
        self.party_ids[value] = where
        return value

    @staticmethod
    def located(section: str, index: int, value: Any, path: tuple | None = None) -> Where:
        """'units[0] (hau-north)'; ``path`` is the section's path in the document when not (section,)."""
        ident = value.get("id") if isinstance(value, Mapping) else None
        label = f"{section}[{index}] ({ident})" if isinstance(ident, str) and ident else f"{section}[{index}]"
        return Where(label, (path or (section,)) + (index,))

    # ---- keys -----------------------------------------------------------------------------------
    def keys(self, value: Any, where: str, algorithm: str) -> tuple[KeyEntry, ...]:
        entries: list[KeyEntry] = []
        seen: set[str] = set()
        for i, raw in enumerate(self.items(value, where)):
            here = where.item(i)
            entry = self.mapping(raw, here, KEY_ENTRY_KEYS)
            if entry is None:
                continue
            status, key_id, public_b64 = entry.get("status"), entry.get("key_id"), entry.get("public_key")
            ok = True
            if "status" in entry and status not in KEY_STATUSES:
                self.problem(here, f"status: unknown key status {str(status)!r} (expected active, retired or revoked)",
                             "status")
                ok = False
            public_key = self.public_key(public_b64, here, algorithm) if "public_key" in entry else None
            if "key_id" in entry and not isinstance(key_id, str):
                self.problem(here, "key_id: must be a string (quote a key id that YAML reads as a number)", "key_id")
                ok = False
            elif isinstance(key_id, str) and public_key is not None and key_id != key_id_for(public_key):
                self.problem(here, f"key_id {key_id!r} does not match the public key (expected {key_id_for(public_key)!r})",
                             "key_id")
                ok = False
            if isinstance(key_id, str) and key_id in seen:
                self.problem(here, f"duplicate key_id {key_id!r}", "key_id")
                ok = False
            if ok and public_key is not None and isinstance(key_id, str) and status in KEY_STATUSES:
                seen.add(key_id)
                entries.append(KeyEntry(key_id, public_key, status))
        return tuple(sorted(entries, key=lambda k: k.key_id))

    def public_key(self, value: Any, where: str, algorithm: str) -> bytes | None:
        if not isinstance(value, str):
            self.problem(where, "public_key: must be a base64 string", "public_key")
            return None
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            self.problem(where, "public_key: not valid base64", "public_key")
            return None
        if len(raw) != PUBLIC_KEY_BYTES:
            self.problem(where, f"public_key: decodes to {len(raw)} bytes; an {algorithm} public key is "
                                f"{PUBLIC_KEY_BYTES} bytes", "public_key")
            return None
        return raw

    def require_active(self, keys: tuple[KeyEntry, ...], where: str, noun: str, *, exactly_one: bool) -> None:
        count = len(active_keys(keys))
        if count == 0:
            self.problem(where, f"no active {noun}")
        elif exactly_one and count > 1:
            self.problem(where, f"{count} active {noun}s; exactly one may be active")

    # ---- sections -------------------------------------------------------------------------------
    def parse(self, document: Any) -> Policy:
        top = self.mapping(document, Where("policy"), TOP_KEYS, optional=OPTIONAL_TOP_KEYS)
        if top is None:
            raise PolicyError(self.problems)
        version = self.positive_int(top.get("policy_version"), Where("policy_version", ("policy_version",))) \
            if "policy_version" in top else 0
        effective_from = self.effective_from(top["effective_from"]) if "effective_from" in top else None
        router = self.router(top["router"]) if "router" in top else None
        units = self.units(top.get("units", []))
        agencies = self.agencies(top.get("agencies", []))
        agreements = self.agreements(top.get("agreements", []), {a.id: a for a in agencies})
        witnesses = self.witnesses(top["witnesses"]) if "witnesses" in top else WitnessSet()
        deadlines = self.deadlines(top["deadlines"]) if "deadlines" in top else DeadlineSettings()
        if self.problems or router is None or effective_from is None:
            raise PolicyError(self.problems)
        return Policy(version=version, effective_from=effective_from, router=router, units=tuple(units),
                      agencies=tuple(agencies), agreements=tuple(agreements), witnesses=witnesses,
                      deadlines=deadlines)

    def deadlines(self, value: Any) -> DeadlineSettings:
        """The optional `deadlines` section: expiry of deliveries and the school calendar."""
        top = Where("deadlines", ("deadlines",))
        section = self.mapping(value, top, (), optional=DEADLINES_KEYS)
        if section is None:
            return DeadlineSettings()
        expiry = DEFAULT_EXPIRY
        if "expiry" in section:
            expiry = self.fixed_duration(section["expiry"], top, "expiry", "P5D") or DEFAULT_EXPIRY
        calendar = (parse_school_calendar(section["school_calendar"],
                                          lambda shown, path, message: self.problem(Where(shown, path), message))
                    if "school_calendar" in section else None)
        return DeadlineSettings(expiry, calendar)

    def witnesses(self, value: Any) -> WitnessSet:
        """The optional `witnesses` section (docs/policy.md): quorum and members of the log's witnesses."""
        from streams.audit.checkpoint import CheckpointError
        from streams.audit.cosignature import parse_cosigner_verifier_key

        top = Where("witnesses", ("witnesses",))
        section = self.mapping(value, top, WITNESSES_KEYS)
        if section is None:
            return WitnessSet()
        members: list[WitnessMember] = []
        seen: dict[str, str] = {}  # witness ids, key names and public keys -> where first used
        for i, raw in enumerate(self.items(section.get("members", []), top.key("members", "."))):
            where = self.located("witnesses.members", i, raw, ("witnesses", "members"))
            member = self.mapping(raw, where, WITNESS_KEYS)
            if member is None:
                continue
            witness_id, url, key = member.get("id"), member.get("url"), member.get("key")
            ok = True
            if "id" in member and (not isinstance(witness_id, str) or not ID_PATTERN.fullmatch(witness_id)):
                self.problem(where, "id: must be 1-64 lowercase letters, digits or hyphens", "id")
                ok = False
            if "url" in member and not _is_http_url(url):
                self.problem(where, "url: must be an http:// or https:// URL without query or fragment", "url")
                ok = False
            verifier = None
            if "key" in member:
                try:
                    verifier = parse_cosigner_verifier_key(key)
                except CheckpointError as exc:
                    self.problem(where, f"key: not a C2SP cosignature/v1 verifier key ({exc})", "key")
                    ok = False
            for label, ident in (("id", witness_id), ("key name", verifier and verifier.name),
                                 ("key", verifier and bytes(verifier.verify_key))):
                if ok and ident is not None:
                    if (label, ident) in seen:
                        self.problem(where, f"duplicate witness {label} (first used at {seen[(label, ident)]})")
                        ok = False
                    seen[(label, ident)] = where
            if ok and len(member) == len(WITNESS_KEYS):
                members.append(WitnessMember(witness_id, url.rstrip("/"), key))
        quorum = section.get("quorum", 0)
        if "quorum" in section and (isinstance(quorum, bool) or not isinstance(quorum, int)
                                    or not 0 <= quorum <= len(members)):
            self.problem(top, f"quorum: must be an integer from 0 to the number of members ({len(members)})", "quorum")
            quorum = 0
        return WitnessSet(quorum, tuple(members))

    def effective_from(self, value: Any) -> date | None:
        where = Where("effective_from", ("effective_from",))
        if isinstance(value, date) and not isinstance(value, datetime):
            parsed = value
        elif isinstance(value, str) and _DATE.fullmatch(value):
            try:
                parsed = date.fromisoformat(value)
            except ValueError as exc:  # e.g. "month must be in 1..12"
                self.problem(where, f"{value!r} is not a calendar date ({exc})")
                return None
        else:
            self.problem(where, "must be a date like 2026-11-01")
            return None
        # The events' range (streams/rules.py): a policy in force from year 1 is a typo, not a policy.
        out_of_range = rules.date_problem((parsed - date(1970, 1, 1)).days)
        if out_of_range:
            self.problem(where, out_of_range)
            return None
        return parsed

    def router(self, value: Any) -> RouterKeySet | None:
        where = Where("router", ("router",))
        router = self.mapping(value, where, ROUTER_KEYS)
        if router is None:
            return None
        router_id = self.party_id(router.get("id"), where) if "id" in router else None
        signing = self.keys(router.get("signing_keys", []), where.key("signing_keys", "."), "Ed25519")
        exchange = self.keys(router.get("exchange_keys", []), where.key("exchange_keys", "."), "X25519")
        self.require_active(signing, where, "signing key", exactly_one=False)
        self.require_active(exchange, where, "exchange key", exactly_one=True)
        return RouterKeySet(router_id, signing, exchange) if router_id is not None else None

    def units(self, value: Any) -> list[Unit]:
        units = []
        for i, raw in enumerate(self.items(value, Where("units", ("units",)))):
            where = self.located("units", i, raw)
            unit = self.mapping(raw, where, UNIT_KEYS, optional=OPTIONAL_UNIT_KEYS)
            if unit is None:
                continue
            unit_id = self.party_id(unit.get("id"), where) if "id" in unit else None
            areas = self.strings(unit.get("areas", []), where.key("areas"), allowed=AREAS, noun="area")
            types = self.strings(unit.get("event_types", []), where.key("event_types"), allowed=EVENT_TYPES,
                                 noun="event type")
            keys = self.keys(unit.get("signing_keys", []), where.key("signing_keys"), "Ed25519")
            self.require_active(keys, where, "signing key", exactly_one=False)
            exchange = self.keys(unit.get("exchange_keys", []), where.key("exchange_keys"), "X25519")
            if len(active_keys(exchange)) > 1:
                self.problem(where, f"{len(active_keys(exchange))} active exchange keys; exactly one may receive "
                                    "notices", "exchange_keys")
            if unit_id is not None:
                units.append(Unit(unit_id, areas, types, keys, exchange))
        return units

    def agencies(self, value: Any) -> list[Agency]:
        agencies = []
        for i, raw in enumerate(self.items(value, Where("agencies", ("agencies",)))):
            where = self.located("agencies", i, raw)
            agency = self.mapping(raw, where, AGENCY_KEYS)
            if agency is None:
                continue
            agency_id = self.party_id(agency.get("id"), where) if "id" in agency else None
            name = self.text(agency.get("name"), where.key("name")) if "name" in agency else ""
            kind = agency.get("kind")
            if "kind" in agency and kind not in AGENCY_KINDS:
                self.problem(where, f"kind: unknown agency kind {str(kind)!r} (expected one of {', '.join(AGENCY_KINDS)})",
                             "kind")
            areas = self.strings(agency.get("areas", []), where.key("areas"), allowed=AREAS, noun="area")
            keys = self.keys(agency.get("exchange_keys", []), where.key("exchange_keys"), "X25519")
            if len(active_keys(keys)) > 1:
                self.problem(where, f"{len(active_keys(keys))} active exchange keys; exactly one may receive new data")
            if agency_id is not None:
                agencies.append(Agency(agency_id, name, str(kind), areas, keys))
        return agencies

    def agreements(self, value: Any, agencies: dict[str, Agency]) -> list[Agreement]:
        agreements = []
        seen_ids: dict[str, str] = {}
        received: dict[tuple[str, str], str] = {}  # (agency, event type) -> agreement that already shares it
        for i, raw in enumerate(self.items(value, Where("agreements", ("agreements",)))):
            where = self.located("agreements", i, raw)
            agreement = self.mapping(raw, where, AGREEMENT_KEYS, optional=OPTIONAL_AGREEMENT_KEYS)
            if agreement is None:
                continue
            agreement_id = agreement.get("id")
            if not isinstance(agreement_id, str) or not ID_PATTERN.fullmatch(agreement_id):
                self.problem(where, "id: must be 1-64 lowercase letters, digits or hyphens", "id")
                agreement_id = None
            elif agreement_id in seen_ids:
                self.problem(where, f"duplicate agreement id {agreement_id!r} (first used at {seen_ids[agreement_id]})",
                             "id")
            else:
                seen_ids[agreement_id] = where
            version = self.positive_int(agreement.get("version"), where.key("version")) if "version" in agreement else 0
            agency_id = agreement.get("agency")
            agency = agencies.get(agency_id) if isinstance(agency_id, str) else None
            if "agency" in agreement and agency is None:
                self.problem(where, f"agency: unknown agency {str(agency_id)!r}", "agency")
            elif agency is not None and not active_keys(agency.exchange_keys):
                self.problem(where, f"agency {agency.id!r} has no active exchange key, so it cannot receive new data",
                             "agency")
            purpose = self.text(agreement.get("purpose"), where.key("purpose")) if "purpose" in agreement else ""
            basis = agreement.get("legal_basis")
            if "legal_basis" in agreement and basis not in LEGAL_BASES:
                self.problem(where, f"legal_basis: unknown legal basis {str(basis)!r} "
                                    f"(expected one of {', '.join(LEGAL_BASES)})", "legal_basis")
            retention = self.duration(agreement.get("retention"), where.key("retention"), deadline=False) \
                if "retention" in agreement else ""
            deadline = self.duration(agreement.get("deadline"), where.key("deadline"), deadline=True) \
                if "deadline" in agreement else ""
            shares = self.shares(agreement.get("shares", {}), where) if "shares" in agreement else {}
            required = agreement.get("required_receipt", RECEIVED)
            if required not in RECEIPT_LEVELS:
                self.problem(where, f"required_receipt: must be RECEIVED or ACKNOWLEDGED, not {str(required)!r}",
                             "required_receipt")
            again = agreement.get("escalate_again_after")
            if again is not None:
                again = self.fixed_duration(again, where, "escalate_again_after", "PT18H")
            if agency is not None:
                for event_type in shares:
                    first = received.setdefault((agency.id, event_type), where)
                    if first != where:
                        self.problem(where, f"shares.{event_type}: agency {agency.id!r} already receives {event_type} "
                                            f"under {first}", "shares", event_type)
            if agreement_id is not None and agency is not None:
                agreements.append(Agreement(agreement_id, version, agency.id, purpose, str(basis), retention,
                                            deadline, shares, str(required), again))
        return agreements

    def fixed_duration(self, value: Any, where: str, key: str, example: str) -> str | None:
        """A duration that can be added to an instant (no years or months), or None after a problem."""
        try:
            if not isinstance(value, str):
                raise ValueError(f"must be an ISO 8601 duration string like {example}")
            check_fixed_duration(value)
            return value
        except ValueError as exc:
            self.problem(where, f"{key}: {value!r}: {exc}" if isinstance(value, str) else f"{key}: {exc}", key)
            return None

    def duration(self, value: Any, where: str, *, deadline: bool) -> str:
        if not isinstance(value, str):
            self.problem(where, "must be an ISO 8601 duration string" + (" or next_school_day" if deadline else ""))
            return ""
        try:
            check_deadline(value) if deadline else parse_duration(value)
        except ValueError as exc:
            self.problem(where, f"{value!r}: {exc}")
            return ""
        return value

    def shares(self, value: Any, where: str) -> dict[str, tuple[str, ...]]:
        if not isinstance(value, Mapping) or not value:
            self.problem(where, "shares: must be a non-empty mapping of event type to field paths", "shares")
            return {}
        shares: dict[str, tuple[str, ...]] = {}
        for event_type, raw_fields in value.items():
            here = where.key("shares").key(str(event_type), ".")
            if event_type not in EVENT_TYPES:
                self.problem(where, f"shares: unknown event type {str(event_type)!r}", "shares", event_type)
                continue
            valid = field_paths(event_type)
            fields = self.strings(raw_fields, here, noun="field")
            good = []
            for path in fields:
                if path not in valid:
                    self.problem(here, f"unknown field {path!r} for {event_type}")
                    continue
                parent = next((p for p in fields if path.startswith(p + ".")), None)
                if parent is not None:
                    self.problem(here, f"field {path!r} is already covered by {parent!r}")
                    continue
                good.append(path)
            shares[event_type] = tuple(good)
        return shares
