"""A real S3-compatible HTTP server on loopback for tests and benchmarks: moto's
standalone server (from the ``moto[server]`` dev extra), one process per instance."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import procs


class MotoServer:
    """A real S3-compatible HTTP server on loopback (moto's standalone server)."""

    def __init__(self, port: int = 0) -> None:
        if not port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port = port
        exe = Path(sys.executable).with_name("moto_server")
        if not exe.exists():
            raise RuntimeError(f"{exe} is missing: install the dev extras (moto[server])")
        self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                httpx.get(self.endpoint, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            self.proc.kill()
            raise RuntimeError("moto_server did not start")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def options(self) -> dict:
        return {"endpoint_url": self.endpoint, "key": "testing", "secret": "testing"}

    def bucket(self, name: str) -> str:
        import s3fs

        s3fs.S3FileSystem(**self.options).mkdir(name)
        return f"s3://{name}/raymail"

    def stop(self) -> None:
        procs.stop(self.proc)

    def restart(self) -> None:
        """Start again on the same port (empty: moto keeps objects in memory)."""
        self.__init__(port=self.port)
