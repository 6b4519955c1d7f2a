"""Sender authentication of incoming mail: SPF (RFC 7208), DKIM (RFC 6376, via
dkimpy), DMARC (RFC 7489) and the ``Authentication-Results`` header (RFC 8601).

Pure logic: every DNS question goes to a resolver object with the async
``txt`` / ``addresses`` / ``mx`` methods of ``raymail.dns.Resolver`` (which
caches by TTL), so a known sender costs no network round trip. A
``DnsTempError`` never becomes a permanent verdict: it is ``temperror``.

Deliberate simplifications, each the conservative choice:
- ``ptr`` counts as a DNS mechanism but never matches (RFC 7208 5.5 says
  "SHOULD NOT" use it); ``%{p}`` expands to ``unknown``; ``exp=`` is ignored.
- ``mx`` asks ``Resolver.mx``, which applies the implicit-MX rule of RFC 5321:
  a domain without MX records is its own exchanger (RFC 7208 5.4 would not).
- The organizational domain (DMARC alignment and policy fallback) is the
  registrable domain by the Public Suffix List (the ``publicsuffixlist``
  package, which ships the list: no network at run time).
- A result that could not be had (``temperror``) only counts for DMARC when the
  identifier would align with the From domain: a sender cannot turn a failing
  DMARC into ``temperror`` with an SPF include or a DKIM selector that times out.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from typing import Protocol

import dkim
import dkim.util
from publicsuffixlist import PublicSuffixList

from raymail.config import MailAuthConfig
from raymail.dns import DnsTempError, NullMx
from raymail.model import AuthSummary


class Lookups(Protocol):
    async def txt(self, name: str) -> list[str]: ...
    async def addresses(self, host: str) -> list[str]: ...
    async def mx(self, domain: str) -> list[tuple[int, str]]: ...


MAX_DNS_MECHANISMS = 10  # RFC 7208 4.6.4
MAX_VOID_LOOKUPS = 2
MAX_MX_NAMES = 10

# ---------------------------------------------------------------- SPF


@dataclass(frozen=True)
class SpfResult:
    result: str  # none | neutral | pass | fail | softfail | temperror | permerror
    mailfrom: str  # the identity checked: MAIL FROM, or postmaster@HELO for the null sender
    domain: str
    reason: str = ""


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


@dataclass
class _SpfState:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    sender: str
    helo: str
    lookups: int = 0
    voids: int = 0

    def count_lookup(self) -> None:
        self.lookups += 1
        if self.lookups > MAX_DNS_MECHANISMS:
            raise _PermError(f"more than {MAX_DNS_MECHANISMS} DNS-querying terms")

    def count_void(self, records: list) -> None:
        if not records:
            self.voids += 1
            if self.voids > MAX_VOID_LOOKUPS:
                raise _PermError(f"more than {MAX_VOID_LOOKUPS} lookups with no answer")


_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISM = re.compile(r"^([+\-~?]?)(all|include|a|mx|ptr|ip4|ip6|exists)(?=$|[:/])(:[^/]*)?(.*)$", re.I)
_MODIFIER = re.compile(r"^([a-z][a-z0-9_.\-]*)=(.*)$", re.I)
_CIDR = re.compile(r"^(?:/(\d{1,3}))?(?://(\d{1,3}))?$")
_MACRO = re.compile(r"%\{([slodiphcrtv])(\d*)(r?)([.\-+,/_=]*)\}|%%|%_|%-|%", re.I)


def _valid_domain(domain: str) -> bool:
    labels = domain.rstrip(".").split(".")
    return (len(labels) >= 2 and len(domain) <= 253
            and all(0 < len(label) <= 63 for label in labels) and not labels[-1].isdigit())


def _expand(spec: str, state: _SpfState, domain: str) -> str:
    """Macro expansion (RFC 7208 section 7) for a domain-spec."""
    local, _, sender_domain = state.sender.rpartition("@")
    ip = state.ip
    if ip.version == 4:
        ip_text, v = str(ip), "in-addr"
    else:
        ip_text, v = ".".join(ip.exploded.replace(":", "")), "ip6"
    values = {"s": state.sender, "l": local or "postmaster", "o": sender_domain, "d": domain, "i": ip_text,
              "p": "unknown", "v": v, "h": state.helo}

    def one(m: re.Match) -> str:
        token = m.group(0)
        if token == "%%":
            return "%"
        if token == "%_":
            return " "
        if token == "%-":
            return "%20"
        if token == "%":
            raise _PermError(f"bad macro in {spec!r}")
        letter = m.group(1).lower()
        if letter in "crt":
            raise _PermError(f"macro %{{{letter}}} is allowed only in exp=")
        parts = re.split("[" + re.escape(m.group(4) or ".") + "]", values[letter])
        if m.group(3):
            parts.reverse()
        if m.group(2):
            keep = int(m.group(2))
            if keep == 0:
                raise _PermError(f"bad macro in {spec!r}")
            parts = parts[-keep:]
        return ".".join(parts)

    out = _MACRO.sub(one, spec)
    while len(out) > 253 and "." in out:  # RFC 7208 7.3: drop labels from the left
        out = out.split(".", 1)[1]
    return out


def _target(arg: str | None, state: _SpfState, domain: str) -> str:
    if arg is None:
        return domain
    target = _expand(arg[1:] if arg.startswith(":") else arg, state, domain).rstrip(".")
    if not _valid_domain(target):
        raise _PermError(f"bad domain-spec {target!r}")
    return target


def _in_network(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, addr: str, v4: int | None, v6: int | None) -> bool:
    try:
        other = ipaddress.ip_address(addr)
    except ValueError:
        return False
    if other.version != ip.version:
        return False
    prefix = (v4 if v4 is not None else 32) if ip.version == 4 else (v6 if v6 is not None else 128)
    return ip in ipaddress.ip_network(f"{other}/{prefix}", strict=False)


async def _spf_record(dns: Lookups, domain: str) -> str | None:
    try:
        texts = await dns.txt(domain)
    except DnsTempError as exc:
        raise _TempError(str(exc)) from None
    found = [t for t in texts if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]
    if len(found) > 1:
        raise _PermError(f"{domain} publishes {len(found)} SPF records")
    return found[0] if found else None


async def _check_host(dns: Lookups, state: _SpfState, domain: str) -> tuple[str, str]:
    """RFC 7208 section 4: (result, reason) for ``domain``; raises _PermError/_TempError."""
    if not _valid_domain(domain):
        return "none", f"{domain!r} is not a domain name"
    record = await _spf_record(dns, domain)
    if record is None:
        return "none", f"{domain} publishes no SPF record"
    terms = record.split()[1:]
    redirect: str | None = None
    mechanisms = []
    seen_modifiers: set[str] = set()
    for term in terms:  # parse everything first: a syntax error anywhere is a permerror
        m = _MECHANISM.match(term)
        if m:
            qualifier, name, arg, rest = m.group(1) or "+", m.group(2).lower(), m.group(3), m.group(4)
            cidr = _CIDR.match(rest)
            if cidr is None or (rest and name not in ("a", "mx", "ip4", "ip6")):
                raise _PermError(f"bad term {term!r}")
            if name in ("ip4", "ip6"):
                _network(name, arg, cidr.group(1), cidr.group(2), term)  # a syntax error anywhere is a permerror
            mechanisms.append((qualifier, name, arg, cidr.group(1), cidr.group(2), term))
            continue
        mod = _MODIFIER.match(term)
        if mod is None:
            raise _PermError(f"unknown term {term!r}")
        key = mod.group(1).lower()
        if key in ("redirect", "exp"):
            if key in seen_modifiers:
                raise _PermError(f"{key}= appears twice")
            seen_modifiers.add(key)
            if key == "redirect":
                redirect = mod.group(2)
    for qualifier, name, arg, c4, c6, term in mechanisms:
        if await _matches(dns, state, domain, name, arg, c4, c6, term):
            return _QUALIFIERS[qualifier], f"matched {term}"
    if redirect is not None and not any(m[1] == "all" for m in mechanisms):
        state.count_lookup()
        target = _target(redirect, state, domain)
        result, reason = await _check_host(dns, state, target)
        if result == "none":
            raise _PermError(f"redirect to {target}, which has no SPF record")
        return result, reason
    return "neutral", "no mechanism matched"


def _network(name: str, arg: str | None, c4: str | None, c6: str | None,
             term: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The network of an ip4/ip6 term (ip6:addr/len carries its length in the first slot too)."""
    if not arg or len(arg) < 2 or c6 is not None:
        raise _PermError(f"bad term {term!r}")
    if c4 is not None and int(c4) > (32 if name == "ip4" else 128):
        raise _PermError(f"bad prefix length in {term!r}")
    try:
        net = ipaddress.ip_network(arg[1:] + (f"/{c4}" if c4 is not None else ""), strict=False)
    except ValueError:
        raise _PermError(f"bad network in {term!r}") from None
    if (net.version == 4) != (name == "ip4"):
        raise _PermError(f"wrong address family in {term!r}")
    return net


async def _matches(dns: Lookups, state: _SpfState, domain: str, name: str, arg: str | None,
                   c4: str | None, c6: str | None, term: str) -> bool:
    ip = state.ip
    if name == "all":
        if arg is not None or c4 is not None or c6 is not None:
            raise _PermError(f"bad term {term!r}")
        return True
    if name in ("ip4", "ip6"):
        net = _network(name, arg, c4, c6, term)
        return net.version == ip.version and ip in net
    v4 = int(c4) if c4 is not None else None
    v6 = int(c6) if c6 is not None else None
    if (v4 is not None and v4 > 32) or (v6 is not None and v6 > 128):
        raise _PermError(f"bad prefix length in {term!r}")
    try:
        state.count_lookup()
        if name == "include":
            if arg is None:
                raise _PermError("include needs a domain")
            result, reason = await _check_host(dns, state, _target(arg, state, domain))
            if result in ("none", "permerror"):
                raise _PermError(f"include:{arg[1:]} gave {result} ({reason})")
            return result == "pass"
        if name == "a":
            addrs = await dns.addresses(_target(arg, state, domain))
            state.count_void(addrs)
            return any(_in_network(ip, a, v4, v6) for a in addrs)
        if name == "mx":
            try:
                hosts = await dns.mx(_target(arg, state, domain))
            except NullMx:
                return False
            state.count_void(hosts)
            if len(hosts) > MAX_MX_NAMES:
                raise _PermError(f"more than {MAX_MX_NAMES} MX names in {term!r}")
            for _, host in hosts:
                if any(_in_network(ip, a, v4, v6) for a in await dns.addresses(host)):
                    return True
            return False
        if name == "exists":
            if arg is None:
                raise _PermError("exists needs a domain")
            found = [a for a in await dns.addresses(_target(arg, state, domain)) if ":" not in a]
            state.count_void(found)
            return bool(found)
        return False  # ptr: counted, never matches (see the module docstring)
    except DnsTempError as exc:
        raise _TempError(str(exc)) from None


def _client_ip(peer_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(peer_ip.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # RFC 7208 5: an IPv4-mapped client is an IPv4 client
    return ip


async def check_spf(dns: Lookups, peer_ip: str, mail_from: str, helo: str) -> SpfResult:
    """SPF for the MAIL FROM identity (postmaster@HELO for the null sender)."""
    helo = helo.strip().rstrip(".")
    sender = mail_from.strip()
    if sender in ("", "<>"):  # the null reverse-path (aiosmtpd reports it as "<>")
        sender = f"postmaster@{helo}"
    if "@" not in sender:
        sender = f"postmaster@{sender}"
    local, _, domain = sender.rpartition("@")
    domain = domain.lower()
    sender = f"{local or 'postmaster'}@{domain}"
    try:
        state = _SpfState(_client_ip(peer_ip), sender, helo)
    except ValueError:
        return SpfResult("none", sender, domain, f"client address {peer_ip!r} is not an IP address")
    try:
        result, reason = await _check_host(dns, state, domain)
    except _PermError as exc:
        return SpfResult("permerror", sender, domain, str(exc))
    except _TempError as exc:
        return SpfResult("temperror", sender, domain, str(exc))
    return SpfResult(result, sender, domain, reason)


# ---------------------------------------------------------------- DKIM


@dataclass(frozen=True)
class DkimResult:
    result: str  # pass | fail | neutral | temperror | permerror
    domain: str = ""
    selector: str = ""
    reason: str = ""


_QUIET = logging.getLogger("raymail.mailauth.dkim")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


def _signature_tags(header_value: bytes) -> dict[bytes, bytes] | None:
    try:
        sig = dkim.util.parse_tag_value(header_value)
        dkim.validate_signature_fields(sig)
    except (dkim.DKIMException, dkim.util.InvalidTagValueList, ValueError, KeyError):
        return None
    return sig


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace").strip().lower()


def _verify_all(raw: bytes, sigs: list[dict[bytes, bytes] | None], keys: dict[str, list[str] | None],
                ) -> list[DkimResult]:
    """The CPU part: dkimpy against keys already fetched (``None``: lookup failed)."""
    out = []
    for idx, sig in enumerate(sigs):
        if sig is None:
            out.append(DkimResult("neutral", reason="malformed DKIM-Signature"))
            continue
        d, s = _text(sig[b"d"]), _text(sig[b"s"])
        name = f"{s}._domainkey.{d}"
        records = keys.get(name)
        if records is None:
            out.append(DkimResult("temperror", d, s, f"key lookup of {name} failed"))
            continue
        if not records:
            out.append(DkimResult("permerror", d, s, f"no key at {name}"))
            continue
        try:
            dkim.evaluate_pk(name.encode(), records[0].encode("ascii", "replace"))
        except (dkim.DKIMException, ValueError) as exc:
            out.append(DkimResult("permerror", d, s, f"unusable key at {name}: {exc}"))
            continue

        def dnsfunc(qname: bytes | str, timeout: float = 5, _r: list[str] = records) -> bytes:
            return _r[0].encode("ascii", "replace")

        try:
            ok = dkim.DKIM(raw, logger=_QUIET).verify(idx=idx, dnsfunc=dnsfunc)
            reason = "" if ok else "signature did not verify"
        except dkim.DKIMException as exc:
            ok, reason = False, str(exc)[:200]
        out.append(DkimResult("pass" if ok else "fail", d, s, reason))
    return out


async def check_dkim(dns: Lookups, raw: bytes, max_signatures: int = 5) -> list[DkimResult]:
    """One result per DKIM-Signature (the first ``max_signatures``); [] when unsigned.

    dkimpy asks DNS synchronously, so the selector keys are fetched first through
    the async resolver and dkimpy is answered from that prefetch."""
    try:  # dkimpy's own header parser, so that signature i here is dkimpy's idx=i
        headers, _ = dkim.rfc822_parse(raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
    except (dkim.DKIMException, IndexError):  # a header block dkimpy cannot read: nothing to verify
        return []
    values = [v for k, v in headers if k.lower() == b"dkim-signature"][:max_signatures]
    sigs = [_signature_tags(v) for v in values]
    names = sorted({f"{_text(s[b's'])}._domainkey.{_text(s[b'd'])}" for s in sigs if s is not None})

    async def fetch(name: str) -> list[str] | None:
        try:
            return await dns.txt(name)
        except DnsTempError:
            return None

    keys = dict(zip(names, await asyncio.gather(*(fetch(n) for n in names))))
    if len(raw) > 65_536:  # hashing a big body would stall the event loop
        return await asyncio.to_thread(_verify_all, raw, sigs, keys)
    return _verify_all(raw, sigs, keys)


# ---------------------------------------------------------------- DMARC

_PSL = PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """The registrable part of ``domain`` (RFC 7489 3.2, by the Public Suffix List);
    a public suffix itself, or a name the list cannot place, is its own."""
    domain = domain.lower().rstrip(".")
    return _PSL.privatesuffix(domain) or domain


def aligned(a: str, b: str, mode: str) -> bool:
    """RFC 7489 3.1: strict is an exact match, relaxed compares organizational domains."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    return a == b if mode == "s" else organizational_domain(a) == organizational_domain(b)


@dataclass(frozen=True)
class DmarcRecord:
    p: str
    sp: str
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


def parse_dmarc(text: str) -> DmarcRecord | None:
    """A DMARC record, or None when it is not one we can apply (RFC 7489 6.6.3)."""
    tags: dict[str, str] = {}
    for i, part in enumerate(p.strip() for p in text.split(";")):
        if not part:
            continue
        key, eq, value = part.partition("=")
        key, value = key.strip().lower(), value.strip()
        if i == 0 and (key != "v" or value != "DMARC1"):
            return None
        if eq:
            tags.setdefault(key, value)
    policies = ("none", "quarantine", "reject")
    p = tags.get("p", "").lower()
    if p not in policies:
        if not tags.get("rua"):
            return None
        p = "none"  # a broken p= with reporting asked for: act as p=none
    sp = tags.get("sp", p).lower()
    if sp not in policies:
        sp = p
    pct_text = tags.get("pct", "100")
    pct = int(pct_text) if pct_text.isdigit() and int(pct_text) <= 100 else 100
    mode = {"s": "s", "r": "r"}
    return DmarcRecord(p, sp, mode.get(tags.get("adkim", "r").lower(), "r"),
                       mode.get(tags.get("aspf", "r").lower(), "r"), pct)


@dataclass(frozen=True)
class DmarcResult:
    result: str  # pass | fail | none | temperror | permerror
    from_domain: str = ""
    policy: str = ""  # the published policy; on fail after pct sampling: none | quarantine | reject; "" if no record
    published: str = ""  # p= (or sp=) as published, for the header
    reason: str = ""


MAX_FROM_DOMAINS = 5


def from_domains(raw: bytes) -> list[str]:
    """The RFC5322.From domains (usually one), in order; [] when unreadable."""
    try:
        values = BytesHeaderParser().parsebytes(raw).get_all("From") or []
        found = [e.rpartition("@")[2].lower().rstrip(".") for _, e in getaddresses([str(v) for v in values])
                 if "@" in e]
    except Exception:  # noqa: BLE001 - an unreadable From is "no From domain"
        return []
    return list(dict.fromkeys(d for d in found if d))


async def _dmarc_record(dns: Lookups, domain: str) -> tuple[DmarcRecord | None, bool]:
    """(record, found any v=DMARC1 text) at _dmarc.<domain>."""
    texts = [t for t in await dns.txt(f"_dmarc.{domain}") if t.strip().startswith("v=DMARC1")]
    if len(texts) != 1:
        return None, len(texts) > 1
    return parse_dmarc(texts[0]), True


async def check_dmarc(dns: Lookups, raw: bytes, spf: SpfResult, dkims: list[DkimResult],
                      sample: Callable[[], float]) -> DmarcResult:
    """DMARC for the message; ``sample`` draws in [0, 1) for pct= sampling.

    A From with several domains is judged by each (RFC 7489 6.6.1 lets the
    receiver apply the strictest policy), so adding a second address cannot hide
    a spoofed one."""
    domains = from_domains(raw)
    if not domains or len(domains) > MAX_FROM_DOMAINS:
        return DmarcResult("permerror", reason="the message needs one From address (a few at most)")
    results = [await _dmarc_one(dns, d, spf, dkims, sample) for d in domains]
    if len(results) == 1:
        return results[0]
    strictness = {"reject": 3, "quarantine": 2, "none": 1, "": 0}
    for verdict in ("fail", "temperror", "permerror"):
        bad = [r for r in results if r.result == verdict]
        if bad:
            return max(bad, key=lambda r: strictness[r.policy])
    return next((r for r in results if r.result == "pass"), results[0])


async def _dmarc_one(dns: Lookups, domain: str, spf: SpfResult, dkims: list[DkimResult],
                     sample: Callable[[], float]) -> DmarcResult:
    try:
        record, found = await _dmarc_record(dns, domain)
        used_sp = False
        org = organizational_domain(domain)
        if record is None and not found and org != domain:
            record, found = await _dmarc_record(dns, org)
            used_sp = True
    except DnsTempError as exc:
        return DmarcResult("temperror", domain, reason=str(exc))
    if record is None:
        if found:
            return DmarcResult("permerror", domain, reason="unusable or duplicate DMARC record")
        return DmarcResult("none", domain, reason="no DMARC record")
    published = record.sp if used_sp else record.p
    spf_ok = spf.result == "pass" and aligned(spf.domain, domain, record.aspf)
    dkim_ok = any(d.result == "pass" and aligned(d.domain, domain, record.adkim) for d in dkims)
    if spf_ok or dkim_ok:
        return DmarcResult("pass", domain, published, published,
                           "aligned " + ("SPF" if spf_ok else "DKIM"))
    # Only an identifier that would align could still have passed: a lookup failure
    # elsewhere (the sender's own SPF include, a DKIM key of another domain) changes nothing.
    if (spf.result == "temperror" and aligned(spf.domain, domain, record.aspf)) or any(
            d.result == "temperror" and aligned(d.domain, domain, record.adkim) for d in dkims):
        return DmarcResult("temperror", domain, published, published, "an aligned SPF or DKIM check could not be done")
    policy = published
    if record.pct < 100 and sample() * 100 >= record.pct:  # outside the sample: one step milder
        policy = {"reject": "quarantine", "quarantine": "none"}.get(policy, policy)
    return DmarcResult("fail", domain, policy, published, "neither SPF nor DKIM aligned with the From domain")


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class AuthResults:
    spf: SpfResult
    dkim: list[DkimResult] = field(default_factory=list)
    dmarc: DmarcResult = field(default_factory=lambda: DmarcResult("none"))

    def summary(self) -> AuthSummary:
        return AuthSummary(
            spf=self.spf.result, dkim=_best_dkim(self.dkim), dmarc=self.dmarc.result, policy=self.dmarc.policy,
            spf_domain=self.spf.domain, dkim_domains=tuple(dict.fromkeys(d.domain for d in self.dkim
                                                                         if d.result == "pass")),
            from_domain=self.dmarc.from_domain,
        )


def _best_dkim(results: list[DkimResult]) -> str:
    for r in ("pass", "fail", "temperror", "permerror", "neutral"):
        if any(d.result == r for d in results):
            return r
    return "none"


CHECKS_TIMEOUT_S = 20.0  # RFC 7208 4.6.4: at least 20 s for the whole SPF evaluation


async def authenticate(dns: Lookups, raw: bytes, peer_ip: str, mail_from: str, helo: str,
                       max_dkim_signatures: int = 5, sample: Callable[[], float] = lambda: 0.0,
                       timeout_s: float = CHECKS_TIMEOUT_S) -> AuthResults:
    """SPF and DKIM concurrently, then DMARC over both; all of it within ``timeout_s``
    (a sender domain with slow DNS gets temperror, not an SMTP session held for minutes)."""

    async def run() -> AuthResults:
        spf, dkims = await asyncio.gather(check_spf(dns, peer_ip, mail_from, helo),
                                          check_dkim(dns, raw, max_dkim_signatures))
        return AuthResults(spf, dkims, await check_dmarc(dns, raw, spf, dkims, sample))

    try:
        return await asyncio.wait_for(run(), timeout_s)
    except TimeoutError:
        return unavailable(mail_from, helo, f"the checks took longer than {timeout_s:g} s")


def unavailable(mail_from: str, helo: str, reason: str) -> AuthResults:
    """The verdict when the checks themselves could not run: temperror throughout."""
    sender = mail_from.strip() if "@" in mail_from else f"postmaster@{helo.strip().rstrip('.')}"
    return AuthResults(SpfResult("temperror", sender, sender.rpartition("@")[2].lower(), reason), [],
                       DmarcResult("temperror", reason=reason))


_TOKEN = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~@-]+$")


def _value(text: str) -> str:
    """A property value: as is when it is token-safe, else a quoted-string."""
    text = "".join(c for c in text if c.isprintable())[:254]
    if _TOKEN.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    text = "".join(c for c in text if c.isprintable())[:120]
    return "(" + re.sub(r"([()\\])", r"\\\1", text) + ")"


def header_value(authserv_id: str, res: AuthResults) -> str:
    """The ``Authentication-Results`` value (RFC 8601), one result per line."""
    parts = [f"spf={res.spf.result} smtp.mailfrom={_value(res.spf.mailfrom)}"]
    for d in res.dkim:
        reason = f" {_comment(d.reason)}" if d.result != "pass" and d.reason else ""
        if d.domain:
            parts.append(f"dkim={d.result}{reason} header.d={_value(d.domain)} header.s={_value(d.selector)}")
        else:
            parts.append(f"dkim={d.result}{reason}")
    if not res.dkim:
        parts.append("dkim=none")
    dm = res.dmarc
    policy = f" {_comment('p=' + dm.published)}" if dm.published else ""
    from_part = f" header.from={_value(dm.from_domain)}" if dm.from_domain else ""
    parts.append(f"dmarc={dm.result}{policy}{from_part}")
    return ";\r\n\t".join([_value(authserv_id)] + parts)


def header(authserv_id: str, res: AuthResults) -> bytes:
    return f"Authentication-Results: {header_value(authserv_id, res)}\r\n".encode("ascii", "replace")


@dataclass(frozen=True)
class Decision:
    """What the MX does with an authenticated message: deliver to ``folder``, or answer ``reply``."""

    folder: str = "inbox"
    reply: str = ""  # non-empty: refuse the message with this reply line


def decide(res: AuthResults, cfg: MailAuthConfig) -> Decision:
    """The policy of ``[mailauth]`` applied to a verdict. A DNS failure is never a
    permanent refusal: at most 451 (``dns_error_action = "tempfail"``)."""
    dm = res.dmarc

    def act(action: str, reply: str) -> Decision:
        return Decision(reply=reply) if action == "reject" else Decision(folder="junk" if action == "junk" else "inbox")

    if dm.result == "fail" and dm.policy == "reject":
        return act(cfg.dmarc_reject_action,
                   f"550 5.7.1 Message rejected by the DMARC policy of {dm.from_domain} (p=reject): "
                   "neither SPF nor DKIM aligned with the From domain")
    if dm.result == "fail" and dm.policy == "quarantine":
        return act(cfg.dmarc_quarantine_action, "")
    if dm.result == "temperror" and cfg.dns_error_action == "tempfail" and dm.published != "none":
        # the policy could not be read, or it could act on the message: let the sender retry
        return Decision(reply=f"451 4.4.3 Could not check the sender authentication of {dm.from_domain or 'the message'}"
                              " (DNS); please retry")
    if dm.result == "temperror" and dm.published in ("reject", "quarantine"):
        return Decision(folder="junk")  # accepted (never refused for DNS trouble), but not trusted
    if dm.result == "permerror" and not dm.from_domain:
        return Decision(folder="junk")  # no single readable From domain: nothing DMARC could protect
    if dm.result == "none" and res.spf.result == "fail":
        return act(cfg.spf_fail_action,
                   f"550 5.7.23 SPF check failed: {res.spf.domain} does not allow this server to send its mail")
    return Decision()
