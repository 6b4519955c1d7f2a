"""A TCP relay that paces what it carries to a given bandwidth, each way: it puts a
network link between a client and a server on loopback (an object store in
another rack rather than on the same machine)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

PIECE = 64 * 1024


class PacedLink:
    """Listens on loopback and relays every connection to ``upstream`` ("host:port"),
    each direction at ``mbps`` megabits a second at most."""

    def __init__(self, upstream: str, mbps: float) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.bytes_per_s = mbps * 1e6 / 8
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.srv.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.srv.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        # Paced per burst: a burst starts when data comes after a pause, and from
        # then on no byte leaves before the link could have carried it.
        start, sent = 0.0, 0
        try:
            while data := src.recv(PIECE):
                now = time.perf_counter()
                if now > start + sent / self.bytes_per_s:  # the link was idle: a new burst
                    start, sent = now, 0
                sent += len(data)
                wait = start + sent / self.bytes_per_s - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.srv.close()
