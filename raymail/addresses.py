"""Address rules: parse ``Name <local@domain>`` or ``local@domain`` strictly.

Accepts the RFC 5321 forward-path subset real mail uses: a dot-atom local part
(RFC 5322 section 3.2.3 atext) and an LDH domain. Domains are lowercased; local
parts keep their case but compare case-insensitively (``key``).
"""

from __future__ import annotations

import functools
import re

from raymail.model import Address

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LOCAL_RE = re.compile(rf"^{_ATEXT}+(\.{_ATEXT}+)*$")
_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_NAMED_RE = re.compile(r"^\s*(?P<name>.*?)\s*<(?P<addr>[^<>]*)>\s*$", re.S)


# Everything Python's email package (and str.splitlines) treats as a line break,
# plus NUL: any of them in a header value could end the header early.
LINE_BREAKS = frozenset("\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00")


def has_line_break(text: str) -> bool:
    return not LINE_BREAKS.isdisjoint(text)


class AddressError(ValueError):
    """The text is not an acceptable mail address; the message says why."""


@functools.lru_cache(maxsize=4096)  # a pure check of a string; the same domains come again and again
def valid_domain(domain: str) -> bool:
    if not domain or len(domain) > 253 or "." not in domain:
        return False
    return all(_LABEL_RE.match(label) for label in domain.split("."))


def parse_addr_spec(text: str) -> str:
    """Validate ``local@domain`` and return it with the domain lowercased."""
    if not isinstance(text, str):
        raise AddressError("an address must be a string")
    addr = text.strip()
    if has_line_break(addr):
        raise AddressError(f"{addr!r} contains control characters")
    if len(addr) > 254:
        raise AddressError(f"{addr[:40]!r}... is longer than 254 characters")
    local, at, domain = addr.rpartition("@")
    if not at or not local:
        raise AddressError(f"{addr!r} is not an address like name@example.com")
    if len(local) > 64 or not _LOCAL_RE.match(local):
        raise AddressError(f"{addr!r} has an invalid local part")
    if not valid_domain(domain):
        raise AddressError(f"{addr!r} has an invalid domain")
    return f"{local}@{domain.lower()}"


def parse_address(value: object) -> Address:
    """Parse a string (``a@b`` or ``Name <a@b>``) or ``{"email", "name"}`` object."""
    if isinstance(value, dict):
        email = parse_addr_spec(value.get("email", ""))
        name = value.get("name") or ""
        if not isinstance(name, str):
            raise AddressError("an address name must be a string")
        return Address(email=email, name=_clean_name(name))
    if not isinstance(value, str):
        raise AddressError(f"{value!r} is not an address")
    m = _NAMED_RE.match(value)
    if m:
        return Address(email=parse_addr_spec(m.group("addr")), name=_clean_name(m.group("name").strip('"')))
    return Address(email=parse_addr_spec(value))


def _clean_name(name: str) -> str:
    if has_line_break(name):
        raise AddressError(f"display name {name!r} contains control characters")
    if len(name) > 200:
        raise AddressError("display name is longer than 200 characters")
    return name.strip()


def key(email: str) -> str:
    """The comparison key of an address: case-insensitive."""
    return email.lower()


def domain_of(email: str) -> str:
    return email.rpartition("@")[2].lower()
