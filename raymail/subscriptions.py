"""Which gateways hold a WebSocket for which user, as a mailbox shard knows it.

A gateway says ``subscribe`` when a socket of a user opens there and ``unsubscribe``
when the user's last socket there closes. Both travel as Ray calls, and Ray does not
order an async actor's calls: a quick close and reopen (a page reload) could apply as
subscribe, then unsubscribe, and leave an open socket without pushes. So each change
carries the gateway's sequence number, increasing over the gateway's life and across
its restarts; a change older than the last one applied for the same (user, gateway)
is ignored. An unsubscribe is remembered for ``remember_s`` so that an older
subscribe arriving after it is still recognised; then it is forgotten.

Pure data: no Ray, no I/O.
"""

from __future__ import annotations

from collections import deque


class Subscriptions:
    def __init__(self, remember_s: float = 60.0) -> None:
        self.remember_s = remember_s
        self._by_uid: dict[str, set[str]] = {}
        self._seq: dict[tuple[str, str], int] = {}  # the last change applied per (uid, gateway)
        self._gone: deque[tuple[float, tuple[str, str], int]] = deque()  # (when, key, seq) of unsubscribes

    def _newest(self, key: tuple[str, str], seq: int | None) -> bool:
        """Record ``seq`` for ``key``; False when a newer change was applied already."""
        if seq is None:
            return True
        last = self._seq.get(key)
        if last is not None and seq < last:
            return False
        self._seq[key] = seq
        return True

    def subscribe(self, uid: str, gateway: str, seq: int | None = None) -> bool:
        """``gateway`` holds a socket of ``uid``; False when this change was stale."""
        if not self._newest((uid, gateway), seq):
            return False
        self._by_uid.setdefault(uid, set()).add(gateway)
        return True

    def unsubscribe(self, uid: str, gateway: str, seq: int | None = None, now: float = 0.0) -> bool:
        """``gateway`` holds no socket of ``uid`` any more; False when this change was stale."""
        self._expire(now)
        key = (uid, gateway)
        if not self._newest(key, seq):
            return False
        self._drop(uid, gateway)
        if seq is not None:
            self._gone.append((now, key, seq))
        return True

    def forget_gateway(self, gateway: str) -> None:
        """A gateway (re)started: it holds no sockets, and its sequence starts afresh."""
        for uid in [u for u, names in self._by_uid.items() if gateway in names]:
            self._drop(uid, gateway)
        for key in [k for k in self._seq if k[1] == gateway]:
            del self._seq[key]

    def learned(self, uid: str, gateway: str) -> None:
        """A gateway listed ``uid`` among its sockets (a restarted shard asked)."""
        self._by_uid.setdefault(uid, set()).add(gateway)

    def gateways_for(self, uid: str) -> set[str]:
        return self._by_uid.get(uid, set())

    @property
    def users(self) -> int:
        return len(self._by_uid)

    def _drop(self, uid: str, gateway: str) -> None:
        names = self._by_uid.get(uid)
        if names is not None:
            names.discard(gateway)
            if not names:
                del self._by_uid[uid]

    def _expire(self, now: float) -> None:
        while self._gone and now - self._gone[0][0] > self.remember_s:
            _, key, seq = self._gone.popleft()
            if self._seq.get(key) == seq and key[1] not in self._by_uid.get(key[0], ()):
                del self._seq[key]
