"""The one DNS resolver component: SPF, DKIM and DMARC checks on the MX and MX
lookups for outbound delivery all ask it.

It uses dnspython's asyncio resolver, pointed at the system resolver by default
or at the servers of ``[dns]``; answers are cached for their TTL (bounded), so a
busy sender domain costs one lookup per TTL, not one per message. Failures are
told apart the way mail needs them: a name that does not exist is an empty
answer, a timeout or SERVFAIL is ``DnsTempError`` (callers answer 4xx or
``temperror``, never a permanent verdict).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from raymail.config import DnsConfig


class DnsTempError(Exception):
    """The answer could not be had now (timeout, SERVFAIL, no server reachable)."""


class NullMx(Exception):
    """The domain publishes a null MX (RFC 7505): it accepts no mail."""


@dataclass(frozen=True)
class _Cached:
    expires: float
    answer: tuple


class Resolver:
    """Async lookups with a TTL cache. One instance per process is enough."""

    def __init__(self, servers: tuple[str, ...] = (), port: int = 53, timeout_s: float = 5.0,
                 cache_entries: int = 4096, min_ttl_s: int = 5, max_ttl_s: int = 3600) -> None:
        if servers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = list(servers)
            self._resolver.port = port
        else:
            try:
                self._resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                self._resolver = dns.asyncresolver.Resolver(configure=False)
                self._resolver.nameservers = ["127.0.0.1"]
        self._resolver.lifetime = timeout_s
        self._resolver.timeout = min(timeout_s, 2.0)
        self._cache: OrderedDict[tuple[str, str], _Cached] = OrderedDict()
        self._cache_entries = cache_entries
        self._min_ttl = min_ttl_s
        self._max_ttl = max_ttl_s
        self.lookups = 0  # queries that went to the network (for tests and metrics)

    @classmethod
    def from_config(cls, cfg: DnsConfig) -> Resolver:
        return cls(tuple(cfg.servers), cfg.port, cfg.timeout_s)

    async def _query(self, name: str, rdtype: str) -> tuple:
        key = (name.lower().rstrip("."), rdtype)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit.expires > now:
            self._cache.move_to_end(key)
            return hit.answer
        self.lookups += 1
        ttl = self._min_ttl
        try:
            answer = await self._resolver.resolve(key[0] + ".", rdtype, search=False)
            records = tuple(answer)
            ttl = answer.rrset.ttl if answer.rrset is not None else ttl
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            records = ()
        except dns.resolver.NoNameservers as exc:  # every server said SERVFAIL/REFUSED
            raise DnsTempError(f"DNS lookup of {name} {rdtype} failed: no server answered ({exc})") from None
        except (dns.exception.Timeout, dns.resolver.LifetimeTimeout):
            raise DnsTempError(f"DNS lookup of {name} {rdtype} timed out") from None
        except (dns.exception.SyntaxError, dns.name.NameTooLong):
            return ()  # not a name that can exist (a 70-character label, say): no answer, not a DNS failure
        except dns.exception.DNSException as exc:
            raise DnsTempError(f"DNS lookup of {name} {rdtype} failed: {exc}") from None
        self._cache[key] = _Cached(now + max(self._min_ttl, min(self._max_ttl, ttl)), records)
        if len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)
        return records

    async def txt(self, name: str) -> list[str]:
        """TXT strings of ``name`` (each record's strings joined), [] if none."""
        return [b"".join(r.strings).decode("utf-8", "replace") for r in await self._query(name, "TXT")]

    async def addresses(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses of ``host``."""
        out = [r.address for r in await self._query(host, "A")]
        out += [r.address for r in await self._query(host, "AAAA")]
        return out

    async def mx(self, domain: str) -> list[tuple[int, str]]:
        """Mail exchangers by preference. With no MX record the domain itself is the
        implicit MX when it has an address (RFC 5321 section 5.1); a null MX raises
        ``NullMx``; a domain with neither gives []."""
        records = await self._query(domain, "MX")
        if records:
            hosts = sorted((r.preference, r.exchange.to_text(omit_final_dot=True)) for r in records)
            if len(hosts) == 1 and hosts[0][1] in ("", "."):
                raise NullMx(f"{domain} accepts no mail (null MX, RFC 7505)")
            return [(p, h) for p, h in hosts if h not in ("", ".")]
        return [(0, domain)] if await self.addresses(domain) else []
