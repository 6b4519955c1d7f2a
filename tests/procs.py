"""Processes of the tests and benchmarks: child processes of the helpers (S3 server,
NSD) stopped the same way, and a process's memory watched."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path


def stop(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid``, KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:", 1)[1].split()[0])


class PeakRss:
    """Process ``pid``'s resident memory before (``base``) and at its peak (``peak``)
    while the block runs, in KiB, sampled every ``every_s`` from /proc."""

    def __init__(self, pid: int, every_s: float = 0.005) -> None:
        self.pid, self.every_s = pid, every_s
        self.base = self.peak = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(self.every_s)

    def __enter__(self) -> PeakRss:
        self.base = self.peak = rss_kib(self.pid)
        self._sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._sampler.join()
        self.peak = max(self.peak, rss_kib(self.pid))
