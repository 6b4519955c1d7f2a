"""raymail/dns.py against a real authoritative server (NSD on loopback): answers,
the empty answers mail needs told apart from failures, the TTL cache."""

from __future__ import annotations

import socket

import pytest

from raymail.dns import DnsTempError, NullMx, Resolver

ZONE = """$ORIGIN resolve.test.
$TTL 300
@\tIN\tSOA\tns.resolve.test. hostmaster.resolve.test. 1 3600 600 86400 60
@\tIN\tNS\tns.resolve.test.
ns\tIN\tA\t127.0.0.1
@\tIN\tMX\t20 mx2.resolve.test.
@\tIN\tMX\t10 mx1.resolve.test.
@\tIN\tTXT\t"v=spf1 " "ip4:192.0.2.1 -all"
mx1\tIN\tA\t192.0.2.10
mx2\tIN\tA\t192.0.2.20
mx2\tIN\tAAAA\t2001:db8::20
implicit\tIN\tA\t192.0.2.30
nomail\tIN\tMX\t0 .
"""


@pytest.fixture(scope="module")
def nsd():
    from dnsserver import NsdServer

    server = NsdServer({"resolve.test": ZONE})
    yield server
    server.stop()


@pytest.fixture
def resolver(nsd) -> Resolver:
    return Resolver(("127.0.0.1",), nsd.port, timeout_s=2.0)


async def test_mx_in_preference_order_and_addresses(resolver):
    assert await resolver.mx("resolve.test") == [(10, "mx1.resolve.test"), (20, "mx2.resolve.test")]
    assert await resolver.addresses("mx2.resolve.test") == ["192.0.2.20", "2001:db8::20"]


async def test_txt_strings_are_joined(resolver):
    assert await resolver.txt("resolve.test") == ["v=spf1 ip4:192.0.2.1 -all"]


async def test_no_mx_means_the_domain_itself_and_null_mx_means_no_mail(resolver):
    assert await resolver.mx("implicit.resolve.test") == [(0, "implicit.resolve.test")]  # RFC 5321 5.1
    with pytest.raises(NullMx):
        await resolver.mx("nomail.resolve.test")  # RFC 7505
    assert await resolver.mx("nowhere.resolve.test") == []  # NXDOMAIN: nothing, not an error


async def test_answers_are_cached_for_their_ttl(resolver):
    await resolver.txt("resolve.test")
    before = resolver.lookups
    for _ in range(5):
        await resolver.txt("RESOLVE.test.")  # the same name, however spelled
    assert resolver.lookups == before


async def test_a_server_that_does_not_answer_is_a_temporary_failure():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        r = Resolver(("127.0.0.1",), silent.getsockname()[1], timeout_s=0.5)
        with pytest.raises(DnsTempError):
            await r.txt("resolve.test")


async def test_a_name_that_cannot_exist_is_no_answer_not_a_failure(resolver):
    # A DKIM selector of 70 characters is not a DNS name: nothing to find, nothing to retry.
    assert await resolver.txt("s" * 70 + "._domainkey.resolve.test") == []
    assert await resolver.txt("a..b.resolve.test") == []
