"""From 201 to findable, through the real system: send over HTTP, then search for the
message's unique word until it is found.

Usage: python bench/search_live.py [--messages 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

from common import HttpConn, make_users, progress, start, summary_ms


async def run(port: int, users: list[dict], n: int) -> tuple[list[float], int]:
    conn = HttpConn(port)
    await conn.open()
    delays, first_try = [], 0
    for i in range(n):
        s, r = users[i % 2], users[(i + 1) % 2]
        word = "w" + uuid.uuid4().hex[:12]
        body = json.dumps({"subject": f"live {i}", "recipients": [r["email"]], "body": f"text {word}"}).encode()
        status, _ = await conn.request("POST", "/v1/send", s["token"], body)
        assert status == 201
        acked = time.perf_counter()
        tries = 0
        while True:
            tries += 1
            status, data = await conn.request("GET", f"/v1/search?q={word}", r["token"])
            if status == 200 and json.loads(data)["total"] == 1:
                break
        delays.append(time.perf_counter() - acked)
        first_try += tries == 1
    conn.close()
    return delays, first_try


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=300)
    args = ap.parse_args()
    progress("starting raymail: 2 shards, 1 gateway")
    dep, cfg, directory = start()
    users = make_users(directory, 2)
    delays, first = asyncio.run(run(dep.port, users, args.messages))
    print(f"201 -> findable over HTTP: {summary_ms(delays)} (one search round trip included); "
          f"found by the first search after the 201: {first}/{args.messages}")
    dep.stop()


if __name__ == "__main__":
    main()
