"""Test certificates made at test time with cryptography's x509 builder: a CA, a server certificate
(names: localhost, 127.0.0.1, 10.200.0.1 - the rig's gateway), a client certificate, and a rogue CA with
its own client certificate. EC P-256 keys: fast to make, even in the test VM."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAMES = ("localhost", "127.0.0.1", "10.200.0.1")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool, sans=(), usage=None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
    if sans:
        entries = []
        for s in sans:
            try:
                entries.append(x509.IPAddress(ipaddress.ip_address(s)))
            except ValueError:
                entries.append(x509.DNSName(s))
        builder = builder.add_extension(x509.SubjectAlternativeName(entries), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate | None = None, key=None) -> str:
    data = b""
    if cert is not None:
        data += cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    path.write_bytes(data)
    return str(path)


def make_pki(directory: Path) -> dict[str, str]:
    """Write the PEM files into `directory`; returns {role: path}: ca, server_cert, server_key, client_cert,
    client_key, rogue_ca, rogue_cert, rogue_key."""
    directory.mkdir(parents=True, exist_ok=True)
    new_key = lambda: ec.generate_private_key(ec.SECP256R1())  # noqa: E731
    ca_key, rogue_ca_key, server_key, client_key, rogue_key = (new_key() for _ in range(5))
    ca = _cert("canbridge test CA", ca_key, "canbridge test CA", ca_key, ca=True)
    rogue_ca = _cert("rogue CA", rogue_ca_key, "rogue CA", rogue_ca_key, ca=True)
    server = _cert("canbridge server", server_key, "canbridge test CA", ca_key, ca=False, sans=SERVER_NAMES,
                   usage=ExtendedKeyUsageOID.SERVER_AUTH)
    client = _cert("canbridge client", client_key, "canbridge test CA", ca_key, ca=False,
                   usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    rogue = _cert("canbridge client", rogue_key, "rogue CA", rogue_ca_key, ca=False,
                  usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return {
        "ca": _write(directory / "ca.pem", ca),
        "server_cert": _write(directory / "server.pem", server),
        "server_key": _write(directory / "server.key", key=server_key),
        "client_cert": _write(directory / "client.pem", client),
        "client_key": _write(directory / "client.key", key=client_key),
        "rogue_ca": _write(directory / "rogue-ca.pem", rogue_ca),
        "rogue_cert": _write(directory / "rogue.pem", rogue),
        "rogue_key": _write(directory / "rogue.key", key=rogue_key),
    }
