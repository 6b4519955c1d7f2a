"""Connection admission per client address: caps and rates, no I/O."""

from __future__ import annotations

from raymail.smtp_admission import Admission


def test_concurrent_cap_per_address():
    a = Admission(max_concurrent=2, per_minute=100)
    assert a.admit("192.0.2.1", 0.0) is None
    assert a.admit("192.0.2.1", 0.0) is None
    refused = a.admit("192.0.2.1", 0.0)
    assert refused is not None and refused.startswith("421 4.7.0 Too many connections")
    assert a.admit("192.0.2.2", 0.0) is None  # another address has its own count
    a.release("192.0.2.1")
    assert a.open_sessions("192.0.2.1") == 1
    assert a.admit("192.0.2.1", 0.0) is None


def test_a_refused_connection_is_not_counted():
    a = Admission(max_concurrent=1, per_minute=100)
    assert a.admit("192.0.2.1", 0.0) is None
    assert a.admit("192.0.2.1", 0.0) is not None
    a.release("192.0.2.1")
    assert a.open_sessions("192.0.2.1") == 0
    a.release("192.0.2.1")  # a stray release never goes negative
    assert a.open_sessions("192.0.2.1") == 0


def test_connect_rate_per_minute_refills():
    a = Admission(max_concurrent=100, per_minute=3)
    for _ in range(3):
        assert a.admit("192.0.2.1", 0.0) is None
        a.release("192.0.2.1")
    refused = a.admit("192.0.2.1", 0.0)
    assert refused is not None and "try again in 20 s" in refused
    assert a.admit("192.0.2.1", 20.0) is None  # one token back after 60/3 s
