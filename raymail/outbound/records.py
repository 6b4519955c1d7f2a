"""Outbound records: what the spool logs (frozen dataclasses, ``raymail.codec`` tags
21-26) and the per-recipient state they build, as pure transitions.

The log is the truth: replaying every record in order gives the state, so a
spool that restarts knows what is unfinished, who is suppressed and how much
each IP sent today. Dispatch and leases are not logged: after a restart all
unfinished work is simply queued again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from enum import StrEnum

from raymail.outbound import warmup
from raymail.outbound.retry import Action


class Status(StrEnum):
    QUEUED = "queued"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    DEAD = "dead"


FINAL = frozenset({Status.DELIVERED, Status.BOUNCED})
RECENT_FINISHED = 100_000  # finished message ids remembered, so a retried enqueue is not sent twice


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A message accepted for delivery elsewhere; ``recipients`` are the remote ones."""

    id: str
    message_id: str
    sender_uid: str
    sender_email: str
    blob: str  # the stored message (what the recipients get)
    category: str
    pool: str
    recipients: tuple[str, ...]
    created_s: float
    size: int = 0
    dkim_header: str = ""  # prepended on the wire; it signs exactly the stored message


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one delivery attempt for one recipient (or of giving up)."""

    message: str
    rcpt: str
    action: str  # retry.Action
    code: int
    text: str
    ip: str
    ts: float
    next_s: float = 0.0


@dataclass(frozen=True, slots=True)
class QuotaUse:
    """``count`` messages were handed to ``ip`` on UTC day ``day`` (warm-up counters)."""

    ip: str
    day: int
    count: int


@dataclass(frozen=True, slots=True)
class Suppress:
    scope: str
    address: str
    reason: str
    ts: float


@dataclass(frozen=True, slots=True)
class Unsuppress:
    scope: str
    address: str


@dataclass(frozen=True, slots=True)
class Requeue:
    """An operator sends a dead recipient back to the queue."""

    message: str
    rcpt: str
    ts: float


@dataclass(frozen=True, slots=True)
class DsnDone:
    """The bounce report for these recipients of ``message`` is in the sender's Inbox."""

    message: str
    rcpts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rcpt:
    status: Status = Status.QUEUED
    attempts: int = 0
    next_s: float = 0.0
    code: int = 0
    text: str = ""
    ip: str = ""


def after(state: Rcpt, attempt: Attempt) -> Rcpt:
    """The recipient's state after ``attempt`` (pure)."""
    action = Action(attempt.action)
    status = {Action.DELIVERED: Status.DELIVERED, Action.BOUNCED: Status.BOUNCED,
              Action.DEFERRED: Status.DEFERRED, Action.DEAD: Status.DEAD}[action]
    return Rcpt(status=status, attempts=state.attempts + 1, next_s=attempt.next_s, code=attempt.code,
                text=attempt.text, ip=attempt.ip)


@dataclass
class IpUse:
    first_day: int
    day: int
    used: int


@dataclass
class SpoolState:
    """Unfinished messages, their recipients' states, suppressions and warm-up counters."""

    messages: dict[str, OutboundMessage] = field(default_factory=dict)
    rcpts: dict[str, dict[str, Rcpt]] = field(default_factory=dict)
    suppressed: dict[tuple[str, str], str] = field(default_factory=dict)
    ips: dict[str, IpUse] = field(default_factory=dict)
    finished: int = 0
    recent: OrderedDict[str, None] = field(default_factory=OrderedDict)  # finished ids, oldest first
    # Bounces whose report is not in the sender's Inbox yet: message id -> (message,
    # [(recipient, code, text)]). Kept past the message's end, so a restart sends them.
    bounces: dict[str, tuple[OutboundMessage, list[tuple[str, int, str]]]] = field(default_factory=dict)

    def apply(self, rec: object) -> None:
        if isinstance(rec, OutboundMessage):
            if not self.known(rec.id):
                self.messages[rec.id] = rec
                self.rcpts[rec.id] = {r: Rcpt() for r in dict.fromkeys(rec.recipients)}
        elif isinstance(rec, Attempt):
            states = self.rcpts.get(rec.message)
            if states is None or rec.rcpt not in states or states[rec.rcpt].status in FINAL:
                return  # a late report for finished work (a duplicate after a lease expired)
            states[rec.rcpt] = after(states[rec.rcpt], rec)
            if rec.action == "bounced":
                self.bounces.setdefault(rec.message, (self.messages[rec.message], []))[1].append(
                    (rec.rcpt, rec.code, rec.text))
            if all(s.status in FINAL for s in states.values()):
                del self.rcpts[rec.message], self.messages[rec.message]
                self.finished += 1
                self.recent[rec.message] = None
                if len(self.recent) > RECENT_FINISHED:
                    self.recent.popitem(last=False)
        elif isinstance(rec, QuotaUse):
            use = self.ips.get(rec.ip)
            if use is None:
                self.ips[rec.ip] = IpUse(rec.day, rec.day, rec.count)
            elif rec.day > use.day:
                use.day, use.used = rec.day, rec.count
            elif rec.day == use.day:
                use.used += rec.count
        elif isinstance(rec, Suppress):
            self.suppressed[(rec.scope, rec.address.lower())] = rec.reason
        elif isinstance(rec, Unsuppress):
            self.suppressed.pop((rec.scope, rec.address.lower()), None)
        elif isinstance(rec, DsnDone):
            hit = self.bounces.get(rec.message)
            if hit is not None:
                left = [f for f in hit[1] if f[0] not in rec.rcpts]
                if left:
                    self.bounces[rec.message] = (hit[0], left)
                else:
                    del self.bounces[rec.message]
        elif isinstance(rec, Requeue):
            states = self.rcpts.get(rec.message)
            if states is not None and states.get(rec.rcpt, Rcpt()).status is Status.DEAD:
                states[rec.rcpt] = replace(states[rec.rcpt], status=Status.QUEUED, next_s=0.0)
        else:
            raise TypeError(f"spool: unknown record {type(rec).__name__}")

    # -- queries -------------------------------------------------------------
    def known(self, message_id: str) -> bool:
        """Queued now, or finished recently (an enqueue retried after its answer was lost)."""
        return message_id in self.messages or message_id in self.recent

    def remaining(self, ip: str, now_s: float, daily_caps: tuple[int, ...], warmed: bool) -> int | None:
        today = warmup.day_of(now_s)
        use = self.ips.get(ip)
        if use is None:
            return warmup.remaining(None, today, 0, daily_caps, warmed)
        return warmup.remaining(use.first_day, today, use.used if use.day == today else 0, daily_caps, warmed)

    def is_suppressed(self, scope: str, address: str) -> str | None:
        return self.suppressed.get((scope, address.lower()))

    def pending(self):
        """(message, rcpt, state) for every recipient still to deliver (queued or deferred)."""
        for mid, states in self.rcpts.items():
            msg = self.messages[mid]
            for rcpt, st in states.items():
                if st.status in (Status.QUEUED, Status.DEFERRED):
                    yield msg, rcpt, st

    # -- snapshots -----------------------------------------------------------
    def dump(self) -> dict:
        return {
            "messages": list(self.messages.values()),
            "rcpts": {mid: [[r, s.status.value, s.attempts, s.next_s, s.code, s.text, s.ip] for r, s in st.items()]
                      for mid, st in self.rcpts.items()},
            "suppressed": [[s, a, why] for (s, a), why in self.suppressed.items()],
            "ips": {ip: [u.first_day, u.day, u.used] for ip, u in self.ips.items()},
            "finished": self.finished,
            "recent": list(self.recent),
            "bounces": [[m, [list(f) for f in fs]] for m, fs in self.bounces.values()],
        }

    @classmethod
    def load(cls, data: dict) -> SpoolState:
        st = cls()
        st.messages = {m.id: m for m in data["messages"]}
        st.rcpts = {mid: {r: Rcpt(Status(s), a, n, c, t, ip) for r, s, a, n, c, t, ip in rows}
                    for mid, rows in data["rcpts"].items()}
        st.suppressed = {(s, a): why for s, a, why in data["suppressed"]}
        st.ips = {ip: IpUse(*v) for ip, v in data["ips"].items()}
        st.finished = data["finished"]
        st.recent = OrderedDict.fromkeys(data.get("recent", ()))
        st.bounces = {m.id: (m, [tuple(f) for f in fs]) for m, fs in data.get("bounces", ())}
        return st
