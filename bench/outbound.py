"""Outbound delivery: POST /v1/send -> spool -> pool queues -> sender actors -> smtp-sink,
against Postfix relaying the same load to the same kind of sink.

Usage: python bench/outbound.py [--messages 10000] [--domains 50] [--clients 64] [--size 5120]
Both runs: ``--messages`` messages of about ``--size`` bytes, one recipient each,
spread over ``--domains`` destination domains, all routed (static routes /
Postfix transport maps) to a Postfix ``smtp-sink`` on loopback that dumps every
transaction. The figure is deliveries/s from the first submission until the sink
holds the last message. For raymail, a third of the mail is "marketing": the sink's
record of the client address proves the pool pinning (transactional from
127.0.0.2/.3, marketing from 127.0.0.4 only). Needs root (Postfix, smtp-sink).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import ray
from common import ROOT, CpuMeter, HttpConn, make_users, progress, settle, start

sys.path.insert(0, str(ROOT / "tests"))
from mta import Postfix, free_port  # noqa: E402

SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
POOLS = [
    {"name": "transactional", "ips": ["127.0.0.2", "127.0.0.3"], "categories": ["transactional"]},
    {"name": "marketing", "ips": ["127.0.0.4"], "categories": ["marketing"]},
]
PINNING = {"transactional": {"127.0.0.2", "127.0.0.3"}, "marketing": {"127.0.0.4"}}
_SUBJECT = re.compile(rb"^Subject: bench (\w+) (\d+)", re.M)


class Sink:
    """smtp-sink on 127.0.0.1 with a multi-message dump (one record per transaction,
    each starting with the client's address)."""

    MARK = b"X-Client-Addr: "

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sink-"))
        self.dir.chmod(0o777)  # smtp-sink writes the dump as the postfix user
        self.dump = self.dir / "dump"
        self.port = free_port()
        self.proc = subprocess.Popen([SMTP_SINK, "-u", "postfix", "-D", str(self.dump), f"127.0.0.1:{self.port}",
                                      "1024"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._offset, self._tail, self.count = 0, b"", 0
        time.sleep(0.3)

    def poll(self) -> int:
        """Transactions so far (reads only what was appended since the last call)."""
        if self.dump.exists():
            with open(self.dump, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
            self._offset += len(data)
            joined = self._tail + data
            self.count += joined.count(self.MARK) - self._tail.count(self.MARK)
            self._tail = joined[-len(self.MARK) :]
        return self.count

    def records(self) -> list[bytes]:
        return self.dump.read_bytes().split(self.MARK)[1:]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def wait_all(sink: Sink, n: int, t0: float, timeout_s: float, spool=None) -> float:
    last = t0
    while sink.poll() < n:
        now = time.perf_counter()
        if now - t0 > timeout_s:
            raise SystemExit(f"only {sink.poll()} of {n} messages reached the sink after {timeout_s:.0f} s")
        if now - last > 5:
            extra = f"; spool {ray.get(spool.stats.remote())}" if spool is not None else ""
            progress(f"  {sink.poll()} at the sink after {now - t0:.0f} s{extra}")
            last = now
        time.sleep(0.05)
    return time.perf_counter() - t0


def domains(n: int) -> list[str]:
    return [f"d{i:02d}.test" for i in range(n)]


def run_raymail(args: argparse.Namespace) -> dict:
    sink = Sink()
    routes = {d: f"127.0.0.1:{sink.port}" for d in domains(args.domains)}
    dep, cfg, directory = start(gateways=args.gateways, outbound={
        "pools": POOLS, "routes": routes, "per_domain_connections": args.per_domain,
        "warmup": {"warmed_ips": [ip for p in POOLS for ip in p["ips"]]},
        "retry": {"backoff_s": [5], "max_age_s": 3600},
    })
    users = make_users(directory, 20)
    pids = {
        "gateway": [g["pid"] for g in ray.get([g.stats.remote() for g in dep.gateways])],  # all of them
        "shards": [s["pid"] for s in ray.get([s.stats.remote() for s in dep.shards])],
        "spool": [ray.get(dep.spool.stats.remote())["pid"]],
        "senders": [s["pid"] for s in ray.get([s.stats.remote() for s in dep.senders])],
        "sink": [sink.proc.pid],
    }
    # Ordinary text: 72-character lines (7bit on the wire, like smtp-source's body).
    line = "the quick brown fox jumps over the lazy dog and keeps on running far away"[:72]
    body = "\n".join([line] * max(1, (args.size - 600) // 73))
    progress(f"raymail: {args.messages} messages, {args.domains} domains, {args.clients} HTTP clients")
    failures = Counter()

    async def load() -> float:
        queue = list(range(args.messages))

        async def client(k: int) -> None:
            conn = HttpConn(dep.port)
            await conn.open()
            while queue:
                i = queue.pop()
                cat = "marketing" if i % 3 == 0 else "transactional"
                payload = json.dumps({"subject": f"bench {cat} {i}", "category": cat, "body": body,
                                      "recipients": [f"u{i}@d{i % args.domains:02d}.test"]}).encode()
                status, data = await conn.request("POST", "/v1/send", users[i % len(users)]["token"], payload)
                if status != 201:
                    failures[status] += 1
            conn.close()

        t = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(args.clients)))
        return time.perf_counter() - t

    progress(f"  processes: {pids}")
    if args.drain:  # accept everything first; then time the delivery side alone
        dep.stop_senders()
    cpu = CpuMeter(pids)
    t0 = time.perf_counter()
    accept_s = asyncio.run(load())
    if failures:
        raise SystemExit(f"sends refused: {dict(failures)}")
    progress(f"  all accepted (201 queued) in {accept_s:.1f} s")
    if args.drain:
        time.sleep(1.0)
        dep.start_senders()
        pids["senders"] = [s["pid"] for s in ray.get([s.stats.remote() for s in dep.senders])]
        cpu = CpuMeter(pids)
        t0 = time.perf_counter()
        progress("  senders started: draining the queue")
    total_s = wait_all(sink, args.messages, t0, args.timeout_s, dep.spool)
    used = cpu.stop()
    time.sleep(0.5)  # the last record may still be being written
    by_cat: dict[str, Counter] = {"transactional": Counter(), "marketing": Counter()}
    seen: Counter = Counter()
    for rec in sink.records():
        ip = rec.split(b"\n", 1)[0].strip().decode()
        m = _SUBJECT.search(rec)
        if m:
            by_cat[m.group(1).decode()][ip] += 1
            seen[int(m.group(2))] += 1
    pinned = all(set(c) <= PINNING[cat] for cat, c in by_cat.items())
    senders = ray.get([s.stats.remote() for s in dep.senders])
    dep.stop()
    sink.stop()
    return {"accept_s": accept_s, "total_s": total_s, "rate": args.messages / total_s,
            "by_category": {k: dict(v) for k, v in by_cat.items()}, "pinning_exact": pinned,
            "unique": len(seen), "duplicates": sum(seen.values()) - len(seen),
            "connections": sum(s["connections"] for s in senders),
            "cpu_s": {k: round(v, 1) for k, v in used.items() if not k.endswith("(kernel)")}}


def run_postfix(args: argparse.Namespace) -> dict:
    sink = Sink()
    port = free_port()
    progress(f"postfix: {args.messages} messages, {args.domains} domains, relayed to smtp-sink")
    # --drain: hold everything in the deferred queue (defer_transports), then release and flush.
    settings = {"defer_transports": "smtp"} if args.drain else {}
    with Postfix.relay_domains(port, domains(args.domains), ("127.0.0.1", sink.port), settings=settings) as pf:
        per = args.messages // args.domains
        t0 = time.perf_counter()
        # One smtp-source per domain, all at once: like the HTTP clients, many parallel senders.
        procs = [subprocess.Popen([SMTP_SOURCE, "-s", "1", "-l", str(args.size), "-m", str(per), "-d",
                                   "-f", "bench@example.test", "-t", f"u@{d}", "-M", "client.test",
                                   f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for d in domains(args.domains)]
        for p in procs:
            p.wait()
        accept_s = time.perf_counter() - t0
        progress(f"  all accepted in {accept_s:.1f} s")
        if args.drain:
            conf = str(pf.config_dir)
            time.sleep(2.0)  # let the queue manager move everything to the deferred queue
            subprocess.run(["postconf", "-c", conf, "-e", "defer_transports ="], check=True)
            subprocess.run(["postfix", "-c", conf, "reload"], check=True, capture_output=True)
            t0 = time.perf_counter()
            subprocess.run(["postqueue", "-c", conf, "-f"], check=True)
            progress("  released and flushed: draining the queue")
        # Postfix may have answered 250 before we look; its relay time is from the same t0.
        total_s = wait_all(sink, per * args.domains, t0, args.timeout_s)
    sink.stop()
    return {"accept_s": accept_s, "total_s": total_s, "rate": per * args.domains / total_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--domains", type=int, default=50)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--gateways", type=int, default=1)
    ap.add_argument("--per-domain", type=int, default=4, help="raymail: connections per destination domain per IP")
    ap.add_argument("--drain", action="store_true",
                    help="accept everything first (raymail: senders stopped; Postfix: defer_transports), "
                         "then time only the delivery")
    ap.add_argument("--timeout-s", type=float, default=900.0)
    ap.add_argument("--only", choices=["raymail", "postfix"])
    ap.add_argument("--settle-s", type=float, default=65.0,
                    help="sync and wait before each run, so neither pays for the other's deleted files (0: off)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: Postfix and smtp-sink")
    results = {}
    if args.only != "postfix":
        settle(args.settle_s)
        results["raymail"] = run_raymail(args)
        ray.shutdown()
    if args.only != "raymail":
        settle(args.settle_s)
        results["postfix"] = run_postfix(args)
    for name, r in results.items():
        print(f"{name}: {r['rate']:.0f} deliveries/s ({args.messages} messages in {r['total_s']:.1f} s; "
              f"all accepted after {r['accept_s']:.1f} s)")
    if "raymail" in results:
        r = results["raymail"]
        print(f"raymail pool pinning exact: {r['pinning_exact']} {r['by_category']}; "
              f"{r['unique']} unique messages, {r['duplicates']} duplicates, {r['connections']} SMTP connections")
        print(f"raymail CPU seconds: {r['cpu_s']}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
