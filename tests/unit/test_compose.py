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


# The plain-text shortcut must read a message exactly as the full parser does, and
# leave everything it does not cover to the full parser.
_HEAD = (b"Received: from client.example.test (client.example.test [192.0.2.7])\r\n\tby mx.example.test with ESMTP id"
         b" 0123abcd\r\n\tfor <user@example.test>; Sun, 29 Nov 2026 10:00:00 +0000\r\n"
         b"Return-Path: <a@b.test>\r\nFrom: <a@b.test>\r\nTo: <c@d.test>\r\n"
         b"Date: Sun, 29 Nov 2026 10:02:00 +0000 (UTC)\r\nMessage-Id: <3884.0003.0000@vm>\r\n")
_BODY = b"1XXXXXXXXXXXX\r\n2 line\r\n\r\n.dot line\r\n"
PLAIN = {
    "smtp-source": _HEAD + b"\r\n" + _BODY,
    "subject and names": b'From: Ann Example <ann@example.test>\r\nTo: "Bo, B." <bo@example.test>, c@d.test\r\n'
                         b"Cc: undisclosed-recipients:;\r\nSubject: hello   there\r\n\r\n" + _BODY,
    "folded subject": b"Subject: a long\r\n  folded\r\n\tsubject\r\nTo: x@y.test\r\n\r\nbody",
    "encoded words": b"Subject: =?utf-8?q?caf=C3=A9?= ok\r\nFrom: =?utf-8?b?w4lsaXNl?= <e@x.test>\r\n\r\nbody",
    "encoded address": b"From: =?utf-8?q?ceo=40bank.test?=\r\n\r\nbody",
    "text/plain utf-8 8bit": b'Content-Type: text/plain; charset="UTF-8"; format=flowed\r\n'
                             b"Content-Transfer-Encoding: 8bit\r\nSubject: s\r\n\r\ncaf\xc3\xa9 \xe2\x82\xac\r\n",
    "8-bit body, no charset": b"Subject: s\r\n\r\ncaf\xc3\xa9\r\n",
    "invalid utf-8": b"Content-Type: text/plain; charset=utf-8\r\n\r\nbad \xff\xfe end\r\n",
    "7bit, us-ascii": b"Content-Type: TEXT/PLAIN; charset=us-ascii\r\nContent-Transfer-Encoding: 7BIT\r\n\r\nplain",
    "empty body": b"Subject: nothing\r\n\r\n",
    "no subject": b"X-Empty:\r\nX-Spaces:    \r\n\r\nbody\r\n",
    "quoted local part": b'From: "odd local"@example.test\r\nTo: <a.b+c@sub.example.test>\r\n\r\nbody',
    "address with comment": b"From: a@b.test (Ann)\r\nReply-To: a@b.test, c@d.test\r\n\r\nbody",
    "header-like body": b"Subject: s\r\n\r\nFrom: not a header\r\nX: y\r\n",
}
FULL_ONLY = {
    "multipart": b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b--\r\n',
    "html": b"Content-Type: text/html; charset=utf-8\r\n\r\n<p>hi</p>",
    "quoted-printable": b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9",
    "base64": b"Content-Transfer-Encoding: base64\r\n\r\naGk=",
    "latin-1": b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\ncaf\xe9",
    "two content types": b"Content-Type: text/plain\r\nContent-Type: text/html\r\n\r\nx",
    "8-bit header": b"Subject: caf\xc3\xa9\r\n\r\nbody",
    "LF line ends": b"Subject: s\n\nbody\n",
    "bare CR in body": b"Subject: s\r\n\r\nline\rmore\r\n",
    "mbox From line": b"From a@b.test Sun Nov 29 10:00:00 2026\r\nSubject: s\r\n\r\nbody",
    "continuation first": b" folded\r\nSubject: s\r\n\r\nbody",
    "space before colon": b"Subject : s\r\n\r\nbody",
    "no blank line": b"Subject: s\r\nbody without separator",
    "no header block": b"\r\n\r\nbody",
    "a named text file": b"Content-Type: text/plain; name=notes.txt\r\n\r\nnotes",
    "an attached text file": b"Content-Disposition: attachment\r\n\r\nnotes",
}


@pytest.mark.parametrize("name", list(PLAIN))
def test_plain_shortcut_reads_as_the_full_parser(name):
    raw = PLAIN[name]
    fast = compose._parse_plain(raw)
    assert fast is not None, "expected the shortcut to take this message"
    assert fast == compose._parse_full(raw)


@pytest.mark.parametrize("name", list(FULL_ONLY))
def test_plain_shortcut_leaves_the_rest_to_the_full_parser(name):
    raw = FULL_ONLY[name]
    assert compose._parse_plain(raw) is None
    assert compose.parse(raw) == compose._parse_full(raw)


@pytest.mark.parametrize("name", ["a named text file", "an attached text file"])
def test_a_single_part_file_is_listed_as_an_attachment(name):
    (a,) = compose.parse(FULL_ONLY[name]).attachments
    assert (a["content_type"], a["size"]) == ("text/plain", 5)


@pytest.mark.parametrize("value", ["a@b.test", " <a@b.test> ", "<A.B+c@Sub.Example-1.test>", "x!#$%&'*+/=?^_`{|}~-@d.test",
                                   "a@b", "<a@b.test>\t"])
def test_plain_address_header_matches_the_address_parser(value):
    from email.utils import getaddresses
    assert compose._address_header(value) == ", ".join(a for _, a in getaddresses([value]) if a)


@pytest.mark.parametrize("value", ["plain words", "tabs\tand  double  spaces", " lead", "trail ", "a\r\n folded",
                                   "caf\udcc3\udca9", "100% = ?"])
def test_header_without_encoded_words_is_as_make_header_gives(value):
    from email.header import decode_header, make_header
    text = value if value.isascii() else value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    try:
        expected = str(make_header(decode_header(text)))
    except Exception:  # noqa: BLE001 - the parser's own fallback
        expected = text
    assert compose._header_value(value) == expected.replace("\r\n", "").replace("\n", "")


def test_plain_shortcut_matches_the_full_parser_on_random_messages():
    rng = random.Random(7)
    names = ["Subject", "From", "To", "Cc", "Reply-To", "X-Tag", "Content-Type", "Content-Transfer-Encoding", "Date"]
    pieces = ["a@b.test", "<c@d.test>", "Ann <e@f.test>", "=?utf-8?q?x=C3=A9?=", " ", "\t", ",", ";", '"q"', "(c)",
              "text/plain", "charset=utf-8", "7bit", "8bit", "word", ":", "<", ">", "@", "=?", "\r\n "]
    taken = 0
    for _ in range(2000):
        head = b"".join(f"{rng.choice(names)}:{''.join(rng.choice(pieces) for _ in range(rng.randint(0, 5)))}\r\n".encode()
                        for _ in range(rng.randint(1, 6)))
        body = bytes(rng.choice(b"ab .\r\n\xc3\xa9\xff") for _ in range(rng.randint(0, 60)))
        raw = head + b"\r\n" + body
        fast = compose._parse_plain(raw)
        if fast is not None:
            taken += 1
            assert fast == compose._parse_full(raw), raw
    assert taken > 100  # the shortcut was exercised


@pytest.mark.parametrize("value", ["a@b.test", "<a@b.test>", " <A.b@c-d.test> ", "Ann <a@b.test>", "a@b.test, c@d.test",
                                   '"x y"@b.test', "a@b.test (c)", "", "<>", "no address", "<a@b.test", "a@b.test>"])
def test_address_pairs_are_getaddresses(value):
    from email.utils import getaddresses, parseaddr
    assert compose.address_pairs(value) == getaddresses([value])
    plain = compose.plain_address(value)
    assert plain is None or ("", plain) == parseaddr(value)


def test_text_only_build_shortcut_gives_the_generators_bytes(monkeypatch):
    rng = random.Random(11)
    names = ["", "Ann", "Ann Example", "Ann, Jr.", 'Q"uote', "Zoë", "x" * 70]
    lines = ["plain line", "", ".dot first", "From the start", "tab\there", "café", "x" * 1200, "  ", "=3D", "end."]
    ends = ["\n", "\r\n", "\r", ""]

    def addr(i: int) -> Address:
        return Address(f"user{i}@d{i % 7}.example.test", rng.choice(names))

    cases = []
    for i in range(400):
        body = "".join(rng.choice(lines) + rng.choice(ends) for _ in range(rng.randint(0, 8)))
        cases.append(dict(
            sender=addr(i), to=tuple(addr(i + k) for k in range(rng.randint(0, 3))),
            cc=tuple(addr(i + 10 + k) for k in range(rng.randint(0, 2))), bcc=tuple(addr(i + 20) for _ in range(rng.randint(0, 1))),
            subject=rng.choice(["", "hello", "Grüße", "s" * 60, "s" * 80, "re: [list] a: b"]), body=body, html=None,
            hostname="mail.example.test", date=DATE + i, message_id=f"<m{i}@mail.example.test>",
            include_bcc=rng.random() < 0.5))
    fast = [compose.build(**c) for c in cases]
    monkeypatch.setattr(compose, "_build_plain", lambda *a, **k: None)
    slow = [compose.build(**c) for c in cases]
    assert [f.raw for f in fast] == [s.raw for s in slow]
    assert [(f.snippet, f.size, f.message_id) for f in fast] == [(s.snippet, s.size, s.message_id) for s in slow]
    monkeypatch.undo()
    taken = sum(compose._build_plain(c["sender"], c["to"], c["cc"], c["bcc"] if c["include_bcc"] else (), c["subject"],
                                     c["body"], c["hostname"], c["date"], c["message_id"]) is not None for c in cases)
    assert taken > 100  # the shortcut was exercised
