"""Retry policy: what an SMTP reply or a failure means for one recipient.

RFC 5321 section 4.2.1: 2yz delivered, 4yz transient (retry with back-off until
the maximum age, then bounce), 5yz permanent (hard bounce). Failures no retry can
fix (the stored message is gone, a broken record) are ``DEAD``: they wait in the
error queue for an operator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    DEAD = "dead"


# Codes for failures that are not an SMTP reply from the destination.
CONNECT_FAILED = 421  # no connection, or it was lost: transient
NO_ROUTE = 550  # the domain does not exist or takes no mail: permanent
DNS_TEMP = 451
INTERNAL = 0  # a local failure no retry fixes

_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


def action_for_code(code: int) -> Action:
    if 200 <= code < 300:
        return Action.DELIVERED
    if 500 <= code < 600:
        return Action.BOUNCED
    if code == INTERNAL:
        return Action.DEAD
    return Action.DEFERRED


@dataclass(frozen=True)
class Decision:
    action: Action
    next_s: float = 0.0  # when DEFERRED: the next attempt
    expired: bool = False  # BOUNCED because the message is too old to keep trying


def decide(code: int, attempts: int, created_s: float, now_s: float, backoff_s: tuple[int, ...],
           max_age_s: int) -> Decision:
    """``attempts`` counts this one. A deferral whose next try would fall after the
    maximum age bounces now: the sender hears of it instead of a silent wait."""
    action = action_for_code(code)
    if action is not Action.DEFERRED:
        return Decision(action)
    delay = backoff_s[min(max(attempts, 1) - 1, len(backoff_s) - 1)]
    if now_s + delay - created_s > max_age_s:
        return Decision(Action.BOUNCED, expired=True)
    return Decision(Action.DEFERRED, next_s=now_s + delay)


def enhanced_status(code: int, text: str) -> str:
    """The RFC 3463 status for a reply: the one it carries, else one from its class."""
    m = _ENHANCED.search(text or "")
    if m and m.group(1) == str(code // 100):
        return m.group(0)
    if 200 <= code < 300:
        return "2.0.0"
    return "5.0.0" if code >= 500 or code == INTERNAL else "4.0.0"
