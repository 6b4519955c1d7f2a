"""Kill a mailbox shard at any moment: every acknowledged message is still there, once."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
import ray
import websockets
from conftest import start_app


async def _all_ids(app, token, folder):
    out = []
    async with app.client(token) as c:
        page = 1
        while True:
            r = (await c.get("/v1/emails", params={"folder": folder, "page_size": 200, "page_number": page})).json()
            out.extend(e["message_id"] for e in r["emails"])
            if page * 200 >= r["total"]:
                return out, r["total"]
            page += 1


async def test_kill_shard_mid_send_loses_and_duplicates_nothing(ray_cluster, tmp_path):
    # A small snapshot threshold so recovery goes through snapshot + log replay.
    app = start_app(tmp_path, mailbox={"snapshot_every_bytes": 20_000}, cluster={"shards": 2})
    try:
        senders = [app.user() for _ in range(4)]
        rcpts = [app.user() for _ in range(4)]
        accepted: list[tuple[int, str]] = []
        failed = 0

        async def one(i):
            nonlocal failed
            s, r = senders[i % 4], rcpts[i % 4]
            async with app.client(s["token"]) as c:
                try:
                    resp = await c.post("/v1/send", json={"subject": f"m{i}", "recipients": [r["email"]], "body": "x"})
                except Exception:  # noqa: BLE001 - a lost reply is not an acknowledgement
                    failed += 1
                    return
            if resp.status_code == 201:
                accepted.append((i % 4, resp.json()["message_id"]))
            else:
                assert resp.status_code == 503, resp.text
                failed += 1

        kills = []

        async def killer():
            for name, after in (("shard-0", 100), ("shard-1", 200)):
                while len(accepted) < after:
                    await asyncio.sleep(0.005)
                ray.kill(ray.get_actor(name, namespace=app.config.cluster.namespace), no_restart=False)
                kills.append(len(accepted))

        sem = asyncio.Semaphore(16)

        async def bounded(i):
            async with sem:
                await one(i)

        await asyncio.gather(killer(), *(bounded(i) for i in range(400)))
        assert len(kills) == 2 and len(accepted) >= 300, (kills, len(accepted), failed)

        for k in range(4):
            mine = {mid for who, mid in accepted if who == k}
            inbox, total = await _all_ids(app, rcpts[k]["token"], "inbox")
            sent, _ = await _all_ids(app, senders[k]["token"], "sent")
            assert mine <= set(inbox), "an acknowledged message is missing from the inbox"
            assert mine <= set(sent), "an acknowledged message is missing from Sent"
            assert not [m for m, n in Counter(inbox).items() if n > 1], "duplicated in the inbox"
            assert not [m for m, n in Counter(sent).items() if n > 1], "duplicated in Sent"
            assert total == len(inbox)
        stats = ray.get([s.stats.remote() for s in app.deployment.shards])
        # Both shards really restarted and recovered their state from disk.
        assert all(st["recovered"]["snapshot"] or st["recovered"]["replayed_ops"] for st in stats), stats
        # Writes went over the same-host link; after the restarts the gateway found the
        # new incarnations' links again (their counters start from zero).
        # (the gateway tries a lost link again after a second: keep sending until it has)
        for i in range(200):
            async with app.client(senders[i % 4]["token"]) as c:
                r = await c.post("/v1/send", json={"subject": "after", "recipients": [rcpts[i % 4]["email"]],
                                                   "body": "x"})
                assert r.status_code == 201, r.text
            shard_stats = ray.get([s.stats.remote() for s in app.deployment.shards])
            if all(st["link_calls"] > 0 for st in shard_stats):
                break
            await asyncio.sleep(0.1)
        router = ray.get(app.deployment.gateways[0].stats.remote())["router"]
        assert router["link_calls"] > 0, router
        assert all(st["link_calls"] > 0 for st in shard_stats), shard_stats
    finally:
        app.deployment.stop()


async def test_restart_of_whole_deployment_keeps_state(ray_cluster, tmp_path):
    app = start_app(tmp_path, mailbox={"snapshot_every_bytes": 5_000})
    alice, bob = app.user(), app.user()
    async with app.client(alice["token"]) as c:
        for i in range(30):
            assert (await c.post("/v1/send", json={"subject": f"r{i}", "recipients": [bob["email"]], "body": "x"})).status_code == 201
    async with app.client(bob["token"]) as c:
        first = (await c.get("/v1/emails", params={"page_size": 5})).json()["emails"][0]
        await c.patch(f"/v1/emails/{first['id']}", json={"unread": False, "folder": "archive"})
        before = (await c.get("/v1/emails", params={"page_size": 200})).json()
        cursor = (await c.get("/v1/events")).json()["latest"]
    app.deployment.stop()

    from cluster.deploy import Deployment

    again = Deployment(app.config).start()
    app.deployment = again
    try:
        async with app.client(bob["token"]) as c:
            after = (await c.get("/v1/emails", params={"page_size": 200})).json()
            assert after == before
            archived = (await c.get("/v1/emails", params={"folder": "archive"})).json()["emails"]
            assert archived[0]["id"] == first["id"] and archived[0]["unread"] is False
            assert (await c.get("/v1/events", params={"since": cursor - 1})).json()["events"][0]["cursor"] == cursor
    finally:
        again.stop()


async def test_killed_gateway_comes_back_and_clients_catch_up(ray_cluster, tmp_path):
    import httpx
    from helpers import recv_json

    app = start_app(tmp_path)
    try:
        alice, bob = app.user(), app.user()
        async with app.ws(bob["token"]) as ws:
            hello = await recv_json(ws)
            ray.kill(app.deployment.gateways[0], no_restart=False)
            with pytest.raises(websockets.ConnectionClosed):  # the socket dies with the process
                await asyncio.wait_for(ws.recv(), 10)
        for _ in range(300):  # Ray restarts the actor, which serves again by itself
            try:
                async with httpx.AsyncClient() as c:
                    if (await c.get(f"{app.base_url}/healthz", timeout=1)).status_code == 200:
                        break
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the gateway did not come back")
        async with app.client(alice["token"]) as c:
            assert (await c.post("/v1/send", json={"recipients": [bob["email"]], "body": "after"})).status_code == 201
        async with app.ws(bob["token"], since=hello["cursor"]) as ws:
            await recv_json(ws)
            ev = await recv_json(ws)
            assert ev["type"] == "email.new" and ev["cursor"] == hello["cursor"] + 1
    finally:
        app.deployment.stop()


async def test_reads_go_over_the_link_and_through_ray_while_a_shard_restarts(ray_cluster, tmp_path):
    from raymail import codec

    app = start_app(tmp_path, cluster={"shards": 1})
    try:
        alice, bob = app.user(), app.user()
        async with app.client(alice["token"]) as c:
            up = (await c.post("/v1/attachments", content=b"%PDF-1.4 report",
                               headers={"Content-Type": "application/pdf", "X-Filename": "report.pdf"})).json()
            for i in range(3):
                r = await c.post("/v1/send", json={"subject": f"quarterly {i}", "recipients": [bob["email"]],
                                                   "body": "numbers", "attachments": [up["id"]]})
                assert r.status_code == 201, r.text
        shard = app.deployment.shards[0]

        async def read_all() -> dict:
            async with app.client(bob["token"]) as c:
                inbox = (await c.get("/v1/emails", params={"page_size": 50})).json()
                one = (await c.get(f"/v1/emails/{inbox['emails'][0]['id']}")).json()
                found = (await c.get("/v1/search", params={"q": "quarterly"})).json()
                events = (await c.get("/v1/events", params={"since": 0})).json()
                att = one["attachments"][0]["id"]
                body = (await c.get(f"/v1/attachments/{att}")).content
            return {"inbox": inbox, "one": one, "found": found, "events": events, "body": body}

        def router() -> dict:
            return ray.get(app.deployment.gateways[0].stats.remote())["router"]

        before = router()
        first = await read_all()
        assert first["inbox"]["total"] == 3 and first["found"]["total"] == 3 and first["body"] == b"%PDF-1.4 report"
        after = router()
        assert after["read_link_calls"] - before["read_link_calls"] >= 5, after
        assert after["read_ray_calls"] == before["read_ray_calls"], after
        # What came over the link is what the shard's own methods answer through Ray.
        listed, total = ray.get(shard.list_emails.remote(bob["uid"], "inbox", 1, 50))
        assert first["inbox"]["emails"] == listed and first["inbox"]["total"] == total
        # The read entry point serves reads only.
        with pytest.raises(ray.exceptions.RayTaskError, match="not a read"):
            ray.get(shard.read.remote(codec.encode(["blob_keys"])))

        ray.kill(shard, no_restart=False)
        # The lost link's reads go through Ray, which waits for the restarted shard.
        assert await read_all() == first
        assert router()["read_ray_calls"] > after["read_ray_calls"]
        for _ in range(100):  # the gateway looks for the new link after a second
            await asyncio.sleep(0.1)
            links = router()["read_link_calls"]
            if (await read_all()) == first and router()["read_link_calls"] > links:
                break
        else:
            pytest.fail("reads never went over the restarted shard's link")
    finally:
        app.deployment.stop()
