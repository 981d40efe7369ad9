"""`masb keys generate|rotate|export-public|revoke`: files, modes, messages and exit codes."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from agents.cli import main
from streams.crypto.keys import load_private_key
from streams.policy import load_policy

VALID = Path(__file__).resolve().parent / "fixtures" / "policy" / "valid.yaml"
# Keys of the fixture policy (tests/fixtures/policy/valid.yaml).
HAU_SOUTH_RETIRED = "eca50432b7719c52"
NHS_ONLY_KEY = "0272088efe0ccd55"
ROUTER_SIGNING = "78fb8b1cb2e2389a"


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# -- generate / rotate / export-public ------------------------------------------------------------
def test_generate_writes_one_0600_file_per_kind_and_prints_only_public_parts(tmp_path, capsys):
    assert main(["keys", "generate", "--owner", "idva-test", "--out", str(tmp_path / "k")]) == 0
    out = capsys.readouterr().out
    printed = lines(out)
    assert [p["kind"] for p in printed] == ["signing", "exchange"]
    for record in printed:
        path = Path(record["wrote"])
        assert path.name == f"idva-test.{record['kind']}.{record['key_id']}.key"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        private = load_private_key(path)
        assert private.owner == "idva-test" and private.key_id == record["key_id"]
        assert "private_key" not in record
        assert json.loads(path.read_text())["private_key"] not in out  # the secret is never printed


def test_generate_one_kind(tmp_path, capsys):
    assert main(["keys", "generate", "--owner", "hau-x", "--kind", "signing", "--out", str(tmp_path)]) == 0
    assert [p.name.split(".")[1] for p in tmp_path.glob("*.key")] == ["signing"]


def test_generate_again_for_the_same_owner_says_it_makes_another_key(tmp_path, capsys):
    main(["keys", "generate", "--owner", "hau-x", "--kind", "exchange", "--out", str(tmp_path)])
    first = lines(capsys.readouterr().out)[0]
    assert main(["keys", "generate", "--owner", "hau-x", "--kind", "exchange", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert lines(captured.out)[0]["key_id"] != first["key_id"]
    assert f"already holds exchange key {first['key_id']} of hau-x; this makes another" in captured.err
    assert "keys rotate" in captured.err


def test_generate_needs_an_owner(tmp_path, capsys):
    assert main(["keys", "generate", "--out", str(tmp_path)]) == 2
    assert "--owner" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_generate_a_case_pseudonym_key_prints_its_id_never_the_secret(tmp_path, capsys):
    from streams.crypto.pseudonym import PseudonymKeys

    assert main(["keys", "generate", "--kind", "pseudonym", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("*.secret")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    printed = lines(capsys.readouterr().out)[0]
    keys = PseudonymKeys.load_dir(tmp_path)
    assert printed == {"wrote": str(path), "kind": "pseudonym", "key_id": keys.current.key_id}
    assert json.loads(path.read_text())["secret_key"] not in json.dumps(printed)


def test_rotate_adds_a_newer_key_and_says_what_to_do_next(tmp_path, capsys):
    main(["keys", "generate", "--owner", "housing-x", "--kind", "exchange", "--out", str(tmp_path)])
    first = lines(capsys.readouterr().out)[0]
    assert main(["keys", "rotate", "--owner", "housing-x", "--kind", "exchange", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    second = lines(captured.out)[0]
    assert second["key_id"] != first["key_id"]
    assert len(list(tmp_path.glob("housing-x.exchange.*.key"))) == 2  # the old file is kept
    assert "retired" in captured.err and "active" in captured.err


def test_export_public_prints_the_public_record(tmp_path, capsys):
    main(["keys", "generate", "--owner", "school-x", "--kind", "exchange", "--out", str(tmp_path)])
    path = Path(lines(capsys.readouterr().out)[0]["wrote"])
    assert main(["keys", "export-public", str(path)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["format"] == "masb-public-key-v1" and record["owner"] == "school-x"
    assert "private_key" not in record


def test_export_public_refuses_a_key_file_readable_by_others(tmp_path, capsys):
    main(["keys", "generate", "--owner", "school-x", "--kind", "exchange", "--out", str(tmp_path)])
    path = Path(lines(capsys.readouterr().out)[0]["wrote"])
    path.chmod(0o644)
    assert main(["keys", "export-public", str(path)]) == 2
    err = capsys.readouterr().err
    assert "too open" in err and "chmod 600" in err
    assert json.loads(path.read_text())["private_key"] not in err


def test_export_public_needs_a_file(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["keys", "export-public"])
    assert exc.value.code == 2


# -- revoke ---------------------------------------------------------------------------------------
@pytest.fixture
def policy_copy(tmp_path) -> Path:
    path = tmp_path / "policy.yaml"
    shutil.copy(VALID, path)
    return path


def test_revoke_edits_only_the_status_and_version_and_keeps_comments(policy_copy, capsys):
    before = policy_copy.read_text()
    assert main(["keys", "revoke", "--policy", str(policy_copy), "--owner", "hau-south",
                 "--key-id", HAU_SOUTH_RETIRED]) == 0
    captured = capsys.readouterr()
    after = policy_copy.read_text()
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert len(before.splitlines()) == len(after.splitlines())
    assert changed == [
        ("policy_version: 4", "policy_version: 5"),
        (next(line for line in before.splitlines() if HAU_SOUTH_RETIRED in line),
         next(line for line in before.splitlines() if HAU_SOUTH_RETIRED in line).replace("retired", "revoked")),
    ]
    assert after.startswith("# Minimal valid policy")  # comments kept
    policy = load_policy(policy_copy)
    assert policy.version == 5
    assert policy.unit_verify_key("hau-south", HAU_SOUTH_RETIRED) is None  # no longer trusted
    summary = lines(captured.out)[0]
    assert summary == {"revoked": HAU_SOUTH_RETIRED, "owner": "hau-south", "key_list": "signing_keys",
                       "previous_status": "retired", "policy_version": [4, 5], "wrote": str(policy_copy)}
    assert f"unit hau-south signing keys: {HAU_SOUTH_RETIRED} retired -> revoked" in captured.out
    assert "masb policy diff" in captured.err


def test_revoke_to_another_file_leaves_the_original_for_the_diff(policy_copy, tmp_path, capsys):
    original = policy_copy.read_text()
    proposed = tmp_path / "proposed.yaml"
    assert main(["keys", "revoke", "--policy", str(policy_copy), "--owner", "masb-router-test",
                 "--key-id", ROUTER_SIGNING, "--output", str(proposed)]) != 0  # the router's only signing key
    assert not proposed.exists() and policy_copy.read_text() == original
    capsys.readouterr()
    assert main(["keys", "revoke", "--policy", str(policy_copy), "--owner", "hau-south",
                 "--key-id", HAU_SOUTH_RETIRED, "--output", str(proposed)]) == 0
    assert policy_copy.read_text() == original
    capsys.readouterr()
    assert main(["policy", "diff", str(policy_copy), str(proposed)]) == 0
    assert f"{HAU_SOUTH_RETIRED} retired -> revoked" in capsys.readouterr().out


def test_revoke_refuses_to_leave_an_agency_without_an_active_key(policy_copy, capsys):
    original = policy_copy.read_text()
    assert main(["keys", "revoke", "--policy", str(policy_copy), "--owner", "nhs-test-health",
                 "--key-id", NHS_ONLY_KEY]) == 1
    err = capsys.readouterr().err
    assert "nothing written" in err
    assert "agency 'nhs-test-health' has no active exchange key" in err
    assert policy_copy.read_text() == original
    assert [p.name for p in policy_copy.parent.iterdir()] == ["policy.yaml"]  # no temporary file left


def test_revoke_the_old_key_after_adding_its_replacement(policy_copy, capsys):
    """Compromised key: add the new key as active (two active keys fail the checks), then revoke the old."""
    import base64

    from streams.crypto.keys import generate_key

    new = generate_key("nhs-test-health", "exchange")
    text = policy_copy.read_text()
    old_line = next(line for line in text.splitlines() if NHS_ONLY_KEY in line)
    added = old_line.replace(NHS_ONLY_KEY, new.key_id).replace(
        old_line.split("public_key: ")[1].split(",")[0], base64.b64encode(new.public_key).decode())
    policy_copy.write_text(text.replace(old_line, old_line + "\n" + added))
    assert main(["keys", "revoke", "--policy", str(policy_copy), "--owner", "nhs-test-health",
                 "--key-id", NHS_ONLY_KEY]) == 0
    agency = load_policy(policy_copy).agency("nhs-test-health")
    assert {k.key_id: k.status for k in agency.exchange_keys} == {NHS_ONLY_KEY: "revoked", new.key_id: "active"}
    shares = [s for s in load_policy(policy_copy).routing("MARAC_REFERRAL", "worcestershire")
              if s.agency_id == "nhs-test-health"]
    assert [s.recipient_key_id for s in shares] == [new.key_id]  # new data goes to the new key only


def test_revoke_again_changes_nothing(policy_copy, capsys):
    main(["keys", "revoke", "--policy", str(policy_copy), "--owner", "hau-south", "--key-id", HAU_SOUTH_RETIRED])
    once = policy_copy.read_text()
    capsys.readouterr()
    assert main(["keys", "revoke", "--policy", str(policy_copy), "--owner", "hau-south",
                 "--key-id", HAU_SOUTH_RETIRED]) == 0
    assert "already revoked; nothing changed" in capsys.readouterr().err
    assert policy_copy.read_text() == once


@pytest.mark.parametrize("owner, key_id, message", [
    ("nobody", HAU_SOUTH_RETIRED, "no router, unit or agency with id nobody"),
    ("hau-north", HAU_SOUTH_RETIRED, f"hau-north has no key with id {HAU_SOUTH_RETIRED}"),
])
def test_revoke_unknown_owner_or_key(policy_copy, capsys, owner, key_id, message):
    original = policy_copy.read_text()
    assert main(["keys", "revoke", "--policy", str(policy_copy), "--owner", owner, "--key-id", key_id]) == 2
    assert message in capsys.readouterr().err
    assert policy_copy.read_text() == original


def test_revoke_needs_policy_owner_and_key_id(policy_copy, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["keys", "revoke", "--policy", str(policy_copy), "--owner", "hau-south"])
    assert exc.value.code == 2
    assert "--key-id" in capsys.readouterr().err


def test_revoke_keeps_the_file_mode(policy_copy, capsys):
    policy_copy.chmod(0o640)
    main(["keys", "revoke", "--policy", str(policy_copy), "--owner", "hau-south", "--key-id", HAU_SOUTH_RETIRED])
    assert stat.S_IMODE(policy_copy.stat().st_mode) == 0o640
