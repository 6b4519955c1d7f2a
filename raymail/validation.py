"""Validate a ``POST /v1/send`` body into a ``SendRequest`` (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raymail import addresses
from raymail.config import LimitsConfig
from raymail.errors import BadRequest, Forbidden, PayloadTooLarge, Unprocessable
from raymail.model import Address

CATEGORIES = ("transactional", "marketing")
_FIELDS = {"uid", "subject", "recipients", "to", "cc", "bcc", "body", "html", "attachments", "category"}


@dataclass(frozen=True, slots=True)
class SendRequest:
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]
    subject: str
    body: str
    html: str | None
    attachments: tuple[str, ...]
    category: str | None

    @property
    def all_recipients(self) -> tuple[Address, ...]:
        return self.to + self.cc + self.bcc


def _string(data: dict, name: str, *, default: str | None) -> str | None:
    value = data.get(name, default)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Unprocessable(f"'{name}' must be a string", code="invalid_field")
    return value


def _address_list(data: dict, name: str) -> list[Address]:
    value = data.get(name, [])
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise Unprocessable(f"'{name}' must be a list of addresses", code="invalid_field")
    out = []
    for item in value:
        try:
            out.append(addresses.parse_address(item))
        except addresses.AddressError as exc:
            raise Unprocessable(f"'{name}': {exc}", code="invalid_address") from None
    return out


def parse_send_request(data: Any, limits: LimitsConfig, caller_uid: str) -> SendRequest:
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object", code="invalid_json")
    unknown = set(data) - _FIELDS
    if unknown:
        raise Unprocessable(f"unknown fields: {', '.join(sorted(unknown))}", code="unknown_field")
    uid = data.get("uid")
    if uid is not None and uid != caller_uid:
        raise Forbidden("'uid' must be your own user id; mail is always sent as the token's user")

    subject = _string(data, "subject", default="") or ""
    if addresses.has_line_break(subject):
        raise Unprocessable("'subject' must not contain line breaks (CR, LF, VT, FF, ...) or NUL", code="invalid_header")
    if len(subject) > limits.max_subject_chars:
        raise Unprocessable(f"'subject' is longer than {limits.max_subject_chars} characters", code="invalid_header")
    body = _string(data, "body", default="") or ""
    html = _string(data, "html", default=None)
    if "\0" in body or (html and "\0" in html):
        raise Unprocessable("'body' and 'html' must not contain NUL characters", code="invalid_field")
    size = len(body.encode("utf-8", "surrogatepass")) + len((html or "").encode("utf-8", "surrogatepass"))
    if size > limits.max_message_bytes:
        raise PayloadTooLarge(f"the message is {size} bytes; the limit is {limits.max_message_bytes} bytes")

    to = _address_list(data, "recipients") + _address_list(data, "to")
    cc = _address_list(data, "cc")
    bcc = _address_list(data, "bcc")
    seen: set[str] = set()
    lists: list[list[Address]] = [[], [], []]
    for i, group in enumerate((to, cc, bcc)):
        for a in group:
            k = addresses.key(a.email)
            if k not in seen:
                seen.add(k)
                lists[i].append(a)
    if not seen:
        raise Unprocessable("'recipients' must name at least one address", code="no_recipients")
    if len(seen) > limits.max_recipients:
        raise Unprocessable(
            f"{len(seen)} recipients; the limit is {limits.max_recipients} per message", code="too_many_recipients"
        )

    attachments = data.get("attachments") or []
    if not isinstance(attachments, list) or not all(isinstance(a, str) for a in attachments):
        raise Unprocessable("'attachments' must be a list of attachment ids", code="invalid_field")
    category = data.get("category")
    if category is not None and category not in CATEGORIES:
        raise Unprocessable(f"'category' must be one of {', '.join(CATEGORIES)}", code="invalid_field")
    return SendRequest(
        to=tuple(lists[0]),
        cc=tuple(lists[1]),
        bcc=tuple(lists[2]),
        subject=subject,
        body=body,
        html=html,
        attachments=tuple(attachments),
        category=category,
    )


def parse_paging(page_number: str | None, page_size: str | None, limits: LimitsConfig) -> tuple[int, int]:
    """Page numbers start at 1; page_size over the maximum is a 422 (not silently clamped)."""
    try:
        number = int(page_number) if page_number not in (None, "") else 1
        size = int(page_size) if page_size not in (None, "") else limits.default_page_size
    except ValueError:
        raise BadRequest("page_number and page_size must be integers", code="invalid_query") from None
    if number < 1:
        raise Unprocessable("page_number starts at 1", code="invalid_query")
    if size < 1 or size > limits.max_page_size:
        raise Unprocessable(f"page_size must be between 1 and {limits.max_page_size}", code="invalid_query")
    return number, size
