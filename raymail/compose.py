"""Build and read RFC 5322 messages with the stdlib ``email`` package."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import policy
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.parser import BytesParser
from datetime import datetime, timezone
from email.utils import format_datetime, make_msgid

from raymail.model import Address

SNIPPET_CHARS = 200
_WS_RE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Composed:
    raw: bytes
    message_id: str
    snippet: str


def _header_address(a: Address) -> HeaderAddress:
    local, _, domain = a.email.rpartition("@")
    return HeaderAddress(display_name=a.name, username=local, domain=domain)


def snippet_of(text: str) -> str:
    return _WS_RE.sub(" ", text).strip()[:SNIPPET_CHARS]


def build(
    *,
    sender: Address,
    to: tuple[Address, ...],
    cc: tuple[Address, ...],
    bcc: tuple[Address, ...],
    subject: str,
    body: str,
    html: str | None,
    hostname: str,
    date: float,
    message_id: str | None = None,
    include_bcc: bool = False,
) -> Composed:
    """The RFC 5322 source with CRLF line endings.

    ``include_bcc`` is for the sender's own copy only; delivered copies never
    carry Bcc (RFC 5322 section 3.6.3).
    """
    msg = EmailMessage(policy=policy.SMTP)
    mid = message_id or make_msgid(domain=hostname)
    msg["Message-ID"] = mid
    msg["Date"] = format_datetime(datetime.fromtimestamp(date, tz=timezone.utc))
    msg["From"] = _header_address(sender)
    if to:
        msg["To"] = [_header_address(a) for a in to]
    if cc:
        msg["Cc"] = [_header_address(a) for a in cc]
    if include_bcc and bcc:
        msg["Bcc"] = [_header_address(a) for a in bcc]
    if not to and not cc:
        msg["To"] = "undisclosed-recipients:;"
    msg["Subject"] = subject
    msg["MIME-Version"] = "1.0"
    msg.set_content(body or "", subtype="plain", charset="utf-8", cte=_cte(body or ""))
    if html:
        msg.add_alternative(html, subtype="html", charset="utf-8", cte=_cte(html))
    return Composed(raw=msg.as_bytes(policy=policy.SMTP), message_id=mid, snippet=snippet_of(body or ""))


def _cte(text: str) -> str:
    # 7bit when it is plain short-lined ASCII, quoted-printable otherwise: readable
    # source and no 8BITMIME dependency when the message leaves over SMTP.
    if text.isascii() and all(len(line) <= 998 for line in text.splitlines()):
        return "7bit"
    return "quoted-printable"


@dataclass(frozen=True, slots=True)
class Parsed:
    subject: str
    text: str
    html: str | None
    headers: list[tuple[str, str]]
    attachments: list[dict]


def parse(raw: bytes) -> Parsed:
    """Read a message defensively: malformed parts become empty text, never an exception."""
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    headers = [(k, str(v)) for k, v in msg.items()]
    text_part = msg.get_body(preferencelist=("plain",))
    html_part = msg.get_body(preferencelist=("html",))
    attachments = []
    for part in msg.iter_attachments():
        payload = part.get_payload(decode=True) or b""
        attachments.append(
            {"filename": part.get_filename() or "", "content_type": part.get_content_type(), "size": len(payload)}
        )
    return Parsed(
        subject=str(msg.get("Subject", "")),
        text=_content(text_part),
        html=_content(html_part) if html_part is not None else None,
        headers=headers,
        attachments=attachments,
    )


def _content(part: EmailMessage | None) -> str:
    if part is None:
        return ""
    try:
        content = part.get_content()
    except (LookupError, ValueError, AssertionError):
        payload = part.get_payload(decode=True) or b""
        content = payload.decode("utf-8", errors="replace")
    if not isinstance(content, str):
        content = content.decode("utf-8", errors="replace") if isinstance(content, bytes) else str(content)
    return content.replace("\r\n", "\n")
