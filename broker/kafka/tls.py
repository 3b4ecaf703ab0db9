"""A development certificate authority and broker certificate, for TLS on the embedded broker.

Production clusters get certificates from the partnership's PKI; on a developer's machine and in
CI, ``cbx kafka start`` makes a throw-away CA and a broker certificate for 127.0.0.1/localhost with
``cryptography``, so the SASL_SSL listener runs exactly as a production one would.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.files import write_private


@dataclass(frozen=True)
class DevPki:
    ca_file: Path  # the CA certificate clients trust
    keystore_file: Path  # the broker's private key and certificate chain, PEM


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cbx development"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def ensure_dev_pki(folder: Path, days: int = 825) -> DevPki:
    """Create (once) a CA and a broker certificate for 127.0.0.1 and localhost under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    pki = DevPki(folder / "ca.pem", folder / "broker-keystore.pem")
    if pki.ca_file.exists() and pki.keystore_file.exists():
        return pki
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("cbx development CA"))
        .issuer_name(_name("cbx development CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(pki.keystore_file, key_pem + cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    write_private(pki.ca_file, ca_cert.public_bytes(pem))
    return pki
