"""The policy's optional `witnesses` section: who must cosign audit checkpoints, and how many."""
from __future__ import annotations

import pytest
import yaml

from streams.audit.cosignature import generate_cosigner
from streams.policy import PolicyError, diff, load_policy, parse_policy
from tests.test_policy import FIXTURE, base_doc

W = [generate_cosigner(f"w{i}.example/witness") for i in range(3)]


def with_witnesses(quorum=2, members=None) -> dict:
    doc = base_doc()
    doc["witnesses"] = {"quorum": quorum, "members": members if members is not None else [
        {"id": f"witness-{i}", "url": f"http://127.0.0.1:{7380 + i}/", "key": w.key_string()}
        for i, w in enumerate(W)]}
    return doc


def problems_of(doc: dict) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(doc)
    return info.value.problems


def test_witnesses_are_optional_and_leave_older_digests_unchanged() -> None:
    plain = load_policy(FIXTURE)
    assert plain.witnesses.quorum == 0 and plain.witnesses.members == ()
    assert "witnesses" not in plain.to_document()
    witnessed = parse_policy(with_witnesses())
    assert witnessed.witnesses.quorum == 2
    assert [m.id for m in witnessed.witnesses.members] == ["witness-0", "witness-1", "witness-2"]
    assert witnessed.witnesses.member("witness-1").url == "http://127.0.0.1:7381"  # trailing slash dropped
    assert witnessed.digest != plain.digest


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["witnesses"].update(quorum=4), "witnesses: quorum: must be an integer from 0 to the number of members (3)"),
    (lambda d: d["witnesses"].update(quorum=True), "witnesses: quorum: must be an integer"),
    (lambda d: d["witnesses"]["members"][1].update(id="witness-0"), "duplicate witness id"),
    (lambda d: d["witnesses"]["members"][1].update(key=W[0].key_string()), "duplicate witness key name"),
    (lambda d: d["witnesses"]["members"][1].update(url="ftp://w.example"), "url: must be an http:// or https:// URL"),
    (lambda d: d["witnesses"]["members"][1].update(url="http://w.example/?x=1"), "url: must be an http:// or https://"),
    (lambda d: d["witnesses"]["members"][0].pop("key"), "missing required key 'key'"),
    (lambda d: d["witnesses"]["members"][0].update(extra=1), "unknown key 'extra'"),
    (lambda d: d["witnesses"].update(members="w"), "witnesses.members: must be a list"),
    # A plain Ed25519 note key (type 0x01) is not a cosigner key: cosignatures would never match it.
    (lambda d: d["witnesses"]["members"][2].update(
        key=W[2].key_string().split("+")[0] + "+00000000+AQ" + W[2].key_string().split("+", 2)[2][2:]),
     "key: not a C2SP cosignature/v1 verifier key"),
])
def test_each_witness_check(mutate, message) -> None:
    doc = with_witnesses()
    mutate(doc)
    found = problems_of(doc)
    assert any(message in p for p in found), found


def test_diff_shows_witness_changes_and_warns_on_a_lowered_quorum() -> None:
    old = parse_policy(with_witnesses(quorum=2))
    doc = with_witnesses(quorum=1)
    doc["witnesses"]["members"].pop()
    change = diff(old, parse_policy(doc))
    assert "witness quorum: 2 -> 1" in change.other_changes
    assert "witness witness-2 removed" in change.other_changes
    assert any("witness quorum lowered (2 -> 1)" in w for w in change.warnings)


def test_witnesses_section_in_yaml_round_trips(tmp_path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(with_witnesses()))
    assert load_policy(path).witnesses.members[0].key == W[0].key_string()
