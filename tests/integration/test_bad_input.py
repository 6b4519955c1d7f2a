"""Bad input gets a clear error, and nothing accepted before it changes."""

from __future__ import annotations

import pytest
import websockets
from helpers import recv_json


@pytest.fixture
async def pair(app):
    alice, bob = app.user(), app.user()
    async with app.client(alice["token"]) as c:
        r = await c.post("/v1/send", json={"subject": "keep me", "recipients": [bob["email"]], "body": "x"})
        assert r.status_code == 201
    return alice, bob


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"subject": "a\r\nBcc: evil@x.test", "recipients": ["{bob}"]}, 422, "invalid_header"),
        ({"subject": "a\nb", "recipients": ["{bob}"]}, 422, "invalid_header"),
        ({"subject": "x", "recipients": []}, 422, "no_recipients"),
        ({"subject": "x"}, 422, "no_recipients"),
        ({"recipients": ["not-an-address"]}, 422, "invalid_address"),
        ({"recipients": ["{bob}"], "body": 12}, 422, "invalid_field"),
        ({"recipients": ["{bob}"], "colour": "red"}, 422, "unknown_field"),
        ({"recipients": ["{bob}"], "category": "spam"}, 422, "invalid_field"),
        ({"recipients": ["nobody-here@example.test"]}, 422, "unknown_recipient"),
        ({"recipients": ["someone@elsewhere.test"]}, 422, "relay_not_enabled"),
        ({"recipients": ["{bob}"], "attachments": ["nope"]}, 422, "unknown_attachment"),
        ({"recipients": ["{bob}"], "uid": "00000000-0000-0000-0000-000000000000"}, 403, "forbidden"),
        ([1, 2], 400, "invalid_json"),
    ],
)
async def test_send_rejects(app, pair, body, status, code):
    alice, bob = pair
    if isinstance(body, dict):
        body = {k: ([x.format(bob=bob["email"]) for x in v] if isinstance(v, list) else v) for k, v in body.items()}
    async with app.client(alice["token"]) as c:
        r = await c.post("/v1/send", json=body)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["code"] == code and err["message"]
        if code == "unknown_recipient":
            assert "nobody-here@example.test" in err["message"]
    await _unchanged(app, alice, bob)


async def _unchanged(app, alice, bob):
    async with app.client(bob["token"]) as c:
        page = (await c.get("/v1/emails")).json()
        assert page["total"] == 1 and page["emails"][0]["subject"] == "keep me"
    async with app.client(alice["token"]) as c:
        assert (await c.get("/v1/emails", params={"folder": "sent"})).json()["total"] == 1


async def test_malformed_json(app, pair):
    alice, bob = pair
    async with app.client(alice["token"]) as c:
        r = await c.post("/v1/send", content=b'{"recipients": [', headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    await _unchanged(app, alice, bob)


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer rm_wrong", "Basic dXNlcjpwYXNz"])
async def test_missing_or_invalid_token(app, header):
    headers = {"Authorization": header} if header else {}
    async with app.client() as c:
        for method, path in [("POST", "/v1/send"), ("GET", "/v1/emails"), ("GET", "/v1/emails/x"),
                             ("GET", "/v1/events"), ("PATCH", "/v1/emails/x"), ("DELETE", "/v1/emails/x")]:
            r = await c.request(method, path, headers=headers, json={})
            assert r.status_code == 401, (method, path)
            assert r.json()["error"]["code"] == "unauthorized"


async def test_other_users_mail_is_not_found(app, pair):
    alice, bob = pair
    mallory = app.user()
    async with app.client(bob["token"]) as c:
        eid = (await c.get("/v1/emails")).json()["emails"][0]["id"]
    async with app.client(mallory["token"]) as c:
        assert (await c.get(f"/v1/emails/{eid}")).status_code == 404
        assert (await c.get(f"/v1/emails/{eid}/raw")).status_code == 404
        assert (await c.patch(f"/v1/emails/{eid}", json={"unread": False})).status_code == 404
        assert (await c.delete(f"/v1/emails/{eid}")).status_code == 404
        assert (await c.get("/v1/emails")).json()["total"] == 0
    async with app.client(bob["token"]) as c:
        assert (await c.get(f"/v1/emails/{eid}")).json()["unread"] is True
    await _unchanged(app, alice, bob)


async def test_oversized_message_413(ray_cluster, tmp_path):
    from conftest import start_app

    small = start_app(tmp_path, limits={"max_message_bytes": 2000})
    try:
        alice, bob = small.user(), small.user()
        async with small.client(alice["token"]) as c:
            r = await c.post("/v1/send", json={"recipients": [bob["email"]], "body": "x" * 5000})
            assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
            huge = b'{"recipients": ["a@b.test"], "body": "' + b"y" * 10_000 + b'"}'
            r = await c.post("/v1/send", content=huge, headers={"content-type": "application/json"})
            assert r.status_code == 413
            r = await c.post("/v1/send", json={"recipients": [bob["email"]], "body": "fits"})
            assert r.status_code == 201
    finally:
        small.deployment.stop()


async def test_rate_limit_429_with_retry_after(ray_cluster, tmp_path):
    from conftest import start_app

    slow = start_app(tmp_path, limits={"send_rate_per_s": 0.5, "send_burst": 3})
    try:
        alice, bob = slow.user(), slow.user()
        async with slow.client(alice["token"]) as c:
            codes = [(await c.post("/v1/send", json={"recipients": [bob["email"]], "body": "x"})) for _ in range(5)]
            assert [r.status_code for r in codes] == [201, 201, 201, 429, 429]
            assert int(codes[3].headers["retry-after"]) >= 1
            assert codes[3].json()["error"]["code"] == "rate_limited"
        async with slow.client(bob["token"]) as c:  # another user is not limited by alice
            assert (await c.post("/v1/send", json={"recipients": [alice["email"]], "body": "x"})).status_code == 201
            assert (await c.get("/v1/emails")).json()["total"] == 3
    finally:
        slow.deployment.stop()


@pytest.mark.parametrize(
    "params, status",
    [({"page_size": 201}, 422), ({"page_size": 0}, 422), ({"page_number": 0}, 422),
     ({"page_size": "ten"}, 400), ({"folder": "secret"}, 422)],
)
async def test_paging_and_folder_validation(app, pair, params, status):
    alice, bob = pair
    async with app.client(bob["token"]) as c:
        r = await c.get("/v1/emails", params=params)
        assert r.status_code == status and r.json()["error"]["code"] == "invalid_query"


@pytest.mark.parametrize(
    "body, status",
    [({"unread": "no"}, 422), ({"folder": "nowhere"}, 422), ({}, 422), ({"flagged": True}, 422), ([], 400)],
)
async def test_patch_validation(app, pair, body, status):
    alice, bob = pair
    async with app.client(bob["token"]) as c:
        eid = (await c.get("/v1/emails")).json()["emails"][0]["id"]
        r = await c.patch(f"/v1/emails/{eid}", json=body)
        assert r.status_code == status
        assert (await c.get(f"/v1/emails/{eid}")).json()["folder"] == "inbox"


async def test_events_cursor_validation(app, pair):
    alice, bob = pair
    async with app.client(bob["token"]) as c:
        assert (await c.get("/v1/events", params={"since": "abc"})).status_code == 400
        assert (await c.get("/v1/events", params={"since": -1})).status_code == 400
        r = (await c.get("/v1/events", params={"since": 0})).json()
        assert r["cursor"] == 1 and r["events"][0]["type"] == "email.new"


async def test_websocket_refuses_bad_token_and_foreign_origin(app, pair):
    alice, bob = pair
    for headers in ({"Authorization": "Bearer rm_nope"}, {},
                    {"Authorization": f"Bearer {bob['token']}", "Origin": "https://evil.example"}):
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(app.ws_url, additional_headers=headers):
                pass
        assert info.value.response.status_code == 403
    # the browser form: token in the query, Origin of the gateway itself
    url = f"{app.ws_url}?token={bob['token']}"
    async with websockets.connect(url, origin=f"http://127.0.0.1:{app.port}") as ws:
        assert (await recv_json(ws))["type"] == "hello"
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(f"{app.ws_url}?token={bob['token']}&since=abc"):
            pass
