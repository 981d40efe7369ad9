"""How MASB's Kafka clients authenticate and encrypt: Kafka's own settings, from the environment
and/or a Kafka client properties file (docs/security.md, "Client settings").

    security = KafkaSecurity.from_env()      # MASB_KAFKA_CONFIG file, then MASB_KAFKA_* variables
    AIOKafkaProducer(bootstrap_servers=..., **security.aiokafka_options())
    faust.App(..., broker_credentials=security.faust_credentials())

Setting names are Kafka's (security.protocol, sasl.mechanism, ssl.endpoint.identification.algorithm)
or librdkafka's where the Java client has none (sasl.username, sasl.password, ssl.ca.location ...);
each has an environment variable: MASB_KAFKA_ + the name upper-cased with dots as underscores
(security.protocol -> MASB_KAFKA_SECURITY_PROTOCOL). A variable wins over the file.

Secrets (sasl.password, ssl.key.password) come from a file, the properties file or the
environment, never from a command line; they are kept out of repr(), logs and error messages.
"""

from __future__ import annotations

import os
import re
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from streams.errors import InvalidInput, why_unreadable
from streams.private_files import too_open

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
DEFAULT_MECHANISM = "SCRAM-SHA-512"
CONFIG_VARIABLE = "MASB_KAFKA_CONFIG"

# Accepted setting names -> the canonical one. Aliases let a librdkafka or Java client properties
# file be used as it is.
ALIASES = {
    "security.protocol": "security.protocol",
    "sasl.mechanism": "sasl.mechanism",
    "sasl.mechanisms": "sasl.mechanism",            # librdkafka
    "sasl.username": "sasl.username",
    "sasl.password": "sasl.password",
    "sasl.password.file": "sasl.password.file",
    "sasl.jaas.config": "sasl.jaas.config",          # Java: username="..." password="..."
    "ssl.cafile": "ssl.cafile",
    "ssl.ca.location": "ssl.cafile",                 # librdkafka
    "ssl.truststore.location": "ssl.cafile",         # Java, with ssl.truststore.type=PEM
    "ssl.truststore.type": "ssl.truststore.type",
    "ssl.certfile": "ssl.certfile",
    "ssl.certificate.location": "ssl.certfile",      # librdkafka
    "ssl.keyfile": "ssl.keyfile",
    "ssl.key.location": "ssl.keyfile",               # librdkafka
    "ssl.keystore.location": "ssl.keystore.location",  # Java, with ssl.keystore.type=PEM: key + chain
    "ssl.keystore.type": "ssl.keystore.type",
    "ssl.key.password": "ssl.key.password",
    "ssl.key.password.file": "ssl.key.password.file",
    "ssl.endpoint.identification.algorithm": "ssl.endpoint.identification.algorithm",
}
CANONICAL = sorted(set(ALIASES.values()))
SECRET_SETTINGS = {"sasl.password", "ssl.key.password", "sasl.jaas.config"}
# Settings that name a file: in a properties file, a relative path is relative to that file's folder.
PATH_SETTINGS = {"sasl.password.file", "ssl.cafile", "ssl.certfile", "ssl.keyfile", "ssl.keystore.location",
                 "ssl.key.password.file"}
# Settings for which an empty value means something (do not check the broker's host name); any
# other MASB_KAFKA_* variable set empty is refused, as `--bootstrap ''` is (docs/cli.md).
EMPTY_ALLOWED = {"ssl.endpoint.identification.algorithm"}


def variable(name: str) -> str:
    """The environment variable of a canonical setting: sasl.password.file -> MASB_KAFKA_SASL_PASSWORD_FILE."""
    return "MASB_KAFKA_" + name.upper().replace(".", "_")


class KafkaSettingsError(InvalidInput):
    """The Kafka client settings are incomplete or contradictory (exit 2). Names settings and files,
    never a secret."""


@dataclass(frozen=True)
class KafkaSecurity:
    """Resolved connection security of one client identity. Secrets are repr=False."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = field(default=None, repr=False)
    check_hostname: bool = True
    source: str = "defaults"  # where the settings came from, for messages

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "KafkaSecurity":
        """Settings from $MASB_KAFKA_CONFIG (a properties file), overridden by MASB_KAFKA_* variables."""
        environ = os.environ if environ is None else environ
        settings: dict[str, str] = {}
        sources = []
        for name in (CONFIG_VARIABLE, *(variable(n) for n in CANONICAL if n not in EMPTY_ALLOWED)):
            if name in environ and not environ[name].strip():
                raise KafkaSettingsError(f"{name} is set but empty: give a value, or unset it")
        config = environ.get(CONFIG_VARIABLE)
        if config:
            settings.update(read_properties(config))
            sources.append(f"{CONFIG_VARIABLE}={config}")
        from_vars = {name: environ[variable(name)] for name in CANONICAL if variable(name) in environ}
        if from_vars:
            sources.append("MASB_KAFKA_* variables")
        settings.update(from_vars)
        return cls.from_settings(settings, source=" and ".join(sources) or "defaults")

    @classmethod
    def from_settings(cls, settings: Mapping[str, str], source: str = "settings") -> "KafkaSecurity":
        """Settings given by Kafka name (aliases accepted); files named by *.file are read here."""
        s: dict[str, str] = {}
        for name, value in settings.items():
            canonical = ALIASES.get(name)
            if canonical is None:
                raise KafkaSettingsError(f"{source}: unknown Kafka client setting {name!r}",
                                         hint="supported: " + ", ".join(sorted(ALIASES)))
            s[canonical] = value.strip() if canonical not in SECRET_SETTINGS else value
        where = f"{source}: "
        protocol = s.get("security.protocol", "PLAINTEXT").upper()
        if protocol not in PROTOCOLS:
            raise KafkaSettingsError(f"{where}security.protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
        sasl = protocol.startswith("SASL_")
        tls = protocol.endswith("SSL")

        username, password = s.get("sasl.username"), s.get("sasl.password")
        if "sasl.jaas.config" in s:
            jaas_user, jaas_password = _parse_jaas(s["sasl.jaas.config"], where)
            username, password = username or jaas_user, password or jaas_password
        if s.get("sasl.password.file"):
            password = _read_secret(s["sasl.password.file"], "sasl.password.file", where, "a password file")
        mechanism = s.get("sasl.mechanism", "").upper() or None
        if sasl:
            mechanism = mechanism or DEFAULT_MECHANISM
            if mechanism not in MECHANISMS:
                raise KafkaSettingsError(f"{where}sasl.mechanism {mechanism!r} is not one of {', '.join(MECHANISMS)}")
            if not username:
                raise KafkaSettingsError(f"{where}security.protocol {protocol} needs sasl.username "
                                         f"({variable('sasl.username')})")
            if not password:
                raise KafkaSettingsError(f"{where}security.protocol {protocol} needs a password: "
                                         f"sasl.password.file ({variable('sasl.password.file')}) or "
                                         f"{variable('sasl.password')}")
        elif username or password or mechanism:
            raise KafkaSettingsError(f"{where}SASL settings are given but security.protocol is {protocol}",
                                     hint="set security.protocol=SASL_SSL (or SASL_PLAINTEXT)")

        cafile, certfile, keyfile = s.get("ssl.cafile"), s.get("ssl.certfile"), s.get("ssl.keyfile")
        for kind in ("truststore", "keystore"):
            if s.get(f"ssl.{kind}.type", "PEM").upper() != "PEM":
                raise KafkaSettingsError(f"{where}ssl.{kind}.type must be PEM (MASB reads PEM files, not JKS or PKCS12)")
        if s.get("ssl.keystore.location"):
            certfile = keyfile = s["ssl.keystore.location"]  # one PEM file: private key and certificate chain
        key_password = s.get("ssl.key.password")
        if s.get("ssl.key.password.file"):
            key_password = _read_secret(s["ssl.key.password.file"], "ssl.key.password.file", where, "a password file")
        if bool(certfile) != bool(keyfile):
            raise KafkaSettingsError(f"{where}ssl.certfile and ssl.keyfile must be given together (mutual TLS)")
        if not tls and (cafile or certfile):
            raise KafkaSettingsError(f"{where}TLS files are given but security.protocol is {protocol}",
                                     hint="set security.protocol=SSL or SASL_SSL")
        for name, path in (("ssl.cafile", cafile), ("ssl.certfile", certfile), ("ssl.keyfile", keyfile)):
            if path:
                _check_file(path, name, where, secret="a private key file" if name == "ssl.keyfile" else None)
        algorithm = s.get("ssl.endpoint.identification.algorithm", "https").lower()
        if algorithm not in ("https", ""):
            raise KafkaSettingsError(f"{where}ssl.endpoint.identification.algorithm must be https or empty")
        return cls(protocol, mechanism if sasl else None, username if sasl else None, password if sasl else None,
                   cafile, certfile, keyfile, key_password, algorithm == "https", source)

    # -- what clients need -------------------------------------------------------------------
    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.protocol.endswith("SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.uses_tls:
            return None
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ssl_cafile)
        except (ssl.SSLError, ValueError, OSError) as exc:
            why = why_unreadable(exc) if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) \
                else "holds no PEM certificate"
            raise KafkaSettingsError(f"{self.source}: ssl.cafile {self.ssl_cafile}: {why}") from None
        context.check_hostname = self.check_hostname
        if self.ssl_certfile:
            try:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile, password=self.ssl_key_password)
            except (ssl.SSLError, ValueError, OSError):
                raise KafkaSettingsError(f"{self.source}: {_why_no_cert_chain(self.ssl_certfile, self.ssl_keyfile)}") \
                    from None
        return context

    def aiokafka_options(self) -> dict:
        """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
        options: dict = {"security_protocol": self.protocol}
        if self.uses_tls:
            options["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            options.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                           sasl_plain_password=self.sasl_password)
        return options

    def faust_credentials(self):
        """faust's broker_credentials for these settings (None for PLAINTEXT)."""
        from faust.auth import SASLCredentials, SSLCredentials

        if self.uses_sasl:
            return SASLCredentials(username=self.sasl_username, password=self.sasl_password,
                                   mechanism=self.sasl_mechanism, ssl_context=self.ssl_context())
        if self.uses_tls:
            return SSLCredentials(self.ssl_context())
        return None

    @property
    def principal(self) -> str:
        """Who the broker is told this client is, for messages: User:<name>, the client certificate's
        subject, or User:ANONYMOUS."""
        if self.uses_sasl:
            return f"User:{self.sasl_username}"
        if self.ssl_certfile:
            subject = certificate_subject(self.ssl_certfile)
            return f"the client certificate {subject}" if subject else f"the client certificate {self.ssl_certfile}"
        return "User:ANONYMOUS"

    def describe(self) -> str:
        """One line for logs: protocol, mechanism, principal; never a secret."""
        parts = [self.protocol]
        if self.uses_sasl:
            parts.append(self.sasl_mechanism or "")
        parts.append(self.principal)
        return " ".join(p for p in parts if p)


def certificate_subject(path: str) -> str | None:
    """The subject of the first certificate in a PEM file, RFC 4514 (e.g. CN=masb-agency-x), or None."""
    try:
        from cryptography import x509

        data = Path(path).read_bytes()
        start = data.index(b"-----BEGIN CERTIFICATE-----")
        return x509.load_pem_x509_certificate(data[start:]).subject.rfc4514_string()
    except Exception:  # noqa: BLE001 - only for messages: any failure means "unknown"
        return None


def _check_file(path: str, name: str, where: str, secret: str | None = None) -> bytes:
    """The bytes of the file a setting names; KafkaSettingsError (exit 2) naming the setting and the
    file if it is missing, not a regular file or unreadable, or (``secret``: what it holds) if group
    or others may access it (streams.private_files)."""
    data, status = _read_regular(path, name, where)
    _refuse_if_open(path, name, where, status, secret)
    return data


def _read_regular(path: str, name: str, where: str) -> tuple[bytes, os.stat_result]:
    """(the bytes, the status) of a regular file a setting names; KafkaSettingsError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO must not hang the check
    except OSError as exc:
        raise KafkaSettingsError(f"{where}{name} {path}: {why_unreadable(exc)}") from None
    try:
        status = os.fstat(fd)  # the file checked is the file read
        if stat.S_ISDIR(status.st_mode):
            raise KafkaSettingsError(f"{where}{name} {path}: is a directory")
        if not stat.S_ISREG(status.st_mode):
            raise KafkaSettingsError(f"{where}{name} {path}: not a regular file")
        try:
            with os.fdopen(os.dup(fd), "rb") as handle:
                return handle.read(1024 * 1024), status
        except OSError as exc:
            raise KafkaSettingsError(f"{where}{name} {path}: {why_unreadable(exc)}") from None
    finally:
        os.close(fd)


def _refuse_if_open(path: str, name: str, where: str, status: os.stat_result, secret: str | None) -> None:
    refusal = secret and too_open(path, status.st_mode, secret, owner=status.st_uid)
    if refusal:
        raise KafkaSettingsError(f"{where}{name} {refusal}")


def _why_no_cert_chain(certfile: str, keyfile: str | None) -> str:
    """Which of the client certificate and key did not load, for the message."""
    if b"-----BEGIN CERTIFICATE-----" not in _check_file(certfile, "ssl.certfile", ""):
        return f"ssl.certfile {certfile}: holds no PEM certificate"
    if keyfile and b"PRIVATE KEY-----" not in _check_file(keyfile, "ssl.keyfile", ""):
        return f"ssl.keyfile {keyfile}: holds no PEM private key"
    return (f"ssl.certfile {certfile} / ssl.keyfile {keyfile} cannot be loaded: not a certificate and "
            "key that belong together, or a wrong ssl.key.password")


def _read_secret(path: str, name: str, where: str, what: str) -> str:
    try:
        text = _check_file(path, name, where, secret=what).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KafkaSettingsError(f"{where}{name} {path}: {why_unreadable(exc)}") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise KafkaSettingsError(f"{where}{name} {path}: is empty")
    return secret


_JAAS_VALUE = r'{}\s*=\s*"((?:[^"\\]|\\.)*)"'


def _parse_jaas(text: str, where: str) -> tuple[str | None, str | None]:
    """username and password of a Java sasl.jaas.config (Scram/PlainLoginModule required ...;)."""
    values = []
    for key in ("username", "password"):
        match = re.search(_JAAS_VALUE.format(key), text)
        values.append(re.sub(r"\\(.)", r"\1", match.group(1)) if match else None)
    if not all(values):
        raise KafkaSettingsError(f"{where}sasl.jaas.config must give username=\"...\" and password=\"...\"")
    return values[0], values[1]


# -- Java properties files -------------------------------------------------------------------
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            n = text[i + 1]
            if n == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2:i + 6]):
                out.append(chr(int(text[i + 2:i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(n, n))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def parse_properties(text: str) -> dict[str, str]:
    """A Java .properties document (key=value, key: value or key value; # and ! comments; a
    trailing backslash continues a line; backslash escapes)."""
    result: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].lstrip()
        i += 1
        if not line or line[0] in "#!":
            continue
        while _continues(line) and i < len(lines):
            line = line[:-1] + lines[i].lstrip()
            i += 1
        if _continues(line):
            line = line[:-1]
        match = re.match(r"((?:[^\\=:\s]|\\.)*)\s*[=:\s]\s*(.*)$", line, re.S)
        key, value = (match.group(1), match.group(2)) if match else (line, "")
        result[_unescape(key)] = _unescape(value)
    return result


def _continues(line: str) -> bool:
    trailing = len(line) - len(line.rstrip("\\"))
    return trailing % 2 == 1


def read_properties(path: str | os.PathLike) -> dict[str, str]:
    """The settings of a client properties file, with every file path in it made relative to the
    file's own folder (an absolute path stays as it is). A file that holds a secret (sasl.password,
    ssl.key.password, sasl.jaas.config) must not be accessible by group or others."""
    raw, status = _read_regular(str(path), CONFIG_VARIABLE, "")
    try:
        settings = parse_properties(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise KafkaSettingsError(f"{CONFIG_VARIABLE} {path}: {why_unreadable(exc)}") from None
    if any(ALIASES.get(name) in SECRET_SETTINGS and value for name, value in settings.items()):
        _refuse_if_open(str(path), CONFIG_VARIABLE, "", status, "a properties file that holds a password")
    folder = Path(path).parent
    return {name: str(folder / value.strip()) if ALIASES.get(name) in PATH_SETTINGS and value.strip() else value
            for name, value in settings.items()}
