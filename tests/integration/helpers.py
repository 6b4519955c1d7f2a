"""Small helpers shared by the integration tests."""

from __future__ import annotations

import json


async def recv_json(ws, timeout: float = 10.0) -> dict:
    import asyncio

    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_until(ws, pred, timeout: float = 10.0) -> dict:
    import asyncio

    async def loop():
        while True:
            msg = json.loads(await ws.recv())
            if pred(msg):
                return msg

    return await asyncio.wait_for(loop(), timeout)



async def event_rows(app, pred, timeout: float = 30.0) -> list[dict]:
    """Rows of the catalog's ``events`` table once one matches ``pred``. Gateways hand
    events over about once a second, fire and forget, so the catalog is flushed and
    read again until the row is there (or ``timeout`` passes: then the last rows)."""
    import asyncio
    import time

    import ray
    from conftest import storage_of

    from actors.catalog import read_table

    catalog = ray.get_actor("catalog", namespace=app.config.cluster.namespace)
    deadline = time.monotonic() + timeout
    while True:
        await catalog.flush.remote()
        rows = read_table(storage_of(app), "events").to_pylist()
        if any(pred(r) for r in rows) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.5)
