"""Memory per idle WebSocket connection held by one gateway process.

Usage: python bench/ws_idle.py [--connections 5000] [--users 500]
Opens the connections (each authenticated, each got its hello), lets the gateway
settle, and reads the gateway's resident memory before and after from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from pathlib import Path

import ray
import websockets
from common import make_users, progress, start


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def hold(port: int, users: list[dict], n: int, pid: int) -> dict:
    before = rss_kib(pid)
    sockets = []
    t0 = time.perf_counter()
    for i in range(n):
        u = users[i % len(users)]
        ws = await websockets.connect(
            f"ws://127.0.0.1:{port}/v1/connect", additional_headers={"Authorization": f"Bearer {u['token']}"},
            compression=None, open_timeout=30,
        )
        assert json.loads(await ws.recv())["type"] == "hello"
        sockets.append(ws)
        if (i + 1) % 1000 == 0:
            progress(f"{i + 1} connections open, gateway RSS {rss_kib(pid) / 1024:.0f} MiB")
    opened_s = time.perf_counter() - t0
    await asyncio.sleep(3)
    gc.collect()
    after = rss_kib(pid)
    for ws in sockets:
        await ws.close()
    return {"before": before, "after": after, "opened_s": opened_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=5000)
    ap.add_argument("--users", type=int, default=500)
    args = ap.parse_args()
    progress("starting raymail: 2 shards, 1 gateway")
    dep, cfg, directory = start()
    users = make_users(directory, args.users)
    pid = ray.get(dep.gateways[0].stats.remote())["pid"]
    # Warm the gateway (imports, caches) so the baseline is not its cold size.
    asyncio.run(hold(dep.port, users, 50, pid))
    res = asyncio.run(hold(dep.port, users, args.connections, pid))
    conns = ray.get(dep.gateways[0].stats.remote())["connections"]
    per = (res["after"] - res["before"]) / args.connections
    print(f"idle WebSockets: {args.connections} held by one gateway process, {per:.1f} KiB each "
          f"(RSS {res['before'] / 1024:.0f} -> {res['after'] / 1024:.0f} MiB), opened in {res['opened_s']:.1f} s")
    print(f"  connections still registered after close: {conns}")
    dep.stop()


if __name__ == "__main__":
    main()
