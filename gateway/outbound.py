"""A gateway's link to the outbound spool: enqueues (batched) and a copy of the
suppression list.

As with the shard router, an enqueue waits only while ``max_inflight`` calls are
already running, so a lone send goes out at once and a burst shares few calls.
The suppression list is checked locally: a copy kept current by asking the spool
for changes every ``SYNC_EVERY_S`` (one small call, whatever the send rate). The
spool waits for the copies to catch up before it shows a bounce report, and
refuses a suppressed recipient at enqueue anyway (the report says so).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.batching import CallBatcher
from raymail import codec
from raymail.errors import Unavailable
from raymail.link import ActorLink
from raymail.outbound.records import OutboundMessage
from raymail.outbound.suppression import scope_for

log = logging.getLogger(__name__)

SYNC_EVERY_S = 0.2


class OutboundClient:
    def __init__(self, spool_name: str, namespace: str, gateway: str, suppression_mode: str, *, max_items: int,
                 max_inflight: int, timeout_s: float) -> None:
        self.spool_name, self.namespace, self.gateway = spool_name, namespace, gateway
        self.mode = suppression_mode
        self.timeout_s = timeout_s
        self._handle: Any = None
        self._link: ActorLink | None = None
        batching = {"max_items": max_items, "max_inflight": max_inflight, "timeout_s": timeout_s,
                    "unavailable": "the outbound queue did not confirm in time; retry the request"}
        self._checks = CallBatcher(self._check_call, **batching)
        self._enqueues = CallBatcher(self._enqueue_call, **batching)
        self._epoch, self._version = "", -1
        self._suppressed: dict[tuple[str, str], str] = {}
        self._sync: asyncio.Task | None = None

    def _spool(self) -> Any:
        if self._handle is None:
            import ray

            try:
                self._handle = ray.get_actor(self.spool_name, namespace=self.namespace)
            except ValueError:
                raise Unavailable("the outbound queue is not running; retry later") from None
        return self._handle

    async def _check_call(self, items: list) -> list:
        return await self._spool().suppressed.remote(items)

    async def _enqueue_call(self, items: list[OutboundMessage]) -> list:
        if self._link is None:
            self._link = ActorLink(self._spool(), "enqueue")  # over the spool's socket on this host
        await self._link.call(codec.encode(items))
        return [None] * len(items)

    async def suppressed(self, sender_uid: str, sender_email: str, addresses: list[str]) -> list[tuple[str, str]]:
        """The addresses (of ``addresses``) this sender may not mail, with the reason."""
        if self._sync is None or self._sync.done():
            self._sync = asyncio.ensure_future(self._sync_loop())
        if self._version < 0:  # no copy yet: ask the spool
            return await self._checks.submit((sender_uid, sender_email, addresses))
        scope = scope_for(self.mode, sender_uid)
        return [(a, why) for a in addresses if (why := self._suppressed.get((scope, a.lower()))) is not None]

    async def _sync_loop(self) -> None:
        while True:
            try:
                ref = self._spool().suppression_since.remote(self.gateway, self._epoch, self._version)
                epoch, version, full, changes = await asyncio.wait_for(ref, self.timeout_s)
                if full is not None:
                    self._suppressed = {(s, a): why for s, a, why in full}
                for _, added, s, a, why in changes:
                    if added:
                        self._suppressed[(s, a)] = why
                    else:
                        self._suppressed.pop((s, a), None)
                self._epoch, self._version = epoch, version
            except Exception as exc:  # noqa: BLE001 - keep the last copy; the spool enforces anyway
                log.debug("suppression list sync failed: %r", exc)
            await asyncio.sleep(SYNC_EVERY_S)

    async def enqueue(self, msg: OutboundMessage) -> None:
        """Returns once the spool has the message on stable storage."""
        await self._enqueues.submit(msg)
