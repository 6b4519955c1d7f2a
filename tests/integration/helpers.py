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

