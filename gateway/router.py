"""Calls from a gateway to the mailbox shards, with writes batched per shard.

A write waits in a per-shard queue only while ``max_inflight_batches`` calls to that
shard are already running, so a lone request goes out at once and a burst goes
out as a few large calls (a Ray call costs 1-3 ms whatever it carries). Writes and
the users' reads go to a shard on the same host over its socket (``raymail.link``),
to others through Ray. Ray re-sends a call whose shard died (``max_task_retries``),
and a call whose socket broke is sent again through Ray; shard ops are idempotent,
so a re-sent batch does not duplicate mail, and reads change nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

from ray.exceptions import RayActorError, RayError

from gateway.batching import CallBatcher
from raymail import codec
from raymail.errors import Unavailable
from raymail.link import ActorLink, RemoteError
from raymail.model import Op, OpResult
from raymail.sharding import LINK_READS, shard_of

log = logging.getLogger(__name__)


def _retrieve(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


def _shard_queue(link: ActorLink, max_ops: int, max_inflight: int, timeout_s: float) -> CallBatcher:
    async def call(ops: list[Op]) -> list[OpResult]:
        return codec.decode(await link.call(codec.encode(ops)))

    return CallBatcher(call, max_items=max_ops, max_inflight=max_inflight, timeout_s=timeout_s,
                       unavailable="the mailbox service did not confirm the write in time; retry the request")


class ShardRouter:
    def __init__(self, handles: list[Any], *, max_ops: int, max_inflight: int, timeout_s: float) -> None:
        self.handles = handles
        self.timeout_s = timeout_s
        self.links = [ActorLink(h, "apply_batch") for h in handles]
        self.read_links = [ActorLink(h, "read") for h in handles]
        self._queues = [_shard_queue(link, max_ops, max_inflight, timeout_s) for link in self.links]

    def shard_index(self, uid: str) -> int:
        return shard_of(uid, len(self.handles))

    async def apply(self, ops: list[Op]) -> list[OpResult]:
        """Apply ops (possibly for several users and shards); results in op order."""
        by_shard: dict[int, list[int]] = defaultdict(list)
        for i, op in enumerate(ops):
            by_shard[self.shard_index(op.uid)].append(i)
        futs: list[asyncio.Future | None] = [None] * len(ops)
        for shard, idxs in by_shard.items():
            for i, fut in zip(idxs, self._queues[shard].submit_many([ops[i] for i in idxs]), strict=True):
                futs[i] = fut
        # Awaited one by one rather than gathered: a gather adds an event-loop turn
        # before the caller runs again, and a busy loop's turn takes milliseconds.
        try:
            return [await f for f in futs]  # type: ignore[misc]
        except BaseException:
            for f in futs:  # the others' outcomes no longer matter; asyncio must not report them unread
                f.add_done_callback(_retrieve)  # type: ignore[union-attr]
            raise

    async def read(self, uid: str, method: str, *args: Any) -> Any:
        shard = self.shard_index(uid)
        try:
            if method in LINK_READS:
                call = self.read_links[shard].call(codec.encode([method, uid, *args]))
                return codec.decode(await asyncio.wait_for(call, self.timeout_s))
            return await asyncio.wait_for(getattr(self.handles[shard], method).remote(uid, *args), self.timeout_s)
        except (TimeoutError, RayActorError, RayError, RemoteError) as exc:
            log.warning("mailbox shard read %s failed: %r", method, exc)
            raise Unavailable("the mailbox service did not answer in time; retry the request") from exc

    def notify(self, uid: str, method: str, *args: Any) -> None:
        """Fire and forget ``method(uid, *args)`` on the user's shard. Ray does not
        order an async actor's calls: a method whose order matters carries its own
        sequence number (subscribe/unsubscribe do)."""
        try:
            getattr(self.handles[self.shard_index(uid)], method).remote(uid, *args)
        except Exception:  # noqa: BLE001 - best effort: a stale subscription only costs a dropped push
            log.warning("mailbox shard %s for a user failed", method, exc_info=True)

    def stats(self) -> dict:
        return {"calls": sum(q.calls for q in self._queues), "ops": sum(q.items for q in self._queues),
                "link_calls": sum(link.link_calls for link in self.links),
                "ray_calls": sum(link.ray_calls for link in self.links),
                "read_link_calls": sum(link.link_calls for link in self.read_links),
                "read_ray_calls": sum(link.ray_calls for link in self.read_links)}
