"""Stable placement of users on mailbox shards, and the reads a shard serves."""

from __future__ import annotations

import hashlib


def shard_of(uid: str, shards: int) -> int:
    """The same uid maps to the same shard in every process and every run."""
    digest = hashlib.blake2b(uid.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


# The reads gateways make of a user's shard for the user's requests: served by
# ``MailboxShard.read`` over the same-host link (or through Ray). Each waits until
# what it reads is durable, and changes nothing.
LINK_READS = frozenset({"list_emails", "get_email", "cursor", "events_since", "get_attachment", "search"})
