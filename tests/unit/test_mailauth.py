"""raymail/mailauth.py: SPF, DKIM and DMARC verdicts and the Authentication-Results header.

DNS is a dict here (a resolver double with the same three methods and the same
failure vocabulary); the real resolver against a real DNS server is exercised by
tests/integration/test_smtp_auth.py.
"""

from __future__ import annotations

import asyncio
import base64
import time

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from raymail import mailauth
from raymail.dns import DnsTempError, NullMx
from raymail.mailauth import AuthResults, DkimResult, DmarcResult, SpfResult

TEMP = object()  # a zone value that makes the lookup fail for now


class DictDns:
    """TXT / A+AAAA / MX answers from dicts; TEMP raises DnsTempError like a timeout."""

    def __init__(self, txt=None, a=None, mx=None) -> None:
        self.txt_map, self.a_map, self.mx_map = txt or {}, a or {}, mx or {}
        self.queries: list[str] = []

    def _get(self, table: dict, name: str):
        self.queries.append(name)
        value = table.get(name.lower().rstrip("."), [])
        if value is TEMP:
            raise DnsTempError(f"{name} timed out")
        return list(value)

    async def txt(self, name: str) -> list[str]:
        return self._get(self.txt_map, name)

    async def addresses(self, host: str) -> list[str]:
        return self._get(self.a_map, host)

    async def mx(self, domain: str) -> list[tuple[int, str]]:
        hosts = self._get(self.mx_map, domain)
        if hosts == [(0, "")]:
            raise NullMx(domain)
        if hosts:
            return hosts
        return [(0, domain)] if self.a_map.get(domain) else []


def chain(n: int) -> dict[str, list[str]]:
    """d0.test includes d1.test ... includes d<n>.test (n DNS-querying terms)."""
    zone = {f"d{i}.test": [f"v=spf1 include:d{i + 1}.test -all"] for i in range(n)}
    zone[f"d{n}.test"] = ["v=spf1 ip4:192.0.2.1 -all"]
    return zone


SPF_CASES = [
    # (name, txt zone, a zone, mx zone, ip, mail_from, helo, expected result)
    ("ip4 pass", {"s.test": ["v=spf1 ip4:192.0.2.0/24 -all"]}, {}, {}, "192.0.2.7", "a@s.test", "h.test", "pass"),
    ("ip4 fail", {"s.test": ["v=spf1 ip4:192.0.2.0/24 -all"]}, {}, {}, "198.51.100.1", "a@s.test", "h", "fail"),
    ("softfail", {"s.test": ["v=spf1 ip4:192.0.2.1 ~all"]}, {}, {}, "198.51.100.1", "a@s.test", "h", "softfail"),
    ("neutral all", {"s.test": ["v=spf1 ?all"]}, {}, {}, "198.51.100.1", "a@s.test", "h", "neutral"),
    ("no match, no all", {"s.test": ["v=spf1 ip4:192.0.2.1"]}, {}, {}, "198.51.100.1", "a@s.test", "h", "neutral"),
    ("plus all", {"s.test": ["v=spf1 +all"]}, {}, {}, "198.51.100.1", "a@s.test", "h", "pass"),
    ("no record", {"s.test": ["google-site-verification=x"]}, {}, {}, "192.0.2.7", "a@s.test", "h", "none"),
    ("no domain", {}, {}, {}, "192.0.2.7", "a@nowhere.test", "h", "none"),
    ("two records", {"s.test": ["v=spf1 -all", "v=spf1 +all"]}, {}, {}, "192.0.2.7", "a@s.test", "h", "permerror"),
    ("case-insensitive", {"s.test": ["V=SPF1 IP4:192.0.2.7 -ALL"]}, {}, {}, "192.0.2.7", "a@S.TEST", "h", "pass"),
    ("ip6 prefix", {"s.test": ["v=spf1 ip6:2001:db8::/32 -all"]}, {}, {}, "2001:db8:1::9", "a@s.test", "h", "pass"),
    ("ip6 outside", {"s.test": ["v=spf1 ip6:2001:db8::/32 -all"]}, {}, {}, "2001:db9::1", "a@s.test", "h", "fail"),
    ("ip4-mapped client", {"s.test": ["v=spf1 ip4:192.0.2.7 -all"]}, {}, {}, "::ffff:192.0.2.7", "a@s.test", "h",
     "pass"),
    ("bad ip4 anywhere", {"s.test": ["v=spf1 +all ip4:300.1.1.1"]}, {}, {}, "192.0.2.7", "a@s.test", "h", "permerror"),
    ("ip4 prefix too long", {"s.test": ["v=spf1 ip4:192.0.2.0/33 -all"]}, {}, {}, "192.0.2.7", "a@s.test", "h",
     "permerror"),
    ("unknown mechanism", {"s.test": ["v=spf1 foo -all"]}, {}, {}, "192.0.2.7", "a@s.test", "h", "permerror"),
    ("unknown modifier ignored", {"s.test": ["v=spf1 foo=bar ip4:192.0.2.7 -all"]}, {}, {}, "192.0.2.7", "a@s.test",
     "h", "pass"),
    ("a with prefix", {"s.test": ["v=spf1 a/24 -all"]}, {"s.test": ["192.0.2.1"]}, {}, "192.0.2.99", "a@s.test", "h",
     "pass"),
    ("a other host", {"s.test": ["v=spf1 a:out.s.test -all"]}, {"out.s.test": ["192.0.2.5", "2001:db8::5"]}, {},
     "2001:db8::5", "a@s.test", "h", "pass"),
    ("a dual prefix", {"s.test": ["v=spf1 a//64 -all"]}, {"s.test": ["2001:db8::1"]}, {}, "2001:db8::77", "a@s.test",
     "h", "pass"),
    ("mx", {"s.test": ["v=spf1 mx -all"]}, {"mail.s.test": ["192.0.2.25"]}, {"s.test": [(10, "mail.s.test")]},
     "192.0.2.25", "a@s.test", "h", "pass"),
    ("mx elsewhere", {"s.test": ["v=spf1 mx -all"]}, {"mail.s.test": ["192.0.2.25"]},
     {"s.test": [(10, "mail.s.test")]}, "192.0.2.26", "a@s.test", "h", "fail"),
    ("null mx", {"s.test": ["v=spf1 mx -all"]}, {}, {"s.test": [(0, "")]}, "192.0.2.26", "a@s.test", "h", "fail"),
    ("include pass", {"s.test": ["v=spf1 include:esp.test -all"], "esp.test": ["v=spf1 ip4:192.0.2.0/24 -all"]}, {},
     {}, "192.0.2.3", "a@s.test", "h", "pass"),
    ("include fail is no match", {"s.test": ["v=spf1 include:esp.test ~all"], "esp.test": ["v=spf1 -all"]}, {}, {},
     "192.0.2.3", "a@s.test", "h", "softfail"),
    ("include without record", {"s.test": ["v=spf1 include:none.test -all"]}, {}, {}, "192.0.2.3", "a@s.test", "h",
     "permerror"),
    ("redirect", {"s.test": ["v=spf1 redirect=_spf.s.test"], "_spf.s.test": ["v=spf1 ip4:192.0.2.3 -all"]}, {}, {},
     "192.0.2.3", "a@s.test", "h", "pass"),
    ("redirect ignored with all", {"s.test": ["v=spf1 -all redirect=_spf.s.test"],
                                   "_spf.s.test": ["v=spf1 +all"]}, {}, {}, "192.0.2.3", "a@s.test", "h", "fail"),
    ("redirect to nothing", {"s.test": ["v=spf1 redirect=none.test"]}, {}, {}, "192.0.2.3", "a@s.test", "h",
     "permerror"),
    ("two redirects", {"s.test": ["v=spf1 redirect=a.test redirect=b.test"]}, {}, {}, "192.0.2.3", "a@s.test", "h",
     "permerror"),
    ("exists with %{i}", {"s.test": ["v=spf1 exists:%{i}.allow.s.test -all"]}, {"192.0.2.3.allow.s.test": ["127.0.0.2"]},
     {}, "192.0.2.3", "a@s.test", "h", "pass"),
    ("macros l o d h", {"s.test": ["v=spf1 exists:%{l}.%{o}.%{h}.x.%{d} -all"]},
     {"bob.s.test.helo.test.x.s.test": ["127.0.0.2"]}, {}, "192.0.2.3", "bob@s.test", "helo.test", "pass"),
    ("macro reverse + digits", {"s.test": ["v=spf1 exists:%{ir}.%{v}.%{d2} -all"]},
     {"3.2.0.192.in-addr.s.test": ["127.0.0.2"]}, {}, "192.0.2.3", "a@s.test", "h", "pass"),
    ("macro %{s} with delimiter", {"s.test": ["v=spf1 exists:%{s1r-}.x.test -all"]}, {"b.x.test": ["127.0.0.2"]}, {},
     "192.0.2.3", "b-c@s.test", "h", "pass"),
    ("exp-only macro", {"s.test": ["v=spf1 exists:%{c}.x.test -all"]}, {}, {}, "192.0.2.3", "a@s.test", "h",
     "permerror"),
    ("ptr never matches", {"s.test": ["v=spf1 ptr -all"]}, {}, {}, "192.0.2.3", "a@s.test", "h", "fail"),
    ("10 lookups ok", chain(10), {}, {}, "192.0.2.1", "a@d0.test", "h", "pass"),
    ("11 lookups", chain(11), {}, {}, "192.0.2.1", "a@d0.test", "h", "permerror"),
    ("include loop", {"s.test": ["v=spf1 include:s.test -all"]}, {}, {}, "192.0.2.1", "a@s.test", "h", "permerror"),
    ("2 void lookups ok", {"s.test": ["v=spf1 a:n1.test a:n2.test ip4:192.0.2.1 -all"]}, {}, {}, "192.0.2.1",
     "a@s.test", "h", "pass"),
    ("3 void lookups", {"s.test": ["v=spf1 a:n1.test a:n2.test a:n3.test ip4:192.0.2.1 -all"]}, {}, {}, "192.0.2.1",
     "a@s.test", "h", "permerror"),
    ("record temperror", {"s.test": TEMP}, {}, {}, "192.0.2.1", "a@s.test", "h", "temperror"),
    ("a temperror", {"s.test": ["v=spf1 a:slow.test -all"]}, {"slow.test": TEMP}, {}, "192.0.2.1", "a@s.test", "h",
     "temperror"),
    ("include temperror", {"s.test": ["v=spf1 include:slow.test -all"], "slow.test": TEMP}, {}, {}, "192.0.2.1",
     "a@s.test", "h", "temperror"),
    ("null sender uses HELO", {"helo.s.test": ["v=spf1 ip4:192.0.2.1 -all"]}, {}, {}, "192.0.2.1", "", "helo.s.test",
     "pass"),
]


@pytest.mark.parametrize("name, txt, a, mx, ip, mail_from, helo, expected", SPF_CASES, ids=[c[0] for c in SPF_CASES])
async def test_spf(name, txt, a, mx, ip, mail_from, helo, expected):
    res = await mailauth.check_spf(DictDns(txt, a, mx), ip, mail_from, helo)
    assert res.result == expected, res.reason


async def test_spf_identity_and_lookup_counting():
    dns = DictDns({"helo.test": ["v=spf1 -all"]})
    res = await mailauth.check_spf(dns, "192.0.2.1", "", "helo.test.")
    assert (res.mailfrom, res.domain, res.result) == ("postmaster@helo.test", "helo.test", "fail")
    res = await mailauth.check_spf(dns, "192.0.2.1", "<>", "helo.test")
    assert (res.mailfrom, res.result) == ("postmaster@helo.test", "fail")
    dns = DictDns({"s.test": ["v=spf1 ip4:192.0.2.1 a:never.test -all"]})
    assert (await mailauth.check_spf(dns, "192.0.2.1", "a@s.test", "h")).result == "pass"
    assert dns.queries == ["s.test"]  # evaluation stops at the first match


DKIM_KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)
DKIM_PEM = DKIM_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
DKIM_TXT = "v=DKIM1; k=rsa; p=" + base64.b64encode(DKIM_KEY.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
MESSAGE = (b"From: Ann <ann@s.test>\r\nTo: bob@example.test\r\nSubject: signed\r\n"
           b"Message-ID: <1@s.test>\r\n\r\nHello Bob.\r\n")


def signed(message: bytes = MESSAGE, domain: bytes = b"s.test", selector: bytes = b"sel") -> bytes:
    return dkim.sign(message, selector, domain, DKIM_PEM, include_headers=[b"from", b"to", b"subject"]) + message


@pytest.mark.parametrize(
    "raw, zone, expected",
    [
        (signed(), {"sel._domainkey.s.test": [DKIM_TXT]}, [("pass", "s.test", "sel")]),
        (signed().replace(b"Hello Bob.", b"Hello Eve."), {"sel._domainkey.s.test": [DKIM_TXT]},
         [("fail", "s.test", "sel")]),
        (signed().replace(b"Subject: signed", b"Subject: changed"), {"sel._domainkey.s.test": [DKIM_TXT]},
         [("fail", "s.test", "sel")]),
        (signed(), {}, [("permerror", "s.test", "sel")]),
        (signed(), {"sel._domainkey.s.test": ["v=DKIM1; k=rsa; p=bm90IGEga2V5"]}, [("permerror", "s.test", "sel")]),
        (signed(), {"sel._domainkey.s.test": TEMP}, [("temperror", "s.test", "sel")]),
        (b"DKIM-Signature: v=1; a=rsa-sha256; d=s.test\r\n" + MESSAGE, {}, [("neutral", "", "")]),
        (MESSAGE, {}, []),
        (b" a continuation with nothing to continue\r\n" + signed(), {"sel._domainkey.s.test": [DKIM_TXT]}, []),
        (signed(signed(domain=b"esp.test", selector=b"k1")), {"sel._domainkey.s.test": [DKIM_TXT]},
         [("pass", "s.test", "sel"), ("permerror", "esp.test", "k1")]),
    ],
    ids=["pass", "body altered", "signed header altered", "no key", "bad key", "key temperror", "malformed",
         "unsigned", "unreadable header block", "two signatures"],
)
async def test_dkim(raw, zone, expected):
    got = await mailauth.check_dkim(DictDns(zone), raw)
    assert [(r.result, r.domain, r.selector) for r in got] == expected


async def test_dkim_caps_the_number_of_signatures():
    raw = MESSAGE
    for _ in range(4):
        raw = signed(raw)
    assert len(await mailauth.check_dkim(DictDns({"sel._domainkey.s.test": [DKIM_TXT]}), raw, 3)) == 3


def spf(result: str, domain: str = "s.test") -> SpfResult:
    return SpfResult(result, f"a@{domain}", domain)


def dk(result: str, domain: str = "s.test") -> DkimResult:
    return DkimResult(result, domain, "sel")


def from_(domain: str) -> bytes:
    return f"From: <ann@{domain}>\r\nSubject: x\r\n\r\nbody\r\n".encode()


DMARC_CASES = [
    # (name, txt zone, raw, spf, dkim, sample, expected (result, policy))
    ("spf aligned", {"_dmarc.s.test": ["v=DMARC1; p=reject"]}, from_("s.test"), spf("pass"), [], 0.0,
     ("pass", "reject")),
    ("relaxed subdomain", {"_dmarc.s.test": ["v=DMARC1; p=reject"]}, from_("s.test"), spf("pass", "bounce.s.test"),
     [], 0.0, ("pass", "reject")),
    ("strict spf", {"_dmarc.s.test": ["v=DMARC1; p=reject; aspf=s"]}, from_("s.test"), spf("pass", "bounce.s.test"),
     [], 0.0, ("fail", "reject")),
    ("dkim aligned", {"_dmarc.s.test": ["v=DMARC1; p=reject"]}, from_("s.test"), spf("fail", "other.test"),
     [dk("pass")], 0.0, ("pass", "reject")),
    ("strict dkim", {"_dmarc.s.test": ["v=DMARC1; p=reject; adkim=s"]}, from_("s.test"), spf("none", "other.test"),
     [dk("pass", "mail.s.test")], 0.0, ("fail", "reject")),
    ("dkim of a third party", {"_dmarc.s.test": ["v=DMARC1; p=quarantine"]}, from_("s.test"), spf("pass", "esp.test"),
     [dk("pass", "esp.test")], 0.0, ("fail", "quarantine")),
    ("failed dkim does not align", {"_dmarc.s.test": ["v=DMARC1; p=reject"]}, from_("s.test"), spf("softfail"),
     [dk("fail")], 0.0, ("fail", "reject")),
    ("p=none", {"_dmarc.s.test": ["v=DMARC1; p=none"]}, from_("s.test"), spf("fail"), [], 0.0, ("fail", "none")),
    ("pct sampled in", {"_dmarc.s.test": ["v=DMARC1; p=reject; pct=50"]}, from_("s.test"), spf("fail"), [], 0.2,
     ("fail", "reject")),
    ("pct sampled out", {"_dmarc.s.test": ["v=DMARC1; p=reject; pct=50"]}, from_("s.test"), spf("fail"), [], 0.7,
     ("fail", "quarantine")),
    ("pct=0 quarantine", {"_dmarc.s.test": ["v=DMARC1; p=quarantine; pct=0"]}, from_("s.test"), spf("fail"), [], 0.0,
     ("fail", "none")),
    ("no record", {}, from_("s.test"), spf("fail"), [], 0.0, ("none", "")),
    ("org fallback uses sp", {"_dmarc.s.test": ["v=DMARC1; p=reject; sp=quarantine"]}, from_("news.s.test"),
     spf("fail"), [], 0.0, ("fail", "quarantine")),
    ("org fallback without sp", {"_dmarc.s.test": ["v=DMARC1; p=reject"]}, from_("news.s.test"), spf("fail"), [],
     0.0, ("fail", "reject")),
    ("own record beats org", {"_dmarc.s.test": ["v=DMARC1; p=reject"], "_dmarc.news.s.test": ["v=DMARC1; p=none"]},
     from_("news.s.test"), spf("fail"), [], 0.0, ("fail", "none")),
    ("two-label suffix", {"_dmarc.s.co.uk": ["v=DMARC1; p=reject"]}, from_("mail.s.co.uk"), spf("pass", "s.co.uk"),
     [], 0.0, ("pass", "reject")),
    ("not a dmarc record", {"_dmarc.s.test": ["v=spf1 -all"]}, from_("s.test"), spf("fail"), [], 0.0, ("none", "")),
    ("bad p, no rua", {"_dmarc.s.test": ["v=DMARC1; p=bogus"]}, from_("s.test"), spf("fail"), [], 0.0,
     ("permerror", "")),
    ("bad p with rua", {"_dmarc.s.test": ["v=DMARC1; p=bogus; rua=mailto:d@s.test"]}, from_("s.test"), spf("fail"),
     [], 0.0, ("fail", "none")),
    ("two records", {"_dmarc.s.test": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]}, from_("s.test"), spf("fail"), [],
     0.0, ("permerror", "")),
    ("record temperror", {"_dmarc.s.test": TEMP}, from_("s.test"), spf("fail"), [], 0.0, ("temperror", "")),
    ("spf temperror", {"_dmarc.s.test": ["v=DMARC1; p=reject"]}, from_("s.test"), spf("temperror"), [], 0.0,
     ("temperror", "reject")),
    # A lookup failure of an identifier that could not align changes nothing: the
    # sender cannot buy a temperror with its own slow SPF include or a bogus selector.
    ("unaligned spf temperror", {"_dmarc.s.test": ["v=DMARC1; p=reject"]}, from_("s.test"),
     spf("temperror", "attacker.test"), [], 0.0, ("fail", "reject")),
    ("unaligned dkim temperror", {"_dmarc.s.test": ["v=DMARC1; p=reject"]}, from_("s.test"), spf("none", "x.test"),
     [dk("temperror", "attacker.test")], 0.0, ("fail", "reject")),
    ("aligned dkim temperror", {"_dmarc.s.test": ["v=DMARC1; p=reject"]}, from_("s.test"), spf("none", "x.test"),
     [dk("temperror", "s.test")], 0.0, ("temperror", "reject")),
    ("registrable domains under a public suffix do not align",
     {"_dmarc.bank.com.tw": ["v=DMARC1; p=reject"]}, from_("bank.com.tw"), spf("none", "x.test"),
     [dk("pass", "attacker.com.tw")], 0.0, ("fail", "reject")),
    ("no From", {"_dmarc.s.test": ["v=DMARC1; p=reject"]}, b"Subject: x\r\n\r\nbody\r\n", spf("pass"), [], 0.0,
     ("permerror", "")),
    ("second From cannot hide a spoof", {"_dmarc.s.test": ["v=DMARC1; p=reject"]},
     b"From: a@s.test, b@other.test\r\n\r\nbody\r\n", spf("pass", "other.test"), [], 0.0, ("fail", "reject")),
    ("strictest failing From", {"_dmarc.s.test": ["v=DMARC1; p=quarantine"], "_dmarc.t.test": ["v=DMARC1; p=reject"]},
     b"From: a@s.test\r\nFrom: b@t.test\r\n\r\nbody\r\n", spf("pass", "x.test"), [], 0.0, ("fail", "reject")),
    ("every From aligned", {"_dmarc.s.test": ["v=DMARC1; p=reject"]},
     b"From: a@s.test, b@mail.s.test\r\n\r\nbody\r\n", spf("pass"), [], 0.0, ("pass", "reject")),
    ("too many From domains", {}, ("From: " + ", ".join(f"a@d{i}.test" for i in range(6)) + "\r\n\r\nx\r\n").encode(),
     spf("pass"), [], 0.0, ("permerror", "")),
]


@pytest.mark.parametrize("name, txt, raw, spf_res, dkims, sample, expected", DMARC_CASES,
                         ids=[c[0] for c in DMARC_CASES])
async def test_dmarc(name, txt, raw, spf_res, dkims, sample, expected):
    res = await mailauth.check_dmarc(DictDns(txt), raw, spf_res, dkims, lambda: sample)
    assert (res.result, res.policy) == expected, res.reason


@pytest.mark.parametrize(
    "domain, org",
    [("s.test", "s.test"), ("a.b.s.test", "s.test"), ("mail.s.co.uk", "s.co.uk"), ("S.TEST.", "s.test"),
     ("localhost", "localhost"), ("mail.bank.com.tw", "bank.com.tw"), ("x.ltd.uk", "x.ltd.uk"),
     ("com.tw", "com.tw")],
)
def test_organizational_domain(domain, org):
    assert mailauth.organizational_domain(domain) == org


def test_parse_dmarc_tags():
    rec = mailauth.parse_dmarc("v=DMARC1;p=Quarantine; sp=none ;adkim=s; aspf=x; pct=200")
    assert rec == mailauth.DmarcRecord(p="quarantine", sp="none", adkim="s", aspf="r", pct=100)
    assert mailauth.parse_dmarc("p=reject; v=DMARC1") is None  # v= must come first


def test_header_value():
    res = AuthResults(
        SpfResult("pass", "ann@s.test", "s.test"),
        [DkimResult("pass", "s.test", "sel"), DkimResult("fail", "esp.test", "k1", "body hash mismatch (got x)")],
        DmarcResult("pass", "s.test", "reject", "reject"),
    )
    assert mailauth.header_value("mx.example.test", res) == (
        "mx.example.test;\r\n\tspf=pass smtp.mailfrom=ann@s.test;\r\n\tdkim=pass header.d=s.test header.s=sel;"
        "\r\n\tdkim=fail (body hash mismatch \\(got x\\)) header.d=esp.test header.s=k1;"
        "\r\n\tdmarc=pass (p=reject) header.from=s.test"
    )
    assert mailauth.header("mx.example.test", res).startswith(b"Authentication-Results: mx.example.test;\r\n\t")
    assert res.summary().to_dict() == {"spf": "pass", "dkim": "pass", "dmarc": "pass", "policy": "reject",
                                       "spf_domain": "s.test", "dkim_domains": ["s.test"], "from_domain": "s.test"}


def test_header_quotes_what_is_not_a_token():
    res = AuthResults(SpfResult("none", 'we "ird"\r\n@s.test', "s.test"), [DkimResult("neutral", reason="a)\x00(b")],
                      DmarcResult("none"))
    value = mailauth.header_value("mx.example.test", res)
    assert 'smtp.mailfrom="we \\"ird\\"@s.test"' in value
    assert "dkim=neutral (a\\)\\(b)" in value
    assert value.endswith("dmarc=none")
    assert all(line == line.strip("\r") for line in value.split("\r\n"))  # no stray CR or LF from input
    assert "\n" not in value.replace("\r\n", "")


async def test_authenticate_runs_all_three():
    zone = {"s.test": ["v=spf1 ip4:192.0.2.1 -all"], "sel._domainkey.s.test": [DKIM_TXT],
            "_dmarc.s.test": ["v=DMARC1; p=reject"]}
    res = await mailauth.authenticate(DictDns(zone), signed(), "192.0.2.9", "ann@s.test", "h.test")
    assert (res.spf.result, [d.result for d in res.dkim], res.dmarc.result) == ("fail", ["pass"], "pass")
    assert res.summary().dkim_domains == ("s.test",)


def verdict(spf_result: str, dmarc_result: str, policy: str = "") -> AuthResults:
    return AuthResults(spf(spf_result), [], DmarcResult(dmarc_result, "s.test", policy, policy))


@pytest.mark.parametrize(
    "res, settings, expected",
    [
        (verdict("pass", "pass", "reject"), {}, ("inbox", "")),
        (verdict("fail", "fail", "reject"), {}, ("inbox", "550 5.7.1")),
        (verdict("fail", "fail", "reject"), {"dmarc_reject_action": "junk"}, ("junk", "")),
        (verdict("fail", "fail", "reject"), {"dmarc_reject_action": "inbox"}, ("inbox", "")),
        (verdict("fail", "fail", "quarantine"), {}, ("junk", "")),
        (verdict("fail", "fail", "quarantine"), {"dmarc_quarantine_action": "inbox"}, ("inbox", "")),
        (verdict("fail", "fail", "none"), {"spf_fail_action": "reject"}, ("inbox", "")),  # the owner said none
        (verdict("fail", "none"), {}, ("inbox", "")),
        (verdict("fail", "none"), {"spf_fail_action": "junk"}, ("junk", "")),
        (verdict("fail", "none"), {"spf_fail_action": "reject"}, ("inbox", "550 5.7.23")),
        (verdict("softfail", "none"), {"spf_fail_action": "reject"}, ("inbox", "")),
        (verdict("temperror", "temperror", "reject"), {}, ("junk", "")),  # accepted, not trusted
        (verdict("temperror", "temperror", "quarantine"), {}, ("junk", "")),
        (verdict("temperror", "temperror", ""), {}, ("inbox", "")),
        (AuthResults(spf("pass"), [], DmarcResult("permerror")), {}, ("junk", "")),  # no usable From domain
        (verdict("pass", "permerror"), {}, ("inbox", "")),  # the domain's record is broken: as if none
        (verdict("temperror", "temperror", "reject"), {"dns_error_action": "tempfail"}, ("inbox", "451 4.4.3")),
        (verdict("temperror", "temperror", ""), {"dns_error_action": "tempfail"}, ("inbox", "451 4.4.3")),
        (verdict("temperror", "temperror", "none"), {"dns_error_action": "tempfail"}, ("inbox", "")),
        (verdict("temperror", "none"), {"spf_fail_action": "reject", "dns_error_action": "tempfail"},
         ("inbox", "")),
    ],
)
def test_decide(res, settings, expected):
    from raymail.config import MailAuthConfig

    got = mailauth.decide(res, MailAuthConfig(**settings))
    assert got.folder == expected[0] and got.reply.startswith(expected[1]) and bool(got.reply) == bool(expected[1])


def test_unavailable_is_temperror_and_accepted_by_default():
    from raymail.config import MailAuthConfig

    res = mailauth.unavailable("<>", "helo.test.", "internal error: boom")
    assert (res.spf.result, res.spf.mailfrom, res.dmarc.result) == ("temperror", "postmaster@helo.test", "temperror")
    assert mailauth.decide(res, MailAuthConfig()) == mailauth.Decision()
    assert "spf=temperror smtp.mailfrom=postmaster@helo.test" in mailauth.header_value("mx.test", res)


async def test_slow_dns_is_cut_off_as_temperror():
    class SlowDns(DictDns):
        async def txt(self, name: str) -> list[str]:
            await asyncio.sleep(5)
            return []

    started = time.monotonic()
    res = await mailauth.authenticate(SlowDns(), MESSAGE, "192.0.2.1", "ann@s.test", "h.test", timeout_s=0.05)
    assert time.monotonic() - started < 1
    assert (res.spf.result, res.dmarc.result) == ("temperror", "temperror")
    assert "longer than 0.05 s" in res.spf.reason
