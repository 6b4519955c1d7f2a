"""Batched calls from a gateway to an actor: the shard router and the outbound
client both send their work through a ``CallBatcher``.

An item waits only while ``max_inflight`` calls are already running, so a lone
request goes out at once and a burst goes out as a few large calls (a Ray call
costs 1-3 ms whatever it carries). A call that fails or does not answer in time
fails every item it carried with ``Unavailable``: the client retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ray.exceptions import RayError

from raymail.errors import Unavailable

log = logging.getLogger(__name__)


class CallBatcher:
    def __init__(self, call: Callable[[list[Any]], Awaitable[list[Any]]], *, max_items: int, max_inflight: int,
                 timeout_s: float, unavailable: str) -> None:
        self.call = call  # one call for a batch of items -> one result per item, in order
        self.max_items = max_items
        self.max_inflight = max_inflight
        self.timeout_s = timeout_s
        self.unavailable = unavailable  # what a client is told when the call fails
        self.pending: list[tuple[Any, asyncio.Future]] = []
        self.inflight = 0
        self.calls = 0
        self.items = 0

    def submit_many(self, items: list[Any]) -> list[asyncio.Future]:
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in items]
        self.pending.extend(zip(items, futs, strict=True))
        self._kick()
        return futs

    async def submit(self, item: Any) -> Any:
        return await self.submit_many([item])[0]

    def _kick(self) -> None:
        while self.pending and self.inflight < self.max_inflight:
            batch, self.pending = self.pending[: self.max_items], self.pending[self.max_items :]
            self.inflight += 1
            asyncio.ensure_future(self._run(batch))

    async def _run(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        self.calls += 1
        self.items += len(batch)
        try:
            # asyncio.timeout, not wait_for: the call runs in this task, not in one of its
            # own, so its reply reaches the waiters one event-loop turn sooner.
            async with asyncio.timeout(self.timeout_s):
                results = await self.call([item for item, _ in batch])
        except (TimeoutError, RayError, ConnectionError) as exc:  # ConnectionError: raymail.link
            log.warning("batched call failed (%s): %r", self.unavailable, exc)
            err = Unavailable(self.unavailable)
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
