"""Send -> push latency at a fixed send rate (open loop), durability on.

Usage: python bench/push_latency.py [--rate 100] [--seconds 20] [--users 50]
Each message is timed from just before its POST /v1/send until its email.new
push arrives on the recipient's open WebSocket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

import websockets
from common import HttpConn, make_users, progress, start, summary_ms


async def run(port: int, users: list[dict], rate: float, seconds: float) -> dict:
    sent_at: dict[str, float] = {}
    push_lat: list[float] = []
    post_lat: list[float] = []
    errors = 0
    sockets = []
    for u in users:
        ws = await websockets.connect(
            f"ws://127.0.0.1:{port}/v1/connect", additional_headers={"Authorization": f"Bearer {u['token']}"}
        )
        json.loads(await ws.recv())  # hello
        sockets.append(ws)

    async def listen(ws):
        try:
            async for raw in ws:
                ev = json.loads(raw)
                if ev.get("type") == "email.new":
                    t0 = sent_at.pop(ev["email"]["subject"], None)
                    if t0 is not None:
                        push_lat.append(time.perf_counter() - t0)
        except websockets.ConnectionClosed:
            pass

    listeners = [asyncio.ensure_future(listen(ws)) for ws in sockets]
    conns = [HttpConn(port) for _ in range(16)]
    for c in conns:
        await c.open()
    free = asyncio.Queue()
    for c in conns:
        free.put_nowait(c)
    rnd = random.Random(7)

    async def one(i: int) -> None:
        nonlocal errors
        s, r = rnd.sample(users, 2)
        subject = f"lat-{i}"
        body = json.dumps({"subject": subject, "recipients": [r["email"]], "body": "x" * 1000}).encode()
        conn = await free.get()
        t0 = time.perf_counter()
        sent_at[subject] = t0
        status, _ = await conn.request("POST", "/v1/send", s["token"], body)
        post_lat.append(time.perf_counter() - t0)
        free.put_nowait(conn)
        if status != 201:
            errors += 1
            sent_at.pop(subject, None)

    start_t = time.perf_counter()
    n = int(rate * seconds)
    tasks = []
    for i in range(n):
        delay = start_t + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i)))
    await asyncio.gather(*tasks)
    await asyncio.sleep(1.0)
    for ws in sockets:
        await ws.close()
    for task in listeners:
        task.cancel()
    for c in conns:
        c.close()
    return {"n": n, "push": push_lat, "post": post_lat, "missing": len(sent_at), "errors": errors,
            "elapsed": time.perf_counter() - start_t}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--users", type=int, default=50)
    args = ap.parse_args()
    progress("starting raymail: 2 shards, 1 gateway")
    dep, cfg, directory = start()
    users = make_users(directory, args.users)
    progress("warming up")
    asyncio.run(run(dep.port, users, 50, 2))
    progress(f"measuring: {args.rate:.0f} msgs/s for {args.seconds:.0f} s, {args.users} users each with an open WebSocket")
    res = asyncio.run(run(dep.port, users, args.rate, args.seconds))
    print(f"send->push latency at {args.rate:.0f} msgs/s: {summary_ms(res['push'])} ({len(res['push'])} pushes)")
    print(f"  201 latency: {summary_ms(res['post'])}")
    print(f"  pushes missing: {res['missing']}, send errors: {res['errors']}")
    dep.stop()


if __name__ == "__main__":
    main()
