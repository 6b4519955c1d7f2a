"""The suppression list: addresses that hard-bounced are not mailed again.

Entries are scoped per sender account (one sender's typo does not block the
address for everybody) or global (``[outbound] suppression = "global"``).

Every 5xx bounces the message, but only a reply that says the address itself is
bad suppresses it (``suppresses``): a content or policy refusal (5.7.x, 5.6.x),
a full mailbox (5.2.2) or a message too large (5.3.4) says nothing about
whether the address exists.
"""

from __future__ import annotations

import re

GLOBAL = "*"


def scope_for(mode: str, sender_uid: str) -> str:
    return GLOBAL if mode == "global" else sender_uid


def key(scope: str, address: str) -> tuple[str, str]:
    return scope, address.strip().lower()


def refusal(addresses: list[str]) -> str:
    """The 422 message for a send that names suppressed addresses."""
    return (f"{', '.join(addresses)} hard-bounced earlier and is on the suppression list; "
            "nothing was sent (remove it with 'raymail queue unsuppress ADDRESS')")


_STATUS = re.compile(r"\b5\.(\d{1,3})\.(\d{1,3})\b")
_MAILBOX_CODES = (550, 551, 553)  # without an enhanced status: mailbox unavailable / not local / name not allowed


def suppresses(code: int, text: str) -> bool:
    """Whether a permanent failure means the address is bad (RFC 3463): 5.1.x
    (addressing: no such mailbox, no such domain, null MX, moved) or 5.2.1
    (mailbox disabled); a reply without an enhanced status, by its basic code."""
    if not 500 <= code < 600:
        return False
    m = _STATUS.search(text or "")
    if m is None:
        return code in _MAILBOX_CODES
    subject, detail = int(m.group(1)), int(m.group(2))
    return subject == 1 or (subject, detail) == (2, 1)
