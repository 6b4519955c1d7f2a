"""Shared pieces of the benchmarks: start a deployment, a lean HTTP/1.1 client."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raymail import config as config_mod  # noqa: E402
from raymail.store.directory import Directory  # noqa: E402


def start(shards: int = 2, gateways: int = 1, **sections):
    """A real deployment on an embedded local Ray, data in a fresh temp dir."""
    import ray

    from cluster.deploy import Deployment

    data = Path(tempfile.mkdtemp(prefix="raymail-bench-"))
    raw = {
        "server": {"data_dir": str(data), "http_port": 0, "smtp_port": 0, "submission_port": 0},
        "cluster": {"namespace": f"bench-{uuid.uuid4().hex[:6]}", "shards": shards, "dashboard": False},
        "gateway": {"processes": gateways},
        "limits": {"send_rate_per_s": 1e6, "send_burst": 1_000_000},
    }
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    cfg = config_mod.from_dict(raw)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    Directory(cfg.data_path).add_domain("example.test")
    dep = Deployment(cfg).start()
    return dep, cfg, Directory(cfg.data_path)


def make_users(directory: Directory, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        u, token = directory.add_user(f"b{uuid.uuid4().hex[:12]}@example.test")
        out.append({"uid": u.uid, "email": u.email, "token": token})
    return out


class HttpConn:
    """A keep-alive HTTP/1.1 connection with almost no client-side overhead."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self, method: str, path: str, token: str, body: bytes = b"") -> tuple[int, bytes]:
        assert self.reader and self.writer
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        data = await self.reader.readexactly(length) if length else b""
        return status, data

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def send_body(to: str, i: int, body_bytes: int = 1000) -> bytes:
    return json.dumps({"subject": f"bench {i}", "recipients": [to], "body": "x" * body_bytes}).encode()


class CpuMeter:
    """CPU seconds used by groups of processes, and by the whole machine, from start to stop."""

    TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.start = {k: self._proc(pids) for k, pids in groups.items()}
        self.start_sys = {k: self._proc(pids, slice(12, 13)) for k, pids in groups.items()}
        self.machine0 = self._machine()

    @classmethod
    def _proc(cls, pids: list[int], which: slice = slice(11, 13)) -> float:
        total = 0.0
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[which]) * cls.TICK_S
        return total

    @classmethod
    def _machine(cls) -> float:
        cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system = (int(x) for x in cpu[:3])
        return (user + nice + system) * cls.TICK_S

    def stop(self) -> dict[str, float]:
        out = {k: self._proc(pids) - self.start[k] for k, pids in self.groups.items()}
        out.update({f"{k} (kernel)": self._proc(pids, slice(12, 13)) - self.start_sys[k] for k, pids in self.groups.items()})
        out["machine"] = self._machine() - self.machine0
        return out


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def summary_ms(values_s: list[float]) -> str:
    ms = [v * 1000 for v in values_s]
    return f"p50 {pct(ms, 50):.1f} ms, p99 {pct(ms, 99):.1f} ms, mean {statistics.fmean(ms) if ms else 0:.1f} ms"


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def settle(seconds: float) -> None:
    """Let the filesystem forget recent deletions before a measured run.

    ext4 without a journal (as on this machine) skips every inode freed in the last
    minute when it allocates a new one (fs/ext4/ialloc.c, ``recently_deleted``: at
    least 60 s, longer while the inode table block is dirty), looking each one up in
    the buffer cache. A run that starts right after thousands of deletions - the
    other run's clean-up - pays for them in every file it creates (perf: a quarter
    of our MX gateway's CPU in ``find_get_block_common`` and ``recently_deleted``).
    """
    if seconds > 0:
        progress(f"settling {seconds:.0f} s: sync, and inodes freed by earlier runs age out")
        os.sync()
        time.sleep(seconds)
