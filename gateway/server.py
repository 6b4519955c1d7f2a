"""Gateway: one HTTP/WebSocket server process, run as a Ray actor.

Several gateways share one port through SO_REUSEPORT; the kernel spreads
connections over them. Mailbox shards call ``push`` on every gateway, and each
delivers to the sockets it holds, so a push reaches the user on whichever process
holds the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import uvicorn

from gateway.app import build_app
from gateway.hub import Hub
from gateway.metrics import GatewayMetrics
from gateway.router import ShardRouter
from gateway.services import Services
from raymail import codec
from raymail.config import Config
from raymail.ratelimit import TokenBuckets
from raymail.store.blobs import BlobStore
from raymail.store.directory import Directory

log = logging.getLogger(__name__)

_GAP_FILL_PAGE = 500  # events fetched at once to fill a gap in a WebSocket's pushes


def reuseport_socket(host: str, port: int, send_buffer_bytes: int = 0) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if send_buffer_bytes:
        # Accepted sockets inherit it: bounds kernel memory per client.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # the Ray worker owns signals, not uvicorn
        yield


class Gateway:
    """Serves the HTTP API and WebSockets of DESIGN.md on the shared port.

    Guarantees: ``push`` never waits for a client (bounded queue per connection;
    a slow client is dropped and resyncs with ``since``); the server starts with
    the actor, so a gateway that Ray restarts serves again on its own.
    """

    def __init__(self, config: Config, index: int, shard_names: list[str], port: int, smtp_port: int = 0,
                 submission_port: int = 0) -> None:
        import ray

        self.config = config
        # Handles are looked up by name (not passed in) so a restart needs no stored arguments.
        shard_handles = [ray.get_actor(n, namespace=config.cluster.namespace) for n in shard_names]
        self.name = f"gateway-{index}"
        g = config.gateway
        router = ShardRouter(
            shard_handles, max_ops=g.batch_max_ops, max_inflight=g.max_inflight_batches, timeout_s=g.request_timeout_s
        )
        self.svc = Services(
            config=config,
            name=self.name,
            directory=Directory(config.data_path),
            router=router,
            blobs=BlobStore(config.storage_url, config.storage.options, spool_dir=self._fresh_spool_dir()),
            # Pushes can arrive out of order or go missing: the hub fills gaps from the shard.
            hub=Hub(g.ws_queue_size,
                    fetch=lambda uid, cursor: router.read(uid, "events_since", cursor, _GAP_FILL_PAGE)),
            metrics=GatewayMetrics(self.name),
            send_limiter=TokenBuckets(config.limits.send_rate_per_s, config.limits.send_burst),
        )
        self.push_calls = 0
        # A (re)started gateway holds no sockets: shards forget what they believed it
        # held. Sent before the server starts, so before any socket subscribes.
        for handle in shard_handles:
            handle.forget_gateway.remote(self.name)
        self.sock = reuseport_socket(config.server.bind, port, g.socket_send_buffer_bytes)
        self.port = self.sock.getsockname()[1]
        self.smtp_sock = reuseport_socket(config.server.bind, smtp_port) if smtp_port else None
        self.submission_sock = reuseport_socket(config.server.bind, submission_port) if submission_port else None
        self._smtp_server: Any = None
        self._submission_server: Any = None
        self._server: _Server | None = None
        self._task: asyncio.Task | None = None
        # An async actor's __init__ runs on its event loop: serve at once, also
        # after Ray restarts this actor.
        self._ensure_started()

    def _fresh_spool_dir(self) -> Path:
        """This gateway's own directory for large uploads waiting for their hash on
        their way to an object store; what an earlier run left there is dropped."""
        path = self.config.data_path / "spool" / self.name
        shutil.rmtree(path, ignore_errors=True)
        return path

    def _ensure_started(self) -> None:
        if self._task is not None:
            return
        cfg = uvicorn.Config(
            build_app(self.svc),
            log_level="warning",
            access_log=False,
            ws="websockets-sansio",
            ws_max_size=self.config.gateway.ws_max_message_bytes,
            ws_ping_interval=self.config.gateway.ws_ping_interval_s,
            ws_ping_timeout=self.config.gateway.ws_ping_interval_s,
            ws_per_message_deflate=False,  # about 14 KiB per idle socket instead of 64 KiB
            lifespan="off",
            proxy_headers=False,  # client addresses are the peers'; no proxy is trusted by default
            timeout_keep_alive=30,
            limit_concurrency=20_000,
            backlog=2048,
        )
        self._server = _Server(cfg)
        self._task = asyncio.ensure_future(self._server.serve(sockets=[self.sock]))
        if self.smtp_sock is not None:
            asyncio.ensure_future(self._start_smtp())
        log.info("%s serving on %s:%d (pid %d)", self.name, self.config.server.bind, self.port, os.getpid())

    async def _start_smtp(self) -> None:
        try:
            await self._start_smtp_listeners()
        except Exception:
            log.exception("%s: the SMTP listeners did not start", self.name)
            raise

    async def _start_smtp_listeners(self) -> None:
        from gateway.smtp import mx_factory, submission_factory

        loop = asyncio.get_running_loop()
        if self.submission_sock is not None:
            self._submission_server = await loop.create_server(submission_factory(self.svc),
                                                               sock=self.submission_sock)
        self._smtp_server = await loop.create_server(mx_factory(self.svc), sock=self.smtp_sock)
        log.info("%s: SMTP MX on %s:%d", self.name, self.config.server.bind, self.smtp_sock.getsockname()[1])

    async def ready(self) -> dict:
        self._ensure_started()
        for _ in range(200):
            if self._server is not None and self._server.started:
                break
            await asyncio.sleep(0.01)
        for _ in range(200):
            if self.smtp_sock is None or self._smtp_server is not None:
                break
            await asyncio.sleep(0.01)
        return {"name": self.name, "port": self.port, "pid": os.getpid(),
                "started": bool(self._server and self._server.started),
                "smtp_port": self.smtp_sock.getsockname()[1] if self.smtp_sock else None,
                "submission_port": self.submission_sock.getsockname()[1] if self.submission_sock else None}

    def push(self, encoded: bytes) -> int:
        """Events from a mailbox shard: codec-encoded ``[(uid, event dict), ...]``."""
        self._ensure_started()
        hub, metrics = self.svc.hub, self.svc.metrics
        self.push_calls += 1
        now = time.time()
        delivered = 0
        for uid, event in codec.decode(encoded):
            if hub.wants(uid):
                delivered += hub.publish(uid, event)
                metrics.push_latency(max(0.0, now - event["ts"]))
        return delivered

    def subscriptions(self, shard_index: int) -> list[str]:
        """Users of shard ``shard_index`` with a WebSocket here (a restarted shard asks)."""
        router = self.svc.router
        return [uid for uid in self.svc.hub.users() if router.shard_index(uid) == shard_index]

    def stats(self) -> dict:
        self._ensure_started()
        hub = self.svc.hub
        return {
            "name": self.name,
            "pid": os.getpid(),
            "push_calls": self.push_calls,
            "connections": hub.connections,
            "dropped": hub.dropped_total,
            "published": hub.published_total,
            "gaps_filled": hub.gaps_filled,
            "router": self.svc.router.stats(),
            "streamed_puts": dict(self.svc.blobs.stream_counts),
        }

    async def stop(self) -> None:
        for srv in (self._smtp_server, self._submission_server):
            if srv is not None:
                srv.close()
        if self._server is not None:
            self._server.should_exit = True
            if self._task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._task, 10)
        if self.svc is not None:
            await self.svc.blobs.aclose()
