"""A throwaway self-signed certificate for the TLS tests of the gRPC services."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509  # the `test` extra's: a TLS test never skips for want of it
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from moeplane.workers.grpc_security import TLSConfig


def self_signed(tmp: Path, server_name: str) -> TLSConfig:
    """An EC key and a one-hour CA certificate for `server_name` in `tmp`, used as the server's
    certificate and the client's root."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(server_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return TLSConfig(tmp / "cert.pem", tmp / "key.pem", tmp / "cert.pem", server_name)
