"""End to end: two users, send, live push, list with paging, raw, flags, moves, delete."""

from __future__ import annotations

import asyncio
import email
from email import policy

from helpers import recv_json


async def test_send_push_list_raw(app):
    alice, bob = app.user("alice" + app.user()["uid"][:6]), app.user()
    async with app.ws(bob["token"]) as ws, app.client(alice["token"]) as c:
        hello = await recv_json(ws)
        assert hello["type"] == "hello" and hello["cursor"] == 0
        r = await c.post("/v1/send", json={"subject": "Lunch? café", "recipients": [bob["email"]],
                                            "body": "Noon at the usual place.\nCheers", "html": "<p>Noon</p>"})
        assert r.status_code == 201, r.text
        sent = r.json()
        assert sent["status"] == "delivered" and sent["message_id"].startswith("<")
        push = await recv_json(ws)
        assert push["type"] == "email.new" and push["cursor"] == 1
        summary = push["email"]
        assert summary["subject"] == "Lunch? café"
        assert summary["from"]["email"] == alice["email"]
        assert summary["to"] == [{"name": "", "email": bob["email"]}]
        assert summary["unread"] is True and summary["folder"] == "inbox"
        assert summary["snippet"].startswith("Noon at the usual place.")
        assert summary["message_id"] == sent["message_id"]

    async with app.client(bob["token"]) as c:
        page = (await c.get("/v1/emails")).json()
        assert page["total"] == 1 and [e["id"] for e in page["emails"]] == [summary["id"]]
        full = (await c.get(f"/v1/emails/{summary['id']}")).json()
        assert full["body"].strip() == "Noon at the usual place.\nCheers"
        assert full["html"].strip() == "<p>Noon</p>"
        raw = await c.get(f"/v1/emails/{summary['id']}/raw")
        assert raw.headers["content-type"].startswith("message/rfc822")
        msg = email.message_from_bytes(raw.content, policy=policy.default)
        assert msg["Subject"] == "Lunch? café"
        assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n").strip() == "Noon at the usual place.\nCheers"
        assert msg["Message-ID"] == sent["message_id"]
        assert alice["email"] in msg["From"]
    async with app.client(alice["token"]) as c:
        sent_page = (await c.get("/v1/emails", params={"folder": "sent"})).json()
        assert sent_page["total"] == 1 and sent_page["emails"][0]["id"] == sent["id"]
        assert sent_page["emails"][0]["unread"] is False


async def test_paging_totals_newest_first(app):
    alice, bob = app.user(), app.user()
    async with app.client(alice["token"]) as c:
        for i in range(7):
            r = await c.post("/v1/send", json={"subject": f"n{i}", "recipients": [bob["email"]], "body": "x"})
            assert r.status_code == 201
    async with app.client(bob["token"]) as c:
        p1 = (await c.get("/v1/emails", params={"page_size": 3})).json()
        p3 = (await c.get("/v1/emails", params={"page_size": 3, "page_number": 3})).json()
        p4 = (await c.get("/v1/emails", params={"page_size": 3, "page_number": 4})).json()
    assert [e["subject"] for e in p1["emails"]] == ["n6", "n5", "n4"]
    assert [e["subject"] for e in p3["emails"]] == ["n0"]
    assert p4["emails"] == [] and p1["total"] == p3["total"] == p4["total"] == 7


async def test_flags_moves_and_delete_push_events(app):
    alice, bob = app.user(), app.user()
    async with app.client(alice["token"]) as c:
        await c.post("/v1/send", json={"subject": "flags", "recipients": [bob["email"]], "body": "b"})
    async with app.ws(bob["token"], since=0) as ws, app.client(bob["token"]) as c:
        await recv_json(ws)  # hello
        new = await recv_json(ws)
        eid = new["email"]["id"]
        r = await c.patch(f"/v1/emails/{eid}", json={"unread": False})
        assert r.status_code == 200 and r.json()["unread"] is False
        ev = await recv_json(ws)
        assert ev["type"] == "email.updated" and ev["email"]["unread"] is False and ev["cursor"] == 2
        r = await c.patch(f"/v1/emails/{eid}", json={"folder": "archive"})
        ev = await recv_json(ws)
        assert ev["type"] == "email.updated" and ev["email"]["folder"] == "archive"
        assert (await c.get("/v1/emails")).json()["total"] == 0
        assert (await c.get("/v1/emails", params={"folder": "archive"})).json()["total"] == 1
        r = await c.delete(f"/v1/emails/{eid}")
        assert r.status_code == 204
        ev = await recv_json(ws)
        assert ev == {"type": "email.deleted", "cursor": 4, "ts": ev["ts"], "email_id": eid}
        assert (await c.get(f"/v1/emails/{eid}")).status_code == 404
        events = (await c.get("/v1/events", params={"since": 1})).json()
        assert [e["type"] for e in events["events"]] == ["email.updated", "email.updated", "email.deleted"]
        assert events["cursor"] == 4 and events["more"] is False


async def test_several_tabs_all_get_the_push(app):
    alice, bob = app.user(), app.user()
    async with app.ws(bob["token"]) as t1, app.ws(bob["token"]) as t2, app.ws(bob["token"]) as t3:
        for t in (t1, t2, t3):
            await recv_json(t)
        async with app.client(alice["token"]) as c:
            await c.post("/v1/send", json={"subject": "tabs", "recipients": [bob["email"]], "body": "b"})
        got = await asyncio.gather(*(recv_json(t) for t in (t1, t2, t3)))
        assert {g["email"]["subject"] for g in got} == {"tabs"}


async def test_send_to_self_cc_and_bcc(app):
    alice, bob, carol, dave = app.user(), app.user(), app.user(), app.user()
    async with app.client(alice["token"]) as c:
        r = await c.post("/v1/send", json={"subject": "multi", "recipients": [bob["email"], alice["email"]],
                                            "cc": [f"Carol <{carol['email']}>"], "bcc": [dave["email"]], "body": "hi"})
        assert r.status_code == 201
        inbox = (await c.get("/v1/emails")).json()
        assert inbox["total"] == 1  # a copy to herself, besides Sent
        sent = (await c.get(f"/v1/emails/{r.json()['id']}")).json()
        assert [a["email"] for a in sent["bcc"]] == [dave["email"]]
    async with app.client(dave["token"]) as c:
        page = (await c.get("/v1/emails")).json()
        assert page["total"] == 1
        raw = (await c.get(f"/v1/emails/{page['emails'][0]['id']}/raw")).content
        assert b"Bcc" not in raw and dave["email"].encode() not in raw
    async with app.client(carol["token"]) as c:
        page = (await c.get("/v1/emails")).json()
        assert page["emails"][0]["cc"] == [{"name": "Carol", "email": carol["email"]}]


async def test_new_user_works_without_restart(app):
    alice = app.user()
    bob = app.user()  # created after the deployment started, through the shared directory
    async with app.client(alice["token"]) as c:
        assert (await c.post("/v1/send", json={"recipients": [bob["email"]], "body": "hi"})).status_code == 201


async def test_health_docs_metrics(app):
    async with app.client() as c:
        h = await c.get("/healthz")
        assert h.status_code == 200 and h.json()["status"] == "ok"
        assert h.headers["x-raymail-gateway"].startswith("gateway-")
        spec = (await c.get("/openapi.json")).json()
        assert "/v1/send" in spec["paths"] and spec["openapi"].startswith("3.")
        assert "/v1/emails" in (await c.get("/docs")).text
        m = await c.get("/metrics")
        assert m.status_code == 200 and "raymail_messages_accepted_total" in m.text


async def test_idempotency_key_makes_a_retry_safe(app):
    alice, bob = app.user(), app.user()
    body = {"subject": "once", "recipients": [bob["email"]], "body": "only once"}
    async with app.client(alice["token"]) as c:
        r1 = await c.post("/v1/send", json=body, headers={"Idempotency-Key": "order-42"})
        r2 = await c.post("/v1/send", json=body, headers={"Idempotency-Key": "order-42"})
        assert r1.status_code == r2.status_code == 201
        assert r1.json()["id"] == r2.json()["id"] and r1.json()["message_id"] == r2.json()["message_id"]
        r3 = await c.post("/v1/send", json=body, headers={"Idempotency-Key": "order-43"})
        assert r3.json()["id"] != r1.json()["id"]
        assert (await c.get("/v1/emails", params={"folder": "sent"})).json()["total"] == 2
        bad = await c.post("/v1/send", json=body, headers={"Idempotency-Key": "x" * 200})
        assert bad.status_code == 400
    async with app.client(bob["token"]) as c:
        assert (await c.get("/v1/emails")).json()["total"] == 2
