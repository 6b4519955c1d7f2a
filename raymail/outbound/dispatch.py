"""Where each unfinished recipient is: ready, waiting for its retry time, in a pool's
queue, or leased to a sender IP. Memory only: after a restart everything
unfinished in ``SpoolState`` is simply ready (or waiting) again.

No I/O: the spool actor moves the entries ``take`` returns into the Ray queues.
"""

from __future__ import annotations

import heapq
from collections import defaultdict

from raymail.config import Pool
from raymail.outbound import warmup
from raymail.outbound.records import OutboundMessage, SpoolState, Status

Key = tuple[str, str]  # (outbound message id, recipient)
Entry = list[tuple[OutboundMessage, tuple[str, ...]]]  # one queue entry: messages and their recipients


def domain_of(rcpt: str) -> str:
    return rcpt.rpartition("@")[2].lower()


class Dispatcher:
    """Guarantees: a key is in at most one of ready / waiting / leased at a time (a
    queue may hold stale copies, which ``claim`` refuses); a lease belongs to one IP;
    ``claim`` grants no more than the quota it is given."""

    def __init__(self, state: SpoolState, pools: tuple[Pool, ...], lease_s: float, batch_size: int,
                 entries_per_ip: int = 4) -> None:
        self.state = state
        self.pools = pools
        self.lease_s = lease_s
        self.batch_size = batch_size
        self.entries_per_ip = entries_per_ip
        self.ready: dict[str, dict[Key, None]] = {p.name: {} for p in pools}  # ordered sets: FIFO
        self.later: list[tuple[float, Key]] = []  # (next attempt, key)
        self.dispatched: dict[Key, tuple[float, str]] = {}  # in a queue since, pool
        self.in_queue: dict[str, int] = defaultdict(int)
        self.leased: dict[Key, tuple[str, float]] = {}  # -> (ip, deadline)

    def pending(self, key: Key) -> OutboundMessage | None:
        """The message, if this recipient still has to be delivered."""
        states = self.state.rcpts.get(key[0])
        st = states.get(key[1]) if states else None
        if st is None or st.status not in (Status.QUEUED, Status.DEFERRED):
            return None
        return self.state.messages[key[0]]

    def schedule(self, msg: OutboundMessage, rcpt: str, next_s: float, now: float) -> None:
        key = (msg.id, rcpt)
        if next_s > now:
            heapq.heappush(self.later, (next_s, key))
        else:
            self.ready.setdefault(msg.pool, {})[key] = None

    def _undispatch(self, key: Key) -> None:
        hit = self.dispatched.pop(key, None)
        if hit is not None:
            self.in_queue[hit[1]] -= 1

    def release(self, key: Key) -> None:
        """Back to ready (unless finished meanwhile)."""
        self.leased.pop(key, None)
        self._undispatch(key)
        msg = self.pending(key)
        if msg is not None:
            self.ready.setdefault(msg.pool, {})[key] = None

    def expire(self, now: float) -> list[tuple[Key, str]]:
        """Retries that are due become ready; leases past their deadline and queue
        entries nobody claimed within ``lease_s`` go back. Returns the expired leases."""
        while self.later and self.later[0][0] <= now:
            _, key = heapq.heappop(self.later)
            msg = self.pending(key)
            if msg is not None and key not in self.leased and key not in self.dispatched:
                self.ready.setdefault(msg.pool, {})[key] = None
        expired = [(k, ip) for k, (ip, deadline) in self.leased.items() if deadline <= now]
        for key, _ in expired:
            self.release(key)
        stale = now - self.lease_s
        for key in [k for k, (since, _) in self.dispatched.items() if since <= stale]:
            self.release(key)  # its queue entry was lost, or no sender could take it
        return expired

    def take(self, pool: Pool, now: float) -> list[Entry]:
        """Queue entries for ``pool``: ready recipients, a domain's together, up to
        ``batch_size`` per entry and ``entries_per_ip`` entries per IP waiting in the
        queue (the rest stays here, movable and visible)."""
        ready = self.ready.get(pool.name)
        room = self.batch_size * len(pool.ips) * self.entries_per_ip - self.in_queue[pool.name]
        if not ready or room <= 0:
            return []
        by_domain: dict[str, list[Key]] = defaultdict(list)
        taken = 0
        for key in list(ready):
            if taken >= room:
                break
            del ready[key]
            if self.pending(key) is None or key in self.leased or key in self.dispatched:
                continue
            by_domain[domain_of(key[1])].append(key)
            taken += 1
        ordered = [k for keys in by_domain.values() for k in keys]
        entries = []
        for i in range(0, len(ordered), self.batch_size):
            grouped: dict[str, list[str]] = defaultdict(list)
            for mid, rcpt in ordered[i : i + self.batch_size]:
                grouped[mid].append(rcpt)
                self.dispatched[(mid, rcpt)] = (now, pool.name)
                self.in_queue[pool.name] += 1
            entries.append([(self.state.messages[m], tuple(r)) for m, r in grouped.items()])
        return entries

    def lost_queue(self, pool: str) -> None:
        """The pool's queue is gone: whatever it held is ready again."""
        for key in [k for k, (_, p) in self.dispatched.items() if p == pool]:
            self.release(key)

    def claim(self, ip: str, keys: list[Key], left: int | None, now: float) -> list[Key]:
        """Lease to ``ip`` what it took from a queue, up to ``left`` (None: no cap); the
        rest is ready again for another IP. Stale copies (finished, or leased to
        someone) are dropped."""
        valid = []
        for k in keys:
            if self.pending(k) is not None and k not in self.leased:
                valid.append(k)
            else:
                self._undispatch(k)
        n = warmup.grant(len(valid), left)
        for k in valid[:n]:
            self._undispatch(k)
            self.leased[k] = (ip, now + self.lease_s)
        for k in valid[n:]:
            self.release(k)
        return valid[:n]

    def renew(self, ip: str, keys: list[Key], now: float) -> list[Key]:
        """A live sender still holds ``keys``: their leases run ``lease_s`` from now.
        Returns those ``ip`` no longer holds (expired, finished, or leased to another
        IP), which its sender must not send."""
        lost = []
        for k in keys:
            owner = self.leased.get(k)
            if owner is not None and owner[0] == ip and self.pending(k) is not None:
                self.leased[k] = (ip, now + self.lease_s)
            else:
                lost.append(k)
        return lost

    def settle(self, ip: str, key: Key) -> OutboundMessage | None:
        """A sender reports ``key``: the message if the report counts (the key is still
        to be delivered and not leased to another IP); the lease ends."""
        owner = self.leased.get(key)
        if owner is not None and owner[0] != ip:
            return None  # the lease moved on; its new holder reports
        self.leased.pop(key, None)
        self._undispatch(key)
        return self.pending(key)

    def release_ip(self, ip: str, pool: str) -> int:
        """A restarted sender: the leases its earlier incarnation held go back, and so
        does everything waiting in its pool's queue: a call that was waiting on the
        queue when the sender died may still take an entry, which then reaches nobody.
        Copies left in the queue are refused when claimed."""
        mine = [k for k, (owner, _) in self.leased.items() if owner == ip]
        mine += [k for k, (_, p) in self.dispatched.items() if p == pool]
        for key in mine:
            self.release(key)
        return len(mine)

    def counts(self) -> dict:
        return {"ready": {p: len(r) for p, r in self.ready.items()}, "later": len(self.later),
                "dispatched": len(self.dispatched), "leased": len(self.leased)}


class Held:
    """A sender's side of its leases: what it claimed and has neither reported nor
    given up, and until when each lease is surely still its own. That time counts
    ``lease_s`` from when the claim or renewal that the spool granted was *asked*, so
    it is never later than the spool's deadline. Times are the sender's monotonic
    clock; no I/O.

    The sender renews everything it holds every ``renew_every_s`` (a third of the
    lease, so one failed renewal still leaves time for the next); just before a
    message goes out, ``check`` says which of its recipients are safe to send and
    which leases are too close to their end to trust without asking the spool."""

    def __init__(self, lease_s: float) -> None:
        self.lease_s = lease_s
        self.renew_every_s = lease_s / 3
        self.until: dict[Key, tuple[float, int]] = {}  # -> (lease surely ours until, claim)
        self.claims = 0

    def add(self, keys: list[Key], asked_at: float) -> int:
        """Leases granted by a claim asked at ``asked_at``; returns the claim's number."""
        self.claims += 1
        for k in keys:
            self.until[k] = (asked_at + self.lease_s, self.claims)
        return self.claims

    def keys(self) -> list[Key]:
        return list(self.until)

    def __contains__(self, key: Key) -> bool:
        return key in self.until

    def renewed(self, asked: list[Key], lost: list[Key], asked_at: float, last_claim: int) -> None:
        """The spool's answer to a renewal of ``asked`` (asked when ``last_claim`` was
        the newest claim): all but ``lost`` run on."""
        gone = set(lost)
        for k in asked:
            hit = self.until.get(k)
            if hit is None:
                continue  # reported meanwhile
            if k in gone:
                if hit[1] <= last_claim:  # not claimed again after the renewal was asked
                    del self.until[k]
            else:
                self.until[k] = (max(hit[0], asked_at + self.lease_s), hit[1])

    def done(self, keys: list[Key], claim: int | None = None) -> None:
        """No longer held: reported, or given up (only ``claim``'s leases, if given)."""
        for k in keys:
            hit = self.until.get(k)
            if hit is not None and (claim is None or hit[1] == claim):
                del self.until[k]

    def check(self, keys: list[Key], now: float) -> tuple[list[Key], list[Key]]:
        """(safe to send, to confirm with the spool first) out of ``keys``; a key not
        held is in neither. A lease is safe while it runs at least ``renew_every_s``
        beyond ``now``: the renewals keep it so unless one has failed."""
        safe, doubtful = [], []
        for k in keys:
            hit = self.until.get(k)
            if hit is not None:
                (safe if hit[0] - now > self.renew_every_s else doubtful).append(k)
        return safe, doubtful
