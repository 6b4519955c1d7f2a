"""gateway/hub.py: per-process WebSocket fan-out with bounded backlogs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from gateway.hub import CLOSE_SLOW, Hub


class FakeSocket:
    """A stand-in for the network side only: records what would be written."""

    def __init__(self, stall: bool = False) -> None:
        self.sent: list[dict] = []
        self.closed: tuple[int, str] | None = None
        self.stall = asyncio.Event() if stall else None

    async def send(self, text: str) -> None:
        if self.stall is not None:
            await self.stall.wait()
        self.sent.append(json.loads(text))

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def ev(n: int) -> dict:
    return {"type": "email.new", "cursor": n}


async def settle(turns: int = 5) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


def test_hub_module_does_not_pull_in_ray():
    code = "import sys, gateway.hub; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


async def test_publish_reaches_every_subscriber_of_the_uid_only():
    hub = Hub(queue_size=8)
    socks = [FakeSocket(), FakeSocket(), FakeSocket()]
    subs = [hub.subscribe(uid, s.send, s.close) for uid, s in zip(["alice", "alice", "bob"], socks)]
    for sub in subs:
        hub.resume(sub, 0)
    assert hub.connections == 3
    assert hub.publish("alice", ev(1)) == 2
    assert hub.publish("alice", ev(2)) == 2
    assert hub.publish("nobody", ev(3)) == 0
    await settle()
    assert socks[0].sent == [ev(1), ev(2)] and socks[1].sent == [ev(1), ev(2)]
    assert socks[2].sent == []
    assert hub.published_total == 4


async def test_paused_subscriber_skips_what_the_replay_sent():
    hub = Hub(queue_size=8)
    s = FakeSocket()
    sub = hub.subscribe("u", s.send, s.close)
    for i in (1, 2, 3, 4):
        hub.publish("u", ev(i))
    await settle()
    assert s.sent == []  # paused during the replay
    hub.resume(sub, 2)  # the replay sent up to cursor 2
    await settle()
    assert s.sent == [ev(3), ev(4)]


async def test_overflow_drops_the_slow_subscriber_only():
    hub = Hub(queue_size=3)
    slow_sock, fast_sock = FakeSocket(stall=True), FakeSocket()
    slow = hub.subscribe("alice", slow_sock.send, slow_sock.close)
    fast = hub.subscribe("alice", fast_sock.send, fast_sock.close)
    hub.resume(slow, 0)
    hub.resume(fast, 0)
    for i in range(1, 6):
        hub.publish("alice", ev(i))
        await settle()
    assert slow.dropped and not fast.dropped
    assert hub.dropped_total == 1
    assert slow_sock.closed is not None and slow_sock.closed[0] == CLOSE_SLOW
    assert "since=0" in slow_sock.closed[1]
    assert fast_sock.sent == [ev(i) for i in range(1, 6)]
    assert hub.publish("alice", ev(6)) == 1  # only the fast one takes it


async def test_stalled_send_times_out_and_drops():
    hub = Hub(queue_size=10, send_timeout_s=0.05)
    s = FakeSocket(stall=True)
    sub = hub.subscribe("u", s.send, s.close)
    hub.resume(sub, 0)
    hub.publish("u", ev(1))
    await asyncio.sleep(0.2)
    assert sub.dropped and s.closed is not None and s.closed[0] == CLOSE_SLOW


@pytest.mark.parametrize("queue_size", [1, 2, 5])
async def test_exactly_queue_size_events_fit_while_paused(queue_size: int):
    hub = Hub(queue_size=queue_size)
    s = FakeSocket()
    sub = hub.subscribe("u", s.send, s.close)
    for i in range(1, queue_size + 1):
        assert hub.publish("u", ev(i)) == 1
    assert not sub.dropped
    assert hub.publish("u", ev(99)) == 0
    assert sub.dropped


async def test_unsubscribe():
    hub = Hub(queue_size=4)
    s1, s2 = FakeSocket(), FakeSocket()
    a1, a2 = hub.subscribe("alice", s1.send, s1.close), hub.subscribe("alice", s2.send, s2.close)
    hub.resume(a1, 0)
    hub.resume(a2, 0)
    assert hub.wants("alice") and not hub.wants("bob")
    assert hub.users() == ["alice"]
    assert hub.unsubscribe(a1) is False  # alice still has a connection here
    assert hub.connections == 1 and hub.wants("alice")
    assert hub.publish("alice", ev(1)) == 1
    await settle()
    assert s1.sent == [] and s2.sent == [ev(1)]
    assert hub.unsubscribe(a2) is True  # the last one: the shard can stop pushing here
    assert hub.connections == 0 and not hub.wants("alice") and hub.users() == []


class Journal:
    """The user's events as the shard keeps them (what ``events_since`` answers)."""

    def __init__(self, last: int, oldest: int = 1, fail: bool = False) -> None:
        self.events = [ev(n) for n in range(oldest, last + 1)]
        self.oldest, self.last, self.fail = oldest, last, fail
        self.asked: list[int] = []

    async def fetch(self, uid: str, cursor: int) -> tuple[list[dict], bool, int]:
        self.asked.append(cursor)
        if self.fail:
            raise ConnectionError("the shard did not answer")
        return [e for e in self.events if e["cursor"] > cursor], cursor + 1 >= self.oldest, self.last


async def test_pushes_out_of_order_reach_the_socket_in_order_once():
    journal = Journal(last=3)
    hub = Hub(queue_size=8, fetch=journal.fetch)
    s = FakeSocket()
    hub.resume(hub.subscribe("u", s.send, s.close), 0)
    for n in (2, 1, 3):  # Ray ran the push of 2 first
        hub.publish("u", ev(n))
    await settle(30)
    assert s.sent == [ev(1), ev(2), ev(3)]
    assert journal.asked == [0] and hub.gaps_filled == 1


async def test_a_lost_push_is_fetched_from_the_shard():
    journal = Journal(last=4)
    hub = Hub(queue_size=8, fetch=journal.fetch)
    s = FakeSocket()
    hub.resume(hub.subscribe("u", s.send, s.close), 0)
    for n in (1, 3, 4):  # the push of 2 never came
        hub.publish("u", ev(n))
    await settle(30)
    assert s.sent == [ev(1), ev(2), ev(3), ev(4)]
    assert journal.asked == [1]


async def test_a_gap_the_shard_cannot_fill_closes_with_the_cursor_to_resume_from():
    hub = Hub(queue_size=8, fetch=Journal(last=3, fail=True).fetch)
    s = FakeSocket()
    hub.resume(hub.subscribe("u", s.send, s.close), 0)
    hub.publish("u", ev(1))
    hub.publish("u", ev(3))
    await settle(30)
    assert s.sent == [ev(1)]
    assert s.closed == (CLOSE_SLOW, "too slow; reconnect with since=1")


async def test_a_gap_older_than_the_events_kept_asks_for_a_resync():
    hub = Hub(queue_size=8, fetch=Journal(last=9, oldest=6).fetch)
    s = FakeSocket()
    hub.resume(hub.subscribe("u", s.send, s.close), 2)
    hub.publish("u", ev(9))
    hub.publish("u", ev(10))
    await settle(30)
    assert s.sent == [{"type": "resync", "cursor": 9}, ev(10)]


async def test_without_fetch_events_go_out_as_they_come():
    hub = Hub(queue_size=8)
    s = FakeSocket()
    hub.resume(hub.subscribe("u", s.send, s.close), 0)
    for n in (1, 3):
        hub.publish("u", ev(n))
    await settle(30)
    assert s.sent == [ev(1), ev(3)]
