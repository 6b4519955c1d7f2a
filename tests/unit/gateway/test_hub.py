"""gateway/hub.py: per-process WebSocket fan-out with bounded queues."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.hub import CLOSE, Hub


def drain(sub) -> list:
    out = []
    while not sub.queue.empty():
        out.append(sub.queue.get_nowait())
    return out


def ev(n: int) -> dict:
    return {"type": "email.new", "cursor": n}


def test_hub_module_does_not_pull_in_ray():
    # in a fresh interpreter: this session may share sys.modules with tests that import ray
    code = "import sys, gateway.hub; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_publish_reaches_every_subscriber_of_the_uid_only():
    hub = Hub(queue_size=8)
    a1, a2, b = hub.subscribe("alice"), hub.subscribe("alice"), hub.subscribe("bob")
    assert hub.connections == 3
    assert hub.publish("alice", ev(1)) == 2
    assert hub.publish("alice", ev(2)) == 2
    assert drain(a1) == [ev(1), ev(2)]
    assert drain(a2) == [ev(1), ev(2)]
    assert drain(b) == []
    assert hub.publish("nobody", ev(3)) == 0
    assert hub.published_total == 4


def test_overflow_drops_the_slow_subscriber_only():
    hub = Hub(queue_size=3)
    slow, fast = hub.subscribe("alice"), hub.subscribe("alice")
    for i in range(1, 4):
        assert hub.publish("alice", ev(i)) == 2
    drain(fast)
    assert hub.publish("alice", ev(4)) == 1  # slow is full: dropped
    assert slow.dropped and not fast.dropped
    assert hub.dropped_total == 1
    assert drain(slow) == [CLOSE]  # the backlog is discarded, only the close sentinel remains
    assert hub.publish("alice", ev(5)) == 1  # a dropped subscriber gets nothing more
    assert slow.queue.empty()
    assert hub.dropped_total == 1
    assert drain(fast) == [ev(4), ev(5)]
    assert hub.published_total == 3 * 2 + 2


@pytest.mark.parametrize("queue_size", [1, 2, 5])
def test_exactly_queue_size_events_fit(queue_size: int):
    hub = Hub(queue_size=queue_size)
    sub = hub.subscribe("u")
    for i in range(queue_size):
        assert hub.publish("u", ev(i)) == 1
    assert not sub.dropped and sub.queue.qsize() == queue_size
    assert hub.publish("u", ev(99)) == 0
    assert sub.dropped and sub.queue.qsize() == 1 and sub.queue.get_nowait() is CLOSE


def test_unsubscribe():
    hub = Hub(queue_size=4)
    a1, a2 = hub.subscribe("alice"), hub.subscribe("alice")
    assert hub.wants("alice") and not hub.wants("bob")
    hub.unsubscribe(a1)
    assert hub.connections == 1 and hub.wants("alice")
    assert hub.publish("alice", ev(1)) == 1
    assert drain(a1) == [] and drain(a2) == [ev(1)]
    hub.unsubscribe(a2)
    assert hub.connections == 0 and not hub.wants("alice")
    hub.unsubscribe(a2)  # twice is harmless
    assert hub.publish("alice", ev(2)) == 0
    assert drain(a2) == []
