"""What the router decides for one input record, as pure functions (no Kafka, no Faust).

    admit(record)            -> Admitted | Refusal   open the sealed publication, verify the unit's
                                                     signature, decode and validate the event,
                                                     check the unit may publish it
    deliver(admitted)        -> [Delivery]           one envelope + one audit entry per entitled agency
    duplicate(admitted)      -> audit entry bytes    the same event id published again
    conflict(admitted, rec)  -> Refusal              the same event id with different content

The Faust agent (agents/router.py) only moves bytes between topics around these calls, so the
whole decision can be tested and benchmarked on its own. Reasons never contain personal data:
they name field paths, key ids and codes, never values.
"""

from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, get_args

import fastavro

from streams import codec, rules
from streams.audit.entry import encode_entry, make_entry
from streams.crypto.envelope import EnvelopeSealer, envelope_sha256
from streams.crypto.keys import Keyring
from streams.crypto.pseudonym import PseudonymKeys, looks_like_pseudonym
from streams.crypto.publication import PublicationError, ReasonCode, open_publication
from streams.policy import Policy, deliver_by
from streams.receipts import ReceiptError, open_receipt
from streams.resources import schema_file
from streams.topics import Topics

# A publication is one event sealed to the router: far below this. Larger input is refused before
# any crypto or decoding work is spent on it.
MAX_PUBLICATION_BYTES = 256 * 1024
# A dead letter must always fit on the broker (its default message.max.bytes is 1 MiB): it keeps the
# refused value only up to this size, and a record key only up to MAX_DEAD_LETTER_KEY_BYTES; larger
# ones are referenced by topic/partition/offset and SHA-256 instead (docs/routing.md).
MAX_DEAD_LETTER_PAYLOAD_BYTES = MAX_PUBLICATION_BYTES
MAX_RECEIPT_BYTES = 4096  # a receipt is about 200 bytes
MAX_DEAD_LETTER_KEY_BYTES = 256

_DLQ_SCHEMA = fastavro.schema.load_schema(
    str(schema_file("dead_letter.avsc"))
)

# Reason codes of refusals (dead-letter records and REFUSAL audit entries); see docs/routing.md.
EMPTY = "EMPTY_RECORD"
OVERSIZED = "OVERSIZED"
WIRE_FORMAT = "WIRE_FORMAT"
INVALID_EVENT = "INVALID_EVENT"
UNIT_MISMATCH = rules.UNIT_MISMATCH
UNAUTHORISED_PUBLISHER = rules.UNAUTHORISED_PUBLISHER
KEY_MISMATCH = "KEY_MISMATCH"
CONFLICTING_DUPLICATE = "CONFLICTING_DUPLICATE"
RECEIPT_INVALID = "RECEIPT_INVALID"
INTERNAL_ERROR = "INTERNAL_ERROR"
SEND_REFUSED = "SEND_REFUSED"
# Every code a dead letter can carry (the router's own and the publication's), as docs/routing.md lists them.
REASON_CODES = (EMPTY, OVERSIZED, *get_args(ReasonCode), WIRE_FORMAT, INVALID_EVENT, UNIT_MISMATCH,
                UNAUTHORISED_PUBLISHER, KEY_MISMATCH, CONFLICTING_DUPLICATE, INTERNAL_ERROR, SEND_REFUSED,
                RECEIPT_INVALID)


@dataclass(frozen=True)
class InputRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @property
    def source(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass(frozen=True)
class Admitted:
    record: InputRecord
    unit_id: str
    event: dict[str, Any]
    digest: str  # hex SHA-256 of the wire-format event: an identical republication matches

    @property
    def header(self) -> dict[str, Any]:
        return self.event["header"]

    @property
    def event_id(self) -> str:
        return self.header["event_id"]


@dataclass(frozen=True)
class Refusal:
    reason_code: str
    reason: str
    dead_letter: bytes
    audit_entry: bytes


@dataclass(frozen=True)
class Delivery:
    agency_id: str
    topic: str
    key: bytes
    envelope: bytes
    audit_entry: bytes


@dataclass
class RouterIdentity:
    """The router's own keys: exchange keys open publications, the signing key signs envelopes."""

    exchange: Keyring
    signing: Keyring
    case_keys: Any = None  # streams.audit.case_keys.CaseKeyStore: seals case refs in audit entries
    pseudonyms: PseudonymKeys | None = None  # case pseudonym keys: record keys must be pseudonyms under one

    def case_fields(self, case_ref: str, event_id: str, partition: int = 0) -> dict[str, Any]:
        """case_key_id, case_tag, sealed_case for an audit entry (none without a case key store).
        ``partition``: the case-events partition of the case, where the shared store keeps its key."""
        if self.case_keys is None:
            return {}
        return self.case_keys.seal(case_ref, event_id, partition).as_entry_fields()

    def sealer(self) -> EnvelopeSealer:
        return EnvelopeSealer(self.signing.current, self.exchange.current)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _sha256(data: bytes | None) -> str:
    return hashlib.sha256(data or b"").hexdigest()


class Router:
    def __init__(
        self,
        policy: Policy,
        identity: RouterIdentity,
        topics: Topics,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.identity = identity
        self.topics = topics
        self.clock = clock
        self._sealer = identity.sealer()  # caches the per-recipient key agreement
        self._exchange_keys = {kid: identity.exchange.get(kid) for kid in identity.exchange.key_ids}
        self.policy = policy

    # -- admission ---------------------------------------------------------------------------
    def admit(self, record: InputRecord) -> Admitted | Refusal:
        if not record.value:
            return self.refuse(record, EMPTY, "the record has no value")
        if len(record.value) > MAX_PUBLICATION_BYTES:
            return self.refuse(record, OVERSIZED, f"the record is larger than {MAX_PUBLICATION_BYTES} bytes")
        try:
            opened = open_publication(
                record.value,
                router_exchange_keys=self._exchange_keys,
                unit_verify_key=self.policy.unit_verify_key,
            )
        except PublicationError as exc:
            return self.refuse(record, exc.reason_code, exc.message)
        try:
            event = codec.decode_valid_event(opened.wire_event)  # the rules every door applied
        except codec.WireFormatError as exc:
            return self.refuse(record, WIRE_FORMAT, str(exc), unit_id=opened.unit_id)
        except codec.EventValidationError as exc:
            return self.refuse(record, INVALID_EVENT, str(exc), unit_id=opened.unit_id, event_id=exc.event_id)
        header = event["header"]
        refusal = rules.publisher_refusal(self.policy, opened.unit_id, header)
        if refusal is not None:
            return self.refuse(record, *refusal, unit_id=opened.unit_id, event_id=header["event_id"])
        pseudonyms = self.identity.pseudonyms
        if pseudonyms is None or not pseudonyms.matches(record.key, header["case_ref"]):
            return self.refuse(record, KEY_MISMATCH, "the record key is not the pseudonym of header.case_ref under "
                               "a pseudonym key the router holds (docs/keys.md)",
                               unit_id=opened.unit_id, event_id=header["event_id"])
        return Admitted(record, opened.unit_id, event, _sha256(opened.wire_event))

    # -- delivery ----------------------------------------------------------------------------
    def deliver(self, admitted: Admitted) -> list[Delivery]:
        policy = self.policy  # one policy version for the whole event, even if it is swapped meanwhile
        header = admitted.header
        event_type, event_id, area = header["event_type"], header["event_id"], header["area"]
        shares = policy.routing(event_type, area)
        if not shares:
            return []
        schema_ref = codec.schema_ref(event_type)
        sent_at = self.clock()
        source, key = admitted.record.source, admitted.record.key
        # One sealed case reference for all the event's entries: they name the same event id in
        # clear, so sharing it tells nothing more, and it saves a key lookup and a seal per recipient.
        case = self.identity.case_fields(header["case_ref"], event_id, admitted.record.partition)
        deliveries = []
        for share in shares:
            fields = _project(admitted.event, event_type, share.fields)
            due = deliver_by(share, sent_at)
            envelope = self._sealer.seal(
                event_id=event_id, case_ref=header["case_ref"], event_type=event_type,
                schema_ref=schema_ref, recipient_agency=share.agency_id,
                recipient_key_id=share.recipient_key_id, recipient_public_key=share.recipient_public_key,
                fields=fields, agreement_id=share.agreement_id, agreement_version=share.agreement_version,
                policy_version=policy.version, legal_basis=share.legal_basis, purpose=share.purpose,
                protective_marking=header["protective_marking"], sent_at=sent_at, deliver_by=due,
            )
            entry = make_entry(
                "DELIVERY", recorded_at=sent_at, event_id=event_id, **case,
                event_type=event_type, unit_id=admitted.unit_id, area=area, agency_id=share.agency_id,
                agreement_id=share.agreement_id, agreement_version=share.agreement_version,
                policy_version=policy.version, policy_digest=policy.digest, legal_basis=share.legal_basis,
                fields=list(fields), envelope_sha256=envelope_sha256(envelope),
                recipient_key_id=share.recipient_key_id, deliver_by=due, source=source,
            )
            deliveries.append(Delivery(
                agency_id=share.agency_id, topic=self.topics.partner(share.agency_id),
                key=key, envelope=envelope, audit_entry=encode_entry(entry),
            ))
        return deliveries

    def duplicate(self, admitted: Admitted) -> bytes:
        header = admitted.header
        return encode_entry(make_entry(
            "DUPLICATE", recorded_at=self.clock(), event_id=header["event_id"],
            **self.identity.case_fields(header["case_ref"], header["event_id"], admitted.record.partition),
            event_type=header["event_type"], unit_id=admitted.unit_id, area=header["area"],
            policy_version=self.policy.version, source=admitted.record.source,
            reason="already routed: the same event id with identical content; not delivered again",
        ))

    def conflict(self, admitted: Admitted) -> Refusal:
        return self.refuse(admitted.record, CONFLICTING_DUPLICATE,
                           "this event id was already routed with different content; event ids must be unique",
                           unit_id=admitted.unit_id, event_id=admitted.event_id)

    # -- refusal -----------------------------------------------------------------------------
    def refuse(self, record: InputRecord, reason_code: str, reason: str, *,
               unit_id: str | None = None, event_id: str | None = None, copy: bool = True) -> Refusal:
        """A dead letter and a REFUSAL audit entry for ``record``. The dead letter copies the record's
        key and value (``copy``) unless they are over the dead-letter limits; it always names the
        record's topic/partition/offset and the SHA-256 of its value. A record key is copied only if
        it has the shape of a case pseudonym: the dead-letter topic is kept forever, and a key in
        clear (a case reference from a misconfigured publisher) must not be."""
        now = self.clock()
        payload, key = (record.value, record.key) if copy else (None, None)
        if payload is not None and len(payload) > MAX_DEAD_LETTER_PAYLOAD_BYTES:
            reason += (f"; payload of {len(payload)} bytes not copied (over {MAX_DEAD_LETTER_PAYLOAD_BYTES}): "
                       f"the original stays at {record.source} while the topic retains it")
            payload = None
        if key is not None and len(key) > MAX_DEAD_LETTER_KEY_BYTES:
            reason += f"; record key of {len(key)} bytes not copied"
            key = None
        elif key is not None and not looks_like_pseudonym(key):
            reason += f"; record key of {len(key)} bytes not copied: not a case pseudonym"
            key = None
        letter = {
            "version": 1, "reason_code": reason_code, "reason": reason, "source_topic": record.topic,
            "source_partition": record.partition, "source_offset": record.offset, "received_at": now,
            "unit_id": unit_id, "event_id": event_id, "payload_sha256": _sha256(record.value),
            "original_key": key, "payload": payload,
        }
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, _DLQ_SCHEMA, letter)
        entry = make_entry(
            "REFUSAL", recorded_at=now, event_id=event_id, unit_id=unit_id, policy_version=self.policy.version,
            policy_digest=self.policy.digest, reason_code=reason_code, reason=reason, source=record.source,
        )
        return Refusal(reason_code, reason, buf.getvalue(), encode_entry(entry))

    def send_refused(self, record: InputRecord, topic: str, size: int, error: str) -> Refusal:
        """The broker refused for good a record made from ``record`` (``size`` bytes for ``topic``):
        a dead letter that references the input (no copy of it) and its REFUSAL entry."""
        return self.refuse(record, SEND_REFUSED,
                           f"the broker refused a {size}-byte record for {topic} ({error}); the input stays at "
                           f"{record.source}", copy=False)

    # -- receipts ----------------------------------------------------------------------------
    def receipt(self, record: InputRecord) -> bytes | Refusal:
        """A partner's receipt -> a RECEIPT audit entry, or a refusal (docs/receipts.md)."""
        if record.value is not None and len(record.value) > MAX_RECEIPT_BYTES:
            return self.refuse(record, OVERSIZED, f"the record is larger than {MAX_RECEIPT_BYTES} bytes")
        try:
            opened = open_receipt(record.value or b"", router_exchange_keys=self.identity.exchange.get,
                                  agency_public_key=self._agency_public_key)
        except ReceiptError as exc:
            return self.refuse(record, RECEIPT_INVALID, str(exc))
        return encode_entry(make_entry(
            "RECEIPT", recorded_at=self.clock(), event_id=opened.event_id, agency_id=opened.agency_id,
            envelope_sha256=opened.envelope_sha256, recipient_key_id=opened.agency_key_id,
            policy_version=self.policy.version, policy_digest=self.policy.digest, source=record.source,
            reason=f"{opened.status} at {opened.at.astimezone(timezone.utc).isoformat()}",
        ))

    def _agency_public_key(self, agency_id: str, key_id: str) -> bytes | None:
        """The agency's exchange public key with that id, unless unknown or revoked."""
        agency = self.policy.agency(agency_id)
        for key in agency.exchange_keys if agency is not None else ():
            if key.key_id == key_id and key.status != "revoked":
                return key.public_key
        return None

    def policy_change(self, previous: Policy | None) -> bytes:
        """The audit entry recorded when this router starts applying ``self.policy``."""
        before = f"version {previous.version}" if previous else "none"
        return encode_entry(make_entry(
            "POLICY_CHANGE", recorded_at=self.clock(), policy_version=self.policy.version,
            policy_digest=self.policy.digest,
            reason=f"policy in force changed from {before} to version {self.policy.version}",
        ))


def decode_dead_letter(data: bytes) -> dict[str, Any]:
    return fastavro.schemaless_reader(io.BytesIO(data), _DLQ_SCHEMA)


def _project(event: dict[str, Any], event_type: str, paths: tuple[str, ...]) -> dict[str, Any]:
    """The entitled fields that the event actually carries (absent or null values are not sent)."""
    out = {}
    for path, parts in _field_paths(event_type, paths):
        value: Any = event
        for part in parts:
            if not isinstance(value, dict):
                value = None
                break
            value = value.get(part)
        if value is not None:
            out[path] = value
    return out


@functools.lru_cache(maxsize=1024)
def _field_paths(event_type: str, paths: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The paths that are field paths of the event type (as codec.get_path accepts), split once."""
    known = codec.field_paths(event_type)
    return tuple((path, tuple(path.split("."))) for path in paths if path in known)
