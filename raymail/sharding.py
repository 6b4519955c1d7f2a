"""Stable placement of users on mailbox shards."""

from __future__ import annotations

import hashlib


def shard_of(uid: str, shards: int) -> int:
    """The same uid maps to the same shard in every process and every run."""
    digest = hashlib.blake2b(uid.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards
