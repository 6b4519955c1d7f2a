"""raymail/outbound/dsn.py and dkim.py: a bounce is a parseable RFC 3464 report; signatures verify."""

from __future__ import annotations

import email
from email import policy

import dkim

from raymail.outbound import dkim as dkim_mod
from raymail.outbound import dsn

ORIGINAL = (b"From: Alice <alice@example.test>\r\nTo: bob@far.test\r\nSubject: Hello\r\n"
            b"Message-ID: <m1@example.test>\r\n\r\nbody text\r\n")


def test_dsn_parts_and_fields():
    raw, mid = dsn.build(
        reporting_mta="mail.example.test", to="alice@example.test", original_message_id="<m1@example.test>",
        original_subject="Hello", headers=dsn.original_headers(ORIGINAL), arrival_s=1000.0, now_s=2000.0,
        failures=[dsn.Failure("bob@far.test", "5.1.1", 550, "5.1.1 <bob@far.test>: no such user", "mx.far.test")],
    )
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["Message-ID"] == mid
    text, status, headers = msg.get_payload()
    assert text.get_content_type() == "text/plain" and "bob@far.test" in text.get_content()
    assert status.get_content_type() == "message/delivery-status"
    fields = status.as_string()
    for line in ("Reporting-MTA: dns; mail.example.test", "Final-Recipient: rfc822; bob@far.test",
                 "Action: failed", "Status: 5.1.1", "Diagnostic-Code: smtp; 550 5.1.1",
                 "Remote-MTA: dns; mx.far.test"):
        assert line in fields
    assert headers.get_content_type() == "text/rfc822-headers"
    assert b"Subject: Hello" in raw and b"body text" not in raw


def test_dkim_key_sign_verify(tmp_path):
    key = dkim_mod.create_key(tmp_path, "example.test", bits=1024)
    assert dkim_mod.create_key(tmp_path, "example.test").private_pem == key.private_pem  # made once
    assert oct((tmp_path / "dkim" / "example.test.raymail.pem").stat().st_mode)[-3:] == "600"
    name, value = key.txt_record()
    assert name == "raymail._domainkey.example.test" and value.startswith("v=DKIM1; k=rsa; p=")
    header = dkim_mod.signature_header(ORIGINAL, key)
    assert header.startswith("DKIM-Signature:") and header.endswith("\r\n")

    def dns(qname: bytes, timeout: int = 5) -> bytes:
        assert qname == b"raymail._domainkey.example.test."
        return value.encode()

    assert dkim.verify(header.encode() + ORIGINAL, dnsfunc=dns)
    assert not dkim.verify(header.encode() + ORIGINAL.replace(b"body", b"b0dy"), dnsfunc=dns)
    assert dkim_mod.load_key(tmp_path, "other.test") is None
