"""Information sharing policy: checks (exact messages), routing, keys, explain, diff, deadlines, template."""
from __future__ import annotations

import base64
import copy
import hashlib
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given, settings, strategies as st
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from streams.codec import EVENT_TYPES, field_paths
from streams.policy import (
    AREAS, Policy, PolicyError, deliver_by, diff, explain, key_id_for, load_policy, parse_policy,
    policy_change_summary, render_template, template_placeholders,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests/fixtures/policy/valid.yaml"
TEMPLATE = ROOT / "deploy/demo/policy.template.yaml"
LONDON = ZoneInfo("Europe/London")


def base_doc() -> dict:
    return yaml.safe_load(FIXTURE.read_text())


def problems_of(doc: dict) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(doc)
    return info.value.problems


def agreement(doc: dict, agreement_id: str) -> dict:
    return next(a for a in doc["agreements"] if a["id"] == agreement_id)


def agency(doc: dict, agency_id: str) -> dict:
    return next(a for a in doc["agencies"] if a["id"] == agency_id)


def x25519_entry(seed: str, status: str = "active") -> dict:
    public = bytes(PrivateKey(hashlib.sha256(seed.encode()).digest()).public_key)
    return {"key_id": key_id_for(public), "public_key": base64.b64encode(public).decode(), "status": status}


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(FIXTURE)


# ---- keys and fixture ---------------------------------------------------------------------------

def test_key_id_is_first_8_bytes_of_sha256_in_hex():
    # The example written in docs/policy.md.
    assert key_id_for(bytes(range(32))) == "630dcd2966c43366"


def test_fixture_keys_match_seeds():
    """The fixture's keys are real keys from fixed seeds, so other tests can sign and seal with them."""
    seed = hashlib.sha256(b"masb-test-hau-south-signing").digest()
    public = bytes(SigningKey(seed).verify_key)
    unit = next(u for u in base_doc()["units"] if u["id"] == "hau-south")
    assert unit["signing_keys"][0]["public_key"] == base64.b64encode(public).decode()


# ---- routing ------------------------------------------------------------------------------------

def test_routing_gives_each_entitled_agency_exactly_its_fields(policy):
    shares = policy.routing("MARAC_REFERRAL", "worcestershire")
    assert [s.agency_id for s in shares] == ["council-housing", "nhs-test-health"]
    housing, health = shares
    assert housing.fields == ("header", "victim.address", "victim.name", "victim.safe_contact")
    assert health.fields == ("header", "risks_and_triggers", "victim.name", "victim.nhs_number")
    assert (housing.agreement_id, housing.agreement_version, housing.legal_basis) == \
        ("isa-housing", 1, "CRIME_AND_DISORDER_ACT_1998_S115")
    assert (housing.retention, housing.deadline, housing.agency_kind) == ("P2Y", "PT6H", "housing")


def test_routing_depends_on_the_agency_areas(policy):
    assert [s.agency_id for s in policy.routing("MARAC_REFERRAL", "shropshire")] == ["nhs-test-health"]
    assert policy.routing("MARAC_REFERRAL", "herefordshire") == ()
    assert policy.routing("CASE_CLOSED", "worcestershire") == ()


def test_new_data_is_sealed_to_the_active_key_not_the_retired_one(policy):
    (housing,) = [s for s in policy.routing("PROTECTION_NOTICE_ISSUED", "worcestershire")]
    assert housing.recipient_key_id == "3e7b7076d6173182"
    assert key_id_for(housing.recipient_public_key) == housing.recipient_key_id


def test_agency_whose_only_key_is_revoked_and_has_no_agreement_receives_nothing():
    doc = base_doc()
    agency(doc, "spare-probation")["exchange_keys"][0]["status"] = "revoked"
    policy = parse_policy(doc)
    assert all(s.agency_id != "spare-probation" for t in EVENT_TYPES for a in AREAS for s in policy.routing(t, a))


def test_revoked_only_key_with_agreements_is_a_check_error():
    doc = base_doc()
    agency(doc, "oak-school")["exchange_keys"][0]["status"] = "revoked"
    assert problems_of(doc) == [
        "agreements[2] (isa-encompass): agency 'oak-school' has no active exchange key, so it cannot receive new data"]


def test_key_rotation_moves_new_data_to_the_new_key():
    doc = base_doc()
    keys = agency(doc, "oak-school")["exchange_keys"]
    keys[0]["status"] = "retired"
    keys.append(x25519_entry("rotated-school-key"))
    (share,) = parse_policy(doc).routing("CHILD_NOTIFICATION", "worcestershire")
    assert share.recipient_key_id == keys[1]["key_id"]


def test_unit_may_publish_only_its_event_types_in_its_areas(policy):
    assert policy.unit_may_publish("hau-south", "MARAC_REFERRAL", "worcestershire")
    assert policy.unit_may_publish("hau-north", "PROTECTION_NOTICE_ISSUED", "telford_and_wrekin")
    assert not policy.unit_may_publish("hau-south", "PROTECTION_NOTICE_ISSUED", "worcestershire")
    assert not policy.unit_may_publish("hau-south", "MARAC_REFERRAL", "shropshire")
    assert not policy.unit_may_publish("hau-elsewhere", "MARAC_REFERRAL", "worcestershire")
    assert policy.unit("hau-north").areas == ("shropshire", "telford_and_wrekin")
    assert policy.unit("nope") is None


def test_unit_verify_key_trusts_active_and_retired_but_not_revoked_or_unknown():
    doc = base_doc()
    policy = parse_policy(doc)
    assert policy.unit_verify_key("hau-south", "adc0fe243cdf63f2") is not None
    assert policy.unit_verify_key("hau-south", "eca50432b7719c52") is not None  # retired: old signatures verify
    assert policy.unit_verify_key("hau-north", "adc0fe243cdf63f2") is None  # another unit's key
    assert policy.unit_verify_key("hau-south", "0000000000000000") is None
    next(u for u in doc["units"] if u["id"] == "hau-south")["signing_keys"][1]["status"] = "revoked"
    assert parse_policy(doc).unit_verify_key("hau-south", "eca50432b7719c52") is None


# ---- checks (exact messages) --------------------------------------------------------------------

def _set(path: str, value):
    def mutate(doc):
        *parents, last = path.split("/")
        node = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
    return mutate


def _delete(path: str):
    def mutate(doc):
        *parents, last = path.split("/")
        node = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[last]
    return mutate


def _append(path: str, value):
    def mutate(doc):
        node = doc
        for part in path.split("/"):
            node = node[int(part)] if part.isdigit() else node[part]
        node.append(copy.deepcopy(value))
    return mutate


SHORT_KEY = base64.b64encode(bytes(31)).decode()
CASES = [
    (_set("policy_version", 0), "policy_version: must be a positive integer"),
    (_set("policy_version", "7"), "policy_version: must be a positive integer"),
    (_set("policy_version", True), "policy_version: must be a positive integer"),
    (_set("effective_from", "1st November"), "effective_from: must be a date like 2026-11-01"),
    (_set("effective_from", "0001-01-01"), "effective_from: date is outside the accepted range 1900-01-01 to 9999-12-31"),
    (_set("colour", "blue"), "policy: unknown key 'colour'"),
    (_delete("agreements"), "policy: missing required key 'agreements'"),
    (_set("router/backup", 1), "router: unknown key 'backup'"),
    (_set("units/0/notes", "x"), "units[0] (hau-north): unknown key 'notes'"),
    (_set("agencies/1/exchange_keys/0/expires", "2027"), "agencies[1] (council-housing): exchange_keys[0]: unknown key 'expires'"),
    (_set("agreements/2/shares_all", True), "agreements[2] (isa-encompass): unknown key 'shares_all'"),
    (_set("units/1/id", "hau-north"), "units[1] (hau-north): duplicate id 'hau-north' (first used at units[0] (hau-north))"),
    (_set("agencies/3/id", "masb-router-test"),
     "agencies[3] (masb-router-test): duplicate id 'masb-router-test' (first used at router)"),
    (_set("agreements/1/id", "isa-health"),
     "agreements[1] (isa-health): duplicate agreement id 'isa-health' (first used at agreements[0] (isa-health))"),
    (_set("agencies/0/id", "NHS Trust"),
     "agencies[0] (NHS Trust): id: must be 1-64 lowercase letters, digits or hyphens, not starting or ending with a hyphen"),
    (_set("units/0/areas", ["shropshire", "powys"]), "units[0] (hau-north): areas: unknown area 'powys'"),
    (_set("agencies/2/areas", ["worcestershire", "worcestershire"]),
     "agencies[2] (oak-school): areas: area 'worcestershire' listed twice"),
    (_set("units/0/event_types", ["MARAC_REFERAL"]), "units[0] (hau-north): event_types: unknown event type 'MARAC_REFERAL'"),
    (_set("agencies/0/kind", "police"),
     "agencies[0] (nhs-test-health): kind: unknown agency kind 'police' "
     "(expected one of health, housing, childrens_services, education, idva, probation)"),
    (_set("agencies/0/name", " "), "agencies[0] (nhs-test-health): name: must be a non-empty string"),
    (_set("agreements/0/agency", "nhs-unknown"), "agreements[0] (isa-health): agency: unknown agency 'nhs-unknown'"),
    (_set("agreements/0/legal_basis", "CONSENT"),
     "agreements[0] (isa-health): legal_basis: unknown legal basis 'CONSENT' (expected one of "
     "UK_GDPR_6_1_E_9_2_G_DPA_SCH1_18, CRIME_AND_DISORDER_ACT_1998_S115, CHILDREN_ACT_2004, DPA_2018_PART_3)"),
    (_set("agreements/0/version", -1), "agreements[0] (isa-health): version: must be a positive integer"),
    (_set("agreements/0/purpose", ""), "agreements[0] (isa-health): purpose: must be a non-empty string"),
    (_set("agreements/0/retention", "6 years"),
     "agreements[0] (isa-health): retention: '6 years': not an ISO 8601 duration like P6Y, P30D or PT2H"),
    (_set("agreements/0/retention", "P6"),
     "agreements[0] (isa-health): retention: 'P6': not an ISO 8601 duration like P6Y, P30D or PT2H"),
    (_set("agreements/0/retention", "P0D"), "agreements[0] (isa-health): retention: 'P0D': must be longer than zero"),
    (_set("agreements/0/deadline", "PT"),
     "agreements[0] (isa-health): deadline: 'PT': not an ISO 8601 duration like P6Y, P30D or PT2H"),
    (_set("agreements/0/deadline", "P1M"),
     "agreements[0] (isa-health): deadline: 'P1M': uses years or months, which have no fixed length; "
     "use weeks, days, hours or minutes"),
    (_set("agreements/0/deadline", 2), "agreements[0] (isa-health): deadline: must be an ISO 8601 duration string or next_school_day"),
    (_set("agreements/2/shares/CHILD_NOTIFICATION", ["child.name", "child.shoe_size"]),
     "agreements[2] (isa-encompass): shares.CHILD_NOTIFICATION: unknown field 'child.shoe_size' for CHILD_NOTIFICATION"),
    (_set("agreements/2/shares/CHILD_NOTIFICATON", ["child.name"]),
     "agreements[2] (isa-encompass): shares: unknown event type 'CHILD_NOTIFICATON'"),
    (_set("agreements/2/shares/CHILD_NOTIFICATION", ["child", "child.name"]),
     "agreements[2] (isa-encompass): shares.CHILD_NOTIFICATION: field 'child.name' is already covered by 'child'"),
    (_set("agreements/2/shares/CHILD_NOTIFICATION", ["child.name", "child.name"]),
     "agreements[2] (isa-encompass): shares.CHILD_NOTIFICATION: field 'child.name' listed twice"),
    (_set("agreements/2/shares/CHILD_NOTIFICATION", []),
     "agreements[2] (isa-encompass): shares.CHILD_NOTIFICATION: must not be empty"),
    (_set("agreements/2/shares", {}),
     "agreements[2] (isa-encompass): shares: must be a non-empty mapping of event type to field paths"),
    (_append("agreements", {"id": "isa-health-extra", "version": 1, "agency": "nhs-test-health", "purpose": "Second look",
                            "legal_basis": "UK_GDPR_6_1_E_9_2_G_DPA_SCH1_18", "retention": "P1Y", "deadline": "P1D",
                            "shares": {"MARAC_REFERRAL": ["victim.date_of_birth"]}}),
     "agreements[3] (isa-health-extra): shares.MARAC_REFERRAL: agency 'nhs-test-health' already receives "
     "MARAC_REFERRAL under agreements[0] (isa-health)"),
    (_set("units/1/signing_keys/0/status", "retired"), "units[1] (hau-south): no active signing key"),
    (_set("router/signing_keys/0/status", "revoked"), "router: no active signing key"),
    (_append("router/exchange_keys", x25519_entry("second-router-key")),
     "router: 2 active exchange keys; exactly one may be active"),
    (_append("agencies/2/exchange_keys", x25519_entry("second-school-key")),
     "agencies[2] (oak-school): 2 active exchange keys; exactly one may receive new data"),
    (_set("agencies/2/exchange_keys/0/status", "lost"),
     "agencies[2] (oak-school): exchange_keys[0]: status: unknown key status 'lost' (expected active, retired or revoked)"),
    (_set("agencies/2/exchange_keys/0/key_id", "de9f63352991261d"),
     "agencies[2] (oak-school): exchange_keys[0]: key_id 'de9f63352991261d' does not match the public key "
     "(expected 'de9f63352991261c')"),
    (_set("agencies/2/exchange_keys/0/public_key", SHORT_KEY),
     "agencies[2] (oak-school): exchange_keys[0]: public_key: decodes to 31 bytes; an X25519 public key is 32 bytes"),
    (_set("units/0/signing_keys/0/public_key", SHORT_KEY),
     "units[0] (hau-north): signing_keys[0]: public_key: decodes to 31 bytes; an Ed25519 public key is 32 bytes"),
    (_set("agencies/2/exchange_keys/0/public_key", "not base64!"),
     "agencies[2] (oak-school): exchange_keys[0]: public_key: not valid base64"),
    (_append("agencies/1/exchange_keys", {"key_id": "a1146c5e6a48688d",
                                          "public_key": "yOUY+GtP2hTkaxEcgtMlKl/Rs/oX1Vdj3PlyE48PngY=", "status": "revoked"}),
     "agencies[1] (council-housing): exchange_keys[2]: duplicate key_id 'a1146c5e6a48688d'"),
    (_set("units", {"hau-north": {}}), "units: must be a list, not dict"),
    (_set("units/0/areas", "shropshire"), "units[0] (hau-north): areas: must be a list of strings"),
]


@pytest.mark.parametrize("mutate, message", CASES, ids=[m for _, m in CASES])
def test_each_check_reports_its_exact_message(mutate, message):
    doc = base_doc()
    mutate(doc)
    problems = problems_of(doc)
    assert message in problems
    # Only the planted problem and its direct consequences (e.g. a lost key leaves no active key).
    assert len(problems) <= 2, problems


def test_all_problems_are_reported_at_once_in_document_order():
    doc = base_doc()
    for mutate, _ in (CASES[0], CASES[7], CASES[18], CASES[29]):
        mutate(doc)
    problems = problems_of(doc)
    assert problems == [CASES[0][1], CASES[7][1], CASES[18][1], CASES[29][1]]
    with pytest.raises(PolicyError) as info:
        parse_policy(doc)
    assert str(info.value).startswith("invalid policy (4 problems):\n")


def test_problems_never_contain_key_material():
    doc = base_doc()
    doc["agencies"][2]["exchange_keys"][0]["key_id"] = "0" * 16
    text = str(pytest.raises(PolicyError, parse_policy, doc).value)
    assert doc["agencies"][2]["exchange_keys"][0]["public_key"] not in text


def test_yaml_syntax_error_names_position_not_content(tmp_path):
    bad = tmp_path / "policy.yaml"
    bad.write_text("policy_version: 7\nunits: [secret-looking-value\n")
    with pytest.raises(PolicyError) as info:
        load_policy(bad)
    (problem,) = info.value.problems
    assert re.fullmatch(r"policy\.yaml: not valid YAML at line \d+, column \d+", problem)


def test_top_level_must_be_a_mapping():
    assert problems_of(["not", "a", "policy"]) == ["policy: must be a mapping, not list"]


# ---- digest -------------------------------------------------------------------------------------

def test_digest_ignores_order_but_not_meaning(policy):
    doc = base_doc()
    doc["agencies"].reverse()
    doc["units"][0]["areas"].reverse()
    doc["agreements"][0]["shares"]["MARAC_REFERRAL"].reverse()
    assert parse_policy(doc).digest == policy.digest
    doc["agreements"][0]["retention"] = "P7Y"
    assert parse_policy(doc).digest != policy.digest


def test_digest_known_answer_is_the_one_documented(policy):
    documented = re.search(r"valid\.yaml` has digest\s+`([0-9a-f]{64})`", (ROOT / "docs/policy.md").read_text())
    assert documented is not None and documented.group(1) == policy.digest


def test_digest_is_sha256_of_the_canonical_document(policy):
    import json
    canonical = json.dumps(policy.to_document(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256(canonical.encode()).hexdigest() == policy.digest


# ---- explain ------------------------------------------------------------------------------------

def test_explain_names_every_recipient_field_agreement_and_basis(policy):
    text = explain(policy, "MARAC_REFERRAL", "worcestershire")
    for share in policy.routing("MARAC_REFERRAL", "worcestershire"):
        block = text.split(f"] {share.agency_id}:", 1)[1].split("\n  [", 1)[0]
        assert f"{share.agreement_id} v{share.agreement_version}" in block
        assert share.legal_basis in block and share.purpose in block and share.deadline in block
        assert "fields      " + ", ".join(share.fields) in block
    matrix_row = next(line for line in text.splitlines() if line.strip().startswith("victim.nhs_number"))
    assert matrix_row.split()[1:] == [".", "x"]  # housing no, health yes
    silent = text.split("receiving nothing of MARAC_REFERRAL")[1]
    assert "oak-school" in silent and "spare-probation" in silent and "council-housing" not in silent


def test_explain_when_nobody_receives(policy):
    text = explain(policy, "CASE_CLOSED", "herefordshire")
    assert "Recipients: none" in text
    assert "spare-probation" in text


def test_explain_refuses_unknown_names(policy):
    with pytest.raises(ValueError, match="unknown event type 'NOPE'"):
        explain(policy, "NOPE", "worcestershire")
    with pytest.raises(ValueError, match="unknown area 'powys'"):
        explain(policy, "MARAC_REFERRAL", "powys")


# ---- diff ---------------------------------------------------------------------------------------

def test_diff_shows_newly_shared_and_no_longer_shared_fields(policy):
    doc = base_doc()
    doc["policy_version"] = 5
    marac = agreement(doc, "isa-health")["shares"]["MARAC_REFERRAL"]
    marac.remove("risks_and_triggers")
    marac.append("victim.date_of_birth")
    agreement(doc, "isa-health")["version"] = 3
    changes = diff(policy, parse_policy(doc))
    assert changes.newly_shared == [("nhs-test-health", "MARAC_REFERRAL", "victim.date_of_birth", "shropshire"),
                                    ("nhs-test-health", "MARAC_REFERRAL", "victim.date_of_birth", "worcestershire")]
    assert changes.no_longer_shared == [("nhs-test-health", "MARAC_REFERRAL", "risks_and_triggers", "shropshire"),
                                        ("nhs-test-health", "MARAC_REFERRAL", "risks_and_triggers", "worcestershire")]
    assert "agreement isa-health: version 2 -> 3" in changes.other_changes
    assert changes.warnings == []
    text = changes.render()
    added = text.split("Newly shared")[1].split("No longer shared")[0]
    removed = text.split("No longer shared")[1].split("Other changes")[0]
    assert "nhs-test-health MARAC_REFERRAL under isa-health v3 (UK_GDPR_6_1_E_9_2_G_DPA_SCH1_18):" in added
    assert "+ victim.date_of_birth [shropshire, worcestershire]" in added and "risks_and_triggers" not in added
    assert "nhs-test-health MARAC_REFERRAL under isa-health v2 (UK_GDPR_6_1_E_9_2_G_DPA_SCH1_18):" in removed
    assert "- risks_and_triggers [shropshire, worcestershire]" in removed


def test_diff_widening_a_record_lists_the_new_leaves_only(policy):
    doc = base_doc()
    fields = agreement(doc, "isa-housing")["shares"]["MARAC_REFERRAL"]
    fields[:] = ["header", "victim"]  # was header, victim.name, victim.address, victim.safe_contact
    new = parse_policy(doc)
    gained = {f for (_, _, f, _) in diff(policy, new).newly_shared}
    assert "victim.nhs_number" in gained and "victim.date_of_birth" in gained
    assert not any(f.startswith(("victim.address", "victim.safe_contact")) or f == "victim.name" for f in gained)
    assert diff(policy, new).no_longer_shared == []
    narrowed = diff(new, policy)  # and back: the same leaves are reported as no longer shared
    assert narrowed.newly_shared == []
    assert {f for (_, _, f, _) in narrowed.no_longer_shared} == gained


def test_diff_counts_an_added_area_as_new_sharing(policy):
    doc = base_doc()
    agency(doc, "oak-school")["areas"].append("herefordshire")
    changes = diff(policy, parse_policy(doc))
    assert changes.newly_shared == [("oak-school", "CHILD_NOTIFICATION", f, "herefordshire")
                                    for f in ("child.name", "child_present", "police_reference")]
    assert "agency oak-school: areas +herefordshire" in changes.other_changes
    assert any("policy_version did not increase" in w for w in changes.warnings)


def test_diff_reports_key_and_term_changes_and_unbumped_agreement(policy):
    doc = base_doc()
    doc["policy_version"] = 5
    agreement(doc, "isa-housing")["legal_basis"] = "UK_GDPR_6_1_E_9_2_G_DPA_SCH1_18"
    agency(doc, "council-housing")["exchange_keys"][1]["status"] = "revoked"
    changes = diff(policy, parse_policy(doc))
    assert changes.newly_shared == changes.no_longer_shared == []
    assert ("agreement isa-housing: legal_basis 'CRIME_AND_DISORDER_ACT_1998_S115' -> "
            "'UK_GDPR_6_1_E_9_2_G_DPA_SCH1_18'") in changes.other_changes
    assert "agency council-housing exchange keys: a1146c5e6a48688d retired -> revoked" in changes.other_changes
    assert changes.warnings == ["agreement isa-housing changed but its version did not increase (1 -> 1)"]


def test_diff_of_identical_policies_is_empty(policy):
    changes = diff(policy, load_policy(FIXTURE))
    assert changes.is_empty and changes.warnings == []


def test_policy_change_summary_is_plain_counts_and_ids(policy):
    doc = base_doc()
    doc["policy_version"] = 5
    agreement(doc, "isa-encompass")["shares"]["CHILD_NOTIFICATION"].append("child.date_of_birth")
    new = parse_policy(doc)
    initial = policy_change_summary(None, policy)
    assert initial["change"] == "initial" and initial["policy_digest"] == policy.digest
    summary = policy_change_summary(policy, new)
    assert all(isinstance(v, (str, int)) for v in summary.values())
    assert (summary["previous_version"], summary["policy_version"], summary["newly_shared"]) == (4, 5, 1)
    assert summary["change"] == "changed"


# ---- deadlines ----------------------------------------------------------------------------------

def test_deliver_by_adds_a_fixed_deadline(policy):
    (share,) = [s for s in policy.routing("MARAC_REFERRAL", "shropshire")]
    assert share.deadline == "PT2H"
    sent = datetime(2026, 11, 20, 21, 14, tzinfo=timezone.utc)
    assert deliver_by(share, sent) == sent + timedelta(hours=2)


def _school_share(policy):
    (share,) = policy.routing("CHILD_NOTIFICATION", "worcestershire")
    assert share.deadline == "next_school_day"
    return share


@pytest.mark.parametrize("sent, expected", [
    (datetime(2026, 11, 20, 19, 30, tzinfo=LONDON), datetime(2026, 11, 23, 8, 0, tzinfo=LONDON)),  # Fri -> Mon
    (datetime(2026, 11, 22, 23, 59, tzinfo=LONDON), datetime(2026, 11, 23, 8, 0, tzinfo=LONDON)),  # Sun -> Mon
    (datetime(2026, 11, 23, 7, 0, tzinfo=LONDON), datetime(2026, 11, 24, 8, 0, tzinfo=LONDON)),   # Mon 07:00 -> Tue
    # 23:30 UTC on Fri 2026-07-03 is already Saturday in London (BST): next school day is Mon 6 July, 07:00 UTC.
    (datetime(2026, 7, 3, 23, 30, tzinfo=timezone.utc), datetime(2026, 7, 6, 7, 0, tzinfo=timezone.utc)),
])
def test_deliver_by_next_school_day(policy, sent, expected):
    result = deliver_by(_school_share(policy), sent)
    assert result == expected
    assert result.astimezone(LONDON).hour == 8


def test_deliver_by_refuses_naive_times(policy):
    with pytest.raises(ValueError, match="timezone-aware"):
        deliver_by(_school_share(policy), datetime(2026, 11, 20, 19, 30))


# ---- demo template ------------------------------------------------------------------------------

def _demo_keys(text: str) -> dict[tuple[str, str], tuple[str, str]]:
    keys = {}
    for owner, kind in template_placeholders(text):
        seed = hashlib.sha256(f"{owner}:{kind}".encode()).digest()
        public = bytes(SigningKey(seed).verify_key) if kind.startswith("signing") else bytes(PrivateKey(seed).public_key)
        keys[(owner, kind)] = (key_id_for(public), base64.b64encode(public).decode())
    return keys


@pytest.fixture(scope="module")
def demo() -> Policy:
    text = TEMPLATE.read_text()
    return parse_policy(yaml.safe_load(render_template(text, _demo_keys(text))))


def test_demo_template_needs_only_signing_and_exchange_keys_of_its_parties(demo):
    # The demo generates one key per placeholder with streams.crypto.keys.generate_key(owner, kind).
    needed = template_placeholders(TEMPLATE.read_text())
    assert {kind for _, kind in needed} == {"signing", "exchange"}
    parties = {demo.router.id} | {u.id for u in demo.units} | {a.id for a in demo.agencies}
    assert {owner for owner, _ in needed} == parties


def test_demo_template_renders_to_a_valid_west_mercia_policy(demo):
    assert {u.id for u in demo.units} == {"hau-worcestershire", "hau-shropshire", "hau-herefordshire"}
    assert {a for u in demo.units for a in u.areas} == set(AREAS)
    assert {a.kind for a in demo.agencies} >= {"health", "housing", "childrens_services", "education", "idva"}
    for area in AREAS:  # every area's events reach someone, and are published by exactly one unit
        assert demo.routing("MARAC_REFERRAL", area)
        assert len(demo.publishers("MARAC_REFERRAL", area)) == 1


def test_demo_follows_minimum_necessary(demo):
    school = [s for a in AREAS for s in demo.routing("CHILD_NOTIFICATION", a) if s.agency_kind == "education"]
    assert school and all(set(s.fields) <= {"child.name", "child.date_of_birth", "child_present", "police_reference",
                                            "incident_at", "notify_by", "school.urn"} for s in school)
    housing = [s for a in AREAS for s in demo.routing("PROTECTION_NOTICE_ISSUED", a) if s.agency_kind == "housing"]
    assert housing and all("protected_address" in s.fields for s in housing)
    health = [s for a in AREAS for t in EVENT_TYPES for s in demo.routing(t, a) if s.agency_kind == "health"]
    assert health and all("perpetrator" not in s.fields and "children" not in s.fields for s in health)


def test_render_template_names_every_missing_key():
    text = TEMPLATE.read_text()
    keys = _demo_keys(text)
    del keys[("hau-herefordshire", "signing")]
    with pytest.raises(KeyError, match="hau-herefordshire:signing"):
        render_template(text, keys)


def test_render_template_fills_key_and_key_id():
    text = 'public_key: "{{key:idva-wm:exchange}}"\nkey_id: "{{kid:idva-wm:exchange}}"\n'
    assert render_template(text, {("idva-wm", "exchange"): ("00aa", "QUJD")}) == 'public_key: "QUJD"\nkey_id: "00aa"\n'


# ---- diff property: reported paths cover exactly the newly shared data --------------------------

MARAC_PATHS = sorted(field_paths("MARAC_REFERRAL"))
MARAC_LEAVES = [p for p in MARAC_PATHS if not any(q.startswith(p + ".") for q in MARAC_PATHS)]


def _without_descendants(paths: set[str]) -> list[str]:
    return sorted(p for p in paths if not any(p.startswith(q + ".") for q in paths))


def _leaves(paths) -> set[str]:
    return {leaf for leaf in MARAC_LEAVES if any(leaf == p or leaf.startswith(p + ".") for p in paths)}


field_lists = st.sets(st.sampled_from(MARAC_PATHS), min_size=1, max_size=8).map(_without_descendants)


@settings(max_examples=150, deadline=None)
@given(before=field_lists, after=field_lists)
def test_diff_reports_exactly_the_leaves_gained_and_lost(before, after):
    def with_fields(fields):
        doc = base_doc()
        agreement(doc, "isa-health")["shares"]["MARAC_REFERRAL"] = fields
        return parse_policy(doc)

    old, new = with_fields(before), with_fields(after)
    forward, backward = diff(old, new), diff(new, old)
    gained = [f for (a, t, f, area) in forward.newly_shared if area == "worcestershire"]
    lost = [f for (a, t, f, area) in forward.no_longer_shared if area == "worcestershire"]
    assert _leaves(gained) == _leaves(after) - _leaves(before)
    assert _leaves(lost) == _leaves(before) - _leaves(after)
    assert forward.newly_shared == backward.no_longer_shared
    assert forward.no_longer_shared == backward.newly_shared


def test_every_legal_basis_code_has_a_human_name():
    from streams.policy import LEGAL_BASES, LEGAL_BASIS_LABELS, legal_basis_label

    assert set(LEGAL_BASIS_LABELS) == set(LEGAL_BASES)
    assert legal_basis_label("UK_GDPR_6_1_E_9_2_G_DPA_SCH1_18").startswith("UK GDPR Art. 6(1)(e) public task")
    assert legal_basis_label("RETIRED_BASIS_CODE") == "RETIRED_BASIS_CODE"  # a log outlives its policies
    assert legal_basis_label(None) == ""
