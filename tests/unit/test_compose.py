"""raymail/compose.py: RFC 5322 build() and defensive parse()."""

from __future__ import annotations

import random
import re
from email.utils import parsedate_to_datetime

import pytest

from raymail import compose
from raymail.compose import Parsed
from raymail.model import Address

SENDER = Address("sender@example.com", "Sënder Name")
TO = (Address("to@example.com", "To Person"),)
CC = (Address("cc@example.org"),)
BCC = (Address("hidden@example.net", "Hidden"),)
DATE = 1_700_000_000.0
LONG = "x" * 2500


def build(**kw) -> compose.Composed:
    args = dict(
        sender=SENDER, to=TO, cc=CC, bcc=BCC, subject="Hello", body="body", html=None, hostname="mail.example.test", date=DATE
    )
    args.update(kw)
    return compose.build(**args)


def same_text(parsed: str, sent: str) -> bool:
    """The text read back is what was sent, with LF line ends; the generator may add a final newline."""
    sent = sent.replace("\r\n", "\n")
    return parsed == sent or (not sent.endswith("\n") and parsed == sent + "\n")


def header(raw: bytes, name: str) -> list[str]:
    return [v for k, v in compose.parse(raw).headers if k.lower() == name.lower()]


@pytest.mark.parametrize(
    "subject, body, html",
    [
        ("plain ascii", "hello", None),
        ("Grüße aus Köln — 日本語 " + "long " * 40, "Grüße\nzweite Zeile", None),
        ("", "", None),
        ("with html", "plain part", "<p>html part</p>"),
        ("ünïcode both", "héllo wörld\n" + LONG + "\nend", "<p>ü " + LONG + "</p>"),
        ("ascii long line", "start\n" + LONG + "\nend\n", None),
        ("crlf body", "a\r\nb\r\n", None),
        ("html only", "", "<b>only</b>"),
    ],
    ids=["ascii", "non-ascii-subject", "empty", "html", "non-ascii-long-html", "long-ascii", "crlf-body", "html-only"],
)
def test_build_parse_round_trip(subject, body, html):
    c = build(subject=subject, body=body, html=html)
    p = compose.parse(c.raw)
    assert isinstance(p, Parsed)
    assert p.subject == subject
    assert same_text(p.text, body), (p.text[:80], body[:80])
    if html is None:
        assert p.html is None
    else:
        assert p.html is not None and same_text(p.html, html), (p.html, html[:80])
    assert p.attachments == []


@pytest.mark.parametrize("html", [None, "<p>x</p>"])
@pytest.mark.parametrize("body", ["short ascii", "non-ascii ü", "ascii\n" + LONG])
def test_raw_uses_crlf_and_short_lines(body, html):
    raw = build(body=body, html=html, subject="Grüße " * 30).raw
    assert raw.count(b"\n") == raw.count(b"\r\n") > 5
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert raw.isascii()  # no 8BITMIME needed


@pytest.mark.parametrize(
    "body, cte",
    [("plain ascii\nlines", "7bit"), ("ü", "quoted-printable"), (LONG, "quoted-printable")],
)
def test_transfer_encoding(body, cte):
    raw = build(body=body).raw
    assert f"Content-Transfer-Encoding: {cte}".encode() in raw


def test_message_id_and_date_headers():
    c = build()
    assert re.fullmatch(r"<[^<>@\s]+@mail\.example\.test>", c.message_id)
    assert header(c.raw, "Message-ID") == [c.message_id]
    (date,) = header(c.raw, "Date")
    assert parsedate_to_datetime(date).timestamp() == DATE
    assert header(c.raw, "MIME-Version") == ["1.0"]
    assert header(c.raw, "From") == ["Sënder Name <sender@example.com>"]
    assert header(c.raw, "To") == ["To Person <to@example.com>"]
    assert header(c.raw, "Cc") == ["cc@example.org"]


def test_message_ids_are_unique_and_can_be_given():
    assert build().message_id != build().message_id
    c = build(message_id="<fixed@example.com>")
    assert c.message_id == "<fixed@example.com>"
    assert header(c.raw, "Message-ID") == ["<fixed@example.com>"]


def test_bcc_only_in_the_include_bcc_copy():
    delivered = build()
    own = build(include_bcc=True, message_id=delivered.message_id)
    assert header(delivered.raw, "Bcc") == []
    assert b"hidden@example.net" not in delivered.raw
    assert header(own.raw, "Bcc") == ["Hidden <hidden@example.net>"]
    assert header(own.raw, "Message-ID") == header(delivered.raw, "Message-ID")


def test_only_bcc_recipients_get_undisclosed_to():
    c = build(to=(), cc=())
    assert header(c.raw, "To") == ["undisclosed-recipients:;"]
    assert header(c.raw, "Cc") == []
    assert b"hidden@example.net" not in c.raw


@pytest.mark.parametrize(
    "text, snippet",
    [
        ("hello", "hello"),
        ("  hello \r\n\n\t  world  ", "hello world"),
        ("a\u00a0\u2003b", "a b"),  # unicode whitespace collapses too
        ("", ""),
        ("word " * 100, ("word " * 100).strip()[:200]),
        ("y" * 500, "y" * 200),
    ],
)
def test_snippet(text, snippet):
    assert compose.snippet_of(text) == snippet
    assert len(compose.snippet_of(text)) <= compose.SNIPPET_CHARS
    assert build(body=text).snippet == snippet


def _nested(levels: int) -> bytes:
    out = b"MIME-Version: 1.0\r\nSubject: deep\r\n"
    for i in range(levels):
        out += f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
    out += b"Content-Type: text/plain\r\n\r\ndeep text\r\n"
    for i in reversed(range(levels)):
        out += f"--b{i}--\r\n".encode()
    return out


_rng = random.Random(1234)
GARBAGE = bytes(_rng.getrandbits(8) for _ in range(4000))

MALFORMED = {
    "empty": (b"", "", ""),
    "garbage": (GARBAGE, None, None),
    "no-headers": (b"just a body line\r\n", "", "just a body line\n"),
    "headers-only": (b"Subject: only\r\n", "only", ""),
    "lf-only": (b"Subject: lf\n\nbody\n", "lf", "body\n"),
    "8bit-utf8-headers": ("Subject: café ü\r\nFrom: Jörg <j@example.com>\r\n\r\nhi".encode(), "café ü", "hi"),
    "8bit-latin1-headers": ("Subject: caf\xe9\r\nFrom: J\xf6rg <j@example.com>\r\n\r\nhi".encode("latin-1"), None, "hi"),
    "multipart-no-boundary": (b"Content-Type: multipart/mixed\r\n\r\nno boundary here", None, None),
    "unknown-charset": (b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\nhi", "", "hi"),
    "bad-base64": (b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64===", "", None),
    "bad-qp": (b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ=\r\n", "", None),
    "bad-encoded-word": (b"Subject: =?bogus?x?zz?=\r\n\r\nx", "=?bogus?x?zz?=", "x"),
    "bad-date": (b"Date: not a date at all\r\n\r\nx", "", "x"),
    "nested-50": (_nested(50), "deep", "deep text"),
    "nested-200": (_nested(200), "deep", "deep text"),
    "rfc822-part": (b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nbody", "", None),
    "truncated-multipart": (b'Content-Type: multipart/alternative; boundary="q"\r\n\r\n--q\r\nContent-Type: text/pl', "", None),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_parse_malformed_never_raises(name):
    raw, subject, text = MALFORMED[name]
    p = compose.parse(raw)
    assert isinstance(p.subject, str) and isinstance(p.text, str)
    assert p.html is None or isinstance(p.html, str)
    assert isinstance(p.headers, list) and isinstance(p.attachments, list)
    if subject is not None:
        assert p.subject == subject
    if text is not None:
        assert p.text == text


def test_parse_random_garbage_never_raises():
    rng = random.Random(99)
    for _ in range(300):
        raw = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
        assert isinstance(compose.parse(raw), Parsed)


def test_parse_lists_attachments():
    raw = (
        b'Content-Type: multipart/mixed; boundary="b"\r\nSubject: att\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        b'--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="r\xc3\xa9sum\xc3\xa9.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nAAECAwQ=\r\n--b--\r\n"
    )
    p = compose.parse(raw)
    assert p.text == "hello"
    assert p.attachments == [{"filename": "résumé.pdf", "content_type": "application/pdf", "size": 5}]


@pytest.mark.parametrize(
    "raw",
    [
        b"Message-ID: <\r\n\r\nbody",
        b"Message-ID: <<>>\r\n\r\nbody",
        b'From: "\r\n\r\nbody',
        b"To: <\r\n\r\nbody",
        b"Cc: .==:\r\n\r\nbody",
        b"Reply-To: ,\t.>[b\\\r\n\r\nbody",
    ],
    ids=["msgid-open", "msgid-nested", "from-quote", "to-open", "cc-colon", "reply-to-junk"],
)
def test_parse_malformed_structured_headers_never_raise(raw):
    p = compose.parse(raw)
    assert p.text == "body"
