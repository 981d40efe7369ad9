"""The harm assessment unit's client: validate a case event, encode it as Avro, sign and seal it to
the router, and produce it to case-events keyed by its pseudonymous case reference.

    async with Publisher(bootstrap, policy, unit_key) as pub:
        event_id = await pub.publish(event_dict)
"""

from __future__ import annotations

from typing import Any

from streams import codec
from streams.crypto.keys import PrivateKeyRecord
from streams.crypto.publication import seal_publication
from streams.errors import InvalidInput
from streams.kafka import producer, start_client
from streams.policy import Policy
from streams.topics import Topics


class PublishRefused(InvalidInput, ValueError):
    """The unit may not publish this event under the policy (checked before anything is sent)."""


def prepare(event: dict[str, Any], policy: Policy, unit_key: PrivateKeyRecord) -> tuple[bytes, bytes]:
    """(Kafka key, record value) for an event; raises codec.EventValidationError or PublishRefused."""
    wire = codec.encode_event(event)  # validates first
    header = event["header"]
    unit_id = unit_key.owner
    if header["unit_id"] != unit_id:
        raise PublishRefused(f"header.unit_id is not {unit_id}, the unit whose key signs it")
    if not policy.unit_may_publish(unit_id, header["event_type"], header["area"]):
        raise PublishRefused(f"unit {unit_id} is not registered to publish {header['event_type']} "
                             f"for area {header['area']} (policy version {policy.version})")
    if policy.unit_verify_key(unit_id, unit_key.key_id) is None:
        raise PublishRefused(f"signing key {unit_key.key_id} is not a trusted key of {unit_id} in the policy")
    router_key = policy.router.active_exchange_key
    value = seal_publication(unit_id=unit_id, unit_signing_key=unit_key, router_key_id=router_key.key_id,
                             router_exchange_public=router_key.public_key, wire_event=wire)
    return header["case_ref"].encode(), value


class Publisher:
    def __init__(self, bootstrap: str, policy: Policy, unit_key: PrivateKeyRecord, topics: Topics | None = None):
        self.policy = policy
        self.unit_key = unit_key
        self.topics = topics or Topics.from_env()
        self.bootstrap = bootstrap
        self._producer = producer(bootstrap)

    async def start(self) -> None:
        await start_client(self._producer, self.bootstrap)

    async def stop(self) -> None:
        await self._producer.stop()

    async def __aenter__(self) -> "Publisher":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def publish(self, event: dict[str, Any]) -> str:
        """Send one event and wait for the broker's acknowledgement; returns its event id."""
        key, value = prepare(event, self.policy, self.unit_key)
        await self._producer.send_and_wait(self.topics.case_events, value=value, key=key)
        return event["header"]["event_id"]

    async def send_raw(self, key: bytes | None, value: bytes | None) -> None:
        """Produce bytes as they are (for tests of the router's refusals)."""
        await self._producer.send_and_wait(self.topics.case_events, value=value, key=key)
