"""``WS /v1/connect``: live pushes of a user's mailbox events.

Protocol (server to client, JSON text frames, one envelope ``{"type", ...}``):
  ``{"type": "hello", "cursor": N, "gateway": NAME}`` first; then
  ``{"type": "email.new"|"email.updated"|"email.deleted", "cursor": N, "email": {...}}``;
  ``{"type": "resync", "cursor": N}`` when ``?since=`` is older than the events kept
  (reload the list, then continue from N).
The client may send ``{"type": "ping"}`` and gets ``{"type": "pong"}``. A client
that falls ``ws_queue_size`` pushes behind is closed with code 4008; it reconnects
with ``?since=<last cursor>`` and misses nothing.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import urlsplit

from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.services import Services
from raymail.errors import ApiError

log = logging.getLogger(__name__)

CLOSE_POLICY = 1008
_REPLAY_PAGE = 500


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Browsers always send Origin; a page of another site must not ride the user's token."""
    if origin is None:
        return True  # not a browser: the token alone decides
    if origin in allowed:
        return True
    parts = urlsplit(origin)
    return bool(host) and parts.netloc.lower() == (host or "").lower()


class Endpoint:
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    async def handle(self, ws: WebSocket) -> None:
        svc = self.svc
        from gateway.app import bearer_token, parse_cursor  # circular at import time

        token = bearer_token(ws.headers.get("authorization")) or ws.query_params.get("token")
        user = svc.user_for_token(token) if token else None
        if user is None or not origin_allowed(
            ws.headers.get("origin"), ws.headers.get("host"), svc.config.gateway.allowed_origins
        ):
            svc.metrics.error("ws_refused")
            await ws.close(code=CLOSE_POLICY)  # before accept: the handshake gets HTTP 403
            return
        try:
            since = parse_cursor(ws.query_params.get("since")) if "since" in ws.query_params else None
        except ApiError:
            await ws.close(code=CLOSE_POLICY)
            return

        await ws.accept()
        sub = svc.hub.subscribe(user.uid, ws.send_text, lambda code, reason: ws.close(code=code, reason=reason))
        svc.metrics.connections(svc.hub.connections)
        try:
            # From here the user's shard pushes this user's events to this gateway.
            cursor = await svc.router.read(user.uid, "subscribe", svc.name, svc.next_sub_seq())
            await ws.send_text(json.dumps({"type": "hello", "cursor": cursor, "gateway": svc.name}))
            last = cursor if since is None else await self._replay(ws, user.uid, since)
            svc.hub.resume(sub, last)
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                text = msg.get("text")
                if text and '"ping"' in text:
                    await ws.send_text('{"type":"pong"}')
        except (WebSocketDisconnect, RuntimeError, ConnectionError):
            pass
        except ApiError as exc:
            await _close_quietly(ws, 1011, exc.message[:120])
        finally:
            if svc.hub.unsubscribe(sub):
                svc.router.notify(user.uid, "unsubscribe", svc.name, svc.next_sub_seq())  # the last one here
            svc.metrics.connections(svc.hub.connections)

    async def _replay(self, ws: WebSocket, uid: str, since: int) -> int:
        """Send the events after ``since``; returns the cursor of the last one sent."""
        cursor = since
        while True:
            events, complete, latest = await self.svc.router.read(uid, "events_since", cursor, _REPLAY_PAGE)
            if not complete:
                await ws.send_text(json.dumps({"type": "resync", "cursor": latest}))
                return latest
            for ev in events:
                await ws.send_text(json.dumps(ev, ensure_ascii=False))
                cursor = ev["cursor"]
            if cursor >= latest or not events:
                return cursor


async def _close_quietly(ws: WebSocket, code: int, reason: str) -> None:
    try:
        await ws.close(code=code, reason=reason)
    except Exception:  # noqa: BLE001 - the peer may be gone already
        pass
