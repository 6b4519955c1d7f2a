"""Search end to end: instant after 201, exact flags, isolation, restart, bad queries."""

from __future__ import annotations

import asyncio

import pytest
import ray
from conftest import start_app


@pytest.fixture(scope="module")
def sapp(ray_cluster, tmp_path_factory):
    a = start_app(tmp_path_factory.mktemp("search"), mailbox={"index_commit_every_s": 0.5})
    yield a
    a.deployment.stop()


async def send(app, token, to, subject, body, **extra):
    async with app.client(token) as c:
        r = await c.post("/v1/send", json={"subject": subject, "recipients": [to], "body": body, **extra})
        assert r.status_code == 201, r.text
        return r.json()


async def search(app, token, **params):
    async with app.client(token) as c:
        r = await c.get("/v1/search", params=params)
        assert r.status_code == 200, r.text
        return r.json()


def subjects(result):
    return [e["subject"] for e in result["emails"]]


async def test_findable_immediately_and_query_syntax(sapp):
    alice, bob, carol = sapp.user("alice" + sapp.user()["uid"][:5]), sapp.user(), sapp.user()
    await send(sapp, alice["token"], bob["email"], "Quarterly report", "The numbers for the third quarter are in.")
    assert subjects(await search(sapp, bob["token"], q="quarter")) == ["Quarterly report"]  # right after the 201
    await send(sapp, carol["token"], bob["email"], "Lunch", "Shall we try the new ramen place?",
               html="<p>Or the <b>taco</b> truck</p>")
    await send(sapp, alice["token"], bob["email"], "Re: report", "Third quarter numbers attached next week.")
    r = await search(sapp, bob["token"], q="third quarter")
    assert subjects(r) == ["Re: report", "Quarterly report"] and r["total"] == 2  # newest first
    assert subjects(await search(sapp, bob["token"], q='"the third quarter"')) == ["Quarterly report"]
    assert subjects(await search(sapp, bob["token"], q=f"from:{alice['email'].split('@')[0]}"))[0] == "Re: report"
    assert subjects(await search(sapp, bob["token"], q="taco")) == ["Lunch"]  # the text of the HTML part
    assert subjects(await search(sapp, bob["token"], q="subject:lunch")) == ["Lunch"]
    assert subjects(await search(sapp, bob["token"], q="quarter -attached")) == ["Quarterly report"]
    assert (await search(sapp, bob["token"], q="nonexistentword"))["total"] == 0
    page2 = await search(sapp, bob["token"], q="is:unread", page_size=2, page_number=2)
    assert page2["total"] == 3 and subjects(page2) == ["Quarterly report"]
    past = await search(sapp, bob["token"], q="is:unread", page_size=2, page_number=5)
    assert past["emails"] == [] and past["total"] == 3
    assert (await search(sapp, bob["token"], q="quarter", before="2000-01-01"))["total"] == 0
    assert (await search(sapp, bob["token"], q="quarter", after="2000-01-01"))["total"] == 2


async def test_flags_moves_deletes_are_exact_at_once(sapp):
    alice, bob = sapp.user(), sapp.user()
    for i in range(3):
        await send(sapp, alice["token"], bob["email"], f"invoice {i}", "please pay the invoice")
    ids = [e["id"] for e in (await search(sapp, bob["token"], q="invoice"))["emails"]]
    async with sapp.client(bob["token"]) as c:
        await c.patch(f"/v1/emails/{ids[0]}", json={"unread": False})
        await c.patch(f"/v1/emails/{ids[1]}", json={"folder": "archive"})
        await c.delete(f"/v1/emails/{ids[2]}")
    assert (await search(sapp, bob["token"], q="invoice"))["total"] == 2
    assert [e["id"] for e in (await search(sapp, bob["token"], q="invoice is:unread"))["emails"]] == [ids[1]]
    assert [e["id"] for e in (await search(sapp, bob["token"], q="invoice in:archive"))["emails"]] == [ids[1]]
    assert [e["id"] for e in (await search(sapp, bob["token"], q="invoice", folder="inbox"))["emails"]] == [ids[0]]
    assert (await search(sapp, bob["token"], q="invoice", unread="false"))["total"] == 1
    await asyncio.sleep(1.2)  # after the index commits, the same answers
    assert (await search(sapp, bob["token"], q="invoice"))["total"] == 2
    assert [e["id"] for e in (await search(sapp, bob["token"], q="invoice is:unread"))["emails"]] == [ids[1]]


async def test_has_attachment_and_filename(sapp):
    alice, bob = sapp.user(), sapp.user()
    async with sapp.client(alice["token"]) as c:
        a = (await c.post("/v1/attachments", content=b"x" * 100,
                          headers={"Content-Type": "text/plain", "X-Filename": "budget-2027.xlsx"})).json()
    await send(sapp, alice["token"], bob["email"], "with file", "see attached", attachments=[a["id"]])
    await send(sapp, alice["token"], bob["email"], "without file", "see below")
    assert subjects(await search(sapp, bob["token"], q="see has:attachment")) == ["with file"]
    assert subjects(await search(sapp, bob["token"], q="see", has_attachment="false")) == ["without file"]
    assert subjects(await search(sapp, bob["token"], q="filename:budget")) == ["with file"]
    assert subjects(await search(sapp, bob["token"], q="has:attachment")) == ["with file"]


async def test_isolation(sapp):
    alice, bob, mallory = sapp.user(), sapp.user(), sapp.user()
    await send(sapp, alice["token"], bob["email"], "secret merger", "project kingfisher is on")
    for q in ("kingfisher", "merger", '"project kingfisher"', "kingfisher OR x", f"to:{bob['email']}"):
        r = await search(sapp, mallory["token"], q=q)
        assert r["total"] == 0 and r["emails"] == []
    assert (await search(sapp, bob["token"], q="kingfisher"))["total"] == 1


@pytest.mark.parametrize(
    "params",
    [{"q": '"unbalanced'}, {"q": "foo:bar"}, {"q": "a(b"}, {"q": "x^2"}, {"q": "w " * 300},
     {"q": "before:yesterday"}, {"after": "31/12/2026"}, {"unread": "maybe"}, {"folder": "secret"},
     {"q": "is:starred"}],
)
async def test_bad_queries_are_400(sapp, params):
    bob = sapp.user()
    async with sapp.client(bob["token"]) as c:
        r = await c.get("/v1/search", params=params)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_query" and r.json()["error"]["message"]


async def test_survives_shard_restart_and_reindex(sapp):
    alice, bob = sapp.user(), sapp.user()
    for i in range(5):
        await send(sapp, alice["token"], bob["email"], f"pelican {i}", "the pelican brief")
    # Kill both shards right away: the last documents were never committed to the index.
    for shard in sapp.deployment.shards:
        ray.kill(shard, no_restart=False)
    for _ in range(100):
        try:
            r = await search(sapp, bob["token"], q="pelican")
            break
        except AssertionError:
            await asyncio.sleep(0.2)
    assert r["total"] == 5
    results = ray.get([s.reindex.remote() for s in sapp.deployment.shards])
    assert sum(x["messages"] for x in results) >= 10
    assert (await search(sapp, bob["token"], q="brief"))["total"] == 5


async def test_reindex_command(sapp, ray_cluster, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    alice, bob = sapp.user(), sapp.user()
    await send(sapp, alice["token"], bob["email"], "albatross", "a rare bird")
    cfg = tmp_path / "ns.toml"
    cfg.write_text(f'[cluster]\nnamespace = "{sapp.config.cluster.namespace}"\nshards = {sapp.config.cluster.shards}\n')
    out = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "reindex", "--config", str(cfg), "--address", ray_cluster,
         "--data-dir", str(sapp.config.data_path)],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert len(summary["shards"]) == sapp.config.cluster.shards and summary["messages"] >= 2
    assert subjects(await search(sapp, bob["token"], q="bird")) == ["albatross"]


async def test_exact_under_concurrent_writes(sapp):
    alice, bob = sapp.user(), sapp.user()

    async def one(i):
        r = await send(sapp, alice["token"], bob["email"], f"heron {i}", "a grey heron by the river")
        return r

    await asyncio.gather(*(one(i) for i in range(30)))
    ids = [e["id"] for e in (await search(sapp, bob["token"], q="heron", page_size=100))["emails"]]
    assert len(ids) == 30

    async def change(i, eid):
        async with sapp.client(bob["token"]) as c:
            if i % 3 == 0:
                await c.delete(f"/v1/emails/{eid}")
            elif i % 3 == 1:
                await c.patch(f"/v1/emails/{eid}", json={"unread": False})

    async def searches():  # searching while the writes land must never error or overcount
        for _ in range(10):
            r = await search(sapp, bob["token"], q="heron", page_size=100)
            assert r["total"] <= 30 and len(r["emails"]) == r["total"]

    await asyncio.gather(searches(), *(change(i, e) for i, e in enumerate(ids)))
    assert (await search(sapp, bob["token"], q="heron"))["total"] == 20
    assert (await search(sapp, bob["token"], q="heron is:unread"))["total"] == 10
    assert (await search(sapp, bob["token"], q="heron is:read"))["total"] == 10
    await asyncio.sleep(1.2)  # and the same once the index has committed
    assert (await search(sapp, bob["token"], q="heron"))["total"] == 20
    assert (await search(sapp, bob["token"], q="heron is:unread"))["total"] == 10
