"""Calls from a gateway to the outbound spool: suppression checks and enqueues, batched.

As with the shard router, a call waits only while ``max_inflight`` calls are
already running, so a lone send goes out at once and a burst shares few calls.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray.exceptions import RayError

from raymail import codec
from raymail.errors import Unavailable
from raymail.outbound.records import OutboundMessage

log = logging.getLogger(__name__)


class _Batcher:
    def __init__(self, call: Any, max_items: int, max_inflight: int, timeout_s: float) -> None:
        self.call = call  # async (list of items) -> list of results, one per item
        self.max_items, self.max_inflight, self.timeout_s = max_items, max_inflight, timeout_s
        self.pending: list[tuple[Any, asyncio.Future]] = []
        self.inflight = 0

    async def submit(self, item: Any) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((item, fut))
        self._kick()
        return await fut

    def _kick(self) -> None:
        while self.pending and self.inflight < self.max_inflight:
            batch, self.pending = self.pending[: self.max_items], self.pending[self.max_items :]
            self.inflight += 1
            asyncio.ensure_future(self._run(batch))

    async def _run(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        try:
            results = await asyncio.wait_for(self.call([i for i, _ in batch]), self.timeout_s)
        except (TimeoutError, RayError) as exc:
            log.warning("outbound spool call failed: %r", exc)
            err = Unavailable("the outbound queue did not confirm in time; retry the request")
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(err)
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear of it
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            raise
        else:
            for (_, fut), res in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(res)
        finally:
            self.inflight -= 1
            self._kick()


class OutboundClient:
    def __init__(self, spool_name: str, namespace: str, *, max_items: int, max_inflight: int,
                 timeout_s: float) -> None:
        self.spool_name, self.namespace = spool_name, namespace
        self._handle: Any = None
        self._checks = _Batcher(self._check_call, max_items, max_inflight, timeout_s)
        self._enqueues = _Batcher(self._enqueue_call, max_items, max_inflight, timeout_s)

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
        await self._spool().enqueue.remote(codec.encode(items))
        return [None] * len(items)

    async def suppressed(self, sender_uid: str, sender_email: str, addresses: list[str]) -> list[tuple[str, str]]:
        """The addresses (of ``addresses``) this sender may not mail, with the reason."""
        return await self._checks.submit((sender_uid, sender_email, addresses))

    async def enqueue(self, msg: OutboundMessage) -> None:
        """Returns once the spool has the message on stable storage."""
        await self._enqueues.submit(msg)
