"""SPF, DKIM and DMARC on the MX: real SMTP (smtplib) into a deployment whose
resolver asks a real authoritative DNS server (NSD, tests/dnsserver.py) serving
the sender domains; the client connects from 127.0.0.1."""

from __future__ import annotations

import smtplib
import socket
import time
import uuid

import pytest


def message(from_domain: str, to: str, subject: str, body: str = "Hello from a sender domain.") -> bytes:
    return (f"From: Ann <ann@{from_domain}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: Sun, 29 Nov 2026 06:00:00 +0000\r\nMessage-ID: <{uuid.uuid4().hex}@{from_domain}>\r\n\r\n"
            f"{body}\r\n").encode()


def deliver(app, mail_from: str, rcpt: str, data: bytes, helo: str = "client.test") -> tuple[int, bytes]:
    """One message over SMTP; the reply to the end of DATA."""
    with smtplib.SMTP("127.0.0.1", app.deployment.smtp_port, timeout=30) as s:
        s.ehlo(helo)
        assert s.mail(mail_from)[0] == 250
        assert s.rcpt(rcpt)[0] == 250
        return s.data(data)


async def only_email(app, user: dict, folder: str = "inbox") -> tuple[dict, bytes]:
    async with app.client(user["token"]) as c:
        page = (await c.get("/v1/emails", params={"folder": folder})).json()
        assert page["total"] == 1, page
        summary = page["emails"][0]
        raw = (await c.get(f"/v1/emails/{summary['id']}/raw")).content
        return summary, raw


def auth_header(raw: bytes) -> str:
    """Our Authentication-Results value (unfolded), read from the stored message."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    start = head.index("Authentication-Results: ")
    lines = [head[start:].split("\r\n")[0]]
    for line in head[start:].split("\r\n")[1:]:
        if not line.startswith("\t"):
            break
        lines.append(line.strip())
    return " ".join(lines)[len("Authentication-Results: "):]


@pytest.mark.parametrize(
    "domain, spf, dmarc",
    [("sender.test", "pass", "pass"), ("spffail.test", "fail", "none"), ("softfail.test", "softfail", "none"),
     ("nospf.test", "none", "none"), ("broken.test", "permerror", "permerror"), ("viamx.test", "pass", "pass"),
     ("unlisted.test", "none", "none")],
)
async def test_spf_verdicts_are_recorded_and_mail_delivered(app, domain, spf, dmarc):
    bob = app.user()
    data = message(domain, bob["email"], f"spf {domain}")
    code, _ = deliver(app, f"bounce@{domain}", bob["email"], data)
    assert code == 250
    summary, raw = await only_email(app, bob)
    assert summary["auth"]["spf"] == spf and summary["auth"]["dmarc"] == dmarc
    assert summary["auth"]["spf_domain"] == domain and summary["auth"]["dkim"] == "none"
    value = auth_header(raw)
    assert value.startswith(f"{app.config.server.hostname}; spf={spf} smtp.mailfrom=bounce@{domain}; dkim=none;")
    assert f"dmarc={dmarc}" in value
    assert raw.endswith(data)  # the original bytes follow our headers unchanged


async def test_null_sender_is_checked_as_postmaster_at_helo(app):
    bob = app.user()
    code, reply = deliver(app, "", bob["email"], message("sender.test", bob["email"], "bounce"), helo="sender.test")
    assert code == 250, reply
    summary, raw = await only_email(app, bob)
    assert summary["auth"]["spf"] == "pass"
    assert "spf=pass smtp.mailfrom=postmaster@sender.test" in auth_header(raw)
    assert raw.startswith(b"Return-Path: <>\r\n")


async def test_dkim_pass_and_dmarc_pass(app, dns_server):
    bob = app.user()
    data = dns_server.sign(message("sender.test", bob["email"], "signed"), "sender.test")
    assert deliver(app, "ann@sender.test", bob["email"], data)[0] == 250
    summary, raw = await only_email(app, bob)
    assert summary["auth"] == {"spf": "pass", "dkim": "pass", "dmarc": "pass", "policy": "reject",
                               "spf_domain": "sender.test", "dkim_domains": ["sender.test"],
                               "from_domain": "sender.test"}
    assert auth_header(raw) == (f"{app.config.server.hostname}; spf=pass smtp.mailfrom=ann@sender.test; "
                                "dkim=pass header.d=sender.test header.s=sel; "
                                "dmarc=pass (p=reject) header.from=sender.test")
    assert raw.endswith(data)


async def test_dkim_alone_satisfies_dmarc_when_spf_fails(app, dns_server):
    bob = app.user()  # dkimonly.test allows only 192.0.2.1 by SPF and publishes p=reject
    data = dns_server.sign(message("dkimonly.test", bob["email"], "forwarded"), "dkimonly.test")
    assert deliver(app, "ann@dkimonly.test", bob["email"], data)[0] == 250
    summary, _ = await only_email(app, bob)
    assert (summary["auth"]["spf"], summary["auth"]["dkim"], summary["auth"]["dmarc"]) == ("fail", "pass", "pass")


async def test_dkim_fails_when_the_body_changed_after_signing(app, dns_server):
    bob = app.user()
    data = dns_server.sign(message("sender.test", bob["email"], "altered", "Pay invoice 100."), "sender.test")
    data = data.replace(b"Pay invoice 100.", b"Pay invoice 999.")
    assert deliver(app, "ann@sender.test", bob["email"], data)[0] == 250  # DMARC still passes through SPF
    summary, raw = await only_email(app, bob)
    assert (summary["auth"]["dkim"], summary["auth"]["dkim_domains"], summary["auth"]["dmarc"]) == ("fail", [], "pass")
    assert "dkim=fail (body hash mismatch" in auth_header(raw)


async def test_dmarc_reject_refuses_at_end_of_data_and_stores_nothing(app, dns_server):
    from helpers import event_rows

    bob = app.user()
    code, reply = deliver(app, "ann@reject.test", bob["email"], message("reject.test", bob["email"], "spoof"))
    assert code == 550 and reply.startswith(b"5.7.1") and b"DMARC policy of reject.test" in reply
    # a forged signature (altered after signing) does not help either
    data = dns_server.sign(message("dkimonly.test", bob["email"], "forged", "Pay 100."), "dkimonly.test")
    code, _ = deliver(app, "ann@dkimonly.test", bob["email"], data.replace(b"Pay 100.", b"Pay 999."))
    assert code == 550
    async with app.client(bob["token"]) as c:
        for folder in ("inbox", "junk"):
            assert (await c.get("/v1/emails", params={"folder": folder})).json()["total"] == 0
    rows = await event_rows(app, lambda r: r["sender"] == "ann@reject.test" and r["event"] == "rejected")
    assert any(r["event"] == "rejected" and r["smtp_code"] == 550 and r["sender"] == "ann@reject.test"
               and "DMARC" in r["detail"] for r in rows)


async def test_every_recipient_gets_the_verdict_and_the_push_carries_it(app, dns_server):
    from helpers import recv_json

    bob, carol = app.user(), app.user()
    data = dns_server.sign(message("sender.test", bob["email"], "two of us"), "sender.test")
    async with app.ws(bob["token"]) as ws:
        await recv_json(ws)
        with smtplib.SMTP("127.0.0.1", app.deployment.smtp_port, timeout=30) as s:
            assert s.sendmail("ann@sender.test", [bob["email"], carol["email"]], data) == {}
        push = await recv_json(ws)
        assert push["type"] == "email.new" and push["email"]["auth"]["dmarc"] == "pass"
    for user in (bob, carol):
        summary, raw = await only_email(app, user)
        assert (summary["auth"]["spf"], summary["auth"]["dkim"], summary["auth"]["dmarc"]) == ("pass", "pass", "pass")
        assert raw.count(b"Authentication-Results: ") == 1 and raw.endswith(data)


async def test_dmarc_quarantine_goes_to_junk(app):
    bob = app.user()
    code, _ = deliver(app, "ann@quarantine.test", bob["email"], message("quarantine.test", bob["email"], "maybe"))
    assert code == 250
    summary, raw = await only_email(app, bob, "junk")
    assert summary["folder"] == "junk" and summary["auth"]["dmarc"] == "fail"
    assert summary["auth"]["policy"] == "quarantine"
    assert "dmarc=fail (p=quarantine) header.from=quarantine.test" in auth_header(raw)
    async with app.client(bob["token"]) as c:
        assert (await c.get("/v1/emails")).json()["total"] == 0


async def test_submitted_and_api_mail_carry_no_auth_summary(app):
    alice, bob = app.user(), app.user()
    async with app.client(alice["token"]) as c:
        r = await c.post("/v1/send", json={"recipients": [bob["email"]], "subject": "internal", "body": "hi"})
        assert r.status_code == 201, r.text
    summary, raw = await only_email(app, bob)
    assert summary["auth"] is None and b"Authentication-Results" not in raw


def _dead_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


@pytest.mark.parametrize("action, expected", [("accept", 250), ("tempfail", 451)])
async def test_unreachable_dns_is_temperror_never_a_refusal(ray_cluster, tmp_path, action, expected):
    from conftest import start_app

    dead = start_app(tmp_path, dns={"servers": ["127.0.0.1"], "port": _dead_port(), "timeout_s": 1.0},
                     mailauth={"dns_error_action": action})
    try:
        bob = dead.user()
        started = time.monotonic()
        code, reply = deliver(dead, "ann@reject.test", bob["email"], message("reject.test", bob["email"], "dns down"))
        assert time.monotonic() - started < 10
        assert code == expected  # p=reject could not even be read: never 5xx
        if expected == 451:
            assert reply.startswith(b"4.4.3")
            async with dead.client(bob["token"]) as c:
                assert (await c.get("/v1/emails")).json()["total"] == 0
            return
        summary, raw = await only_email(dead, bob)
        assert (summary["auth"]["spf"], summary["auth"]["dmarc"]) == ("temperror", "temperror")
        assert "spf=temperror smtp.mailfrom=ann@reject.test" in auth_header(raw)
    finally:
        dead.deployment.stop()


async def test_a_bogus_dkim_selector_does_not_turn_a_dmarc_reject_into_temperror(app):
    """reject.test publishes p=reject; a signature claiming d=reject.test with a
    selector that is not even a DNS name must not buy a temperror (and the inbox)."""
    bob = app.user()
    data = message("reject.test", bob["email"], "forged with a bogus selector")
    forged = (b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=reject.test; s=" + b"x" * 70
              + b"; h=from:subject; bh=AAAA; b=AAAA\r\n" + data)
    code, reply = deliver(app, "ceo@attacker.test", bob["email"], forged)
    assert code == 550 and b"DMARC" in reply, reply
    async with app.client(bob["token"]) as c:
        assert (await c.get("/v1/emails")).json()["total"] == 0


async def test_a_from_that_dmarc_cannot_read_is_junk_and_shown_as_sent(app):
    """An encoded-word is never an address (RFC 2047): the From below has no
    domain, so DMARC cannot protect anyone with it; it goes to Junk and shows as sent."""
    bob = app.user()
    data = (f"From: =?utf-8?q?ceo=40reject.test?=\r\nTo: {bob['email']}\r\nSubject: who am I\r\n\r\nhi\r\n").encode()
    code, _ = deliver(app, "x@attacker.test", bob["email"], data)
    assert code == 250
    summary, _ = await only_email(app, bob, folder="junk")
    assert summary["auth"]["dmarc"] == "permerror"
    assert summary["from"]["email"] != "ceo@reject.test"
