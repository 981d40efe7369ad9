"""The partner agency's client: read its feed, verify and decrypt each envelope, drop repeats.

    async for item in PartnerFeed(bootstrap, opener).items():
        if item.ok: use(item.envelope.fields)    # dotted path -> value
        else: report(item.offset, item.error)    # tampered, misaddressed, unknown signer ...

Delivery is at least once, so the same event can arrive twice after a worker crash; the feed
yields each event id once (the first valid envelope wins).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from streams.crypto.envelope import (
    EnvelopeError,
    EnvelopeOpener,
    OpenedEnvelope,
    RouterKeys,
)
from streams.crypto.keys import Keyring
from streams.kafka import BREAKS_THE_PRODUCER, kafka_operation, read_topic, renewed
from streams.kafka_security import KafkaSecurity
from streams.policy import Policy
from streams.topics import Topics


def trusted_routers(policy: Policy) -> dict[str, RouterKeys]:
    """The router keys a partner trusts, from the (public) policy: non-revoked signing keys."""
    exchange = {k.key_id: k.public_key for k in policy.router.exchange_keys}
    return {k.key_id: RouterKeys(k.public_key, exchange) for k in policy.router.signing_keys if k.status != "revoked"}


def opener_for(agency_id: str, keyring: Keyring, policy: Policy) -> EnvelopeOpener:
    return EnvelopeOpener(agency_id, keyring, trusted_routers(policy))


@dataclass(frozen=True)
class FeedItem:
    offset: int
    envelope: OpenedEnvelope | None = None
    error: EnvelopeError | None = None

    @property
    def ok(self) -> bool:
        return self.envelope is not None


class PartnerFeed:
    def __init__(self, bootstrap: str, opener: EnvelopeOpener, topics: Topics | None = None, *,
                 security: KafkaSecurity | None = None):
        self.bootstrap = bootstrap
        self.opener = opener
        self.topics = topics or Topics.from_env()
        self.security = security  # None: the environment's settings (docs/security.md)
        self._seen: set[str] = set()

    async def items(self, *, follow: bool = False, idle_timeout: float | None = None) -> AsyncIterator[FeedItem]:
        topic = self.topics.partner(self.opener.agency_id)
        async for record in read_topic(self.bootstrap, topic, follow=follow, idle_timeout=idle_timeout,
                                       security=self.security):
            try:
                envelope = self.opener.open(record.value or b"")
            except EnvelopeError as exc:
                yield FeedItem(record.offset, error=exc)
                continue
            if envelope.event_id in self._seen:
                continue
            self._seen.add(envelope.event_id)
            yield FeedItem(record.offset, envelope=envelope)


class ReceiptSender:
    """Sends the agency's receipts for envelopes it received (docs/receipts.md).

        async with ReceiptSender(bootstrap, policy, agency_key) as receipts:
            await receipts.send(envelope)                    # RECEIVED: verified and decrypted
            await receipts.send(envelope, "ACKNOWLEDGED")    # taken into the agency's case work
    """

    def __init__(self, bootstrap: str, policy: Policy, agency_key, topics: Topics | None = None, *,
                 security: KafkaSecurity | None = None):
        from streams.kafka import producer

        self.policy = policy
        self.agency_key = agency_key
        self.topics = topics or Topics.from_env()
        self.bootstrap = bootstrap
        self.security = security
        self._producer = producer(bootstrap, security=security)

    async def __aenter__(self) -> "ReceiptSender":
        from streams.kafka import start_client

        await start_client(self._producer, self.bootstrap, self.security)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._producer.stop()

    async def send(self, envelope: OpenedEnvelope, status: str = "RECEIVED") -> None:
        from streams.receipts import seal_receipt

        router_key = self.policy.router.active_exchange_key
        value = seal_receipt(agency_key=self.agency_key, router_key_id=router_key.key_id,
                             router_exchange_public=router_key.public_key, event_id=envelope.event_id,
                             envelope_sha256=envelope.envelope_sha256, status=status)
        with kafka_operation(self.bootstrap, "WRITE", f"topic {self.topics.receipts}", self.security):
            try:
                await self._producer.send_and_wait(self.topics.receipts, value=value, key=envelope.event_id.encode())
            except BREAKS_THE_PRODUCER:  # refused: the next receipt needs a new producer
                self._producer = await renewed(self._producer, self.bootstrap, self.security)
                raise
