"""Attachment throughput, upload memory and deduplication.

Usage: python bench/attachments.py [--s3 [--link-mbps M]] [--streams N]
- upload and download MB/s through the API for 1 MiB and 50 MiB files, next to a
  plain fsspec copy of the same bytes to/from the same storage in the same run: one
  transfer at a time, then N at once (default 4) on both sides. The API's client is
  curl (transfers in one process over kept-alive connections, timed by curl itself);
  the fsspec copy is ``put_file``/``get_file`` between a local file and the storage;
  uploads run twice, plain and declaring their SHA-256 (``Content-Digest``). The
  ways take turns, in batches (see ``throughput``): each ratio is also given per
  batch, to show how much this machine's speed wandered meanwhile;
- peak gateway memory over its baseline while a 100 MiB upload streams in;
- with --s3, the CPU per 1 MiB upload and download by process, the API's against the
  plain copy's;
- with --s3, the latency of a 1 MiB and a 20 MiB upload from a client sending at 20 MiB/s, plain
  and declaring its digest (a declared upload is sent on to the store as it arrives);
- stored bytes vs logical bytes when one attachment goes to many recipients.
With --s3 the storage is a real S3-compatible server (moto) on loopback; with
--link-mbps too, reached through a relay paced to that bandwidth (tests/relay.py),
as a store across a network would be.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import ray
from common import make_users, progress, start

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from procs import PeakRss  # noqa: E402 - from the tests' helpers, found through the line above

MiB = 1024 * 1024
WARMUP = 3  # transfers each way before any timing, on both sides


def curl(transfers: list[list[str]], streams: int) -> float:
    """Seconds for curl to run ``transfers`` (each a list of curl options and a URL):
    the sum of curl's own per-transfer times one at a time, or the wall time of one
    ``--parallel`` run with ``streams`` at once."""
    cmd = ["curl", "-sS", "--fail-with-body"]
    if streams > 1:
        cmd += ["--parallel", "--parallel-immediate", "--parallel-max", str(streams)]
    for i, t in enumerate(transfers):
        cmd += (["--next"] if i else []) + ["-w", "%{http_code} %{time_total}\n"] + t
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 2 * len(transfers) or any(c[0] != "2" for c in lines[::2]):
        raise RuntimeError(f"curl failed ({out.returncode}): {out.stdout[-300:]} {out.stderr[-300:]}")
    return wall if streams > 1 else sum(float(t) for t in lines[1::2])


class Api:
    def __init__(self, port: int, token: str) -> None:
        self.url = f"http://127.0.0.1:{port}/v1/attachments"
        self.auth = ["-H", f"Authorization: Bearer {token}"]

    def upload_options(self, f: str, digest: bool = False) -> list[str]:
        """curl's options to upload file ``f``; ``digest``: declaring its SHA-256
        (``Content-Digest``, RFC 9530)."""
        declared = []
        if digest:
            sha = base64.b64encode(hashlib.sha256(Path(f).read_bytes()).digest()).decode()
            declared = ["-H", f"Content-Digest: sha-256=:{sha}:"]
        # -T streams the file as it sends it; --data-binary @file would first read it
        # into a growing buffer, twice the client's CPU per MiB (2.7 ms against 1.2-1.4).
        return self.auth + declared + ["-H", "Content-Type: application/octet-stream", "-X", "POST", "-T", f,
                                       "-o", f"{f}.json", self.url]

    def upload(self, files: list[str], streams: int, digest: bool = False) -> tuple[float, list[str]]:
        took = curl([self.upload_options(f, digest) for f in files], streams)
        return took, [json.loads(Path(f"{f}.json").read_text())["id"] for f in files]

    def download(self, ids: list[str], into: list[str], streams: int) -> float:
        return curl([self.auth + ["-o", dst, f"{self.url}/{aid}"] for aid, dst in zip(ids, into)], streams)


class FsspecCopy:
    """A plain fsspec copy to and from the same storage: ``put_file`` from a local
    file, ``get_file`` back to one. Times are summed one transfer at a time, or the
    wall time with ``streams`` threads at once, as curl's are."""

    def __init__(self, store, streams: int) -> None:
        self.store, self.streams = store, streams
        store.fs.makedirs(f"{store.root}/bench", exist_ok=True)
        self.copies: list[tuple[str, str]] = []  # (stored path, local file it came from)

    def _timed(self, fn, pairs) -> float:
        if self.streams == 1:
            total = 0.0
            for a, b in pairs:
                t0 = time.perf_counter()
                fn(a, b)
                total += time.perf_counter() - t0
            return total
        t0 = time.perf_counter()
        with ThreadPoolExecutor(self.streams) as pool:
            list(pool.map(lambda ab: fn(*ab), pairs))
        return time.perf_counter() - t0

    def upload(self, files: list[str]) -> float:
        dsts = [f"{self.store.root}/bench/{os.urandom(8).hex()}" for _ in files]
        self.copies += zip(dsts, files)
        return self._timed(self.store.fs.put_file, list(zip(files, dsts)))

    def download(self, files: list[str]) -> float:
        """Seconds to download the copies of ``files`` (uploaded before) to ``<file>.fs``."""
        stored = {f: d for d, f in self.copies}
        return self._timed(self.store.fs.get_file, [(stored[f], f"{f}.fs") for f in files])

    def remove(self) -> None:
        for d, _ in self.copies:
            self.store.fs.rm_file(d)
        self.copies = []

    def __enter__(self) -> FsspecCopy:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def durable_floor(store, path: str) -> float:
    """Seconds for the work no content-addressed, durable upload can skip: SHA-256 of
    the bytes plus writing and fsync'ing them (file://) - a floor, not a baseline."""
    import hashlib

    data = Path(path).read_bytes()
    t0 = time.perf_counter()
    hashlib.sha256(data).digest()
    if store.local:
        from raymail.store.log import write_new_file

        dst = f"{store.root}/bench-floor-{os.urandom(4).hex()}"
        try:
            write_new_file(dst, data)
        finally:
            os.unlink(dst)
    return time.perf_counter() - t0


def loopback_tcp(path: str) -> float:
    """Seconds to move the file over one loopback TCP connection at its fastest (the
    sender ``sendfile``s from the page cache, the receiver ``recv_into``s a reused
    buffer): no HTTP download or upload can beat it on this machine."""
    import socket

    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        srv = socket.create_server(("127.0.0.1", 0))

        def send() -> None:
            conn, _ = srv.accept()
            with conn:
                os.sendfile(conn.fileno(), fh.fileno(), 0, size)

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


def sha256_only(path: str) -> float:
    """Seconds to SHA-256 the file in 1 MiB pieces, as an upload is hashed: the least
    a content-addressed upload must spend."""
    import hashlib

    data = memoryview(Path(path).read_bytes())
    t0 = time.perf_counter()
    h = hashlib.sha256()
    for i in range(0, len(data), MiB):
        h.update(data[i : i + MiB])
    h.digest()
    return time.perf_counter() - t0


@contextlib.contextmanager
def _scratch():
    """A temporary folder for a round's files, removed with them."""
    with tempfile.TemporaryDirectory(prefix="raymail-bench-att-") as d:
        yield Path(d)


def _random_files(tmp: Path, prefix: str, size: int, count: int) -> list[str]:
    files = []
    for i in range(count):
        f = tmp / f"{prefix}{i}"
        f.write_bytes(os.urandom(size))
        files.append(str(f))
    return files


def throughput(api: Api, store, size: int, count: int, streams: int, rounds: int, ceilings: bool) -> dict:
    """MB/s of each way of moving ``count`` fresh files of ``size`` bytes (new bytes
    each time: nothing is deduplicated), after a warm-up of all of them.

    The machine's speed drifts (other work, the disk catching up, the store
    growing), so the ways are not timed one after another: the files go in
    ``rounds`` batches, and in each the uploads (API plain, API declaring its digest,
    fsspec) then the downloads (API, fsspec) run back to back, in an order turned
    round every batch. Besides the totals, ``ratios`` has each batch's API/fsspec
    ratio of the same work, which shows how much the figures wander."""
    with FsspecCopy(store, streams) as copy, _scratch() as tmp:
        warm = _random_files(tmp, "warm", MiB, WARMUP)
        _, ids = api.upload(warm, streams)
        api.download(ids, [f"{f}.api" for f in warm], streams)
        copy.upload(warm)
        copy.download(warm)
        secs = dict.fromkeys(("api_up", "api_up_digest", "fs_up", "api_down", "fs_down"), 0.0)
        if ceilings:
            secs |= dict.fromkeys(("floor", "tcp", "sha"), 0.0)
        ratios: dict[str, list[float]] = {"up": [], "up_digest": [], "down": []}
        per = count // rounds
        for r in range(rounds):
            plain = _random_files(tmp, f"p{r}-", size, per)
            declared = _random_files(tmp, f"d{r}-", size, per)
            copied = _random_files(tmp, f"c{r}-", size, per)
            took = _batch(api, copy, streams, plain, declared, copied, forward=r % 2 == 0)
            for f, got in [(f, f"{f}.api") for f in plain] + [(f, f"{f}.fs") for f in copied]:
                if Path(got).read_bytes() != Path(f).read_bytes():
                    raise RuntimeError("a download differs from its upload")
            if ceilings:
                took["floor"] = sum(durable_floor(store, f) for f in plain)
                took["tcp"] = sum(loopback_tcp(f) for f in plain)
                took["sha"] = sum(sha256_only(f) for f in plain)
            for k, v in took.items():
                secs[k] += v
            ratios["up"].append(took["fs_up"] / took["api_up"])
            ratios["up_digest"].append(took["fs_up"] / took["api_up_digest"])
            ratios["down"].append(took["fs_down"] / took["api_down"])
            for f in tmp.iterdir():  # this batch's files: 50 MiB ones add up
                f.unlink()
        mb = size * per * rounds / MiB
        out: dict = {k: mb / v for k, v in secs.items()}
        out["ratios"] = ratios
        return out


def _batch(api: Api, copy: FsspecCopy, streams: int, plain: list[str], declared: list[str], copied: list[str],
           forward: bool) -> dict[str, float]:
    """Seconds of one batch of each way: the uploads, then the downloads, each group
    in the order given or reversed."""
    api_ids: list[str] = []

    def api_up() -> float:
        took, ids = api.upload(plain, streams)
        api_ids.extend(ids)
        return took

    ups = [("api_up", api_up), ("api_up_digest", lambda: api.upload(declared, streams, digest=True)[0]),
           ("fs_up", lambda: copy.upload(copied))]
    downs = [("api_down", lambda: api.download(api_ids, [f"{f}.api" for f in plain], streams)),
             ("fs_down", lambda: copy.download(copied))]
    took = {}
    for steps in (ups, downs):
        for name, step in steps if forward else reversed(steps):
            took[name] = step()
    return took


def _spread(ratios: list[float]) -> str:
    return f"{min(ratios):.2f}-{max(ratios):.2f}x" if len(ratios) > 1 else f"{ratios[0]:.2f}x"


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) process ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pids_of(marker: str) -> list[int]:
    """Processes whose command line has ``marker`` (Ray names an actor's process
    ``ray::<Class>``); this benchmark's own Ray runs alone on the machine."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def cpu_per_transfer(api: Api, store, dep, store_pid: int, count: int) -> dict:
    """Milliseconds of CPU per 1 MiB transfer each way, one at a time, by process:
    the API's (gateway, shards and catalog with their idle baseline, the store,
    curl) and the plain fsspec copy's (this process as its client, the store). The
    two take turns twice; four at once, the machine's cores bound the ratio of the
    totals. Returns {"up"|"down": {"api"|"plain": {process: ms}}}."""
    import resource

    gateway = ray.get(dep.gateways[0].stats.remote())["pid"]
    actors = _pids_of("ray::MailboxShard") + _pids_of("ray::CatalogWriter")
    groups = {"gateway": [gateway], "shards+catalog": actors, "store": [store_pid]}
    sides = {"api": ("gateway", "shards+catalog", "store", "curl"), "plain": ("client", "store")}

    def snap() -> dict[str, float]:
        out = {name: sum(_cpu_s(p) for p in pids) for name, pids in groups.items()}
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        out["curl"] = kids.ru_utime + kids.ru_stime
        out["client"] = time.process_time()
        return out

    out: dict = {way: {side: dict.fromkeys(names, 0.0) for side, names in sides.items()} for way in ("up", "down")}

    def measure(way: str, side: str, step) -> None:
        before = snap()
        step()
        after = snap()
        for k in sides[side]:
            out[way][side][k] += (after[k] - before[k]) * 1e3 / count

    with FsspecCopy(store, 1) as copy, _scratch() as tmp:
        for r in range(2):
            sent = _random_files(tmp, f"a{r}-", MiB, count // 2)
            copied = _random_files(tmp, f"c{r}-", MiB, count // 2)
            ids: list[str] = []
            measure("up", "api", lambda f=sent, into=ids: into.extend(api.upload(f, 1)[1]))
            measure("up", "plain", lambda f=copied: copy.upload(f))
            measure("down", "api", lambda f=sent, got=ids: api.download(got, [f"{x}.api" for x in f], 1))
            measure("down", "plain", lambda f=copied: copy.download(f))
    return out


def peak_upload_memory(dep, token: str, size: int, declared: bool = False) -> tuple[int, int]:
    """The gateway's RSS before and at its peak during an upload of ``size`` bytes,
    sent as it is made (no length), or ``declared``: with its length and SHA-256."""
    chunk = os.urandom(MiB)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/zip"}
    if declared:
        sha = hashlib.sha256()
        for _ in range(size // MiB):
            sha.update(chunk)
        headers |= {"Content-Length": str(size // MiB * MiB),
                    "Content-Digest": f"sha-256=:{base64.b64encode(sha.digest()).decode()}:"}
    pid = ray.get(dep.gateways[0].stats.remote())["pid"]

    async def body():
        for _ in range(size // MiB):
            yield chunk

    async def go():
        async with httpx.AsyncClient(timeout=300) as c:
            r = await c.post(f"http://127.0.0.1:{dep.port}/v1/attachments", content=body(), headers=headers)
            assert r.status_code == 201, r.text

    with PeakRss(pid) as rss:
        asyncio.run(go())
    return rss.base, rss.peak


def client_paced_latency(api: Api, rate: str, count: int, size: int = MiB) -> tuple[float, float]:
    """Median ms of an upload of ``size`` bytes from a client sending at ``rate``
    (curl's ``--limit-rate``, bytes a second), plain and declaring its SHA-256, taking
    turns: on an object store a declared upload is sent on while it arrives, not
    once it is whole."""
    with _scratch() as tmp:
        out: dict[bool, list[float]] = {False: [], True: []}
        for i in range(count):
            for digest in (False, True) if i % 2 == 0 else (True, False):
                (f,) = _random_files(tmp, f"{digest}-{i}-", size, 1)
                out[digest].append(1e3 * curl([["--limit-rate", rate] + api.upload_options(f, digest)], 1))
                os.unlink(f)
        return statistics.median(out[False]), statistics.median(out[True])


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


def measure(args, dep, cfg, directory) -> None:
    """Every figure, printed as it comes, against a running deployment."""
    users = make_users(directory, 51)
    token = users[0]["token"]
    from raymail.store.blobs import BlobStore

    store = BlobStore(cfg.storage_url, cfg.storage.options)
    api = Api(dep.port, token)
    # First, while the gateway has not yet held large buffers its allocator could reuse.
    progress("peak memory during a 100 MiB upload")
    base, peak = peak_upload_memory(dep, token, 100 * MiB)
    print(f"100 MiB upload: gateway RSS {base / 1024:.0f} MiB -> peak {peak / 1024:.0f} MiB "
          f"(+{(peak - base) / 1024:.1f} MiB)")
    if not store.local:  # sent in parts as it arrives
        base, peak = peak_upload_memory(dep, token, 100 * MiB, declared=True)
        print(f"100 MiB upload declaring its Content-Digest: gateway RSS {base / 1024:.0f} MiB -> peak "
              f"{peak / 1024:.0f} MiB (+{(peak - base) / 1024:.1f} MiB)")
    # (size, files per way, batches): 4 at once needs at least 4 files per batch
    for size, count, rounds in ((MiB, 40, 4),) + (((50 * MiB, 8, 2),) if not args.link_mbps else ()):
        for streams in (1, args.streams):
            how = "one at a time" if streams == 1 else f"{streams} at once"
            progress(f"throughput: {count} x {size // MiB} MiB each way, {how}, in {rounds} interleaved batches")
            t = throughput(api, store, size, count, streams, rounds, ceilings=store.local and streams == 1)
            q = t["ratios"]
            print(f"{size // MiB:>3} MiB files, {how:>13}: upload {t['api_up']:.0f} MB/s via API vs {t['fs_up']:.0f} "
                  f"MB/s plain fsspec ({t['api_up'] / t['fs_up']:.2f}x, batches {_spread(q['up'])}); download "
                  f"{t['api_down']:.0f} vs {t['fs_down']:.0f} MB/s ({t['api_down'] / t['fs_down']:.2f}x, batches "
                  f"{_spread(q['down'])})", flush=True)
            print(f"{'':>30}upload declaring its Content-Digest {t['api_up_digest']:.0f} MB/s "
                  f"({t['api_up_digest'] / t['fs_up']:.2f}x, batches {_spread(q['up_digest'])})", flush=True)
            if "floor" in t:
                print(f"{'':>30}upload floor (sha256 + write + fsync) {t['floor']:.0f} MB/s, the API reaches "
                      f"{t['api_up'] / t['floor']:.2f}x of it")
                print(f"{'':>30}ceilings on this machine: SHA-256 alone {t['sha']:.0f} MB/s "
                      f"({t['sha'] / t['fs_up']:.2f}x of the fsspec upload), one loopback TCP stream at its "
                      f"fastest {t['tcp']:.0f} MB/s ({t['tcp'] / t['fs_down']:.2f}x of the fsspec download)")
    if args.s3 and not args.link_mbps:
        progress("CPU per 1 MiB transfer, one at a time, by process")
        cpu = cpu_per_transfer(api, store, dep, args.store_pid, 40)
        for way, c in cpu.items():
            api_total, plain_total = sum(c["api"].values()), sum(c["plain"].values())
            print(f"CPU per 1 MiB {'upload' if way == 'up' else 'download'}: API "
                  + ", ".join(f"{k} {v:.1f}" for k, v in c["api"].items()) + f" = {api_total:.1f} ms; plain fsspec "
                  + ", ".join(f"{k} {v:.1f}" for k, v in c["plain"].items()) + f" = {plain_total:.1f} ms (the API's "
                  f"path costs {api_total / plain_total:.2f}x the CPU; shards and catalog include their idle baseline)")
    if args.s3:
        for size, count in ((MiB, 16), (20 * MiB, 4)):
            progress(f"{size // MiB} MiB uploads from a client sending at 20 MiB/s")
            plain, declared = client_paced_latency(api, "20M", count, size)  # curl's M: MiB
            print(f"{size // MiB:>2} MiB upload from a client at 20 MiB/s: {plain:.1f} ms plain, {declared:.1f} ms "
                  f"declaring its Content-Digest ({plain / declared:.2f}x faster; the client alone needs "
                  f"{1e3 * size / (20 * MiB):.0f} ms)")
    progress("dedup: one 2 MiB attachment sent 100 times")
    d = dedup(dep, cfg, users, 100)
    print(f"dedup: {d['sends']} sends of one 2 MiB attachment: {d['logical'] / MiB:.0f} MiB of mailbox copies "
          f"stored in {d['stored'] / MiB:.1f} MiB ({d['logical'] / max(d['stored'], 1):.0f}x)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--s3", action="store_true")
    ap.add_argument("--streams", type=int, default=4, help="transfers at once in the concurrent rounds")
    ap.add_argument("--link-mbps", type=float, default=0,
                    help="with --s3: reach the store through a link paced to this many Mbit/s each way, as "
                         "across a network (both sides use it); only the 1 MiB rounds then run")
    args = ap.parse_args()
    sections = {"limits": {"max_attachment_bytes": 128 * MiB, "max_message_bytes": 128 * MiB}}
    server = None
    try:
        if args.s3:
            from s3server import MotoServer

            server = MotoServer()
            options = server.options
            if args.link_mbps:
                from relay import PacedLink

                link = PacedLink(server.endpoint, args.link_mbps)
                options = {**options, "endpoint_url": link.endpoint}
            sections["storage"] = {"url": server.bucket("bench"), "options": options}
            args.store_pid = server.proc.pid
        where = "file://" if not args.s3 else "s3 via moto" + (f" over a {args.link_mbps:g} Mbit/s link" if args.link_mbps else "")
        progress(f"starting raymail ({where})")
        dep, cfg, directory = start(**sections)
        try:
            measure(args, dep, cfg, directory)
        finally:
            dep.stop()
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()
