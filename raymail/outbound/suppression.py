"""The suppression list: addresses that hard-bounced are not mailed again.

Entries are scoped per sender account (one sender's typo does not block the
address for everybody) or global (``[outbound] suppression = "global"``).
"""

from __future__ import annotations

GLOBAL = "*"


def scope_for(mode: str, sender_uid: str) -> str:
    return GLOBAL if mode == "global" else sender_uid


def key(scope: str, address: str) -> tuple[str, str]:
    return scope, address.strip().lower()


def refusal(addresses: list[str]) -> str:
    """The 422 message for a send that names suppressed addresses."""
    return (f"{', '.join(addresses)} hard-bounced earlier and is on the suppression list; "
            "nothing was sent (remove it with 'raymail queue unsuppress ADDRESS')")
