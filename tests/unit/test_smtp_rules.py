"""raymail/smtp_rules.py: recipient decisions, smuggling checks, trace headers."""

from __future__ import annotations

import pytest

from raymail import smtp_rules

LOCAL = {"example.test"}
USERS = {"bob@example.test"}


def user_exists(addr: str) -> bool:
    return addr.lower() in USERS  # the directory compares addresses case-insensitively


def reply(addr: str) -> str:
    return smtp_rules.rcpt_reply(addr, LOCAL.__contains__, user_exists)


@pytest.mark.parametrize(
    "addr, code",
    [("bob@example.test", "250"), ("Bob@EXAMPLE.test", "250"), ("nobody@example.test", "550 5.1.1"),
     ("bob@elsewhere.test", "554 5.7.1"), ("bob@sub.example.test", "554 5.7.1"), ("no-at-sign", "501"),
     ("a@b", "501"), ("bob@example.test\r\nRCPT TO:<x@y.test>", "501")],
)
def test_rcpt_reply(addr, code):
    assert reply(addr).startswith(code)


def test_submission_says_outbound_is_not_enabled():
    r = smtp_rules.submission_rcpt_reply("x@elsewhere.test", LOCAL.__contains__, USERS.__contains__)
    assert r.startswith("550 5.7.1") and "other domains" in r
    assert smtp_rules.submission_rcpt_reply("nobody@example.test", LOCAL.__contains__,
                                            USERS.__contains__).startswith("550 5.1.1")


@pytest.mark.parametrize(
    "data, bare",
    [(b"a\r\nb\r\n", False), (b"", False), (b"a\nb\r\n", True), (b"a\rb\r\n", True), (b"a\r\n.\n", True),
     (b"\r\r\n", True), (b"a\n\r", True), (b"line\r\n\r\n", False)],
)
def test_bare_line_ending(data, bare):
    assert smtp_rules.bare_line_ending(data) is bare


def test_trace_headers():
    out = smtp_rules.trace_headers(mail_from="z@e.test", helo="mx (evil)\r\nX: y", peer_ip="192.0.2.1",
                                   hostname="mail.example.test", queue_id="q1", recipient="bob@example.test",
                                   now_s=1_700_000_000, tls=True)
    text = out.decode()
    assert text.startswith("Return-Path: <z@e.test>\r\nReceived: from mx evilX: y ([192.0.2.1])")
    assert "with ESMTPS id q1" in text and "for <bob@example.test>" in text and text.endswith("\r\n")
    assert not smtp_rules.bare_line_ending(out)  # the helo cannot inject a header line


@pytest.mark.parametrize(
    "raw, expected",
    [(b"From: Alice <Alice@Example.test>\r\n\r\nx", "alice@example.test"), (b"Subject: x\r\n\r\nx", None),
     (b"From: a@x.test, b@y.test\r\n\r\nx", None), (b"From: \"\r\n\r\n", None)],
)
def test_header_from_address(raw, expected):
    assert smtp_rules.header_from_address(raw) == expected


def test_submission_accepts_other_domains_when_outbound_is_enabled():
    def reply(addr: str) -> str:
        return smtp_rules.submission_rcpt_reply(addr, LOCAL.__contains__, USERS.__contains__, outbound_enabled=True)

    assert reply("x@elsewhere.test") == smtp_rules.OK
    assert reply("nobody@example.test").startswith("550 5.1.1")  # local domains stay exact
    assert reply("no-at-sign").startswith("501")


def test_retry_key_recognises_the_same_submission_only():
    raw = b"From: a@x.test\r\nMessage-ID: <m1@x.test>\r\n\r\nbody\r\n"
    key = smtp_rules.retry_key("u1", raw, ["B@y.test", "c@z.test"])
    assert key and key == smtp_rules.retry_key("u1", raw, ["c@z.test", "b@y.test"])  # order and case
    assert key != smtp_rules.retry_key("u2", raw, ["b@y.test", "c@z.test"])  # another sender
    assert key != smtp_rules.retry_key("u1", raw, ["b@y.test"])  # other recipients
    assert key != smtp_rules.retry_key("u1", raw.replace(b"m1", b"m2"), ["b@y.test", "c@z.test"])
    assert smtp_rules.retry_key("u1", b"From: a@x.test\r\n\r\nno id\r\n", ["b@y.test"]) == ""
    assert smtp_rules.derived_id(key, "uid", "sent") != smtp_rules.derived_id(key, "uid", "inbox")
    assert len(smtp_rules.derived_id(key, "outbound")) == 32
