"""Kafka client settings (docs/security.md, "Client settings"): Kafka's names, from a properties
file and/or MASB_KAFKA_* variables; secrets from files or the environment and never shown."""

from __future__ import annotations

import ssl
import subprocess
import sys

import pytest
from aiokafka.errors import GroupAuthorizationFailedError, SaslAuthenticationFailed, TopicAuthorizationFailedError

from deploy.tls import CertificateAuthority
from streams.errors import AccessDenied, BrokerUnavailable
from streams.kafka import broker_error
from streams.kafka_security import KafkaSecurity, KafkaSettingsError, parse_properties, variable

PASSWORD = "s3cret-Pa55word-never-shown"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = CertificateAuthority.create(tmp_path_factory.mktemp("pki"))
    return ca, ca.issue("masb-agency-x", key_password=b"key-pass"), ca.issue("masb-unit-y")


def secret(tmp_path, text: str = PASSWORD, name: str = "password"):
    path = tmp_path / name
    path.write_text(text + "\n")
    path.chmod(0o600)  # a secret file others can read is refused (docs/security.md)
    return str(path)


def test_nothing_set_means_plaintext():
    security = KafkaSecurity.from_env({})
    assert security.aiokafka_options() == {"security_protocol": "PLAINTEXT"}
    assert security.faust_credentials() is None and security.principal == "User:ANONYMOUS"


def test_variables_follow_kafka_names():
    assert variable("security.protocol") == "MASB_KAFKA_SECURITY_PROTOCOL"
    assert variable("sasl.password.file") == "MASB_KAFKA_SASL_PASSWORD_FILE"
    assert variable("ssl.key.password.file") == "MASB_KAFKA_SSL_KEY_PASSWORD_FILE"


def test_sasl_ssl_from_variables_with_the_password_from_a_file(tmp_path, pki):
    ca, _, _ = pki
    security = KafkaSecurity.from_env({
        "MASB_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "MASB_KAFKA_SASL_USERNAME": "masb-router",
        "MASB_KAFKA_SASL_PASSWORD_FILE": secret(tmp_path), "MASB_KAFKA_SSL_CAFILE": str(ca.cert_path)})
    options = security.aiokafka_options()
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("masb-router", PASSWORD)
    assert isinstance(options["ssl_context"], ssl.SSLContext) and options["ssl_context"].check_hostname
    assert security.principal == "User:masb-router"
    assert PASSWORD not in repr(security) and PASSWORD not in security.describe()
    credentials = security.faust_credentials()
    assert (credentials.protocol.value, credentials.mechanism.value, credentials.username) == (
        "SASL_SSL", "SCRAM-SHA-512", "masb-router")
    assert PASSWORD not in repr(credentials)


def test_a_java_client_properties_file_works_as_it_is_and_variables_win(tmp_path, pki):
    ca, _, _ = pki
    props = tmp_path / "client.properties"
    props.write_text(
        "# a Java client's file\n"
        "security.protocol = SASL_SSL\n"
        "sasl.mechanism: SCRAM-SHA-256\n"
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \\\n"
        f'    username="masb-auditor" password="{PASSWORD}";\n'
        "ssl.truststore.type=PEM\n"
        f"ssl.truststore.location={ca.cert_path}\n"
        "ssl.endpoint.identification.algorithm=\n")
    props.chmod(0o600)  # it holds a password
    security = KafkaSecurity.from_env({"MASB_KAFKA_CONFIG": str(props)})
    assert (security.sasl_mechanism, security.sasl_username, security.sasl_password) == (
        "SCRAM-SHA-256", "masb-auditor", PASSWORD)
    assert security.ssl_cafile == str(ca.cert_path) and not security.check_hostname
    overridden = KafkaSecurity.from_env({"MASB_KAFKA_CONFIG": str(props), "MASB_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"})
    assert overridden.sasl_mechanism == "SCRAM-SHA-512"


def test_mutual_tls_with_an_encrypted_key_and_its_password_in_a_file(tmp_path, pki):
    ca, agency, _ = pki
    security = KafkaSecurity.from_settings({
        "security.protocol": "SSL", "ssl.ca.location": str(ca.cert_path), "ssl.certificate.location": str(agency.cert),
        "ssl.key.location": str(agency.key), "ssl.key.password.file": secret(tmp_path, "key-pass")})
    assert isinstance(security.ssl_context(), ssl.SSLContext)
    assert security.principal == "the client certificate CN=masb-agency-x"
    assert security.faust_credentials().protocol.value == "SSL"
    wrong = KafkaSecurity.from_settings({
        "security.protocol": "SSL", "ssl.cafile": str(ca.cert_path), "ssl.certfile": str(agency.cert),
        "ssl.keyfile": str(agency.key), "ssl.key.password": PASSWORD})
    with pytest.raises(KafkaSettingsError, match="cannot be loaded") as refused:
        wrong.ssl_context()
    assert PASSWORD not in str(refused.value)


def test_a_pem_keystore_holds_key_and_chain_in_one_file(pki):
    ca, _, unit = pki
    security = KafkaSecurity.from_settings({"security.protocol": "SSL", "ssl.cafile": str(ca.cert_path),
                                            "ssl.keystore.type": "PEM", "ssl.keystore.location": str(unit.bundle)})
    assert security.ssl_certfile == security.ssl_keyfile == str(unit.bundle)
    assert isinstance(security.ssl_context(), ssl.SSLContext)


@pytest.mark.parametrize("settings, message", [
    ({"security.protocol": "SASL_SSL"}, "needs sasl.username"),
    ({"security.protocol": "SASL_SSL", "sasl.username": "u"}, "needs a password"),
    ({"security.protocol": "SASL_SSL", "sasl.username": "u", "sasl.password": PASSWORD, "sasl.mechanism": "GSSAPI"},
     "sasl.mechanism 'GSSAPI'"),
    ({"security.protocol": "TLS"}, "security.protocol 'TLS'"),
    ({"sasl.username": "u", "sasl.password": PASSWORD}, "SASL settings are given but security.protocol is PLAINTEXT"),
    ({"security.protocol": "SASL_PLAINTEXT", "sasl.username": "u", "sasl.password": PASSWORD, "ssl.cafile": "/x"},
     "TLS files are given"),
    ({"security.protocol": "SSL", "ssl.certfile": "/x"}, "must be given together"),
    ({"security.protocol": "SSL", "ssl.cafile": "/no/such/ca.pem"}, "ssl.cafile /no/such/ca.pem: not found"),
    ({"security.protocol": "SSL", "ssl.truststore.type": "JKS"}, "must be PEM"),
    ({"security.protocol": "SASL_SSL", "sasl.username": "u", "sasl.password.file": "/no/such/file"},
     "sasl.password.file /no/such/file: not found"),
    ({"sasl.jaas.config": f'x required username="u" pass="{PASSWORD}";', "security.protocol": "SASL_SSL"},
     "sasl.jaas.config must give"),
    ({"security.protokol": "SSL"}, "unknown Kafka client setting 'security.protokol'"),
])
def test_incomplete_or_contradictory_settings_are_refused_naming_the_setting(settings, message):
    with pytest.raises(KafkaSettingsError) as refused:
        KafkaSecurity.from_settings(settings)
    assert message in str(refused.value)
    assert PASSWORD not in str(refused.value) and refused.value.exit_code == 2


def test_properties_syntax():
    text = ("! comment\n# comment\nkey1=value1\n  key2 : value two \nkey3 value3\n"
            "long=first \\\n   second\nescaped\\=key=a\\tb\\u0041\nempty=\n")
    assert parse_properties(text) == {"key1": "value1", "key2": "value two ", "key3": "value3",
                                      "long": "first second", "escaped=key": "a\tbA", "empty": ""}


def test_broker_refusals_name_the_principal_the_operation_and_the_resource(tmp_path):
    security = KafkaSecurity.from_settings({"security.protocol": "SASL_PLAINTEXT", "sasl.username": "masb-unit-x",
                                            "sasl.password": PASSWORD})
    denied = broker_error(TopicAuthorizationFailedError("t.case-events"), "k:9093", security=security,
                          operation="WRITE", resource="topic t.case-events")
    assert isinstance(denied, AccessDenied) and denied.exit_code == 4
    assert str(denied) == ("Kafka at k:9093 denied User:masb-unit-x WRITE on topic t.case-events "
                           "(TopicAuthorizationFailedError)")
    group = broker_error(GroupAuthorizationFailedError("partner.x"), "k:9093", security=security)
    assert "denied User:masb-unit-x access to group partner.x" in str(group)
    login = broker_error(SaslAuthenticationFailed(), "k:9093", security=security)
    assert "refused to authenticate User:masb-unit-x" in str(login) and PASSWORD not in login.diagnostics()
    untrusted = broker_error(ssl.SSLCertVerificationError(1, "certificate verify failed"), "k:9093", security=security)
    assert isinstance(untrusted, AccessDenied) and "not trusted" in str(untrusted)
    dropped = broker_error(ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), "k:9093", security=security)
    assert isinstance(dropped, BrokerUnavailable)


def test_a_command_with_incomplete_settings_exits_2_in_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "MASB_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "MASB_KAFKA_SASL_USERNAME": "masb-x",
           "MASB_STATE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "agents", "audit", "verify", "--policy",
                             "tests/fixtures/policy/valid.yaml", "--bootstrap", "127.0.0.1:1"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "MASB_KAFKA_* variables: security.protocol SASL_SSL needs a password" in result.stderr.splitlines()[0]
