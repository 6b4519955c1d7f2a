"""The SMTP listeners against real peers: swaks as the client, Postfix as a relaying MTA.

swaks and Postfix are Debian packages (`make system-deps`); without them these
tests fail with what to install, they are never skipped.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import smtplib
import subprocess
import uuid

import pytest
from mta import Postfix, PostfixError, free_port, require_postfix

MAX_MESSAGE_BYTES = 20_000
SWAKS_REPLY = re.compile(r"^<(?:-|~|\*\*|~\*)\s+(\d{3})[ -](.*)$")


@pytest.fixture(scope="module")
def interop(ray_cluster, tmp_path_factory):
    """A deployment of our own: a small message limit for the 552 case."""
    from conftest import start_app

    a = start_app(tmp_path_factory.mktemp("interop"), limits={"max_message_bytes": MAX_MESSAGE_BYTES})
    yield a
    a.deployment.stop()


@pytest.fixture(scope="module")
def postfix(interop):
    """Postfix relaying example.test to our MX; it delivers its own bounces for
    elsewhere.test into a maildir, so its queue drains in every test."""
    try:
        require_postfix()
    except PostfixError as exc:
        pytest.fail(str(exc))
    with Postfix.relay_domains(free_port(), ["example.test"], ("127.0.0.1", interop.deployment.smtp_port),
                               mailboxes={"elsewhere.test": ["sender"]}, hostname="relay.postfix.test") as p:
        yield p


def swaks(port: int, *args: str) -> tuple[int, list[tuple[int, str]], str]:
    """Run swaks against 127.0.0.1:port: (exit code, the server's replies, transcript)."""
    exe = shutil.which("swaks")
    if exe is None:
        pytest.fail("swaks is not installed: run `make system-deps` (Debian package swaks)")
    out = subprocess.run([exe, "--server", "127.0.0.1", "--port", str(port), "--helo", "client.elsewhere.test",
                          "--timeout", "20", *args], capture_output=True, text=True, timeout=60)
    transcript = out.stdout + out.stderr
    replies = [(int(m[1]), m[2]) for line in transcript.splitlines() if (m := SWAKS_REPLY.match(line))]
    return out.returncode, replies, transcript


async def run_swaks(port: int, *args: str) -> tuple[int, list[tuple[int, str]], str]:
    return await asyncio.to_thread(swaks, port, *args)


async def inbox(app, user: dict, folder: str = "inbox") -> list[dict]:
    async with app.client(user["token"]) as c:
        return (await c.get("/v1/emails", params={"folder": folder})).json()["emails"]


async def raw_of(app, user: dict, eid: str) -> bytes:
    async with app.client(user["token"]) as c:
        r = await c.get(f"/v1/emails/{eid}/raw")
        assert r.status_code == 200
        return r.content


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
async def test_swaks_to_the_mx(interop, tls):
    bob = interop.user()
    subject = f"swaks mx {uuid.uuid4().hex[:8]}"
    code, replies, out = await run_swaks(
        interop.deployment.smtp_port, *(["--tls"] if tls else []), "--from", "zed@elsewhere.test",
        "--to", bob["email"], "--header", f"Subject: {subject}", "--body", "hello from swaks")
    assert code == 0, out
    assert replies[-2][0] == 250 and "queued as" in replies[-2][1], out  # the reply to the end of DATA
    [summary] = await inbox(interop, bob)
    assert summary["subject"] == subject and summary["from"]["email"] == "zed@elsewhere.test"
    raw = await raw_of(interop, bob, summary["id"])
    assert raw.startswith(b"Return-Path: <zed@elsewhere.test>\r\n")
    received = re.search(rb"\r\nReceived: from client\.elsewhere\.test \(\[127\.0\.0\.1\]\)\r\n\tby \S+ \(raymail\) "
                         rb"with (ESMTPS?) id", raw)
    assert received and received[1] == (b"ESMTPS" if tls else b"ESMTP"), raw[:400]
    assert b"X-Mailer: swaks" in raw and b"hello from swaks" in raw


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_swaks_submission_with_auth(interop, mechanism):
    alice, bob = interop.user(), interop.user()
    subject = f"swaks {mechanism} {uuid.uuid4().hex[:8]}"
    code, replies, out = await run_swaks(
        interop.deployment.submission_port, "--tls", "--auth", mechanism, "--auth-user", alice["email"],
        "--auth-password", alice["token"], "--from", alice["email"], "--to", bob["email"],
        "--header", f"Subject: {subject}")
    assert code == 0, out
    assert any(text.startswith("AUTH") and mechanism in text for _, text in replies), out  # offered after STARTTLS
    assert (235, "2.7.0 Authentication successful") in replies, out
    [got] = await inbox(interop, bob)
    assert got["subject"] == subject and got["from"]["email"] == alice["email"]
    [sent] = await inbox(interop, alice, "sent")
    assert sent["subject"] == subject and sent["unread"] is False


async def test_swaks_auth_without_tls_refused(interop):
    alice = interop.user()
    # AUTH is not offered before STARTTLS, so swaks goes on without it and is stopped at MAIL.
    code, replies, out = await run_swaks(
        interop.deployment.submission_port, "--auth-optional", "PLAIN", "--auth-user", alice["email"],
        "--auth-password", alice["token"], "--from", alice["email"], "--to", alice["email"])
    assert code == 23, out
    assert replies[-2][0] == 530 and "STARTTLS" in replies[-2][1], out
    assert not any(text.startswith("AUTH") for _, text in replies), out  # not in the EHLO reply either
    assert await inbox(interop, alice, "sent") == []


async def test_swaks_wrong_password_refused(interop):
    alice = interop.user()
    code, replies, out = await run_swaks(
        interop.deployment.submission_port, "--tls", "--auth", "PLAIN", "--auth-user", alice["email"],
        "--auth-password", "rm_not-the-token", "--from", alice["email"], "--to", alice["email"])
    assert code == 28, out
    assert any(c == 535 for c, _ in replies), out
    assert await inbox(interop, alice, "sent") == []


async def test_swaks_sending_as_someone_else_refused(interop):
    alice, bob = interop.user(), interop.user()
    code, replies, out = await run_swaks(
        interop.deployment.submission_port, "--tls", "--auth", "LOGIN", "--auth-user", alice["email"],
        "--auth-password", alice["token"], "--from", bob["email"], "--to", bob["email"])
    assert code == 23, out
    assert replies[-2][0] == 553 and "your own address" in replies[-2][1], out
    assert await inbox(interop, bob) == []


async def test_swaks_relay_attempt_refused(interop):
    code, replies, out = await run_swaks(interop.deployment.smtp_port, "--from", "zed@elsewhere.test",
                                         "--to", "someone@other.test")
    assert code == 24, out
    assert replies[-2][0] == 554 and replies[-2][1].startswith("5.7.1"), out


async def test_swaks_oversized_message_refused(interop):
    bob = interop.user()
    body = "\n".join(["x" * 70] * (MAX_MESSAGE_BYTES // 70 + 10))  # over the limit, lines of legal length
    code, replies, out = await run_swaks(interop.deployment.smtp_port, "--from", "zed@elsewhere.test",
                                         "--to", bob["email"], "--body", body)
    assert code == 26, out
    assert replies[-2][0] == 552, out
    assert await inbox(interop, bob) == []


def inject(p: Postfix, rcpt: str, subject: str) -> None:
    """Hand a message to Postfix over SMTP, as any client on the Internet would."""
    msg = (f"From: Sender <sender@elsewhere.test>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{uuid.uuid4().hex}@elsewhere.test>\r\n\r\nrelayed by postfix\r\n").encode()
    with smtplib.SMTP("127.0.0.1", p.port, timeout=10) as s:
        s.ehlo("client.elsewhere.test")
        assert s.sendmail("sender@elsewhere.test", [rcpt], msg) == {}


async def test_postfix_relays_to_the_mx_over_tls(interop, postfix):
    bob = interop.user()
    subject = f"via postfix {uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(inject, postfix, bob["email"], subject)
    await asyncio.to_thread(postfix.wait_queue_empty, 30)  # empty only once our MX answered 250
    log = postfix.log()
    assert re.search(rf"to=<{re.escape(bob['email'])}>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*"
                     r"status=sent \(250 2\.0\.0 OK queued as", log), postfix.log_tail()
    assert "TLS connection established to 127.0.0.1" in log, postfix.log_tail()
    [summary] = await inbox(interop, bob)
    assert summary["subject"] == subject
    raw = await raw_of(interop, bob, summary["id"])
    ours, theirs = raw.split(b"\r\nReceived: ")[1:3]
    assert ours.startswith(b"from relay.postfix.test ([127.0.0.1])") and b"with ESMTPS id" in ours
    assert theirs.startswith(b"from client.elsewhere.test") and b"by relay.postfix.test (Postfix) with ESMTP" in theirs


async def test_postfix_bounces_mail_for_an_unknown_user(interop, postfix):
    nobody = f"nobody-{uuid.uuid4().hex[:8]}@example.test"
    subject = f"to nobody {uuid.uuid4().hex[:8]}"
    bounces_before = postfix.count_delivered("sender@elsewhere.test")
    await asyncio.to_thread(inject, postfix, nobody, subject)  # Postfix accepts: it does not know our users
    await asyncio.to_thread(postfix.wait_queue_empty, 30)
    assert re.search(rf"to=<{re.escape(nobody)}>, relay=127\.0\.0\.1.*status=bounced \(host 127\.0\.0\.1"
                     r"\[127\.0\.0\.1\] said: 550 5\.1\.1 .*in reply to RCPT TO command\)", postfix.log()), \
        postfix.log_tail()
    dsns = [p.read_bytes() for p in postfix.delivered("sender@elsewhere.test")]
    assert len(dsns) == bounces_before + 1
    [dsn] = [d for d in dsns if nobody.encode() in d]
    assert b"Final-Recipient: rfc822; " + nobody.encode() in dsn and b"Diagnostic-Code: smtp; 550 5.1.1" in dsn
    assert subject.encode() in dsn  # the bounce carries the undelivered message
    # Refused at RCPT, so no DATA was sent: we never held the message.
