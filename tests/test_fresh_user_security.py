"""Fresh-user findings about Kafka client security settings (docs/security.md): files that do not
load, paths in a properties file, secrets in files others can read, empty variables, and the ACL
table against `masb acl plan`. No broker needed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from deploy.tls import CertificateAuthority
from streams.kafka_security import KafkaSecurity, KafkaSettingsError

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "s3cret-Pa55word-never-shown"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = CertificateAuthority.create(tmp_path_factory.mktemp("pki"))
    return ca, ca.issue("masb-agency-x")


def masb(*args, env, cwd=None):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MASB_")}
    clean["MASB_STATE_DIR"] = str(ROOT / ".pytest_cache" / "fu6-state")
    return subprocess.run([sys.executable, "-m", "agents", *args, "--policy", "tests/fixtures/policy/valid.yaml"], capture_output=True, text=True,
                          env={**clean, **env}, cwd=cwd or ROOT, timeout=60)


def private(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


# -- 1. files that do not load --------------------------------------------------------------------
def test_a_ca_file_that_is_no_certificate_is_exit_2_naming_it(tmp_path):
    bad = tmp_path / "g.pem"
    bad.write_text("x\n")
    result = masb("audit", "verify", env={"MASB_KAFKA_SSL_CAFILE": str(bad), "MASB_KAFKA_SECURITY_PROTOCOL": "SSL",
                                           "MASB_BOOTSTRAP": "127.0.0.1:9"})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"ssl.cafile {bad}: holds no PEM certificate" in result.stderr


@pytest.mark.parametrize("kind", ["directory", "unreadable", "missing"])
def test_a_ca_file_that_is_a_directory_unreadable_or_missing_is_refused_naming_it(tmp_path, kind):
    path = tmp_path / "ca.pem"
    if kind == "directory":
        path.mkdir()
    elif kind == "unreadable":
        path.write_text("x")
        path.chmod(0)
        if os.access(path, os.R_OK):
            pytest.skip("running as root: every file is readable")
    with pytest.raises(KafkaSettingsError, match=rf"ssl.cafile {re.escape(str(path))}: "
                       r"(is a directory|permission denied|not found)$"):
        KafkaSecurity.from_settings({"security.protocol": "SSL", "ssl.cafile": str(path)}).ssl_context()


def test_a_client_certificate_or_key_that_does_not_load_is_named(tmp_path, pki):
    ca, issued = pki
    junk = tmp_path / "junk.pem"
    junk.write_text("x\n")
    junk.chmod(0o600)
    for certfile, keyfile, named in ((junk, issued.key, f"ssl.certfile {junk}: holds no PEM certificate"),
                                     (issued.cert, junk, f"ssl.keyfile {junk}: holds no PEM private key")):
        security = KafkaSecurity.from_settings({"security.protocol": "SSL", "ssl.cafile": str(ca.cert_path),
                                                "ssl.certfile": str(certfile), "ssl.keyfile": str(keyfile)})
        with pytest.raises(KafkaSettingsError) as refused:
            security.ssl_context()
        assert named in str(refused.value)


# -- 2. paths in a properties file ----------------------------------------------------------------
def test_paths_in_a_properties_file_are_relative_to_its_folder(tmp_path, pki):
    ca, _ = pki
    folder = tmp_path / "demo" / "clients"
    folder.mkdir(parents=True)
    private(folder / "router.password", PASSWORD + "\n")
    (folder / "ca.pem").write_bytes(ca.cert_path.read_bytes())
    props = folder / "router.properties"
    private(props, "security.protocol=SASL_SSL\nsasl.username=masb-router\n"
                   "sasl.password.file=router.password\nssl.cafile=ca.pem\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        security = KafkaSecurity.from_env({"MASB_KAFKA_CONFIG": str(props)})
    finally:
        os.chdir(cwd)
    assert security.sasl_password == PASSWORD and security.ssl_cafile == str(folder / "ca.pem")
    security.ssl_context()


def test_the_demo_writes_absolute_paths_in_its_client_files(tmp_path, monkeypatch):
    from deploy.brokers import SecuredKafkaBroker

    monkeypatch.chdir(tmp_path)
    broker = SecuredKafkaBroker(["masb-router"], Path(".masb-demo/kafka"))
    props = broker.client_properties("masb-router", Path(".masb-demo/clients"))
    files = {k: v for k, v in (line.split("=", 1) for line in props.read_text().splitlines() if "=" in line)
             if k.endswith(".file") or k == "ssl.cafile"}
    assert files and all(Path(v).is_absolute() and Path(v).is_file() for v in files.values()), files


# -- 3. secrets in files others can read ----------------------------------------------------------
def test_a_password_file_others_can_read_is_refused(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD)
    secret.chmod(0o644)
    settings = {"security.protocol": "SASL_SSL", "sasl.username": "u", "sasl.password.file": str(secret)}
    with pytest.raises(KafkaSettingsError, match=r"sasl.password.file .*: permissions 0644 are too open; .* must "
                                                 r"not be accessible by group or others \(run: chmod 600 ") as refused:
        KafkaSecurity.from_settings(settings)
    assert PASSWORD not in str(refused.value)
    secret.chmod(0o600)
    assert KafkaSecurity.from_settings(settings).sasl_password == PASSWORD


def test_a_properties_file_with_a_password_others_can_read_is_exit_2(tmp_path):
    props = tmp_path / "client.properties"
    props.write_text(f"security.protocol=SASL_PLAINTEXT\nsasl.username=u\nsasl.password={PASSWORD}\n")
    props.chmod(0o644)
    result = masb("audit", "verify", env={"MASB_KAFKA_CONFIG": str(props), "MASB_BOOTSTRAP": "127.0.0.1:9"})
    assert result.returncode == 2 and "permissions 0644 are too open" in result.stderr, result.stderr
    assert str(props) in result.stderr and PASSWORD not in result.stderr
    # without a password in it, a properties file is no secret
    props.write_text("security.protocol=PLAINTEXT\n")
    assert KafkaSecurity.from_env({"MASB_KAFKA_CONFIG": str(props)}).protocol == "PLAINTEXT"


def test_a_private_key_file_others_can_read_is_refused(tmp_path, pki):
    ca, issued = pki
    key = tmp_path / "client.key"
    key.write_bytes(issued.key.read_bytes())
    key.chmod(0o640)
    with pytest.raises(KafkaSettingsError, match=r"ssl.keyfile .*: permissions 0640 are too open"):
        KafkaSecurity.from_settings({"security.protocol": "SSL", "ssl.cafile": str(ca.cert_path),
                                     "ssl.certfile": str(issued.cert), "ssl.keyfile": str(key)})


def test_the_rule_is_the_one_for_masb_key_files():
    from streams.private_files import too_open

    assert too_open("k", 0o100600) is None and too_open("k", 0o100400) is None
    assert too_open("k", 0o100644) == ("k: permissions 0644 are too open; a private key file must not be "
                                      "accessible by group or others (run: chmod 600 k)")
    # a Kubernetes Secret volume with fsGroup: root-owned, group-readable, nothing for others
    if os.geteuid() != 0:
        assert too_open("k", 0o100440, owner=0) is None
    assert too_open("k", 0o100444, owner=0) and too_open("k", 0o100440, owner=os.geteuid() or 1000)


# -- 4. a variable set empty ----------------------------------------------------------------------
def test_an_empty_variable_is_refused_not_replaced_by_the_file(tmp_path, pki):
    ca, _ = pki
    props = tmp_path / "client.properties"
    props.write_text(f"security.protocol=SSL\nssl.cafile={ca.cert_path}\n")
    with pytest.raises(KafkaSettingsError, match="^MASB_KAFKA_SSL_CAFILE is set but empty"):
        KafkaSecurity.from_env({"MASB_KAFKA_CONFIG": str(props), "MASB_KAFKA_SSL_CAFILE": ""})
    result = masb("audit", "verify", env={"MASB_KAFKA_CONFIG": "", "MASB_BOOTSTRAP": "127.0.0.1:9"})
    assert result.returncode == 2 and "MASB_KAFKA_CONFIG is set but empty" in result.stderr, result.stderr
    # where empty means something, it is taken: do not check the broker's host name
    security = KafkaSecurity.from_env({"MASB_KAFKA_CONFIG": str(props),
                                       "MASB_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": ""})
    assert security.check_hostname is False


# -- 5. the ACL table is what `acl plan` grants ---------------------------------------------------
def _doc_rows() -> dict[tuple[str, str, str], set[str]]:
    text = (ROOT / "docs" / "security.md").read_text()
    table = text.split("<!-- acl-plan-table", 1)[1].split("\n\n", 1)[0]
    rows: dict[tuple[str, str, str], set[str]] = {}
    principal = None
    for line in table.splitlines()[3:]:
        who, may, on, why = [c.strip() for c in line.strip("|").split("|")]
        principal = who.strip("`") or principal
        kind, name = re.fullmatch(r"(topic|group|transactional id) `([^`]+)`", on).groups()
        name = re.sub(r"^P ", "", name).replace("W", "masb-router", 1) if name.startswith(("P ", "W")) else name
        assert why, line
        rows[(principal, kind, name)] = set(may.split(", "))
    return rows


def test_the_acl_table_in_docs_is_exactly_the_plan(deployment):
    from streams.acl import plan
    from streams.topics import Topics

    kinds = {"TOPIC": "topic", "GROUP": "group", "TRANSACTIONAL_ID": "transactional id"}
    planned: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for binding in plan(deployment.policy, Topics("")):
        principal, name = binding.principal, binding.resource_name
        for unit in deployment.policy.units:
            principal = principal.replace(f"unit-{unit.id}", "unit-<id>")
            name = re.sub(rf"^unit\.{re.escape(unit.id)}$", "unit.<id>", name)
        for agency in deployment.policy.agencies:
            principal = principal.replace(f"agency-{agency.id}", "agency-<id>")
            name = re.sub(rf"^partner\.{re.escape(agency.id)}$", "partner.<id>", name)
        assert binding.permission == "ALLOW" and binding.pattern_type == "LITERAL"
        planned[(principal, kinds[binding.resource_type], name)].add(binding.operation)
    assert _doc_rows() == dict(planned)


# -- 6. docs/operations.md: keys revoke ---------------------------------------------------------------
def test_operations_doc_gives_keys_revoke_exit_2_for_an_unknown_party_or_key():
    text = " ".join((ROOT / "docs" / "operations.md").read_text().split())
    assert "1 unknown party or key id" not in text
    assert "2 an unknown party or key id" in text
