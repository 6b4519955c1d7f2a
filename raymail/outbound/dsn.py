"""Delivery status notifications (RFC 3464): the bounce a sender finds in the Inbox.

A ``multipart/report; report-type=delivery-status`` (RFC 6522) with three parts:
a human-readable text, the ``message/delivery-status`` fields (one per-message
group, then one group per failed recipient) and the original message's headers
as ``text/rfc822-headers``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from email.utils import formatdate


@dataclass(frozen=True)
class Failure:
    recipient: str
    status: str  # RFC 3463, e.g. 5.1.1
    code: int  # the SMTP reply code, 0 when no server answered
    text: str  # the reply text, or why no server answered
    remote_mta: str = ""


def _clean(value: str, limit: int = 900) -> str:
    return " ".join(value.replace("\r", " ").replace("\n", " ").split())[:limit]


def original_headers(raw: bytes) -> bytes:
    """The header block of ``raw`` (up to the first empty line), CRLF-terminated."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    head = raw if end < 0 else raw[:end]
    return head.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"


def build(*, reporting_mta: str, to: str, original_message_id: str, original_subject: str,
          failures: list[Failure], headers: bytes, arrival_s: float, now_s: float) -> tuple[bytes, str]:
    """The DSN as RFC 5322 bytes (CRLF) and its Message-ID."""
    boundary = f"=_dsn_{uuid.uuid4().hex}"
    message_id = f"<{uuid.uuid4().hex}@{reporting_mta}>"
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{to}>",
        f"Subject: Undelivered Mail Returned to Sender: {_clean(original_subject, 200)}",
        f"Date: {formatdate(now_s)}",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"Your message {_clean(original_message_id, 200)} could not be delivered to:",
        "",
    ]
    for f in failures:
        lines.append(f"  <{f.recipient}>: {f.code or ''} {_clean(f.text, 400)}".replace("  ", " ", 1))
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {reporting_mta}",
        f"Arrival-Date: {formatdate(arrival_s)}",
    ]
    for f in failures:
        lines += ["", f"Final-Recipient: rfc822; {f.recipient}", "Action: failed", f"Status: {f.status}"]
        if f.remote_mta:
            lines.append(f"Remote-MTA: dns; {_clean(f.remote_mta, 255)}")
        diag = f"{f.code} {_clean(f.text)}" if f.code else _clean(f.text)
        lines.append(f"Diagnostic-Code: smtp; {diag}")
    lines += ["", f"--{boundary}", "Content-Type: text/rfc822-headers", ""]
    body = "\r\n".join(lines).encode("utf-8") + b"\r\n" + headers + f"\r\n--{boundary}--\r\n".encode()
    return body, message_id
