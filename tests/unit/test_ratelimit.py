"""raymail/ratelimit.py: per-key token buckets with explicit clocks."""

from __future__ import annotations

import pytest

from raymail.ratelimit import TokenBuckets


def test_burst_then_refusal_with_correct_wait():
    tb = TokenBuckets(rate_per_s=2.0, burst=3)
    assert [tb.take("k", 10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert tb.take("k", 10.0) == 0.5  # one token at 2/s
    assert tb.take("k", 10.0) == 0.5  # refusals cost nothing


@pytest.mark.parametrize(
    "later_s, expected",
    [
        (0.25, 0.25),  # half a token back: wait the other half
        (0.5, 0.0),  # exactly one token back
        (0.75, 0.0),
    ],
)
def test_refill_over_time(later_s, expected):
    tb = TokenBuckets(rate_per_s=2.0, burst=3)
    for _ in range(3):
        tb.take("k", 0.0)
    assert tb.take("k", later_s) == expected


def test_refill_is_capped_at_burst():
    tb = TokenBuckets(rate_per_s=2.0, burst=3)
    tb.take("k", 0.0)
    got = [tb.take("k", 1000.0) for _ in range(4)]
    assert got == [0.0, 0.0, 0.0, 0.5]


def test_steady_rate_is_allowed():
    tb = TokenBuckets(rate_per_s=4.0, burst=1)
    assert [tb.take("k", i * 0.25) for i in range(10)] == [0.0] * 10
    assert tb.take("k", 2.25) == 0.25  # same instant as the last one


def test_cost_above_one():
    tb = TokenBuckets(rate_per_s=1.0, burst=5)
    assert tb.take("k", 0.0, cost=4) == 0.0
    assert tb.take("k", 0.0, cost=4) == 3.0


def test_keys_are_isolated():
    tb = TokenBuckets(rate_per_s=1.0, burst=2)
    assert [tb.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    assert [tb.take("b", 0.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    assert tb.take("a", 0.0) == 1.0


def test_eviction_drops_only_refilled_buckets():
    tb = TokenBuckets(rate_per_s=0.5, burst=1, max_keys=2)  # a bucket is full again after 2 s
    assert tb.take("a", 0.0) == 0.0
    assert tb.take("b", 1.0) == 0.0
    assert tb.take("c", 2.5) == 0.0  # table full: "a" (idle 2.5 s) goes, "b" (idle 1.5 s) stays
    assert len(tb._buckets) == 2
    assert set(tb._buckets) == {"b", "c"}
    assert tb.take("b", 2.5) == pytest.approx(0.5)  # still limited: its state was kept


def test_eviction_clears_everything_when_nothing_is_full():
    tb = TokenBuckets(rate_per_s=1.0, burst=1, max_keys=2)
    tb.take("a", 0.0)
    tb.take("b", 0.0)
    assert tb.take("a", 0.0) == 1.0
    assert tb.take("c", 0.5) == 0.0
    assert set(tb._buckets) == {"c"}  # memory stays bounded
    assert tb.take("a", 0.5) == 0.0  # a fresh bucket (the limit fails open under key churn)


def test_many_keys_stay_bounded():
    tb = TokenBuckets(rate_per_s=1.0, burst=1, max_keys=50)
    for i in range(1000):
        assert tb.take(f"k{i}", float(i) * 0.001) == 0.0
        assert len(tb._buckets) <= 50
