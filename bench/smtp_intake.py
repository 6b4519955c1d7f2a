"""MX intake: Postfix's smtp-source against our MX and against a Postfix delivering to a maildir.

Usage: python bench/smtp_intake.py [--messages 5000] [--sessions 20] [--size 5120] [--gateways 1]
Both runs get the same load (smtp-source, keep-alive sessions, one recipient per
message) on loopback, one after the other. Figures: accepted msgs/s (smtp-source's
wall time; every message must get 250, smtp-source stops at the first refusal) and
the time until all messages are in the mailbox (our API total; files in Postfix's
maildir). Both answer 250 only once the message is on disk (fsync), Postfix with
its default settings. Needs root (Postfix) and the postfix package.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import ray
from common import ROOT, CpuMeter, progress, settle, start

sys.path.insert(0, str(ROOT / "tests"))
from mta import Postfix, free_port  # noqa: E402

SMTP_SOURCE = "/usr/sbin/smtp-source"
SENDER, RECIPIENT = "sender@elsewhere.test", "user@example.test"


@dataclasses.dataclass
class Result:
    accept_s: float  # smtp-source wall time: every message answered 250
    mailbox_s: float  # until the last message is in the mailbox
    cpu_s: dict[str, float]  # CPU seconds: whole machine, smtp-source, and our processes by kind


def run_load(port: int, args: argparse.Namespace, delivered: Callable[[], int],
             groups: dict[str, list[int]] | None = None) -> Result:
    """smtp-source against 127.0.0.1:port while ``delivered()`` is polled until it reaches the count;
    ``groups`` names processes whose CPU time is reported."""
    cmd = [SMTP_SOURCE, "-s", str(args.sessions), "-l", str(args.size), "-m", str(args.messages), "-d",
           "-f", SENDER, "-t", RECIPIENT, "-M", "client.elsewhere.test", f"127.0.0.1:{port}"]
    cpu = CpuMeter(groups or {})
    children0 = _children_cpu_s()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    accept_s: list[float] = []
    threading.Thread(target=lambda: (proc.wait(), accept_s.append(time.perf_counter() - t0)), daemon=True).start()
    last_report, n = t0, 0
    while (n := delivered()) < args.messages:
        now = time.perf_counter()
        if proc.poll() is not None and proc.returncode != 0:
            raise SystemExit(f"smtp-source failed ({proc.returncode}): {proc.stdout.read() if proc.stdout else ''}")
        if now - t0 > args.timeout_s:
            raise SystemExit(f"only {n} of {args.messages} messages delivered after {args.timeout_s:.0f} s")
        if now - last_report > 5:
            progress(f"  {n} delivered after {now - t0:.0f} s")
            last_report = now
        time.sleep(0.05)
    mailbox_s = time.perf_counter() - t0
    proc.wait()
    while not accept_s:
        time.sleep(0.01)
    used = cpu.stop()
    used["smtp-source"] = _children_cpu_s() - children0
    # Ray's own processes, the event-log catalog, the kernel's journal threads...
    used["rest of machine"] = used["machine"] - sum(v for k, v in used.items()
                                                    if k != "machine" and not k.endswith("(kernel)"))
    return Result(accept_s[0], mailbox_s, used)


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def bench_postfix(args: argparse.Namespace) -> Result:
    with Postfix(free_port(), mailboxes={"example.test": ["user"]}, hostname="mx.postfix.test") as pf:
        progress(f"Postfix on 127.0.0.1:{pf.port}, maildir under {pf.mail_dir}")
        return run_load(pf.port, args, lambda: pf.count_delivered(RECIPIENT))


def bench_raymail(args: argparse.Namespace) -> Result:
    # One busy peer on loopback: lift the per-client-address guards out of its way.
    limits = {"mx_messages_per_minute": 10_000_000, "max_recipients": 1000,
              "smtp_connections_per_ip": 10_000, "smtp_connects_per_minute": 10_000_000}
    sections: dict = {"limits": limits}
    if not args.mailauth:
        sections["mailauth"] = {"enabled": False}  # Postfix checks no SPF/DKIM/DMARC either
    progress(f"starting raymail: {args.shards} shards, {args.gateways} gateway(s)")
    dep, cfg, directory = start(shards=args.shards, gateways=args.gateways, **sections)
    try:
        _, token = directory.add_user(RECIPIENT)
        with httpx.Client(base_url=f"http://127.0.0.1:{dep.port}", headers={"Authorization": f"Bearer {token}"},
                          timeout=30) as api:

            def total() -> int:
                return api.get("/v1/emails", params={"page_size": 1}).json()["total"]

            progress(f"raymail MX on 127.0.0.1:{dep.smtp_port}")
            spies = profile(dep, args.profile) if args.profile else []
            groups = {"gateway": [g["pid"] for g in ray.get([g.stats.remote() for g in dep.gateways])],
                      "shards": [s["pid"] for s in ray.get([s.stats.remote() for s in dep.shards])]}
            try:
                return run_load(dep.smtp_port, args, total, groups)
            finally:
                for spy in spies:
                    spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                    spy.wait(timeout=60)
    finally:
        dep.stop()


def profile(dep, out_dir: str) -> list[subprocess.Popen]:
    """py-spy on every gateway and shard process, collapsed stacks to ``out_dir`` (flamegraph.pl input)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    pids = {f"gateway{i}": s["pid"] for i, s in enumerate(ray.get([g.stats.remote() for g in dep.gateways]))}
    pids.update({f"shard{i}": s["pid"] for i, s in enumerate(ray.get([s.stats.remote() for s in dep.shards]))})
    progress(f"profiling {', '.join(pids)} into {out_dir}")
    return [subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--format", "raw", "--nonblocking",
                              "--rate", "200", "--gil", "--pid", str(pid), "-o", f"{out_dir}/{name}.txt"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name, pid in pids.items()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=5120, help="payload bytes per message (smtp-source -l)")
    ap.add_argument("--gateways", type=int, default=1)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--mailauth", action="store_true", help="keep SPF/DKIM/DMARC checks on in our MX")
    ap.add_argument("--profile", metavar="DIR", help="py-spy (pip install py-spy) our processes during the run")
    ap.add_argument("--timeout-s", type=float, default=600.0)
    ap.add_argument("--settle-s", type=float, default=65.0,
                    help="sync and wait before each run, so neither pays for the other's deleted files (0: off)")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]  # other work on the machine skews both runs
    settle(args.settle_s)
    progress(f"Postfix: {args.messages} messages, {args.sessions} sessions, {args.size} bytes")
    pf = bench_postfix(args)  # its files are removed here, before our run: hence the settling
    settle(args.settle_s)
    progress(f"raymail: {args.messages} messages, {args.sessions} sessions, {args.size} bytes")
    ours = bench_raymail(args)
    m = args.messages
    for name, r in (("raymail MX", ours), ("Postfix", pf)):
        print(f"{name}: {m / r.accept_s:.0f} accepted msgs/s ({r.accept_s:.1f} s), all {m} in the mailbox after "
              f"{r.mailbox_s:.1f} s ({m / r.mailbox_s:.0f} msgs/s)")
        print("  CPU per message: " + ", ".join(
            f"{k} {v / m * 1000:.2f} ms" + (f" ({r.cpu_s[k + ' (kernel)'] / m * 1000:.2f} kernel)"
                                            if k + " (kernel)" in r.cpu_s else "")
            for k, v in r.cpu_s.items() if not k.endswith("(kernel)")))
    print(f"ratio ours / Postfix: accepted {pf.accept_s / ours.accept_s:.2f}x, "
          f"in the mailbox {pf.mailbox_s / ours.mailbox_s:.2f}x")
    print(f"  setup: smtp-source -s {args.sessions} -l {args.size} -m {m} -d, one recipient each; "
          f"{args.shards} shards, {args.gateways} gateway(s); load average at start {load0:.1f}, end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
