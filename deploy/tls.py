"""A small certificate authority for test and demo brokers: a CA, a broker certificate for
127.0.0.1/localhost and client certificates, as PEM files (made with the `cryptography` package).

    ca = CertificateAuthority.create(directory)
    broker = ca.issue("kafka-broker", server=True)          # -> Issued(cert, key) paths
    client = ca.issue("masb-agency-x", key_password=b"...")  # client key encrypted under a password

Keys are ECDSA P-256; certificates are valid for 30 days from an hour ago. Private key files are
written 0600. Real deployments take their certificates from the organisation's own PKI (see
docs/security.md); this module exists so that tests and `masb demo --secure` need nothing installed.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=30)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, as PEM files; ``bundle`` is key + certificate in one file
    (Kafka's PEM keystore format)."""

    name: str
    cert: Path
    key: Path
    bundle: Path


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class CertificateAuthority:
    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.directory = directory
        self.cert = cert
        self.key = key
        self.cert_path = directory / "ca.pem"

    @classmethod
    def create(cls, directory: str | os.PathLike, name: str = "masb-test-ca") -> "CertificateAuthority":
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256())
        )
        ca = cls(directory, cert, key)
        ca.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return ca

    def issue(self, common_name: str, *, server: bool = False, key_password: bytes | None = None) -> Issued:
        """A certificate for ``common_name`` signed by this CA: a server certificate for 127.0.0.1 and
        localhost (also usable as a client: the broker talks to itself), or a client certificate.
        ``key_password`` encrypts the private key file (PKCS#8, best available encryption)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        encryption = (serialization.BestAvailableEncryption(key_password) if key_password
                      else serialization.NoEncryption())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        issued = Issued(common_name, self.directory / f"{common_name}.crt", self.directory / f"{common_name}.key",
                        self.directory / f"{common_name}.pem")
        issued.cert.write_bytes(cert_pem)
        _write_private(issued.key, key_pem)
        _write_private(issued.bundle, key_pem + cert_pem)
        return issued
