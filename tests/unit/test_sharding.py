"""raymail/sharding.py: stable, even placement of users on shards."""

from __future__ import annotations

import uuid

import pytest

from raymail.sharding import shard_of


@pytest.mark.parametrize(
    "uid, shards, expected",
    [
        # hard-coded: these must never change, or users move to another shard on upgrade
        ("alice", 4, 1),
        ("alice", 16, 9),
        ("00000000-0000-0000-0000-000000000001", 4, 0),
        ("00000000-0000-0000-0000-000000000001", 16, 8),
        ("user-42", 4, 2),
        ("user-42", 1_000_003, 17372),
    ],
)
def test_stable(uid, shards, expected):
    assert shard_of(uid, shards) == expected
    assert shard_of(uid, shards) == expected  # and again
    assert 0 <= shard_of(uid, shards) < shards


@pytest.mark.parametrize("uid", ["", "x", "ünïcode-üid"])
def test_single_shard_is_always_zero(uid):
    assert shard_of(uid, 1) == 0


def test_distribution_is_even():
    rng = uuid.UUID  # deterministic uuids from a counter keep the test reproducible
    counts = [0] * 4
    for i in range(10_000):
        counts[shard_of(str(rng(int=i * 2654435761 + 12345)), 4)] += 1
    mean = 10_000 / 4
    assert sum(counts) == 10_000
    for c in counts:
        assert abs(c - mean) <= 0.2 * mean, counts


def test_distribution_of_random_uuids_is_even():
    counts = [0] * 4
    for _ in range(10_000):
        counts[shard_of(str(uuid.uuid4()), 4)] += 1
    assert all(abs(c - 2500) <= 500 for c in counts), counts
