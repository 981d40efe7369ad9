"""`masb policy check|explain|diff`: what a governance board sees, and the exit codes scripts rely on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agents.cli import main

VALID = Path(__file__).resolve().parent / "fixtures" / "policy" / "valid.yaml"


@pytest.fixture
def valid_text() -> str:
    return VALID.read_text()


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_check_valid_policy(capsys):
    assert main(["policy", "check", str(VALID)]) == 0
    assert capsys.readouterr().out.strip() == f"policy {VALID}: version 4, 4 agencies, 3 agreements: OK"


def test_check_lists_every_problem_and_fails(tmp_path, valid_text, capsys):
    bad = valid_text.replace("victim.nhs_number, risks_and_triggers", "victim.shoe_size, risks_and_triggers") \
                    .replace("legal_basis: CHILDREN_ACT_2004", "legal_basis: BECAUSE")
    assert main(["policy", "check", str(write(tmp_path, "bad.yaml", bad))]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "invalid policy (2 problems)" in captured.err
    assert "agreements[0] (isa-health): shares.MARAC_REFERRAL: unknown field 'victim.shoe_size' for MARAC_REFERRAL" \
        in captured.err
    assert "agreements[2] (isa-encompass): legal_basis: unknown legal basis 'BECAUSE'" in captured.err


def test_check_yaml_syntax_error_names_the_line(tmp_path, capsys):
    path = write(tmp_path, "broken.yaml", "policy_version: 1\nrouter: [unclosed\n")
    assert main(["policy", "check", str(path)]) == 1
    assert "broken.yaml: not valid YAML at line" in capsys.readouterr().err


def test_check_missing_file(tmp_path, capsys):
    assert main(["policy", "check", str(tmp_path / "nope.yaml")]) == 2  # a usage error, not a failed check
    assert "nope.yaml not found" in capsys.readouterr().err


def test_explain_names_recipients_fields_and_who_gets_nothing(capsys):
    assert main(["policy", "explain", str(VALID), "MARAC_REFERRAL", "worcestershire"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("MARAC_REFERRAL in worcestershire: policy v4")
    assert "Publishers allowed: hau-south" in out
    assert "Recipients (2):" in out
    assert "[1] council-housing" in out and "[2] nhs-test-health" in out
    assert "fields      header, victim.address, victim.name, victim.safe_contact" in out
    assert "Covering worcestershire but receiving nothing of MARAC_REFERRAL (2):" in out
    assert "  oak-school:" in out and "  spare-probation:" in out


@pytest.mark.parametrize("event_type, area, message", [
    ("NOT_A_TYPE", "worcestershire", "unknown event type 'NOT_A_TYPE'"),
    ("MARAC_REFERRAL", "atlantis", "unknown area 'atlantis'"),
])
def test_explain_unknown_type_or_area_is_a_usage_error(capsys, event_type, area, message):
    assert main(["policy", "explain", str(VALID), event_type, area]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err


def test_diff_shows_newly_shared_fields_for_approval(tmp_path, valid_text, capsys):
    new = valid_text.replace("policy_version: 4", "policy_version: 5").replace(
        "CHILD_NOTIFICATION: [child.name, child_present, police_reference]",
        "CHILD_NOTIFICATION: [child.name, child.date_of_birth, child_present, police_reference]").replace(
        "agency: oak-school", "agency: oak-school  # widened").replace(
        "  - id: isa-encompass\n    version: 1", "  - id: isa-encompass\n    version: 2")
    assert main(["policy", "diff", str(VALID), str(write(tmp_path, "new.yaml", new))]) == 0
    out = capsys.readouterr().out
    assert "Newly shared, needs approval (1 field-area pairs):" in out
    assert "oak-school CHILD_NOTIFICATION under isa-encompass v2 (CHILDREN_ACT_2004):" in out
    assert "+ child.date_of_birth [worcestershire]" in out
    assert "No longer shared (0 field-area pairs):" in out
    assert "policy_version: 4 -> 5" in out


def test_diff_warns_when_the_version_is_not_increased(tmp_path, valid_text, capsys):
    new = valid_text.replace("MARAC_REFERRAL: [header, victim.name, victim.nhs_number, risks_and_triggers]",
                             "MARAC_REFERRAL: [header, victim.name, risks_and_triggers]")
    assert main(["policy", "diff", str(VALID), str(write(tmp_path, "new.yaml", new))]) == 0
    out = capsys.readouterr().out
    assert "- victim.nhs_number" in out
    assert "Warnings" in out and "policy_version" in out


def test_diff_refuses_an_invalid_side(tmp_path, valid_text, capsys):
    bad = write(tmp_path, "bad.yaml", valid_text.replace("kind: housing", "kind: landlord"))
    assert main(["policy", "diff", str(VALID), str(bad)]) == 2  # invalid input: nothing to compare
    err = capsys.readouterr().err
    assert f"policy file {bad} is invalid" in err and "kind: unknown agency kind 'landlord'" in err


def test_exit_codes_through_the_installed_entry_point(tmp_path, valid_text):
    """The same codes reach the shell: 0 valid, 1 invalid, 2 usage."""
    bad = write(tmp_path, "bad.yaml", valid_text.replace("retention: P8Y", "retention: P8"))
    codes = [subprocess.run([sys.executable, "-m", "agents", "policy", *args], check=False,
                            capture_output=True).returncode
             for args in (["check", str(VALID)], ["check", str(bad)], ["frobnicate"])]
    assert codes == [0, 1, 2]
