"""Attachment throughput, upload memory and deduplication.

Usage: python bench/attachments.py [--s3]
- upload and download MB/s through the API for 1 MiB and 50 MiB files, next to a
  plain fsspec copy of the same bytes to/from the same storage in the same run;
- peak gateway memory over its baseline while a 100 MiB upload streams in;
- stored bytes vs logical bytes when one attachment goes to many recipients.
With --s3 the storage is a real S3-compatible server (moto) on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import ray
from common import make_users, progress, start
from ws_idle import rss_kib

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

MiB = 1024 * 1024


def fsspec_copy(store, data: bytes) -> tuple[float, float]:
    """Seconds for a plain fsspec upload (put_file from a local file) and download of ``data``."""
    with tempfile.NamedTemporaryFile(delete=False) as fh:
        fh.write(data)
        src = fh.name
    dst = f"{store.root}/bench/{os.urandom(8).hex()}"
    store.fs.makedirs(f"{store.root}/bench", exist_ok=True)
    t0 = time.perf_counter()
    store.fs.put_file(src, dst)
    up = time.perf_counter() - t0
    back = src + ".back"
    t0 = time.perf_counter()
    store.fs.get_file(dst, back)
    down = time.perf_counter() - t0
    store.fs.rm_file(dst)
    os.unlink(src)
    os.unlink(back)
    return up, down


def durable_floor(store, data: bytes) -> float:
    """Seconds for the work no content-addressed, durable upload can skip: SHA-256 of
    the bytes plus writing and fsync'ing them (file://) - a floor, not a baseline."""
    import hashlib

    t0 = time.perf_counter()
    hashlib.sha256(data).digest()
    if store.local:
        from raymail.store.log import write_new_file

        path = f"{store.root}/bench-floor-{os.urandom(4).hex()}"
        try:
            write_new_file(path, data)
        finally:
            os.unlink(path)
    return time.perf_counter() - t0


def loopback_tcp(data: bytes) -> float:
    """Seconds to move ``data`` over one loopback TCP connection at its fastest (the
    sender ``sendfile``s from the page cache, the receiver ``recv_into``s a reused
    buffer): no HTTP download or upload can beat it on this machine."""
    import socket

    with tempfile.NamedTemporaryFile() as fh:
        fh.write(data)
        fh.flush()
        srv = socket.create_server(("127.0.0.1", 0))

        def send() -> None:
            conn, _ = srv.accept()
            with conn:
                os.sendfile(conn.fileno(), fh.fileno(), 0, len(data))

        sender = threading.Thread(target=send)
        sender.start()
        buf = bytearray(MiB)
        with socket.create_connection(srv.getsockname()) as s:
            t0 = time.perf_counter()
            while s.recv_into(buf):
                pass
            took = time.perf_counter() - t0
        sender.join()
        srv.close()
    return took


def sha256_only(data: bytes) -> float:
    """Seconds to SHA-256 ``data``: the least a content-addressed upload must spend."""
    import hashlib

    t0 = time.perf_counter()
    hashlib.sha256(data).digest()
    return time.perf_counter() - t0


async def api_copy(c: httpx.AsyncClient, data: bytes) -> tuple[float, float, str]:
    t0 = time.perf_counter()
    r = await c.post("/v1/attachments", content=data, headers={"Content-Type": "application/octet-stream"})
    up = time.perf_counter() - t0
    assert r.status_code == 201, r.text
    aid = r.json()["id"]
    t0 = time.perf_counter()
    n = 0
    async with c.stream("GET", f"/v1/attachments/{aid}") as resp:
        async for chunk in resp.aiter_bytes(1 << 20):
            n += len(chunk)
    down = time.perf_counter() - t0
    assert n == len(data)
    return up, down, aid


def throughput(dep, cfg, token: str, size: int, count: int) -> dict:
    from raymail.store.blobs import BlobStore

    store = BlobStore(cfg.storage_url, cfg.storage.options)
    api_up = api_down = fs_up = fs_down = 0.0

    async def run_api(datas: list[bytes]) -> tuple[float, float]:
        up = down = 0.0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dep.port}", timeout=300,
                                     headers={"Authorization": f"Bearer {token}"}) as c:
            for data in datas:
                u, d, _ = await api_copy(c, data)
                up += u
                down += d
        return up, down

    datas = [os.urandom(size) for _ in range(count)]
    api_up, api_down = asyncio.run(run_api(datas))
    floor = tcp = sha = 0.0
    for data in datas:
        u, d = fsspec_copy(store, data)
        fs_up += u
        fs_down += d
        floor += durable_floor(store, data)
        tcp += loopback_tcp(data)
        sha += sha256_only(data)
    mb = size * count / MiB
    return {"api_up": mb / api_up, "api_down": mb / api_down, "fs_up": mb / fs_up, "fs_down": mb / fs_down,
            "floor_up": mb / floor, "tcp": mb / tcp, "sha": mb / sha}


def peak_upload_memory(dep, token: str, size: int) -> tuple[int, int]:
    pid = ray.get(dep.gateways[0].stats.remote())["pid"]
    base = rss_kib(pid)
    peak = base
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_kib(pid))
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()

    async def body():
        chunk = os.urandom(MiB)
        for _ in range(size // MiB):
            yield chunk

    async def go():
        async with httpx.AsyncClient(timeout=300) as c:
            r = await c.post(f"http://127.0.0.1:{dep.port}/v1/attachments", content=body(),
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/zip"})
            assert r.status_code == 201, r.text

    asyncio.run(go())
    stop.set()
    t.join()
    return base, peak


def dedup(dep, cfg, users: list[dict], sends: int) -> dict:
    from raymail.store.blobs import BlobStore

    store = BlobStore(cfg.storage_url, cfg.storage.options)
    before = sum(s for _, s, _ in store.list("att")) + sum(s for _, s, _ in store.list("msg"))
    sender, rcpts = users[0], users[1:]
    data = os.urandom(2 * MiB)

    async def go() -> int:
        logical = 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dep.port}", timeout=60,
                                     headers={"Authorization": f"Bearer {sender['token']}"}) as c:
            aid = (await c.post("/v1/attachments", content=data,
                                headers={"Content-Type": "application/pdf", "X-Filename": "brochure.pdf"})).json()["id"]
            for i in range(sends):
                r = await c.post("/v1/send", json={"subject": f"brochure {i}", "body": "Our new brochure.",
                                                   "recipients": [rcpts[i % len(rcpts)]["email"]], "attachments": [aid]})
                assert r.status_code == 201, r.text
            page = (await c.get("/v1/emails", params={"folder": "sent", "page_size": 200})).json()
            logical = sum(e["size"] for e in page["emails"]) * 2  # the sender's copy and the recipient's
        return logical

    logical = asyncio.run(go())
    after = sum(s for _, s, _ in store.list("att")) + sum(s for _, s, _ in store.list("msg"))
    return {"sends": sends, "logical": logical, "stored": after - before}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--s3", action="store_true")
    args = ap.parse_args()
    sections = {"limits": {"max_attachment_bytes": 128 * MiB, "max_message_bytes": 128 * MiB}}
    server = None
    if args.s3:
        from s3server import MotoServer

        server = MotoServer()
        sections["storage"] = {"url": server.bucket("bench"), "options": server.options}
    progress(f"starting raymail ({'s3 via moto' if args.s3 else 'file://'})")
    dep, cfg, directory = start(**sections)
    users = make_users(directory, 51)
    store_local = not args.s3
    token = users[0]["token"]
    for size, count in ((MiB, 20), (50 * MiB, 3)):
        progress(f"throughput: {count} x {size // MiB} MiB")
        t = throughput(dep, cfg, token, size, count)
        print(f"{size // MiB:>3} MiB files: upload {t['api_up']:.0f} MB/s via API vs {t['fs_up']:.0f} MB/s plain fsspec "
              f"({t['api_up'] / t['fs_up']:.2f}x); download {t['api_down']:.0f} MB/s vs {t['fs_down']:.0f} MB/s "
              f"({t['api_down'] / t['fs_down']:.2f}x)")
        if store_local:
            print(f"{'':>11}upload floor (sha256 + write + fsync) {t['floor_up']:.0f} MB/s, the API reaches "
                  f"{t['api_up'] / t['floor_up']:.2f}x of it")
            print(f"{'':>11}ceilings on this machine: SHA-256 alone {t['sha']:.0f} MB/s "
                  f"({t['sha'] / t['fs_up']:.2f}x of the fsspec upload), one loopback TCP stream at its fastest "
                  f"{t['tcp']:.0f} MB/s ({t['tcp'] / t['fs_down']:.2f}x of the fsspec download)")
    progress("peak memory during a 100 MiB upload")
    base, peak = peak_upload_memory(dep, token, 100 * MiB)
    print(f"100 MiB upload: gateway RSS {base / 1024:.0f} MiB -> peak {peak / 1024:.0f} MiB "
          f"(+{(peak - base) / 1024:.1f} MiB)")
    progress("dedup: one 2 MiB attachment sent 100 times")
    d = dedup(dep, cfg, users, 100)
    print(f"dedup: {d['sends']} sends of one 2 MiB attachment: {d['logical'] / MiB:.0f} MiB of mailbox copies "
          f"stored in {d['stored'] / MiB:.1f} MiB ({d['logical'] / max(d['stored'], 1):.0f}x)")
    dep.stop()
    if server:
        server.stop()


if __name__ == "__main__":
    main()
