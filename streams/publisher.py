"""The harm assessment unit's client: validate a case event, encode it as Avro, sign and seal it to
the router, and produce it to case-events keyed by the case's pseudonym (docs/keys.md, "Case
pseudonym keys"): the broker never sees the case reference.

    async with Publisher(bootstrap, policy, unit_key, pseudonyms=PseudonymKeys.load_dir(keys)) as pub:
        event_id = await pub.publish(event_dict)

Connection security (TLS, SASL) comes from ``security`` or the environment (docs/security.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streams import codec, rules
from streams.crypto.keys import PrivateKeyRecord
from streams.crypto.pseudonym import PseudonymKeys
from streams.crypto.publication import seal_publication
from streams.errors import InvalidInput
from streams.kafka import BREAKS_THE_PRODUCER, kafka_operation, producer, renewed, start_client
from streams.kafka_security import KafkaSecurity
from streams.policy import Policy
from streams.topics import Topics


class PublishRefused(InvalidInput, ValueError):
    """The unit may not publish this event under the policy (checked before anything is sent).

    ``reason_code`` is the router's code for the same refusal (UNIT_MISMATCH,
    UNAUTHORISED_PUBLISHER) or UNKNOWN_UNIT_KEY (docs/routing.md).
    """

    def __init__(self, reason_code: str, message: str):
        super().__init__(message)
        self.reason_code = reason_code


@dataclass(frozen=True)
class Prepared:
    """A publication ready to produce. ``event_id`` and ``event_type`` are read back from the
    encoded event as the router reads it: the event id in its canonical lower-case form, the one
    the exchange log stores and every command finds it by (docs/events.md)."""

    event_id: str
    event_type: str
    key: bytes
    value: bytes


def prepare_publication(event: dict[str, Any], policy: Policy, unit_key: PrivateKeyRecord,
                        pseudonyms: PseudonymKeys) -> Prepared:
    """The one door every publisher goes through: the Kafka key is the case's pseudonym under the
    current pseudonym key (docs/keys.md), the value the sealed publication.

    Raises codec.EventValidationError (every invalid field) or PublishRefused. The event is
    checked with the rules of streams.rules, encoded, and the encoded bytes are then read back
    exactly as the router reads them (codec.decode_valid_event, rules.publisher_refusal): what
    this accepts, the router routes.
    """
    wire = codec.encode_event(event)
    try:
        header = codec.decode_valid_event(wire)["header"]  # the router's view of what is being sent
    except codec.WireFormatError:  # the rules make this impossible; refuse rather than send it anyway
        raise codec.EventValidationError([codec.FieldError("<event>", "cannot be read back as the router reads it")]) \
            from None
    unit_id = unit_key.owner
    refusal = rules.publisher_refusal(policy, unit_id, header)
    if refusal is not None:
        raise PublishRefused(*refusal)
    if policy.unit_verify_key(unit_id, unit_key.key_id) is None:
        raise PublishRefused("UNKNOWN_UNIT_KEY",
                             f"signing key {unit_key.key_id} is not a trusted key of {unit_id} in the policy")
    router_key = policy.router.active_exchange_key
    value = seal_publication(unit_id=unit_id, unit_signing_key=unit_key, router_key_id=router_key.key_id,
                             router_exchange_public=router_key.public_key, wire_event=wire)
    return Prepared(header["event_id"], header["event_type"], pseudonyms.pseudonym(header["case_ref"]), value)


def prepare(event: dict[str, Any], policy: Policy, unit_key: PrivateKeyRecord,
            pseudonyms: PseudonymKeys) -> tuple[bytes, bytes]:
    """(Kafka key, record value) of :func:`prepare_publication`; same checks and errors."""
    prepared = prepare_publication(event, policy, unit_key, pseudonyms)
    return prepared.key, prepared.value


class Publisher:
    def __init__(self, bootstrap: str, policy: Policy, unit_key: PrivateKeyRecord, topics: Topics | None = None,
                 *, pseudonyms: PseudonymKeys, security: KafkaSecurity | None = None):
        self.policy = policy
        self.unit_key = unit_key
        self.pseudonyms = pseudonyms
        self.topics = topics or Topics.from_env()
        self.bootstrap = bootstrap
        self.security = security
        self._producer = producer(bootstrap, security=security)

    async def start(self) -> None:
        await start_client(self._producer, self.bootstrap, self.security)

    async def stop(self) -> None:
        await self._producer.stop()

    async def __aenter__(self) -> "Publisher":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def publish(self, event: dict[str, Any]) -> str:
        """Send one event and wait for the broker's acknowledgement; returns its event id in the
        canonical lower-case form the exchange log stores (whatever case the event gave it in)."""
        prepared = prepare_publication(event, self.policy, self.unit_key, self.pseudonyms)
        await self.send_raw(prepared.key, prepared.value)
        return prepared.event_id

    async def send_raw(self, key: bytes | None, value: bytes | None) -> None:
        """Produce bytes as they are (prepared ones, or for tests of the router's refusals)."""
        with kafka_operation(self.bootstrap, "WRITE", f"topic {self.topics.case_events}", self.security):
            try:
                await self._producer.send_and_wait(self.topics.case_events, value=value, key=key)
            except BREAKS_THE_PRODUCER:  # refused: the next publication needs a new producer
                self._producer = await renewed(self._producer, self.bootstrap, self.security)
                raise
