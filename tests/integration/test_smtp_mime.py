"""Hostile and broken MIME over the MX: accepted and stored exactly as received,
parsed defensively, readable through the API; never a crash."""

from __future__ import annotations

import asyncio
import smtplib

import pytest


def _nested(depth: int) -> bytes:
    head = b"".join(f"--b{i}\r\nContent-Type: multipart/mixed; boundary=b{i + 1}\r\n\r\n".encode()
                    for i in range(depth))
    tail = b"".join(f"--b{i}--\r\n".encode() for i in reversed(range(depth + 1)))
    return (b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n" + head
            + f"--b{depth}\r\nContent-Type: text/plain\r\n\r\ndeep down\r\n".encode() + tail)


CASES = {
    "deep-nesting": b"Subject: nested\r\nMIME-Version: 1.0\r\n" + _nested(400),
    "8bit-headers": ("Subject: caf\u00e9 \u65e5\u672c\r\nFrom: J\u00fcrgen <jurgen@elsewhere.test>\r\n"
                     "\r\nbody\r\n").encode("utf-8") + b"X-Latin1: \xe9t\xe9\r\n",
    "no-date-no-message-id": b"Subject: bare\r\n\r\njust a body\r\n",
    "no-headers-at-all": b"\r\nnothing but a body\r\n",
    "broken-multipart": (b"Subject: broken\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
                         b"--zz\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n"
                         b"--zz\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
                         b"Content-Disposition: attachment; filename=\"\xff\xfe.bin\"\r\n\r\n@@@not base64!!\r\n"),
    "garbage-content-type": (b"Subject: garbage\r\nContent-Type: ;;;/\x01; charset=\"nope\r\n"
                             b"Content-Transfer-Encoding: x-unknown\r\nThis header has no colon\r\n\r\nbody\r\n"),
    "unknown-charset": b"Subject: =?x-no-such-charset?q?hi?=\r\nContent-Type: text/plain; charset=x-bogus\r\n\r\n\xff\xfe\r\n",
}


async def received(c) -> list[dict]:
    """Everything delivered, wherever sender authentication filed it: mail with no
    readable From domain goes to Junk (DMARC cannot vouch for it)."""
    found = []
    for folder in ("inbox", "junk"):
        found += (await c.get("/v1/emails", params={"folder": folder})).json()["emails"]
    return found


@pytest.mark.parametrize("case", sorted(CASES))
async def test_malformed_mime_is_stored_as_received(app, case):
    bob = app.user()
    raw = CASES[case]

    def send() -> dict:
        with smtplib.SMTP("127.0.0.1", app.deployment.smtp_port, timeout=30) as s:
            s.ehlo("client.test")
            return s.sendmail("zed@elsewhere.test", [bob["email"]], raw)

    assert await asyncio.to_thread(send) == {}
    async with app.client(bob["token"]) as c:
        emails = await received(c)
        assert len(emails) == 1
        eid = emails[0]["id"]
        detail = await c.get(f"/v1/emails/{eid}")
        assert detail.status_code == 200, detail.text
        stored = (await c.get(f"/v1/emails/{eid}/raw")).content
        assert stored.endswith(raw)  # trace headers in front, the original bytes kept
        assert (await c.get("/v1/search", params={"q": "body"})).status_code == 200


async def test_data_transparency_and_large_messages(app):
    """Dots at line starts are unstuffed (RFC 5321 4.5.2), a line ending in a dot does
    not end the message, and a message spanning many reads arrives byte for byte."""
    bob = app.user()
    small = (b"Subject: dots\r\n\r\n.starts with a dot\r\n..two dots\r\nends with a dot.\r\n.\r\n"
             b"a lone dot above was part of the text.\r\n")
    big = b"Subject: big\r\n\r\n" + b"".join(b"%06d " % i + b"x" * 990 + b".\r\n" for i in range(600))

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", app.deployment.smtp_port, timeout=30) as s:
            s.ehlo("client.test")
            for raw in (small, big):  # smtplib dot-stuffs on the wire; the server must undo it
                assert s.sendmail("zed@elsewhere.test", [bob["email"]], raw) == {}
            code, _ = s.docmd("NOOP")  # the session is in a clean state afterwards
            assert code == 250

    await asyncio.to_thread(send)
    async with app.client(bob["token"]) as c:
        emails = await received(c)
        assert len(emails) == 2
        raws = {e["subject"]: (await c.get(f"/v1/emails/{e['id']}/raw")).content for e in emails}
    assert raws["dots"].endswith(small)
    assert raws["big"].endswith(big) and len(big) > 600_000


async def test_empty_message_and_pipelined_session(app):
    bob = app.user()

    def run() -> list[bytes]:
        import socket

        with socket.create_connection(("127.0.0.1", app.deployment.smtp_port), timeout=10) as sock:
            f = sock.makefile("rb")
            f.readline()
            sock.sendall(b"EHLO client.test\r\n")
            while f.readline()[3:4] == b"-":
                pass
            # RFC 2920: MAIL, RCPT and DATA in one group, then the content and the next command at once.
            sock.sendall(f"MAIL FROM:<zed@elsewhere.test>\r\nRCPT TO:<{bob['email']}>\r\nDATA\r\n".encode())
            replies = [f.readline() for _ in range(3)]
            sock.sendall(b".\r\nNOOP\r\n")  # an empty message, then a command in the same packet
            replies += [f.readline(), f.readline()]
            return replies

    replies = await asyncio.to_thread(run)
    assert [r[:3] for r in replies] == [b"250", b"250", b"354", b"250", b"250"], replies
    async with app.client(bob["token"]) as c:
        assert len(await received(c)) == 1
