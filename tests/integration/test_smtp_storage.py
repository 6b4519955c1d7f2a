"""The MX answers 250 only once the message is stored: an object store that is
down gets 451 (the sending server retries), nothing half-stored shows up, and the
retry after the store is back is delivered once."""

from __future__ import annotations

import asyncio
import smtplib


async def test_storage_outage_answers_451_then_the_retry_is_delivered(ray_cluster, tmp_path):
    from conftest import MotoServer, start_app

    server = MotoServer()
    url = server.bucket("mx-outage")
    app = start_app(tmp_path, storage={"url": url, "options": server.options})
    try:
        bob = app.user()
        raw = (f"From: Zed <zed@elsewhere.test>\r\nTo: {bob['email']}\r\nSubject: while storage is down\r\n"
               "Message-ID: <outage-1@elsewhere.test>\r\n\r\nplease retry me\r\n").encode()

        def attempt() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", app.deployment.smtp_port, timeout=60) as s:
                s.ehlo("client.test")
                s.mail("zed@elsewhere.test")
                assert s.rcpt(bob["email"])[0] == 250
                return s.data(raw)

        server.stop()  # the object store goes away
        code, text = await asyncio.to_thread(attempt)
        assert code == 451 and b"4.3.0" in text, (code, text)
        server.restart()  # back (empty: moto keeps objects in memory)
        server.bucket("mx-outage")
        async with app.client(bob["token"]) as c:
            assert (await c.get("/v1/emails")).json()["total"] == 0  # nothing from the refused attempt
            code, _ = await asyncio.to_thread(attempt)  # what a sending server does after a 451
            assert code == 250
            page = (await c.get("/v1/emails")).json()
            assert page["total"] == 1 and page["emails"][0]["subject"] == "while storage is down"
            raw_back = (await c.get(f"/v1/emails/{page['emails'][0]['id']}/raw")).content
            assert raw_back.endswith(raw)
    finally:
        app.deployment.stop()
        server.stop()
