"""Who may open an SMTP session: per-client-address connection caps, no I/O.

Each listener process keeps one ``Admission``; the protocol asks ``admit`` when a
connection arrives and calls ``release`` when it ends. A refusal is a full 421
reply (RFC 5321 section 3.8: the server may close with 421 at greeting), so a
well-behaved sending server retries later instead of bouncing.
"""

from __future__ import annotations

from raymail.ratelimit import TokenBuckets

TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections from your address; try again later"
CONNECTING_TOO_FAST = "421 4.7.0 Too many new connections from your address; try again in {wait_s} s"
SESSION_TOO_LONG = "421 4.4.2 Session time limit reached; closing"
IDLE_TIMEOUT = "421 4.4.2 Idle for too long; closing"
PIPELINED_AFTER_STARTTLS = "554 5.5.1 Commands pipelined after STARTTLS are not allowed; closing"


class Admission:
    """Concurrent sessions per client address (``max_concurrent``) and new sessions
    per minute per address (``per_minute``, a token bucket with a minute's burst)."""

    def __init__(self, max_concurrent: int, per_minute: int) -> None:
        self.max_concurrent = max_concurrent
        self._open: dict[str, int] = {}
        self._rate = TokenBuckets(rate_per_s=per_minute / 60, burst=per_minute)

    def admit(self, ip: str, now_s: float) -> str | None:
        """None when the session may start (and it is counted), else the 421 reply."""
        if self._open.get(ip, 0) >= self.max_concurrent:
            return TOO_MANY_CONNECTIONS
        wait_s = self._rate.take(ip, now_s)
        if wait_s > 0:
            return CONNECTING_TOO_FAST.format(wait_s=max(1, int(wait_s)))
        self._open[ip] = self._open.get(ip, 0) + 1
        return None

    def release(self, ip: str) -> None:
        left = self._open.get(ip, 0) - 1
        if left > 0:
            self._open[ip] = left
        else:
            self._open.pop(ip, None)

    def open_sessions(self, ip: str) -> int:
        return self._open.get(ip, 0)
