"""Sustained accepted sends/s over HTTP, durability on (fsync'd blob + group-committed log).

Usage: python bench/send_throughput.py [--users 50] [--clients 64] [--seconds 10] [--gateways 1]
Prints accepted msgs/s, 201 latency percentiles and how the gateway batched shard calls.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import ray
from common import CpuMeter, HttpConn, make_users, progress, send_body, start, summary_ms


async def run(port: int, users: list[dict], clients: int, seconds: float) -> tuple[int, int, list[float]]:
    ok = err = 0
    lat: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal ok, err
        conn = HttpConn(port)
        await conn.open()
        rnd = random.Random(k)
        i = 0
        while time.perf_counter() < stop_at:
            s, r = rnd.sample(users, 2)
            t0 = time.perf_counter()
            status, _ = await conn.request("POST", "/v1/send", s["token"], send_body(r["email"], i))
            lat.append(time.perf_counter() - t0)
            i += 1
            if status == 201:
                ok += 1
            else:
                err += 1
        conn.close()

    await asyncio.gather(*(client(k) for k in range(clients)))
    return ok, err, lat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--gateways", type=int, default=1)
    ap.add_argument("--shards", type=int, default=2)
    args = ap.parse_args()
    progress(f"starting raymail: {args.shards} shards, {args.gateways} gateway(s)")
    dep, cfg, directory = start(shards=args.shards, gateways=args.gateways)
    users = make_users(directory, args.users)
    progress("warming up for 2 s")
    asyncio.run(run(dep.port, users, 8, 2.0))
    before = ray.get([g.stats.remote() for g in dep.gateways])
    shard_pids = [s["pid"] for s in ray.get([s.stats.remote() for s in dep.shards])]
    cpu = CpuMeter({"gateway": [b["pid"] for b in before], "shards": shard_pids})
    progress(f"measuring: {args.clients} concurrent clients for {args.seconds:.0f} s")
    t0 = time.perf_counter()
    ok, err, lat = asyncio.run(run(dep.port, users, args.clients, args.seconds))
    elapsed = time.perf_counter() - t0
    cpu_s = cpu.stop()
    after = ray.get([g.stats.remote() for g in dep.gateways])
    calls = sum(a["router"]["calls"] - b["router"]["calls"] for a, b in zip(after, before))
    ops = sum(a["router"]["ops"] - b["router"]["ops"] for a, b in zip(after, before))
    print(f"send throughput: {ok / elapsed:.0f} accepted msgs/s ({ok} in {elapsed:.1f} s, {err} errors)")
    print(f"  201 latency: {summary_ms(lat)}")
    print(f"  shard calls: {calls} carrying {ops} mailbox writes ({ops / max(calls, 1):.1f} per call)")
    print("  CPU per accepted message: " + ", ".join(f"{k} {v / max(ok, 1) * 1000:.2f} ms" for k, v in cpu_s.items()))
    print(f"  setup: {args.users} users, {args.clients} clients, {args.shards} shards, {args.gateways} gateway(s), 1 KiB bodies")
    dep.stop()


if __name__ == "__main__":
    main()
