"""What SPF + DKIM + DMARC cost per MX message.

Usage: python bench/mailauth.py [--messages 2000] [--smtp-messages 500]

1. In process: ``mailauth.authenticate`` with the real resolver against a real NSD
   (tests/dnsserver.py) on loopback, for an unsigned and a DKIM-signed (RSA-2048)
   message from a domain with SPF, a DKIM key and DMARC p=reject: the first
   message (every answer from the network) and the following ones (answers from
   the resolver's TTL cache).
2. Through the MX: two deployments, ``[mailauth] enabled`` true and false, both
   resolving through the NSD; one SMTP client sends signed messages one after the
   other on one connection; the difference in time per message is the checks'
   cost as a sender sees it.
"""

from __future__ import annotations

import argparse
import asyncio
import smtplib
import statistics
import sys
import time
import uuid

from common import ROOT, start

sys.path.insert(0, str(ROOT / "tests"))
from dnsserver import TestDns  # noqa: E402

from raymail import mailauth  # noqa: E402
from raymail.dns import Resolver  # noqa: E402


def message(to: str = "bob@example.test") -> bytes:
    body = ("Figures for the quarter are attached below in plain text.\r\n" * 30)
    return (f"From: Ann <ann@sender.test>\r\nTo: {to}\r\nSubject: report\r\n"
            f"Date: Sun, 29 Nov 2026 06:00:00 +0000\r\nMessage-ID: <{uuid.uuid4().hex}@sender.test>\r\n\r\n"
            f"{body}").encode()


def pct(values: list[float], p: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * p))]


async def in_process(dns: TestDns, n: int) -> None:
    for label, raw in (("unsigned", message()), ("DKIM-signed", dns.sign(message(), "sender.test"))):
        resolver = Resolver(("127.0.0.1",), dns.port, 2.0)
        t0 = time.perf_counter()
        res = await mailauth.authenticate(resolver, raw, "127.0.0.1", "ann@sender.test", "client.test")
        cold = (time.perf_counter() - t0) * 1000
        lookups = resolver.lookups
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            await mailauth.authenticate(resolver, raw, "127.0.0.1", "ann@sender.test", "client.test")
            times.append((time.perf_counter() - t0) * 1000)
        print(f"{label:12s} spf={res.spf.result} dkim={[d.result for d in res.dkim]} dmarc={res.dmarc.result}: "
              f"first {cold:.2f} ms ({lookups} DNS queries); cached mean {statistics.mean(times):.3f} ms, "
              f"p50 {pct(times, 0.5):.3f}, p99 {pct(times, 0.99):.3f} ms "
              f"({resolver.lookups - lookups} queries in {n} messages)")


def through_mx(dns: TestDns, n: int) -> None:
    per_msg = {}
    for enabled in (False, True):
        dep, cfg, directory = start(dns={"servers": ["127.0.0.1"], "port": dns.port},
                                    mailauth={"enabled": enabled})
        try:
            user, _ = directory.add_user(f"b{uuid.uuid4().hex[:8]}@example.test")
            raws = [dns.sign(message(user.email), "sender.test") for _ in range(n + 20)]
            with smtplib.SMTP("127.0.0.1", dep.smtp_port, timeout=30) as s:
                s.ehlo("client.test")
                for raw in raws[:20]:  # warm-up: connections, caches
                    s.sendmail("ann@sender.test", [user.email], raw)
                t0 = time.perf_counter()
                for raw in raws[20:]:
                    s.sendmail("ann@sender.test", [user.email], raw)
                per_msg[enabled] = (time.perf_counter() - t0) * 1000 / n
        finally:
            dep.stop()
        print(f"MX, one connection, {n} signed messages, mailauth enabled={enabled}: "
              f"{per_msg[enabled]:.2f} ms per message")
    print(f"added by the checks: {per_msg[True] - per_msg[False]:.2f} ms per message")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--smtp-messages", type=int, default=500)
    args = ap.parse_args()
    dns = TestDns()
    try:
        asyncio.run(in_process(dns, args.messages))
        if args.smtp_messages:
            through_mx(dns, args.smtp_messages)
    finally:
        dns.stop()


if __name__ == "__main__":
    main()
