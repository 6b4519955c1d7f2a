"""A real authoritative DNS server for tests: NSD (Debian package ``nsd``) on
loopback, serving the ``test.`` zone with the sender domains the SPF, DKIM and
DMARC tests need. One process per instance, its own config, zone, pid and state
files in a temporary directory; stopped by ``stop()``.

Sender domains in the zone (every other name under ``test.`` is NXDOMAIN):

==================  =====================================  ===============  =============
domain              SPF                                    DKIM key         DMARC
==================  =====================================  ===============  =============
sender.test         ``ip4:127.0.0.1 -all``                 ``sel``          p=reject
softfail.test       ``ip4:192.0.2.1 ~all``                 -                -
spffail.test        ``ip4:192.0.2.1 -all``                 -                -
nospf.test          -                                      -                -
reject.test         ``ip4:192.0.2.1 -all``                 -                p=reject
quarantine.test     ``ip4:192.0.2.1 -all``                 -                p=quarantine
dkimonly.test       ``ip4:192.0.2.1 -all``                 ``sel``          p=reject
viamx.test          ``mx include:sender.test -all``        -                p=none
broken.test         two SPF records (permerror)            -                p=bogus
==================  =====================================  ===============  =============
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import dkim
import dns.exception
import dns.message
import dns.query
import dns.rcode
import procs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

NSD = shutil.which("nsd") or "/usr/sbin/nsd"
SELECTOR = "sel"
deployment_port: int | None = None  # the session server's port, for test deployments' [dns]


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (NSD listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free UDP+TCP port on 127.0.0.1")


def _txt(value: str) -> str:
    """A TXT rdata: strings of at most 255 characters (RFC 1035 3.3.14), quoted."""
    chunks = [value[i:i + 255] for i in range(0, len(value), 255)] or [""]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


class DkimKey:
    """An RSA key made at start; ``txt`` is its public-key record."""

    def __init__(self, bits: int = 2048) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        self.pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        self.txt = f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"

    def sign(self, message: bytes, domain: str, selector: str = SELECTOR) -> bytes:
        """``message`` with a DKIM-Signature header in front (relaxed/relaxed)."""
        sig = dkim.sign(message, selector.encode(), domain.encode(), self.pem,
                        canonicalize=(b"relaxed", b"relaxed"),
                        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
        return sig + message


def sender_zone(key: DkimKey) -> str:
    """The ``test.`` zone described in the module docstring."""
    records = [
        ("@", "SOA", "ns.test. hostmaster.test. 1 3600 600 86400 60"),
        ("@", "NS", "ns.test."),
        ("ns", "A", "127.0.0.1"),
        ("sender", "A", "127.0.0.1"),
        ("sender", "MX", "10 sender.test."),
        ("sender", "TXT", _txt("v=spf1 ip4:127.0.0.1 -all")),
        (f"{SELECTOR}._domainkey.sender", "TXT", _txt(key.txt)),
        ("_dmarc.sender", "TXT", _txt("v=DMARC1; p=reject; rua=mailto:dmarc@sender.test")),
        ("softfail", "TXT", _txt("v=spf1 ip4:192.0.2.1 ~all")),
        ("spffail", "TXT", _txt("v=spf1 ip4:192.0.2.1 -all")),
        ("nospf", "A", "127.0.0.1"),
        ("reject", "TXT", _txt("v=spf1 ip4:192.0.2.1 -all")),
        ("_dmarc.reject", "TXT", _txt("v=DMARC1; p=reject")),
        ("quarantine", "TXT", _txt("v=spf1 ip4:192.0.2.1 -all")),
        ("_dmarc.quarantine", "TXT", _txt("v=DMARC1; p=quarantine")),
        ("dkimonly", "TXT", _txt("v=spf1 ip4:192.0.2.1 -all")),
        (f"{SELECTOR}._domainkey.dkimonly", "TXT", _txt(key.txt)),
        ("_dmarc.dkimonly", "TXT", _txt("v=DMARC1; p=reject")),
        ("viamx", "MX", "10 mx.viamx.test."),
        ("mx.viamx", "A", "192.0.2.25"),
        ("viamx", "TXT", _txt("v=spf1 mx include:sender.test -all")),
        ("_dmarc.viamx", "TXT", _txt("v=DMARC1; p=none")),
        ("broken", "TXT", _txt("v=spf1 ip4:127.0.0.1 -all")),
        ("broken", "TXT", _txt("v=spf1 +all")),
        ("_dmarc.broken", "TXT", _txt("v=DMARC1; p=bogus")),
    ]
    lines = ["$ORIGIN test.", "$TTL 300"] + [f"{name}\tIN\t{rtype}\t{value}" for name, rtype, value in records]
    return "\n".join(lines) + "\n"


class NsdServer:
    """NSD in the foreground (``nsd -d``) as a child process, authoritative for ``zones``."""

    def __init__(self, zones: dict[str, str]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="nsd-"))
        self.port = _free_port()
        self.zones = zones
        conf = [
            "server:",
            f"  ip-address: 127.0.0.1@{self.port}",
            f"  port: {self.port}",
            "  do-ip6: no",
            '  username: ""',
            '  chroot: ""',
            f'  zonesdir: "{self.dir}"',
            '  database: ""',  # serve straight from the zone files, no nsd.db
            f'  zonelistfile: "{self.dir}/zone.list"',
            f'  pidfile: "{self.dir}/nsd.pid"',
            f'  xfrdfile: "{self.dir}/xfrd.state"',
            f'  xfrdir: "{self.dir}/xfr"',
            f'  logfile: "{self.dir}/nsd.log"',
            "  server-count: 1",
            "  hide-version: yes",
            "  verbosity: 1",
            "remote-control:",
            "  control-enable: no",
        ]
        for name, text in zones.items():
            (self.dir / f"{name}.zone").write_text(text)
            conf += ["zone:", f"  name: {name}", f'  zonefile: "{self.dir}/{name}.zone"']
        (self.dir / "xfr").mkdir()
        self.conf = self.dir / "nsd.conf"
        self.conf.write_text("\n".join(conf) + "\n")
        self.proc = subprocess.Popen([NSD, "-d", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "stderr.log", "wb"))
        try:
            self._wait_ready(next(iter(zones)))
        except Exception:
            self.stop()
            raise

    def _wait_ready(self, zone: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        query = dns.message.make_query(zone + ".", "SOA")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nsd exited with {self.proc.returncode}: {self.log()}")
            try:
                reply = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.5)
                if reply.rcode() == dns.rcode.NOERROR and reply.answer:
                    return
            except (dns.exception.Timeout, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"nsd did not answer on port {self.port}: {self.log()}")

    def log(self) -> str:
        out = []
        for name in ("stderr.log", "nsd.log"):
            p = self.dir / name
            if p.exists():
                out.append(p.read_text(errors="replace")[-2000:])
        return "\n".join(out)

    def stop(self) -> None:
        procs.stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class TestDns:
    """The session's DNS: one DKIM key, the sender zone, NSD serving it."""

    __test__ = False  # not a test class, despite the name

    def __init__(self) -> None:
        self.key = DkimKey()
        self.server = NsdServer({"test": sender_zone(self.key)})

    @property
    def port(self) -> int:
        return self.server.port

    def sign(self, message: bytes, domain: str, selector: str = SELECTOR) -> bytes:
        return self.key.sign(message, domain, selector)

    def stop(self) -> None:
        self.server.stop()
