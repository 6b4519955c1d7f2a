"""The one owner of this gateway process's WebSocket subscriptions.

Publishing never waits for a client. Each connection has a bounded backlog; a
sender task exists only while a connection has something to send, so an idle
connection costs no task. A connection whose backlog overflows, or whose send
stalls past ``send_timeout_s``, is closed with 4008 and a reason naming the
cursor to reconnect with (``?since=<cursor>``); the client misses nothing.

A user's events carry consecutive cursors, and each connection gets them in
order with none missing. Pushes can arrive out of order (Ray does not order an
async actor's calls) or not at all (a failed push): when the next event is not
the one after the last sent, the ones between are fetched from the user's shard
(``fetch``) and sent first; a late push of one of them is then a duplicate.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

CLOSE_SLOW = 4008

SendText = Callable[[str], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]
# (uid, cursor) -> (the user's events after the cursor, False if some are no longer
# kept, the user's latest cursor): the shard's ``events_since``.
Fetch = Callable[[str, int], Awaitable[tuple[list[dict], bool, int]]]


class Subscriber:
    """One WebSocket connection of ``uid``. Starts paused (for the replay)."""

    __slots__ = ("uid", "send", "close", "backlog", "last_cursor", "dropped", "busy", "__weakref__")

    def __init__(self, uid: str, send: SendText, close: Close) -> None:
        self.uid = uid
        self.send = send
        self.close = close
        self.backlog: deque[tuple[int, str]] = deque()
        self.last_cursor = 0
        self.dropped = False
        self.busy = True  # paused until resume(): nothing is sent before the replay ends


class Hub:
    def __init__(self, queue_size: int, send_timeout_s: float = 10.0, fetch: Fetch | None = None) -> None:
        """Without ``fetch`` events go out as they come, gaps and all."""
        self.queue_size = queue_size
        self.send_timeout_s = send_timeout_s
        self.fetch = fetch
        self._subs: dict[str, set[Subscriber]] = defaultdict(set)
        self.dropped_total = 0
        self.published_total = 0
        self.gaps_filled = 0

    def subscribe(self, uid: str, send: SendText, close: Close) -> Subscriber:
        sub = Subscriber(uid, send, close)
        self._subs[uid].add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> bool:
        """Forget ``sub``; True when it was its user's last connection here."""
        sub.dropped = True
        sub.backlog.clear()
        subs = self._subs.get(sub.uid)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.uid]
                return True
        return False

    def users(self) -> list[str]:
        """Users with at least one connection here."""
        return list(self._subs)

    def resume(self, sub: Subscriber, last_cursor: int) -> None:
        """End the pause: what queued meanwhile and is newer than ``last_cursor`` goes out."""
        sub.last_cursor = last_cursor
        sub.busy = False
        self._kick(sub)

    @property
    def connections(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def wants(self, uid: str) -> bool:
        return uid in self._subs

    def publish(self, uid: str, event: dict) -> int:
        """Queue ``event`` for every connection of ``uid``; returns how many took it."""
        subs = self._subs.get(uid)
        if not subs:
            return 0
        text = json.dumps(event, ensure_ascii=False)
        cursor = event["cursor"]
        delivered = 0
        for sub in list(subs):
            if sub.dropped:
                continue
            if len(sub.backlog) >= self.queue_size:
                self._drop(sub)
                continue
            sub.backlog.append((cursor, text))
            delivered += 1
            self._kick(sub)
        self.published_total += delivered
        return delivered

    def _kick(self, sub: Subscriber) -> None:
        if not sub.busy and sub.backlog and not sub.dropped:
            sub.busy = True
            asyncio.ensure_future(self._flush(sub))

    async def _flush(self, sub: Subscriber) -> None:
        try:
            while sub.backlog and not sub.dropped:
                cursor, text = sub.backlog[0]
                if cursor <= sub.last_cursor:
                    sub.backlog.popleft()
                    continue  # sent already, by the replay or a gap fill
                if cursor > sub.last_cursor + 1 and self.fetch is not None:
                    if not await self._fill(sub, cursor):
                        self._drop(sub)  # the client reconnects with since= and misses nothing
                    continue
                sub.backlog.popleft()
                await asyncio.wait_for(sub.send(text), self.send_timeout_s)
                sub.last_cursor = cursor
        except TimeoutError:
            self._drop(sub)
        except Exception:  # noqa: BLE001 - the socket is gone; its handler cleans up
            sub.dropped = True
            sub.backlog.clear()
        finally:
            sub.busy = False

    async def _fill(self, sub: Subscriber, upto: int) -> bool:
        """Send ``sub`` the events after its last one and before ``upto`` (the next
        pushed), fetched from the shard; False when that could not be done."""
        assert self.fetch is not None
        try:
            events, complete, latest = await self.fetch(sub.uid, sub.last_cursor)
        except Exception:  # noqa: BLE001 - the shard did not answer
            log.warning("fetching missed events for a WebSocket failed", exc_info=True)
            return False
        if not complete:  # older than the events kept: the client reloads its list
            await asyncio.wait_for(sub.send(json.dumps({"type": "resync", "cursor": latest})), self.send_timeout_s)
            sub.last_cursor = max(sub.last_cursor, latest)
            return True
        sent = False
        for event in events:
            if event["cursor"] != sub.last_cursor + 1:
                break  # the shard's own order is gapless; anything else waits for the next round
            await asyncio.wait_for(sub.send(json.dumps(event, ensure_ascii=False)), self.send_timeout_s)
            sub.last_cursor = event["cursor"]
            sent = True
            if sub.last_cursor >= upto - 1:
                break  # the rest is in the backlog already
        if sent:
            self.gaps_filled += 1
        return sent

    def _drop(self, sub: Subscriber) -> None:
        if sub.dropped:
            return
        sub.dropped = True
        sub.backlog.clear()
        self.dropped_total += 1
        asyncio.ensure_future(self._close(sub))

    @staticmethod
    async def _close(sub: Subscriber) -> None:
        try:
            await sub.close(CLOSE_SLOW, f"too slow; reconnect with since={sub.last_cursor}")
        except Exception:  # noqa: BLE001 - the peer may be gone already
            log.debug("closing a slow WebSocket failed", exc_info=True)
