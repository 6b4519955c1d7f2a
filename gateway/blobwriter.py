"""Group commit for blob writes from one gateway process.

While one batch is being written and fsync'd in a worker thread, new blobs
queue up and go together in the next batch: one thread hop and one directory
fsync per batch instead of per message.
"""

from __future__ import annotations

import asyncio

from raymail.store.blobs import BlobStore


class BlobWriter:
    def __init__(self, store: BlobStore, kind: str, max_batch: int = 256) -> None:
        self.store = store
        self.kind = kind
        self.max_batch = max_batch
        self._pending: list[tuple[bytes, asyncio.Future]] = []
        self._running = False

    async def put(self, data: bytes) -> str:
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((data, fut))
        if not self._running:
            self._running = True
            asyncio.ensure_future(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                try:
                    keys = await asyncio.to_thread(self.store.put_many, self.kind, [d for d, _ in batch])
                except Exception as exc:  # noqa: BLE001 - every waiter hears of it
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), key in zip(batch, keys, strict=True):
                    if not fut.done():
                        fut.set_result(key)
        finally:
            self._running = False
