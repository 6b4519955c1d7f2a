"""raymail/addresses.py: strict address parsing."""

from __future__ import annotations

import pytest

from raymail import addresses
from raymail.addresses import AddressError
from raymail.model import Address


@pytest.mark.parametrize(
    "value, expected",
    [
        ("a@example.com", Address("a@example.com")),
        ("  a@example.com  ", Address("a@example.com")),
        ("Alice@EXAMPLE.Com", Address("Alice@example.com")),  # domain lowercased, local part kept
        ("first.last+tag@sub.example.co.uk", Address("first.last+tag@sub.example.co.uk")),
        ("o'neil!#$%&*/=?^_`{|}~-@x-y.example", Address("o'neil!#$%&*/=?^_`{|}~-@x-y.example")),
        ("Alice Smith <alice@Example.COM>", Address("alice@example.com", "Alice Smith")),
        ('"Smith, Alice" <alice@example.com>', Address("alice@example.com", "Smith, Alice")),
        ("  Zoë Ünïcode   <z@example.com>  ", Address("z@example.com", "Zoë Ünïcode")),
        ("<bare@example.com>", Address("bare@example.com", "")),
        ({"email": "d@EXAMPLE.com", "name": "  Dict Form "}, Address("d@example.com", "Dict Form")),
        ({"email": "d@example.com"}, Address("d@example.com", "")),
        ({"email": "d@example.com", "name": None}, Address("d@example.com", "")),
        ("x" * 64 + "@example.com", Address("x" * 64 + "@example.com")),
        ("a@" + "a" * 63 + ".com", Address("a@" + "a" * 63 + ".com")),
    ],
)
def test_valid(value, expected):
    assert addresses.parse_address(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "no-at-sign.example.com",
        "@example.com",
        "a@",
        "a@localhost",  # no dot
        "a@-bad.example.com",
        "a@bad-.example.com",
        "a@under_score.example.com",
        "a@example..com",
        "a@example.com.",
        "a@" + "a" * 64 + ".com",  # label over 63
        "x" * 65 + "@example.com",  # local part over 64
        "a" * 60 + "@" + ".".join(["b" * 60] * 4) + ".com",  # whole over 254
        "a b@example.com",
        "a..b@example.com",
        ".a@example.com",
        "a.@example.com",
        "a@b@example.com",
        '"quoted local"@example.com',
        "a@exa mple.com",
        "a\r\n@example.com",
        "a@exam\nple.com",
        "a\0@example.com",
        "Name <a@example.com",
        "Name <>",
        "Evil\r\nBcc: x@y.com <a@example.com>",
        "Nul\0Name <a@example.com>",
        "N" * 201 + " <a@example.com>",
        {"email": "not an address"},
        {"name": "no email"},
        {"email": "a@example.com", "name": 5},
        {"email": "a@example.com", "name": "Bad\nName"},
        {"email": 5},
        None,
        42,
        ["a@example.com"],
    ],
)
def test_invalid(value):
    with pytest.raises(AddressError):
        addresses.parse_address(value)


@pytest.mark.parametrize(
    "domain, ok",
    [
        ("example.com", True),
        ("a-b.c-d.example", True),
        ("x.y", True),
        ("localhost", False),
        ("", False),
        ("-a.com", False),
        ("a-.com", False),
        ("a..com", False),
        ("a_b.com", False),
        (".".join(["a" * 63] * 4), False),  # 255 characters
        (".".join(["a" * 63] * 3 + ["a" * 61]), True),  # 253 characters
    ],
)
def test_valid_domain(domain, ok):
    assert addresses.valid_domain(domain) is ok


def test_addr_spec_error_messages_say_why():
    with pytest.raises(AddressError, match="invalid local part"):
        addresses.parse_addr_spec("a b@example.com")
    with pytest.raises(AddressError, match="invalid domain"):
        addresses.parse_addr_spec("a@nodot")
    with pytest.raises(AddressError, match="control characters"):
        addresses.parse_addr_spec("a\r@example.com")


@pytest.mark.parametrize(
    "a, b, same",
    [
        ("Alice@Example.com", "alice@example.COM", True),
        ("alice@example.com", "alice2@example.com", False),
    ],
)
def test_key_is_case_insensitive(a, b, same):
    assert (addresses.key(a) == addresses.key(b)) is same


def test_domain_of():
    assert addresses.domain_of("Alice@Sub.Example.COM") == "sub.example.com"


@pytest.mark.parametrize("sep", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])
@pytest.mark.parametrize("form", ["string", "dict"])
def test_display_name_with_any_line_separator_is_refused(sep, form):
    name = f"Bob{sep}fake text"
    value = f"{name} <a@example.com>" if form == "string" else {"email": "a@example.com", "name": name}
    with pytest.raises(AddressError):
        addresses.parse_address(value)
