"""DKIM keys and signatures (RFC 6376) for the domains mail is sent from.

``raymail domain add`` makes one RSA key per domain under
``<data_dir>/dkim/<domain>.<selector>.pem`` and prints the TXT record to publish;
the gateway signs outbound mail of a domain that has a key.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

DEFAULT_SELECTOR = "raymail"
_SIGNED_HEADERS = [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
                   b"list-unsubscribe"]


@dataclass(frozen=True)
class DomainKey:
    domain: str
    selector: str
    private_pem: bytes

    def txt_record(self) -> tuple[str, str]:
        """(name, value) of the TXT record that publishes the public key."""
        key = serialization.load_pem_private_key(self.private_pem, password=None)
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"{self.selector}._domainkey.{self.domain}", f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def key_dir(data_path: Path) -> Path:
    return Path(data_path) / "dkim"


def create_key(data_path: Path, domain: str, selector: str = DEFAULT_SELECTOR, bits: int = 2048) -> DomainKey:
    """The domain's key, made (mode 0600) if it does not exist yet."""
    existing = load_key(data_path, domain)
    if existing is not None:
        return existing
    pem = rsa.generate_private_key(public_exponent=65537, key_size=bits).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    d = key_dir(data_path)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{domain}.{selector}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.replace(tmp, d / f"{domain}.{selector}.pem")
    return DomainKey(domain, selector, pem)


def load_key(data_path: Path, domain: str) -> DomainKey | None:
    d = key_dir(data_path)
    if not d.is_dir():
        return None
    for p in sorted(d.glob(f"{domain.lower()}.*.pem")):
        selector = p.name[len(domain) + 1 : -len(".pem")]
        if selector and "." not in selector:
            return DomainKey(domain.lower(), selector, p.read_bytes())
    return None


def signature_header(raw: bytes, key: DomainKey) -> str:
    """The ``DKIM-Signature: ...`` header line (CRLF-terminated) for ``raw``."""
    sig = dkim.sign(raw, key.selector.encode(), key.domain.encode(), key.private_pem,
                    include_headers=_SIGNED_HEADERS, canonicalize=(b"relaxed", b"relaxed"))
    return sig.decode("ascii").replace("\r\n", "\n").replace("\n", "\r\n")
