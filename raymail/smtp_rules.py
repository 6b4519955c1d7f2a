"""SMTP intake decisions without I/O: recipients, line endings, trace headers.

The aiosmtpd handler (``gateway/smtp.py``) only moves bytes and asks these
functions; each answer is a full reply line (RFC 5321 section 4.2, enhanced
status codes from RFC 3463).
"""

from __future__ import annotations

from collections.abc import Callable
from email.utils import formatdate

from raymail import addresses

OK = "250 2.1.5 OK"
UNKNOWN_USER = "550 5.1.1 No such user here"
RELAY_DENIED = "554 5.7.1 Relaying denied: this server accepts mail for its own domains only"
BAD_ADDRESS = "501 5.1.3 Bad recipient address syntax"
BARE_LINE_ENDING = "550 5.6.11 Message refused: bare CR or LF in the message (lines must end with CRLF)"


def rcpt_reply(address: str, is_local_domain: Callable[[str], bool], user_exists: Callable[[str], bool]) -> str:
    """The reply to ``RCPT TO:<address>`` on the MX."""
    try:
        addr = addresses.parse_addr_spec(address)
    except addresses.AddressError:
        return BAD_ADDRESS
    if not is_local_domain(addresses.domain_of(addr)):
        return RELAY_DENIED
    return OK if user_exists(addr) else UNKNOWN_USER


def bare_line_ending(data: bytes) -> bool:
    """True when a CR or LF appears other than as CRLF (the SMTP smuggling vector)."""
    crlf = data.count(b"\r\n")
    return data.count(b"\n") != crlf or data.count(b"\r") != crlf


def trace_headers(*, mail_from: str, helo: str, peer_ip: str, hostname: str, queue_id: str, recipient: str | None,
                  now_s: float, tls: bool = False) -> bytes:
    """Return-Path and Received (RFC 5321 section 4.4), prepended to the original bytes."""
    proto = "ESMTPS" if tls else "ESMTP"
    helo = "".join(c for c in helo if c.isprintable() and c not in "()")[:100] or "unknown"
    rcpt = f"\r\n\tfor <{recipient}>" if recipient else ""
    return (
        f"Return-Path: <{mail_from}>\r\n"
        f"Received: from {helo} ([{peer_ip}])\r\n\tby {hostname} (raymail) with {proto} id {queue_id}{rcpt};\r\n"
        f"\t{formatdate(now_s)}\r\n"
    ).encode("ascii", "replace")


NOT_YOUR_ADDRESS = "553 5.7.1 Sender address rejected: you may send only as your own address"
OUTBOUND_NOT_ENABLED = "550 5.7.1 Delivery to other domains is not enabled on this server yet"
LOCKED_OUT = "454 4.7.0 Too many failed authentications from your address; try again later"


SUPPRESSED = "550 5.7.1 Recipient address hard-bounced earlier and is suppressed; not sent"


def submission_rcpt_reply(address: str, is_local_domain: Callable[[str], bool],
                          user_exists: Callable[[str], bool], outbound_enabled: bool = False) -> str:
    """The reply to ``RCPT TO`` on the submission port (authenticated senders): other
    domains are accepted when outbound pools are configured."""
    reply = rcpt_reply(address, is_local_domain, user_exists)
    if reply == RELAY_DENIED:
        return OK if outbound_enabled else OUTBOUND_NOT_ENABLED
    return reply


def retry_key(sender_uid: str, raw: bytes, recipients: list[str]) -> str:
    """The same submission again (same sender, Message-ID and recipients) is a client
    retrying after a reply it did not get or a 4xx that came after part of the work
    was done: ids derived from this key make every step of it land once. "" when the
    message has no Message-ID (then nothing can be recognised)."""
    import hashlib
    from email.parser import BytesHeaderParser

    try:
        message_id = str(BytesHeaderParser().parsebytes(raw).get("Message-ID", "")).strip()
    except Exception:  # noqa: BLE001 - an unreadable header: no key
        return ""
    if not message_id:
        return ""
    rcpts = "\0".join(sorted({r.lower() for r in recipients}))
    return hashlib.sha256(f"{sender_uid}\0{message_id}\0{rcpts}".encode("utf-8", "replace")).hexdigest()


def derived_id(key: str, *parts: str) -> str:
    """A 32-hex-digit id for one step of a keyed submission."""
    import hashlib

    return hashlib.sha256("\0".join((key, *parts)).encode()).hexdigest()[:32]


def header_from_address(raw: bytes) -> str | None:
    """The address in the message's From header (None when absent or unreadable)."""
    from email.parser import BytesHeaderParser
    from email.utils import getaddresses

    try:
        headers = BytesHeaderParser().parsebytes(raw)
        found = getaddresses(headers.get_all("From", []))
    except Exception:  # noqa: BLE001 - a broken header is just "no From"
        return None
    return found[0][1].lower() if len(found) == 1 and found[0][1] else None
