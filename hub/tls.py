"""TLS material for the hub's gRPC port: a substation CA and a server certificate.

`hub init` creates both so that TLS is on from the first start; gateways pin
the CA certificate. (Gateway client certificates and enrollment come with the
substation CA work on the roadmap.)
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _new_ca(common_name: str, now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ca_key, ca_cert


def _issue(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str, names: list[str],
    usages: list[x509.ObjectIdentifier], now: datetime.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for n in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def create_tls_files(directory: Path, names: list[str], common_name: str) -> tuple[Path, Path, Path]:
    """Create ca.pem/ca.key and hub.pem/hub.key in `directory`; return (ca, cert, key) paths.

    `names` are DNS names or IP addresses the hub is reached by.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key, ca_cert = _new_ca(f"{common_name} substation CA", now)
    key, cert = _issue(ca_key, ca_cert, common_name, names, [ExtendedKeyUsageOID.SERVER_AUTH], now)
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "hub.pem", directory / "hub.key"
    _write_private(directory / "ca.key", ca_key)
    _write_private(key_path, key)
    _write_cert(ca_path, ca_cert)
    _write_cert(cert_path, cert)
    return ca_path, cert_path, key_path


def create_replica_tls(directory: Path, replicas: int, names: list[str], chain_id: str) -> None:
    """A CA for one substation's replicas and, per replica i, replica-i.pem/.key usable as both
    server and client certificate: replicas talk mutual TLS, each proving who it is."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key, ca_cert = _new_ca(f"{chain_id} replicas CA", now)
    _write_private(directory / "ca.key", ca_key)
    _write_cert(directory / "ca.pem", ca_cert)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    for i in range(replicas):
        key, cert = _issue(ca_key, ca_cert, f"replica-{i}", names, usages, now)
        _write_private(directory / f"replica-{i}.key", key)
        _write_cert(directory / f"replica-{i}.pem", cert)
