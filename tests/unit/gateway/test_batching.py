"""gateway/batching.py: how items are grouped into calls, and what a failed call tells them."""

from __future__ import annotations

import asyncio

import pytest

from gateway.batching import CallBatcher
from raymail.errors import Unavailable


def _batcher(call, **kw) -> CallBatcher:
    opts = {"max_items": 3, "max_inflight": 1, "timeout_s": 1.0, "unavailable": "try again"}
    opts.update(kw)
    return CallBatcher(call, **opts)


async def test_a_lone_item_goes_at_once_and_a_burst_shares_calls():
    calls: list[list[int]] = []
    gate = asyncio.Event()

    async def call(items):
        calls.append(list(items))
        await gate.wait()
        return [i * 10 for i in items]

    b = _batcher(call)
    first = asyncio.ensure_future(b.submit(1))
    for _ in range(3):  # the submit, then the call's own task
        await asyncio.sleep(0)
    assert calls == [[1]]  # nothing waited for company
    rest = b.submit_many([2, 3, 4, 5])  # one call in flight: these wait, then go 3 at a time
    gate.set()
    assert await first == 10
    assert await asyncio.gather(*rest) == [20, 30, 40, 50]
    assert calls == [[1], [2, 3, 4], [5]]
    assert (b.calls, b.items) == (3, 5)


async def test_a_failed_call_fails_every_item_with_unavailable():
    from ray.exceptions import RayError

    async def call(items):
        raise RayError("actor died")

    b = _batcher(call)
    futs = b.submit_many([1, 2])
    for fut in futs:
        with pytest.raises(Unavailable, match="try again"):
            await fut
    assert b.inflight == 0


async def test_a_call_that_does_not_answer_in_time():
    async def call(items):
        await asyncio.sleep(10)

    b = _batcher(call, timeout_s=0.05)
    with pytest.raises(Unavailable):
        await b.submit(1)


async def test_an_unexpected_error_reaches_the_callers_as_itself():
    async def call(items):
        raise ValueError("bad batch")

    b = _batcher(call)
    with pytest.raises(ValueError, match="bad batch"):
        await b.submit(1)
    ok = _batcher(lambda items: asyncio.sleep(0, result=list(items)))
    assert await ok.submit(7) == 7
