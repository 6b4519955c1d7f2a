"""The SMTP MX: real SMTP clients (Python's smtplib over real sockets)."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import ssl

import pytest
from helpers import recv_json


def mx(app) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", app.deployment.smtp_port, timeout=10)


def raw_message(to: str, subject: str, body: str = "hello over smtp") -> bytes:
    return (f"From: Zed <zed@elsewhere.test>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}@elsewhere.test>\r\n\r\n{body}\r\n").encode()


async def test_mx_delivers_to_local_users_and_pushes(app):
    bob, carol = app.user(), app.user()
    async with app.ws(bob["token"]) as ws:
        await recv_json(ws)
        with mx(app) as s:
            code, caps = s.ehlo("client.elsewhere.test")
            assert code == 250 and b"SIZE" in caps
            refused = s.sendmail("zed@elsewhere.test", [bob["email"], carol["email"]],
                                 raw_message(bob["email"], "via mx"))
            assert refused == {}
        push = await recv_json(ws)
        assert push["type"] == "email.new" and push["email"]["subject"] == "via mx"
        assert push["email"]["from"] == {"name": "Zed", "email": "zed@elsewhere.test"}
    for user in (bob, carol):
        async with app.client(user["token"]) as c:
            page = (await c.get("/v1/emails")).json()
            assert page["total"] == 1
            raw = (await c.get(f"/v1/emails/{page['emails'][0]['id']}/raw")).content
            assert raw.startswith(b"Return-Path: <zed@elsewhere.test>\r\nReceived: from client.elsewhere.test")
            assert raw.endswith(raw_message(bob["email"], "via mx"))  # the original bytes, kept
            assert (await c.get("/v1/search", params={"q": "smtp"})).json()["total"] == 1


@pytest.mark.parametrize(
    "rcpt, code, text",
    [("nobody-at-all@example.test", 550, b"5.1.1"), ("someone@elsewhere.test", 554, b"5.7.1"),
     ("not an address", 501, b"5.1.3")],
)
async def test_rcpt_refusals(app, rcpt, code, text):
    with mx(app) as s:
        s.ehlo("client.test")
        s.mail("zed@elsewhere.test")
        got, msg = s.rcpt(rcpt)
        assert got == code and text in msg


def _session(app, data: bytes, rcpt: str) -> bytes:
    """A hand-driven SMTP session: returns the server's reply to the end of DATA."""
    with socket.create_connection(("127.0.0.1", app.deployment.smtp_port), timeout=10) as sock:
        f = sock.makefile("rb")
        f.readline()
        for line in (b"EHLO client.test\r\n", b"MAIL FROM:<zed@elsewhere.test>\r\n", f"RCPT TO:<{rcpt}>\r\n".encode(),
                     b"DATA\r\n"):
            sock.sendall(line)
            while True:
                reply = f.readline()
                if reply[3:4] != b"-":
                    break
        sock.sendall(data)
        return f.readline()


@pytest.mark.parametrize(
    "data",
    [b"Subject: a\r\n\r\nline one\nline two\r\n.\r\n",  # bare LF
     b"Subject: a\r\n\r\nline one\rline two\r\n.\r\n",  # bare CR
     b"Subject: a\r\n\r\nhi\n.\r\nMAIL FROM:<x@y.test>\r\n.\r\n",  # \n.\r\n smuggling
     b"Subject: a\r\n\r\nhi\r.\r\nRCPT TO:<x@y.test>\r\n.\r\n"],  # \r.\r\n smuggling
)
async def test_bare_line_endings_are_refused_and_nothing_is_smuggled(app, data):
    bob = app.user()
    reply = await asyncio.to_thread(_session, app, data, bob["email"])
    assert reply.startswith(b"550 5.6.11"), reply
    async with app.client(bob["token"]) as c:
        assert (await c.get("/v1/emails")).json()["total"] == 0


async def test_oversized_message_refused(ray_cluster, tmp_path):
    from conftest import start_app

    small = start_app(tmp_path, limits={"max_message_bytes": 5000})
    try:
        bob = small.user()
        with smtplib.SMTP("127.0.0.1", small.deployment.smtp_port, timeout=10) as s:
            s.ehlo("client.test")
            assert s.has_extn("size") and s.esmtp_features["size"] == "5000"
            with pytest.raises(smtplib.SMTPSenderRefused) as info:
                s.sendmail("zed@elsewhere.test", [bob["email"]], raw_message(bob["email"], "big", "x" * 6000),
                           mail_options=["SIZE=7000"])
            assert info.value.smtp_code == 552
        with smtplib.SMTP("127.0.0.1", small.deployment.smtp_port, timeout=10) as s:
            s.ehlo("client.test")
            s.mail("zed@elsewhere.test")  # no SIZE given: refused when DATA runs past the limit
            assert s.rcpt(bob["email"])[0] == 250
            code, _ = s.data(raw_message(bob["email"], "big", "\r\n".join(["x" * 70] * 100)))
            assert code == 552
            s.mail("zed@elsewhere.test")
            assert s.rcpt(bob["email"])[0] == 250
            code, _ = s.data(raw_message(bob["email"], "long", "y" * 1200))
            assert code == 500  # a line over 1,000 characters (RFC 5321 4.5.3.1.6)
        async with small.client(bob["token"]) as c:
            assert (await c.get("/v1/emails")).json()["total"] == 0
    finally:
        small.deployment.stop()


def _tls() -> ssl.SSLContext:
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the server's certificate is self-signed on first start
    return ctx


def submission(app) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", app.deployment.submission_port, timeout=10)


async def test_mx_offers_starttls(app):
    bob = app.user()
    with mx(app) as s:
        s.ehlo("client.test")
        assert s.has_extn("starttls")
        s.starttls(context=_tls())
        s.ehlo("client.test")
        assert s.sendmail("zed@elsewhere.test", [bob["email"]], raw_message(bob["email"], "over tls")) == {}
    async with app.client(bob["token"]) as c:
        eid = (await c.get("/v1/emails")).json()["emails"][0]["id"]
        assert b"with ESMTPS" in (await c.get(f"/v1/emails/{eid}/raw")).content


async def test_submission_sends_as_the_user(app):
    alice, bob = app.user(), app.user()
    msg = (f"From: Alice <{alice['email']}>\r\nTo: {bob['email']}\r\nSubject: from my mail client\r\n"
           f"Message-ID: <client-1@example.test>\r\n\r\nsent with smtplib\r\n").encode()
    with submission(app) as s:
        s.ehlo("laptop")
        s.starttls(context=_tls())
        s.ehlo("laptop")
        s.login(alice["email"], alice["token"])
        assert s.sendmail(alice["email"], [bob["email"]], msg) == {}
    async with app.client(bob["token"]) as c:
        assert (await c.get("/v1/emails")).json()["emails"][0]["subject"] == "from my mail client"
    async with app.client(alice["token"]) as c:
        sent = (await c.get("/v1/emails", params={"folder": "sent"})).json()
        assert sent["total"] == 1 and sent["emails"][0]["unread"] is False


async def test_submission_refusals(app):
    alice, bob = app.user(), app.user()
    with submission(app) as s:  # AUTH before STARTTLS
        s.ehlo("laptop")
        code, _ = s.docmd("AUTH", "PLAIN AGFAYg==")
        assert code == 530
        code, _ = s.docmd("MAIL", f"FROM:<{alice['email']}>")
        assert code == 530
    with submission(app) as s:
        s.ehlo("laptop")
        s.starttls(context=_tls())
        s.ehlo("laptop")
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            s.login(alice["email"], "rm_wrong")
        assert info.value.smtp_code == 535
        s.login(alice["email"], alice["token"])
        code, _ = s.mail(bob["email"])  # as somebody else
        assert code == 553
        assert s.mail(alice["email"])[0] == 250
        assert s.rcpt("someone@elsewhere.test")[0] == 550  # no outbound delivery yet
        assert s.rcpt(bob["email"])[0] == 250
        forged = (f"From: {bob['email']}\r\nTo: {bob['email']}\r\nSubject: forged\r\n\r\nx\r\n").encode()
        code, _ = s.data(forged)
        assert code == 553
    async with app.client(bob["token"]) as c:
        assert (await c.get("/v1/emails")).json()["total"] == 0


async def test_auth_lockout_after_repeated_failures(ray_cluster, tmp_path):
    from conftest import start_app

    app = start_app(tmp_path)  # its own gateway: the lockout is per client address, all tests share 127.0.0.1
    alice = app.user()
    try:
        await asyncio.to_thread(_lockout, app, alice)
    finally:
        app.deployment.stop()


def _lockout(app, alice) -> None:
    def plain(s: smtplib.SMTP, password: str) -> int:  # one AUTH attempt (login() would try two mechanisms)
        s.user, s.password = alice["email"], password
        try:
            s.auth("PLAIN", s.auth_plain)
            return 235
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code

    with submission(app) as s:
        s.ehlo("laptop")
        s.starttls(context=_tls())
        s.ehlo("laptop")
        codes = [plain(s, "rm_wrong") for _ in range(6)]
        assert codes == [535] * 5 + [454]
        assert plain(s, alice["token"]) == 454  # even the right token, for a while


async def test_mx_rate_limit_per_client_address(ray_cluster, tmp_path):
    from conftest import start_app

    app = start_app(tmp_path, limits={"mx_messages_per_minute": 3})
    try:
        bob = app.user()

        def run() -> list[int]:
            codes = []
            with smtplib.SMTP("127.0.0.1", app.deployment.smtp_port, timeout=10) as s:
                s.ehlo("client.test")
                for i in range(4):
                    code, _ = s.mail("zed@elsewhere.test")
                    codes.append(code)
                    if code == 250:
                        s.rcpt(bob["email"])
                        s.data(raw_message(bob["email"], f"r{i}"))
            return codes

        assert await asyncio.to_thread(run) == [250, 250, 250, 450]
        async with app.client(bob["token"]) as c:
            assert (await c.get("/v1/emails")).json()["total"] == 3
    finally:
        app.deployment.stop()


async def test_intake_events_reach_the_event_log(app):
    from helpers import event_rows

    bob = app.user()
    with mx(app) as s:
        s.ehlo("client.test")
        s.sendmail("events@elsewhere.test", [bob["email"]], raw_message(bob["email"], "logged"))
        s.mail("events@elsewhere.test")
        assert s.rcpt("nobody-here@example.test")[0] == 550
    rows = await event_rows(app, lambda r: r["sender"] == "events@elsewhere.test" and r["event"] == "rejected")
    mine = [(r["event"], r["smtp_code"], r["recipient_domain"]) for r in rows if r["sender"] == "events@elsewhere.test"]
    assert ("accepted", 250, "example.test") in mine and ("rejected", 550, "example.test") in mine


def _replies(f, n: int) -> list[bytes]:
    """The next ``n`` complete replies (multi-line ones joined) from a socket file."""
    out = []
    while len(out) < n:
        lines = []
        while True:
            line = f.readline()
            assert line, f"connection closed after {out!r}"
            lines.append(line)
            if line[3:4] != b"-":
                break
        out.append(b"".join(lines))
    return out


async def test_pipelining_is_offered_and_a_pipelined_group_is_answered_in_order(app):
    bob = app.user()
    with socket.create_connection(("127.0.0.1", app.deployment.smtp_port), timeout=10) as sock:
        f = sock.makefile("rb")
        assert _replies(f, 1)[0].startswith(b"220")
        sock.sendall(b"EHLO client.test\r\n")
        ehlo = _replies(f, 1)[0]
        assert b"250-PIPELINING\r\n" in ehlo and ehlo.rstrip().endswith(b"250 HELP")
        # One packet: MAIL, a refused RCPT, a good RCPT, DATA; the content goes after
        # the 354, then the next transaction's MAIL rides with the end of data.
        sock.sendall(b"MAIL FROM:<zed@elsewhere.test>\r\nRCPT TO:<nobody-at-all@example.test>\r\n"
                     + f"RCPT TO:<{bob['email']}>\r\n".encode() + b"DATA\r\n")
        mail, bad, good, data = _replies(f, 4)
        assert (mail[:3], bad[:3], good[:3], data[:3]) == (b"250", b"550", b"250", b"354")
        sock.sendall(raw_message(bob["email"], "pipelined") + b".\r\nMAIL FROM:<zed@elsewhere.test>\r\n"
                     + b"RCPT TO:<nobody-at-all@example.test>\r\nDATA\r\n")
        stored, mail2, bad2, data2 = _replies(f, 4)
        assert stored.startswith(b"250 2.0.0") and mail2[:3] == b"250" and bad2[:3] == b"550"
        assert data2[:3] in (b"503", b"554")  # no valid recipient: no 354, so no content follows
        sock.sendall(b"QUIT\r\n")
        assert _replies(f, 1)[0].startswith(b"221")
    async with app.client(bob["token"]) as c:
        page = (await c.get("/v1/emails")).json()
        assert [e["subject"] for e in page["emails"]] == ["pipelined"]
