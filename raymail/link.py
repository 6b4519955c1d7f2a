"""A same-host fast path for calls that carry mail in bulk (gateway -> mailbox shard,
gateway -> outbound spool, sender -> outbound spool) and for the users' reads
(gateway -> mailbox shard).

A Ray call costs 1-3 ms on an idle machine and about 10 ms when both processes are
busy: the request and the reply each cross Ray's own threads and wait for the GIL
of a process whose event loop is running. When caller and callee share a host, the
callee also serves the same method on a Unix stream socket, so the bytes go from one
event loop to the other with nothing in between. Ray stays the control plane: it
places, restarts and names the actors, tells the caller where the socket is, and
carries every call when the socket cannot (another host, a restart in progress).

One socket serves several methods of its actor. Wire format: a frame header, then
the payload. Requests ``>IQB`` (payload length, request id, length of the method's
name) then the method's name (ASCII) and the payload; replies ``>IQB`` (length,
request id, status 0 = ok, 1 = the handler failed and the payload is its message).
Requests are started in the order they arrive, replies go out as they finish.

The socket lives in Linux's abstract namespace (no file to clean up) and admits
only processes of the same OS user (``SO_PEERCRED``): nobody else on the host can
write into a mailbox through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

_REQ = struct.Struct(">IQB")
_REP = struct.Struct(">IQB")
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
OK, FAILED = 0, 1
MAX_FRAME_BYTES = 256 * 1024 * 1024
_STREAM_LIMIT = 1024 * 1024


class LinkLost(ConnectionError):
    """The connection went away; a call in flight may or may not have been served."""


class RemoteError(ConnectionError):
    """The callee's handler raised; its message is in the exception."""


def peer_uid(sock: socket.socket) -> int:
    _, uid, _ = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return uid


class LinkServer:
    """Serves ``handlers[method](payload) -> reply`` on an abstract Unix socket."""

    def __init__(self, handlers: dict[str, Callable[[bytes], Awaitable[bytes]]], name: str) -> None:
        self.handlers = {m.encode("ascii"): h for m, h in handlers.items()}
        self.address = f"\0raymail-{name}-{uuid.uuid4().hex}"
        self.served = 0
        self.refused = 0
        self._server: asyncio.AbstractServer | None = None
        self._starting: asyncio.Task | None = None

    def start_soon(self) -> None:
        """Start serving on the event loop (from an actor's constructor)."""
        self._starting = asyncio.get_event_loop().create_task(self.start())

    async def endpoint(self) -> tuple[str, str]:
        """(Ray node id, address) once serving: what an actor's ``link_endpoint``
        answers for ``ActorLink``."""
        import ray

        if self._starting is None:
            self.start_soon()
        await self._starting
        return ray.get_runtime_context().get_node_id(), self.address

    async def start(self) -> str:
        # The socket is made here, not by the event loop: uvloop does not take
        # abstract addresses.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.address)
        sock.listen(128)
        sock.setblocking(False)
        self._server = await asyncio.start_unix_server(self._client, sock=sock, limit=_STREAM_LIMIT)
        return self.address

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid = peer_uid(writer.get_extra_info("socket"))
        if uid != os.getuid():
            self.refused += 1
            log.warning("link %s: refused a connection from uid %d", self.address[1:], uid)
            writer.close()
            return
        tasks: set[asyncio.Task] = set()
        try:
            while True:
                length, req_id, name_len = _REQ.unpack(await reader.readexactly(_REQ.size))
                if length > MAX_FRAME_BYTES:
                    log.warning("link %s: a %d-byte frame is over the limit; closing", self.address[1:], length)
                    break
                method = await reader.readexactly(name_len)
                payload = await reader.readexactly(length)
                # Started in arrival order: the handler's synchronous part runs in
                # that order, as Ray runs the calls of one caller.
                task = asyncio.ensure_future(self._serve(writer, req_id, method, payload))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the caller went away, or this process is stopping
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()

    async def _serve(self, writer: asyncio.StreamWriter, req_id: int, method: bytes, payload: bytes) -> None:
        try:
            handler = self.handlers.get(method)
            if handler is None:
                raise LookupError(f"no method {method.decode('ascii', 'replace')!r} on this link")
            reply, status = await handler(payload), OK
        except Exception as exc:  # noqa: BLE001 - the caller hears of it
            log.exception("link %s: the handler failed", self.address[1:])
            reply, status = f"{type(exc).__name__}: {exc}".encode("utf-8", "replace"), FAILED
        self.served += 1
        if not writer.is_closing():
            writer.writelines([_REP.pack(len(reply), req_id, status), reply])


class LinkClient:
    """One connection to a ``LinkServer``; calls are matched to replies by id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self.closed = False
        self._reading = asyncio.ensure_future(self._read_replies())

    @classmethod
    async def connect(cls, address: str) -> LinkClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(address)  # a local socket: answers at once (and uvloop takes no abstract address)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_STREAM_LIMIT)
        return cls(reader, writer)

    async def call(self, method: str, payload: bytes) -> bytes:
        if self.closed:
            raise LinkLost("the link is closed")
        req_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        name = method.encode("ascii")
        try:
            self._writer.writelines([_REQ.pack(len(payload), req_id, len(name)), name, payload])
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:  # uvloop: RuntimeError on a transport closed under us
            self._fail(LinkLost(f"the link broke while sending: {exc!r}"))
        return await fut

    def close(self) -> None:
        self._fail(LinkLost("the link was closed"))
        self._reading.cancel()

    async def _read_replies(self) -> None:
        why: Exception = LinkLost("the other side closed the link")
        try:
            while True:
                length, req_id, status = _REP.unpack(await self._reader.readexactly(_REP.size))
                payload = await self._reader.readexactly(length)
                fut = self._pending.pop(req_id, None)
                if fut is None or fut.done():
                    continue
                if status == OK:
                    fut.set_result(payload)
                else:
                    fut.set_exception(RemoteError(payload.decode("utf-8", "replace")))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            why = LinkLost(f"the link broke: {exc!r}")
        finally:
            self._fail(why)

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)
        with contextlib.suppress(Exception):
            self._writer.close()


class ActorLink:
    """Calls ``method(payload)`` of one Ray actor: over the actor's link when it runs
    on this host (it must offer ``link_endpoint() -> (node id, address)`` and serve
    ``method`` there), else - and whenever the link fails - through Ray.

    A connection lost with a call in flight sends that call again through Ray, which
    waits for a restarting actor; the methods served this way are idempotent, so a
    call the actor had already served changes nothing the second time.
    """

    RECONNECT_AFTER_S = 1.0

    def __init__(self, handle: Any, method: str) -> None:
        self.handle = handle
        self.method = method
        self.client: LinkClient | None = None
        self._lock = asyncio.Lock()
        self._next_try = 0.0
        self.link_calls = 0
        self.ray_calls = 0

    async def call(self, payload: bytes) -> Any:
        """The method's reply: bytes over the link, or whatever Ray returns."""
        client = await self._client()
        if client is not None:
            try:
                reply = await client.call(self.method, payload)
                self.link_calls += 1
                return reply
            except LinkLost as exc:
                log.warning("link to %s lost (%s); sending the call through Ray", self.method, exc)
        self.ray_calls += 1
        return await getattr(self.handle, self.method).remote(payload)

    async def _client(self) -> LinkClient | None:
        if self.client is not None and not self.client.closed:
            return self.client
        if time.monotonic() < self._next_try:
            return None
        import ray
        from ray.exceptions import RayError

        async with self._lock:
            if self.client is not None and not self.client.closed:
                return self.client
            self._next_try = time.monotonic() + self.RECONNECT_AFTER_S
            try:
                node, address = await asyncio.wait_for(self.handle.link_endpoint.remote(), 5)
                if node != ray.get_runtime_context().get_node_id():
                    return None  # another host: Ray carries the calls
                self.client = await LinkClient.connect(address)
            except (TimeoutError, RayError, OSError) as exc:
                log.info("no same-host link for %s yet (%r); using Ray", self.method, exc)
                return None
        return self.client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
