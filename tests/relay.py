"""TCP relays on loopback between a client and a server, for tests and benchmarks:
a plain one, and one paced to a bandwidth as a network link would be."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time


class Relay:
    """Listens on loopback and relays every connection to ``upstream``
    ("http://host:port"); subclasses shape what passes in ``_pump``."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.srv.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.srv.accept()
            except OSError:
                return
            if not self._admit(client):
                continue
            server = socket.create_connection(self.upstream)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._opened(client, server)
            threading.Thread(target=self._relay, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._relay, args=(server, client, False), daemon=True).start()

    def _admit(self, client: socket.socket) -> bool:
        """False to turn ``client`` away (the subclass closes it)."""
        return True

    def _opened(self, client: socket.socket, server: socket.socket) -> None:
        """A connection is being relayed."""

    def _relay(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            self._pump(src, dst, upstream)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        """Carry ``src`` to ``dst`` until ``src`` ends; ``upstream``: client to server."""
        while data := src.recv(65536):
            dst.sendall(data)

    def close(self) -> None:
        self.srv.close()


class Switch(Relay):
    """A relay that can be switched off, as a network path to a store that dies:
    every connection it carries is reset and new ones are refused until it is on
    again. The store behind it keeps what it holds."""

    def __init__(self, upstream: str) -> None:
        self.on = True
        self._live: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(upstream)

    def _admit(self, client: socket.socket) -> bool:
        if not self.on:
            _reset(client)
        return self.on

    def _opened(self, client: socket.socket, server: socket.socket) -> None:
        with self._lock:
            self._live |= {client, server}

    def switch_off(self) -> None:
        self.on = False
        with self._lock:
            live, self._live = self._live, set()
        for s in live:
            _reset(s)

    def switch_on(self) -> None:
        self.on = True


def _reset(s: socket.socket) -> None:
    """Close with a reset (no orderly end), as when a network path dies."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()


class PacedLink(Relay):
    """A relay that carries at most ``mbps`` megabits a second each way: an object
    store in another rack rather than on the same machine."""

    def __init__(self, upstream: str, mbps: float) -> None:
        self.bytes_per_s = mbps * 1e6 / 8
        super().__init__(upstream)

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        # Paced per burst: a burst starts when data comes after a pause, and from
        # then on no byte leaves before the link could have carried it.
        start, sent = 0.0, 0
        while data := src.recv(65536):
            now = time.perf_counter()
            if now > start + sent / self.bytes_per_s:  # the link was idle: a new burst
                start, sent = now, 0
            sent += len(data)
            wait = start + sent / self.bytes_per_s - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            dst.sendall(data)
