"""The TLS certificate for STARTTLS: from configuration, or self-signed on first start."""

from __future__ import annotations

import datetime
import os
import ssl
from pathlib import Path


def ensure_certificate(data_dir: Path, hostname: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``hostname`` under ``data_dir/tls`` (made once)."""
    tls = Path(data_dir) / "tls"
    cert, key = tls / "cert.pem", tls / "key.pem"
    if cert.exists() and key.exists():
        return cert, key
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    tls.mkdir(parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(private, hashes.SHA256())
    )
    suffix = f".{os.getpid()}.tmp"  # concurrent makers never share a temporary file
    tmp_key, tmp_cert = key.with_suffix(suffix), cert.with_suffix(suffix)
    tmp_key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    tmp_key.chmod(0o600)
    tmp_cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    # The key first: a reader that sees the new certificate also sees its key.
    tmp_key.replace(key)
    tmp_cert.replace(cert)
    return cert, key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx
