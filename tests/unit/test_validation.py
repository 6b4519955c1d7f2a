"""raymail/validation.py: POST /v1/send bodies and paging parameters."""

from __future__ import annotations

import pytest

from raymail.config import LimitsConfig
from raymail.errors import BadRequest, Forbidden, PayloadTooLarge, Unprocessable
from raymail.model import Address
from raymail.validation import parse_paging, parse_send_request

LIMITS = LimitsConfig(max_recipients=3, max_message_bytes=100, max_subject_chars=20, max_page_size=50, default_page_size=10)
ME = "uid-me"


def ok(**fields):
    return {"to": ["a@example.com"], **fields}


@pytest.mark.parametrize(
    "data, exc_type, code",
    [
        ([], BadRequest, "invalid_json"),
        ("text", BadRequest, "invalid_json"),
        (None, BadRequest, "invalid_json"),
        (ok(sender="x@y.com"), Unprocessable, "unknown_field"),
        (ok(uid="uid-someone-else"), Forbidden, "forbidden"),
        (ok(subject="a\r\nBcc: x@y.com"), Unprocessable, "invalid_header"),
        (ok(subject="line\nbreak"), Unprocessable, "invalid_header"),
        (ok(subject="cr\ronly"), Unprocessable, "invalid_header"),
        (ok(subject="nul\0"), Unprocessable, "invalid_header"),
        (ok(subject="x" * 21), Unprocessable, "invalid_header"),
        (ok(subject=5), Unprocessable, "invalid_field"),
        (ok(body=["x"]), Unprocessable, "invalid_field"),
        (ok(body="nul\0"), Unprocessable, "invalid_field"),
        (ok(html="<p>\0</p>"), Unprocessable, "invalid_field"),
        ({"subject": "hi"}, Unprocessable, "no_recipients"),
        ({"to": [], "cc": [], "bcc": []}, Unprocessable, "no_recipients"),
        ({"to": None}, Unprocessable, "no_recipients"),
        ({"to": ["a@x.com", "b@x.com"], "cc": ["c@x.com"], "bcc": ["d@x.com"]}, Unprocessable, "too_many_recipients"),
        ({"recipients": ["a@x.com", "b@x.com", "c@x.com", "d@x.com"]}, Unprocessable, "too_many_recipients"),
        ({"to": "not an address"}, Unprocessable, "invalid_address"),
        ({"to": ["a@x.com", "bad@@x.com"]}, Unprocessable, "invalid_address"),
        ({"cc": {"email": "a@x.com"}}, Unprocessable, "invalid_field"),
        (ok(body="x" * 101), PayloadTooLarge, "too_large"),
        (ok(body="é" * 51), PayloadTooLarge, "too_large"),  # 102 bytes in UTF-8, 51 characters
        (ok(body="x" * 60, html="y" * 41), PayloadTooLarge, "too_large"),
        (ok(category="spam"), Unprocessable, "invalid_field"),
        (ok(category=""), Unprocessable, "invalid_field"),
        (ok(attachments="att1"), Unprocessable, "invalid_field"),
        (ok(attachments=[1]), Unprocessable, "invalid_field"),
    ],
)
def test_parse_send_request_errors(data, exc_type, code):
    with pytest.raises(exc_type) as exc:
        parse_send_request(data, LIMITS, ME)
    assert type(exc.value) is exc_type
    assert exc.value.code == code
    assert exc.value.to_dict()["error"]["code"] == code


def test_unknown_fields_are_named():
    with pytest.raises(Unprocessable, match="unknown fields: from, zzz"):
        parse_send_request(ok(zzz=1, **{"from": "x"}), LIMITS, ME)


def test_minimal_request_defaults():
    req = parse_send_request({"to": "a@Example.com"}, LIMITS, ME)
    assert req.to == (Address("a@example.com"),)
    assert req.cc == () and req.bcc == ()
    assert req.subject == "" and req.body == "" and req.html is None
    assert req.attachments == () and req.category is None


def test_full_request():
    req = parse_send_request(
        {
            "uid": ME,
            "subject": "Grüße",
            "recipients": ["Alice <alice@example.com>"],
            "cc": [{"email": "carol@example.com", "name": "Carol"}],
            "bcc": "dave@example.com",
            "body": "hello",
            "html": "<p>hello</p>",
            "attachments": ["att-1"],
            "category": "marketing",
        },
        LIMITS,
        ME,
    )
    assert req.to == (Address("alice@example.com", "Alice"),)
    assert req.cc == (Address("carol@example.com", "Carol"),)
    assert req.bcc == (Address("dave@example.com"),)
    assert req.all_recipients == req.to + req.cc + req.bcc
    assert (req.subject, req.body, req.html) == ("Grüße", "hello", "<p>hello</p>")
    assert req.attachments == ("att-1",) and req.category == "marketing"


@pytest.mark.parametrize(
    "data, to, cc, bcc",
    [
        # the first occurrence wins: to before cc before bcc, case-insensitively
        (
            {"to": ["a@x.com"], "cc": ["A@X.com", "b@x.com"], "bcc": ["b@x.com", "c@x.com"]},
            ["a@x.com"],
            ["b@x.com"],
            ["c@x.com"],
        ),
        ({"recipients": ["a@x.com"], "to": ["a@x.com", "b@x.com"]}, ["a@x.com", "b@x.com"], [], []),
        ({"bcc": ["a@x.com", "a@x.com"]}, [], [], ["a@x.com"]),
        # exactly max_recipients unique addresses after dedup is fine
        ({"to": ["a@x.com", "b@x.com", "A@x.com"], "cc": ["c@x.com", "b@X.com"]}, ["a@x.com", "b@x.com"], ["c@x.com"], []),
    ],
)
def test_recipients_deduplicated_across_lists(data, to, cc, bcc):
    req = parse_send_request(data, LIMITS, ME)
    assert [a.email for a in req.to] == to
    assert [a.email for a in req.cc] == cc
    assert [a.email for a in req.bcc] == bcc


def test_body_exactly_at_the_limit_is_accepted():
    req = parse_send_request(ok(body="x" * 60, html="y" * 40), LIMITS, ME)
    assert len(req.body) + len(req.html) == LIMITS.max_message_bytes


@pytest.mark.parametrize("category", ["transactional", "marketing", None])
def test_valid_categories(category):
    assert parse_send_request(ok(category=category), LIMITS, ME).category == category


@pytest.mark.parametrize("sep", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])
def test_subject_with_any_line_separator_is_invalid_header(sep):
    with pytest.raises(Unprocessable) as exc:
        parse_send_request(ok(subject=f"hi{sep}there"), LIMITS, ME)
    assert exc.value.code == "invalid_header"


@pytest.mark.parametrize(
    "number, size, expected",
    [
        (None, None, (1, 10)),
        ("", "", (1, 10)),
        ("3", None, (3, 10)),
        (None, "50", (1, 50)),
        ("2", "1", (2, 1)),
        (" 4 ", "7", (4, 7)),
    ],
)
def test_parse_paging_valid(number, size, expected):
    assert parse_paging(number, size, LIMITS) == expected


@pytest.mark.parametrize(
    "number, size, exc_type",
    [
        ("0", None, Unprocessable),
        ("-1", None, Unprocessable),
        (None, "0", Unprocessable),
        (None, "51", Unprocessable),
        (None, "-5", Unprocessable),
        ("one", None, BadRequest),
        (None, "ten", BadRequest),
        ("1.5", None, BadRequest),
        (None, "2e1", BadRequest),
    ],
)
def test_parse_paging_invalid(number, size, exc_type):
    with pytest.raises(exc_type) as exc:
        parse_paging(number, size, LIMITS)
    assert type(exc.value) is exc_type
    assert exc.value.code == "invalid_query"
