"""raymail/link.py: framed calls over an abstract Unix socket between two event loops."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys

import pytest

from raymail.link import _REQ, MAX_FRAME_BYTES, LinkClient, LinkLost, LinkServer, RemoteError


async def serve(handler) -> LinkServer:
    server = LinkServer({"m": handler}, "test")
    await server.start()
    return server


@contextlib.asynccontextmanager
async def linked(handlers):
    """A serving link and a client connected to it; ``handlers``: one for method "m", or by name."""
    server = LinkServer(handlers if isinstance(handlers, dict) else {"m": handlers}, "test")
    await server.start()
    client = await LinkClient.connect(server.address)
    try:
        yield server, client
    finally:
        client.close()
        server.close()


async def test_calls_are_answered_and_matched_to_their_replies():
    async def handler(payload: bytes) -> bytes:
        await asyncio.sleep(0.01 if payload == b"slow" else 0)
        return payload.upper()

    async with linked(handler) as (server, client):
        # The slow call is answered last but every caller gets its own reply.
        calls = [client.call("m", b"slow"), client.call("m", b"a"), client.call("m", b"")]
        assert await asyncio.gather(*calls) == [b"SLOW", b"A", b""]
        big = os.urandom(3 * 1024 * 1024)
        assert await client.call("m", big) == big.upper()
        assert server.served == 4


async def test_handlers_start_in_the_order_the_calls_were_sent():
    started: list[bytes] = []

    async def handler(payload: bytes) -> bytes:
        started.append(payload)  # the synchronous part: a shard applies its ops here
        await asyncio.sleep(0.001 * (10 - int(payload)))
        return payload

    async with linked(handler) as (server, client):
        sent = [str(i).encode() for i in range(10)]
        assert await asyncio.gather(*(client.call("m", p) for p in sent)) == sent
        assert started == sent


async def test_a_failing_handler_is_reported_and_the_link_stays_usable():
    async def handler(payload: bytes) -> bytes:
        if payload == b"bad":
            raise ValueError("no such op")
        return b"ok"

    async with linked(handler) as (server, client):
        with pytest.raises(RemoteError, match="ValueError: no such op"):
            await client.call("m", b"bad")
        assert await client.call("m", b"good") == b"ok"


async def test_one_socket_serves_each_method_by_name():
    async def upper(payload: bytes) -> bytes:
        return payload.upper()

    async def size(payload: bytes) -> bytes:
        return str(len(payload)).encode()

    async with linked({"upper": upper, "size": size}) as (_, client):
        assert await asyncio.gather(client.call("upper", b"abc"), client.call("size", b"abc")) == [b"ABC", b"3"]
        with pytest.raises(RemoteError, match="no method 'other'"):
            await client.call("other", b"abc")
        assert await client.call("upper", b"still here") == b"STILL HERE"


async def test_calls_in_flight_fail_when_the_connection_drops():
    release = asyncio.Event()

    async def handler(payload: bytes) -> bytes:
        await release.wait()
        return payload

    server = await serve(handler)
    client = await LinkClient.connect(server.address)
    call = asyncio.ensure_future(client.call("m", b"pending"))
    await asyncio.sleep(0.05)
    server.close()
    client._writer.transport.abort()  # the connection drops, as when the shard's process dies
    with pytest.raises(LinkLost):
        await call
    assert client.closed
    with pytest.raises(LinkLost):
        await client.call("m", b"after")
    release.set()


async def test_a_frame_over_the_limit_closes_the_connection():
    async def handler(payload: bytes) -> bytes:
        return payload

    server = await serve(handler)
    reader, writer = await asyncio.open_unix_connection(path=server.address)
    writer.write(_REQ.pack(MAX_FRAME_BYTES + 1, 1, 1) + b"m")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
    assert server.served == 0
    writer.close()
    server.close()


async def test_connecting_where_nobody_listens_fails():
    with pytest.raises(OSError):
        await LinkClient.connect("\0raymail-test-nobody-listens-here")


# Another user may not reach this project's interpreter; the probe needs only the stdlib.
OTHER_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


@pytest.mark.skipif(os.getuid() != 0, reason="switching to another user needs root")
async def test_a_process_of_another_user_is_refused():
    async def handler(payload: bytes) -> bytes:
        return b"written"

    server = await serve(handler)
    assert server.address.startswith("\0")  # abstract: no file whose mode would protect it
    probe = (
        "import socket, struct\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        f"s.connect({server.address!r})\n"
        "s.settimeout(5)\n"
        "try:\n"  # the server may close before the frame is even sent
        "    s.sendall(struct.pack('>IQ', 4, 1) + b'mail')\n"
        "    print('answered' if s.recv(100) else 'closed')\n"
        "except (ConnectionResetError, BrokenPipeError):\n"
        "    print('closed')\n"
    )
    out = await asyncio.to_thread(
        subprocess.run, [OTHER_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30,
        user=65534, group=65534,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "closed"  # without an answer
    assert (server.served, server.refused) == (0, 1)
    server.close()



async def test_a_write_refused_by_a_closed_transport_is_a_lost_link():
    # uvloop raises RuntimeError when the transport was closed under the caller (the
    # peer reset it) before the reader noticed; the caller must see LinkLost, and
    # then go through Ray, never a failed request.
    async def handler(payload: bytes) -> bytes:
        return payload

    async with linked(handler) as (server, client):
        assert await client.call("m", b"one") == b"one"

        def closed_transport(_data) -> None:
            raise RuntimeError("unable to perform operation on <UnixTransport closed=True>; the handler is closed")

        client._writer.writelines = closed_transport  # what uvloop's transport does then
        with pytest.raises(LinkLost):
            await client.call("m", b"two")
        assert client.closed
