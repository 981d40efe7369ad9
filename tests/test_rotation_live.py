"""Key rotation and revocation on Apache Kafka, as an agency and its policy maintainer live them.

- Rotation: the agency's new key becomes active and the old one retired (a policy change while the
  worker runs). New envelopes carry the new key id; envelopes sent before stay readable while the
  old key file is kept; with only the new key they give UnknownRecipientKey.
- Revocation: an agency key revoked with `masb keys revoke` receives nothing new.
- A router signing key revoked in the partner's own copy of the policy: envelopes signed with it
  are refused (UnknownSigner), by the SDK and by `masb consume`.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from agents.cli import main
from streams.crypto.envelope import UnknownRecipientKey, UnknownSigner
from streams.crypto.keys import Keyring, generate_key, load_private_key
from streams.partner import opener_for
from streams.policy import load_policy
from tests.harness import demo_event, replace_file, running_deployment

pytestmark = pytest.mark.kafka

NHS, IDVA, ROUTER = "nhs-worcs-acute", "idva-west-mercia", "masb-router-wm"


@pytest.fixture(scope="module")
def live(kafka, tmp_path_factory):
    with running_deployment(kafka, tmp_path_factory.mktemp("rotation-live")) as running:
        yield running


def policy_version_in_force(live) -> int:
    return live.health()["policy_version"]


def key_line(text: str, key_id: str) -> str:
    (line,) = [line for line in text.splitlines() if key_id in line]
    return line


def with_added_key(text: str, existing_kid: str, new_record, status: str) -> str:
    """The policy text with a key entry for new_record added right after the entry of existing_kid."""
    line = key_line(text, existing_kid)
    old_public = line.split('public_key: "')[1].split('"')[0]
    added = (line.replace(existing_kid, new_record.key_id)
             .replace(old_public, base64.b64encode(new_record.public_key).decode())
             .replace("status: active", f"status: {status}"))
    return text.replace(line, f"{line}\n{added}")


def open_raw(live, agency: str, keyring: Keyring, policy=None):
    opener = opener_for(agency, keyring, policy or live.policy)
    return {record.offset: record.value for record in live.records(live.topics.partner(agency))}, opener


def rotated_keys(live, owner: str, out: Path) -> Path:
    """`masb keys rotate` for the agency: returns the new private key file."""
    before = set(out.glob("*.key")) if out.exists() else set()
    assert main(["keys", "rotate", "--owner", owner, "--kind", "exchange", "--out", str(out)]) == 0
    (path,) = set(out.glob("*.key")) - before
    return path


@pytest.fixture(scope="module")
def rotation(live, tmp_path_factory):
    """E1 routed under the old NHS key, then the rotation (policy v2), then E2."""
    path = live.deployment.policy_path
    old_file = next(live.deployment.keys_dir.glob(f"{NHS}.exchange.*.key"))
    old = load_private_key(old_file)
    e1 = demo_event("01_dash_worcestershire")
    live.publish(e1)
    live.wait_feed(NHS, e1["header"]["event_id"])

    new_file = rotated_keys(live, NHS, tmp_path_factory.mktemp("nhs-new-keys"))
    new = load_private_key(new_file)
    text = with_added_key(path.read_text(), old.key_id, new, "active")
    text = text.replace(key_line(text, old.key_id), key_line(text, old.key_id).replace("status: active", "status: retired"))
    replace_file(path, text.replace("policy_version: 1", "policy_version: 2"))
    live.wait_for(lambda: policy_version_in_force(live) == 2, 20, "policy version 2 in force")

    e2 = demo_event("01_dash_worcestershire")
    live.publish(e2)
    both = Keyring(NHS, [old, new])
    live.wait_for(lambda: any(i.ok and i.envelope.event_id == e2["header"]["event_id"] for i in live.feed(NHS, both)),
                  30, "E2 on the NHS feed")
    return e1, e2, old, new, [old_file, new_file]


def test_new_envelopes_carry_the_new_key_id(live, rotation):
    e1, e2, old, new, _ = rotation
    opened = {i.envelope.event_id: i.envelope for i in live.feed(NHS, Keyring(NHS, [old, new])) if i.ok}
    assert opened[e1["header"]["event_id"]].recipient_key_id == old.key_id
    assert opened[e2["header"]["event_id"]].recipient_key_id == new.key_id
    assert opened[e2["header"]["event_id"]].policy_version == 2
    deliveries = [e for e in live.audit_entries() if e["kind"] == "DELIVERY" and e["agency_id"] == NHS]
    assert [(e["event_id"], e["recipient_key_id"]) for e in deliveries] == [
        (e1["header"]["event_id"], old.key_id), (e2["header"]["event_id"], new.key_id)]


def test_old_envelopes_need_the_old_key_file(live, rotation):
    e1, e2, old, new, _ = rotation
    only_new = {i.offset: i for i in live.feed(NHS, Keyring(NHS, [new]))}
    only_old = {i.offset: i for i in live.feed(NHS, Keyring(NHS, [old]))}
    assert len(only_new) == len(only_old) == 2
    first, second = sorted(only_new)
    assert isinstance(only_new[first].error, UnknownRecipientKey)  # E1: sealed to the old key
    assert only_new[second].ok and only_new[second].envelope.event_id == e2["header"]["event_id"]
    assert only_old[first].ok and only_old[first].envelope.event_id == e1["header"]["event_id"]
    assert isinstance(only_old[second].error, UnknownRecipientKey)  # E2: sealed to the new key
    assert old.key_id in str(only_new[first].error)  # the error names the key id, nothing else


def test_revoked_agency_key_receives_nothing_new(live, rotation, tmp_path):
    """The IDVA's key is compromised: its replacement is added and the old key revoked with the CLI."""
    path = live.deployment.policy_path
    idva_old = Keyring.load_dir(live.deployment.keys_dir, IDVA).current
    idva_new = load_private_key(rotated_keys(live, IDVA, tmp_path / "idva-new"))
    staged = tmp_path / "staged.yaml"
    staged.write_text(with_added_key(path.read_text(), idva_old.key_id, idva_new, "active"))
    # The staged file alone fails the checks (two active keys); revoke fixes it and deploys it.
    assert main(["keys", "revoke", "--policy", str(staged), "--owner", IDVA, "--key-id", idva_old.key_id,
                 "--output", str(path)]) == 0
    live.wait_for(lambda: policy_version_in_force(live) == 3, 20, "policy version 3 in force")
    assert {k.key_id: k.status for k in load_policy(path).agency(IDVA).exchange_keys} == {
        idva_old.key_id: "revoked", idva_new.key_id: "active"}

    before = len(live.records(live.topics.partner(IDVA)))
    e3 = demo_event("01_dash_worcestershire")
    live.publish(e3)
    both = Keyring(IDVA, [idva_old, idva_new])
    live.wait_for(lambda: any(i.ok and i.envelope.event_id == e3["header"]["event_id"]
                              for i in live.feed(IDVA, both)), 30, "E3 on the IDVA feed")
    items = live.feed(IDVA, both)[before:]
    assert [(i.envelope.event_id, i.envelope.recipient_key_id) for i in items] == [
        (e3["header"]["event_id"], idva_new.key_id)]
    # Whoever holds the revoked key cannot read anything sent after the revocation.
    after = live.feed(IDVA, Keyring(IDVA, [idva_old]))[before:]
    assert len(after) == 1 and isinstance(after[0].error, UnknownRecipientKey)
    entries = [e for e in live.audit_entries() if e["kind"] == "DELIVERY" and e["event_id"] == e3["header"]["event_id"]]
    assert {e["agency_id"]: e["recipient_key_id"] for e in entries}[IDVA] == idva_new.key_id
    assert all(e["recipient_key_id"] != idva_old.key_id for e in entries)


def test_router_signing_key_revoked_in_the_partners_copy_is_refused(live, rotation, tmp_path, capsys):
    e1, e2, old, new, files = rotation
    router_kid = live.policy.router.signing_keys[0].key_id
    partner_copy = tmp_path / "partner-policy.yaml"
    # The partner learns of a new router signing key and that the one in use is compromised.
    replacement = generate_key(ROUTER, "signing")
    partner_copy.write_text(with_added_key(live.deployment.policy_path.read_text(), router_kid, replacement, "active"))
    assert main(["keys", "revoke", "--policy", str(partner_copy), "--owner", ROUTER, "--key-id", router_kid]) == 0
    capsys.readouterr()

    keyring = Keyring(NHS, [old, new])
    raw = [r.value for r in live.records(live.topics.partner(NHS))]
    trusting = opener_for(NHS, keyring, live.policy)
    distrusting = opener_for(NHS, keyring, load_policy(partner_copy))
    assert [trusting.open(v).event_id for v in raw][:2] == [e1["header"]["event_id"], e2["header"]["event_id"]]
    for value in raw:
        with pytest.raises(UnknownSigner, match=router_kid):
            distrusting.open(value)

    # `masb consume` with the partner's copy refuses both envelopes, says why, and exits non-zero.
    key_flags = [flag for path in files for flag in ("--key", str(path))]
    code = main(["consume", "--bootstrap", live.bootstrap, "--topic-prefix", live.topics.prefix,
                 "--policy", str(partner_copy), "--agency", NHS, *key_flags])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    assert captured.err.count("refused: UnknownSigner") == len(raw)
    assert f"0 events decrypted, {len(raw)} envelopes refused" in captured.err


def test_router_signing_key_rotation_reaches_the_worker_without_a_restart(kafka, tmp_path):
    """A new router signing key, deployed as a key file and then in the policy: the running worker
    signs with it from the next event on (docs/keys.md, "Router keys"); no restart."""
    with running_deployment(kafka, tmp_path / "router-rotation") as running:
        pid = running.worker.proc.pid
        router_id = running.policy.router.id
        keys_dir = running.deployment.keys_dir
        (old_file,) = keys_dir.glob(f"{router_id}.signing.*.key")
        old = load_private_key(old_file)
        e1 = demo_event("01_dash_worcestershire")
        running.publish(e1)
        assert running.wait_feed(NHS, e1["header"]["event_id"]).envelope.signer_key_id == old.key_id

        assert main(["keys", "rotate", "--owner", router_id, "--kind", "signing", "--out", str(keys_dir)]) == 0
        (new_file,) = set(keys_dir.glob(f"{router_id}.signing.*.key")) - {old_file}
        new = load_private_key(new_file)
        path = running.deployment.policy_path
        text = with_added_key(path.read_text(), old.key_id, new, "active")
        text = text.replace(key_line(text, old.key_id),
                            key_line(text, old.key_id).replace("status: active", "status: retired"))
        replace_file(path, text.replace("policy_version: 1", "policy_version: 2"))
        running.wait_for(lambda: running.health()["policy_version"] == 2, 30, "policy version 2 in force")

        running.deployment = type(running.deployment)(running.deployment.workdir, keys_dir, path, load_policy(path))
        e2 = demo_event("01_dash_worcestershire")
        running.publish(e2)
        assert running.wait_feed(NHS, e2["header"]["event_id"]).envelope.signer_key_id == new.key_id
        assert running.worker.proc.pid == pid and running.worker.proc.poll() is None
