"""The one owner of this gateway process's WebSocket subscriptions.

Publishing never waits for a client: each connection has a bounded queue, and a
connection whose queue overflows is marked dropped and closed; the client
reconnects with ``?since=<cursor>`` and replays what it missed.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

CLOSE = object()  # queue sentinel: close this connection


class Subscriber:
    __slots__ = ("uid", "queue", "last_cursor", "dropped")

    def __init__(self, uid: str, queue_size: int) -> None:
        self.uid = uid
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=queue_size + 1)  # +1: room for CLOSE
        self.last_cursor = 0
        self.dropped = False


class Hub:
    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self._subs: dict[str, set[Subscriber]] = defaultdict(set)
        self.dropped_total = 0
        self.published_total = 0

    def subscribe(self, uid: str) -> Subscriber:
        sub = Subscriber(uid, self.queue_size)
        self._subs[uid].add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._subs.get(sub.uid)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.uid]

    @property
    def connections(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def wants(self, uid: str) -> bool:
        return uid in self._subs

    def publish(self, uid: str, event: dict) -> int:
        """Queue ``event`` for every connection of ``uid``; returns how many got it."""
        delivered = 0
        for sub in self._subs.get(uid, ()):
            if sub.dropped:
                continue
            if sub.queue.qsize() >= self.queue_size:
                self._drop(sub)
                continue
            sub.queue.put_nowait(event)
            delivered += 1
        self.published_total += delivered
        return delivered

    def _drop(self, sub: Subscriber) -> None:
        sub.dropped = True
        self.dropped_total += 1
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(CLOSE)
