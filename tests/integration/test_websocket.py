"""WebSocket pushes: replay with since, two gateway processes, slow clients."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest
import websockets
from helpers import recv_json


async def _send(app, token, to, n, subject="s"):
    async with app.client(token) as c:
        for i in range(n):
            r = await c.post("/v1/send", json={"subject": f"{subject}{i}", "recipients": [to], "body": "b"})
            assert r.status_code == 201, r.text


async def test_reconnect_with_since_replays_exactly_the_missed(app):
    alice, bob = app.user(), app.user()
    await _send(app, alice["token"], bob["email"], 2, "before")
    async with app.ws(bob["token"]) as ws:
        hello = await recv_json(ws)
        assert hello["cursor"] == 2
    await _send(app, alice["token"], bob["email"], 3, "missed")
    async with app.ws(bob["token"], since=hello["cursor"]) as ws:
        assert (await recv_json(ws))["type"] == "hello"
        replay = [await recv_json(ws) for _ in range(3)]
        assert [e["cursor"] for e in replay] == [3, 4, 5]
        assert [e["email"]["subject"] for e in replay] == ["missed0", "missed1", "missed2"]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.5)  # nothing more, nothing twice
        await _send(app, alice["token"], bob["email"], 1, "live")
        live = await recv_json(ws)
        assert live["cursor"] == 6 and live["email"]["subject"] == "live0"


async def _ws_on_gateway(app, token, gateway, tries=60):
    for _ in range(tries):
        ws = await app.ws(token)
        hello = await recv_json(ws)
        if hello["gateway"] == gateway:
            return ws
        await ws.close()
    raise AssertionError(f"never connected to {gateway}")


async def test_push_crosses_gateway_processes(app):
    assert app.config.gateway.processes == 2
    alice, bob = app.user(), app.user()
    ws = await _ws_on_gateway(app, bob["token"], "gateway-1")
    try:
        # Send through fresh connections until one is answered by the other process.
        for i in range(60):
            async with app.client(alice["token"]) as c:
                r = await c.post("/v1/send", json={"subject": f"x{i}", "recipients": [bob["email"]], "body": "b"})
                assert r.status_code == 201
            ev = await recv_json(ws)
            assert ev["email"]["subject"] == f"x{i}"
            if r.headers["x-raymail-gateway"] == "gateway-0":
                break
        else:
            raise AssertionError("no send went through gateway-0")
    finally:
        await ws.close()


def _tiny_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def test_slow_client_is_dropped_others_are_not_blocked(ray_cluster, tmp_path):
    from conftest import start_app

    app = start_app(tmp_path, gateway={"processes": 1, "ws_queue_size": 32, "socket_send_buffer_bytes": 4096}, mailbox={"events_retained": 30})
    try:
        alice, bob = app.user(), app.user()
        slow = await websockets.connect(
            app.ws_url, sock=_tiny_socket(app.port), additional_headers={"Authorization": f"Bearer {bob['token']}"},
            max_queue=1, ping_interval=None,  # its own keepalive must not close it first: it reads nothing for long
        )
        fast = await app.ws(bob["token"])
        await recv_json(fast)
        got: list[int] = []

        async def read_fast():
            while len(got) < 120:
                got.append((await recv_json(fast, 20))["cursor"])

        reader = asyncio.ensure_future(read_fast())
        big = "w" * 900
        async with app.client(alice["token"]) as c:
            for i in range(120):
                r = await c.post("/v1/send", json={"subject": f"{big}{i}", "recipients": [bob["email"]], "body": "b"})
                assert r.status_code == 201
        try:
            await asyncio.wait_for(reader, 30)
        except TimeoutError:
            import ray

            stats = ray.get([g.stats.remote() for g in app.deployment.gateways] +
                            [sh.stats.remote() for sh in app.deployment.shards])
            raise AssertionError(f"the fast tab got {len(got)} of 120 events (last {got[-1:]}); {stats}") from None
        assert got == list(range(1, 121))  # the fast tab saw every event in order

        # The slow one was closed with 4008 once its queue overflowed.
        closed = None
        try:
            while True:
                await asyncio.wait_for(slow.recv(), 10)
        except websockets.ConnectionClosed as exc:
            closed = exc
        assert closed is not None and closed.rcvd is not None and closed.rcvd.code == 4008
        assert "since=" in closed.rcvd.reason
        async with httpx.AsyncClient(base_url=app.base_url) as c:
            assert "raymail_websocket_connections" in (await c.get("/metrics")).text

        # A cursor older than the events kept asks for a resync; /v1/events says 410.
        async with app.ws(bob["token"], since=1) as ws:
            await recv_json(ws)
            msg = await recv_json(ws)
            assert msg == {"type": "resync", "cursor": 120}
        async with app.client(bob["token"]) as c:
            r = await c.get("/v1/events", params={"since": 1})
            assert r.status_code == 410 and r.json()["error"]["code"] == "cursor_expired"
            r = await c.get("/v1/events", params={"since": 100})
            assert [e["cursor"] for e in r.json()["events"]] == list(range(101, 121))
        await fast.close()
    finally:
        app.deployment.stop()


async def test_client_ping_gets_pong(app):
    bob = app.user()
    async with app.ws(bob["token"]) as ws:
        await recv_json(ws)
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv_json(ws) == {"type": "pong"}
        pong = await ws.ping()
        await asyncio.wait_for(pong, 5)  # protocol-level ping too


def _push_calls(app) -> dict[str, int]:
    import ray

    return {st["name"]: st["push_calls"] for st in ray.get([g.stats.remote() for g in app.deployment.gateways])}


def _gateways_for(app, user) -> list[str]:
    import ray

    from raymail.sharding import shard_of

    shards = app.deployment.shards
    return ray.get(shards[shard_of(user["uid"], len(shards))].gateways_for.remote(user["uid"]))


async def _settled_gateways(app, user, expected: list[str]) -> list[str]:
    """The gateways pushing to ``user`` once closed sockets' unsubscribes (fire and
    forget) have arrived, or what they still are after 10 s."""
    for _ in range(100):
        if (got := _gateways_for(app, user)) == expected:
            return got
        await asyncio.sleep(0.1)
    return got


async def test_shards_push_only_to_gateways_holding_a_socket_for_the_user(app):
    alice, bob, carol = app.user(), app.user(), app.user()
    ws = await _ws_on_gateway(app, bob["token"], "gateway-1")
    try:
        assert await _settled_gateways(app, bob, ["gateway-1"]) == ["gateway-1"]  # not the sockets tried on gateway-0
        # An unsubscribe older than the socket's subscribe (Ray ran it late) changes nothing.
        import ray

        from raymail.sharding import shard_of

        shard = app.deployment.shards[shard_of(bob["uid"], len(app.deployment.shards))]
        ray.get(shard.unsubscribe.remote(bob["uid"], "gateway-1", 1))
        assert _gateways_for(app, bob) == ["gateway-1"]
        before = _push_calls(app)
        await _send(app, alice["token"], carol["email"], 3, "nobody listens")
        await asyncio.sleep(0.3)
        assert _push_calls(app) == before  # no socket for carol (or alice) anywhere
        await _send(app, alice["token"], bob["email"], 1, "to bob")
        assert (await recv_json(ws))["email"]["subject"] == "to bob0"
        after = _push_calls(app)
        assert after["gateway-1"] > before["gateway-1"]
        assert after["gateway-0"] == before["gateway-0"]  # bob's socket is on the other process
    finally:
        await ws.close()
    assert await _settled_gateways(app, bob, []) == []
    before = _push_calls(app)
    await _send(app, alice["token"], bob["email"], 2, "bob is away")
    await asyncio.sleep(0.3)
    assert _push_calls(app) == before


async def test_a_restarted_shard_learns_the_open_sockets_and_pushes_to_them(ray_cluster, tmp_path):
    import ray
    from conftest import start_app

    app = start_app(tmp_path, cluster={"shards": 1})
    try:
        alice, bob = app.user(), app.user()
        async with app.ws(bob["token"]) as ws:
            assert (await recv_json(ws))["type"] == "hello"
            pid = ray.get(app.deployment.shards[0].stats.remote())["pid"]
            ray.kill(ray.get_actor("shard-0", namespace=app.config.cluster.namespace), no_restart=False)
            await _send(app, alice["token"], bob["email"], 1, "after the restart")  # waits for the new shard
            pushed = await recv_json(ws, timeout=30)
            assert pushed["type"] == "email.new" and pushed["email"]["subject"] == "after the restart0"
            for _ in range(100):  # the new shard asked the gateway which sockets it holds
                st = ray.get(app.deployment.shards[0].stats.remote())
                if not st["unsynced_gateways"]:
                    break
                await asyncio.sleep(0.1)
            assert st["unsynced_gateways"] == [] and st["subscribed_users"] == 1, st
            assert st["pid"] != pid  # a new incarnation
            await _send(app, alice["token"], bob["email"], 1, "later")
            assert (await recv_json(ws))["email"]["subject"] == "later0"
    finally:
        app.deployment.stop()
