"""The HTTP API (DESIGN.md "HTTP API") as a Starlette application.

Handlers parse and authorise, then call plain logic (``raymail.validation``,
``raymail.compose``) and the shards; every error leaves as
``{"error": {"code", "message"}}`` with a fitting status.
"""

from __future__ import annotations

import asyncio
import hashlib
import html as htmllib
import json
import logging
import re
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute

from gateway import intake, openapi, websocket
from gateway.files import FilesApi
from gateway.services import Services
from raymail import addresses, compose, skeleton
from raymail import attachments as att
from raymail import search as search_mod
from raymail.errors import (
    ApiError,
    BadRequest,
    Gone,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    StorageError,
    Unauthorized,
    Unavailable,
    Unprocessable,
)
from raymail.ids import new_id
from raymail.model import FOLDERS, AttachmentRef, Delete, Deliver, EmailMeta, Update, User
from raymail.outbound import classify, suppression
from raymail.outbound import dkim as dkim_mod
from raymail.outbound.records import OutboundMessage
from raymail.validation import SendRequest, parse_paging, parse_send_request

log = logging.getLogger(__name__)

_JSON_OVERHEAD_BYTES = 64 * 1024
_EVENTS_PAGE = 500


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(svc: Services, request: Request) -> User:
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise Unauthorized("send 'Authorization: Bearer <token>'; tokens come from 'raymail user add'")
    user = svc.user_for_token(token)
    if user is None:
        raise Unauthorized("the token is not valid")
    return user


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The whole request body; 413 as soon as it is known to be over ``limit_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise PayloadTooLarge(f"the request body is over {limit_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise PayloadTooLarge(f"the request body is over {limit_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit_bytes: int) -> object:
    body = await read_body(request, limit_bytes)
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}", code="invalid_json") from None


def _duration(seconds: float) -> str:
    """``seconds`` for people: "24 h", "90 min", "30 s"."""
    if seconds >= 7200 and seconds % 3600 == 0:
        return f"{seconds / 3600:.0f} h"
    if seconds >= 120 and seconds % 60 == 0:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:g} s"


def _json(data: object, status: int = 200) -> Response:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body, status_code=status, media_type="application/json")


class Api:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        cfg = svc.config
        self.max_json_bytes = cfg.limits.max_message_bytes * 2 + _JSON_OVERHEAD_BYTES
        self.files = FilesApi(svc)

    # -- send ----------------------------------------------------------------
    async def send(self, request: Request) -> Response:
        started = time.perf_counter()
        svc = self.svc
        user = authenticate(svc, request)
        wait_s = svc.send_limiter.take(user.uid, time.monotonic())
        if wait_s > 0:
            raise RateLimited(f"sending too fast; retry in {wait_s:.1f} s", retry_after_s=wait_s)
        req = parse_send_request(await read_json(request, self.max_json_bytes), svc.config.limits, user.uid)
        files = await self._attachments(user, req)
        recipients, remote = self._resolve_recipients(req)
        key = request.headers.get("idempotency-key")
        if key is not None and not (0 < len(key) <= 128 and key.isprintable()):
            raise BadRequest("Idempotency-Key must be 1-128 printable characters", code="invalid_header")
        if remote:
            await check_suppressed(svc, user, remote)
        result = await self._deliver_local(user, req, recipients, files, key, remote)
        svc.metrics.accepted()
        svc.metrics.send_latency(time.perf_counter() - started)
        return _json(result, 201)

    async def _attachments(self, user: User, req: SendRequest) -> tuple[AttachmentRef, ...]:
        """The caller's uploads (or attachments of mail they received) named in the request."""
        if not req.attachments:
            return ()
        refs = await asyncio.gather(*(self.files.lookup(user, a) for a in req.attachments))
        missing = [a for a, r in zip(req.attachments, refs, strict=True) if r is None]
        if missing:
            raise Unprocessable(
                f"unknown attachment id {missing[0]!r}: upload it with POST /v1/attachments first "
                f"(an upload can be named for {_duration(self.svc.config.mailbox.upload_ttl_s)})",
                code="unknown_attachment",
            )
        total = sum(r.size for r in refs)
        limit = self.svc.config.limits.max_message_bytes
        if total > limit:
            raise PayloadTooLarge(f"the attachments add up to {total} bytes; a message is limited to {limit} bytes")
        return tuple(refs)

    def _resolve_recipients(self, req: SendRequest) -> tuple[list[User], list[str]]:
        """Local users and remote addresses; 422 for unknown local users, and for remote
        ones when no outbound pool is configured."""
        svc = self.svc
        out, unknown, remote = [], [], []
        for a in req.all_recipients:
            domain = addresses.domain_of(a.email)
            user = svc.user_for_email(a.email)
            if user is not None:
                out.append(user)
            elif svc.directory.is_local_domain(domain):
                unknown.append(a.email)
            else:
                remote.append(a.email)
        if unknown:
            raise Unprocessable(f"no such local user: {', '.join(unknown)}", code="unknown_recipient")
        if remote and svc.outbound is None:
            raise Unprocessable(
                f"delivery outside the local domains is not enabled on this server: {', '.join(remote)}",
                code="relay_not_enabled",
            )
        return out, list(dict.fromkeys(a.lower() for a in remote))

    async def _deliver_local(
        self, user: User, req: SendRequest, recipients: list[User], files: tuple[AttachmentRef, ...] = (),
        idempotency_key: str | None = None, remote: list[str] | None = None,
    ) -> dict:
        """Store and deliver. With an idempotency key, ids derive from it: a retried
        request (after a 503 or a lost reply) lands on the same mailbox entries,
        which the shards treat as already delivered."""
        svc = self.svc
        cfg = svc.config
        now = time.time()
        sender = addresses.parse_address({"email": user.email, "name": user.name})
        common = dict(sender=sender, to=req.to, cc=req.cc, bcc=req.bcc, subject=req.subject, body=req.body,
                      html=req.html, hostname=cfg.server.hostname, date=now, attachments=files)
        def stable(*parts: str) -> str | None:
            if idempotency_key is None:
                return None
            return hashlib.sha256("\x00".join((user.uid, idempotency_key, *parts)).encode()).hexdigest()[:32]

        mid = stable("message-id")
        delivered = compose.build(**common, message_id=f"<{mid}@{cfg.server.hostname}>" if mid else None)
        sent = compose.build(**common, message_id=delivered.message_id, include_bcc=True) if req.bcc else delivered
        # The limit counts the text and the attachments' own bytes (not their base64).
        total = len(sent.raw) + sum(f.size for f in files)
        if total > cfg.limits.max_message_bytes:
            raise PayloadTooLarge(f"the message is {total} bytes; the limit is {cfg.limits.max_message_bytes}")
        try:
            if sent is delivered:
                key = await svc.blob_writer.put(delivered.stored)
                keys = (key, key)
            else:
                keys = tuple(
                    await asyncio.gather(svc.blob_writer.put(delivered.stored), svc.blob_writer.put(sent.stored))
                )
        except StorageError as exc:
            log.error("blob write failed: %s", exc)
            raise Unavailable("message storage is unavailable; nothing was sent, retry later") from exc

        def meta(uid: str, folder: str, raw_key: str, size: int, unread: bool, with_bcc: bool) -> EmailMeta:
            return EmailMeta(
                id=stable(uid, folder) or new_id(), uid=uid, message_id=delivered.message_id, folder=folder,
                sender=sender,
                to=req.to, cc=req.cc, bcc=req.bcc if with_bcc else (), subject=req.subject, snippet=delivered.snippet,
                date=now, size=size, unread=unread, has_attachments=bool(files), blob=raw_key, attachments=files,
            )

        sent_meta = meta(user.uid, "sent", keys[1], sent.size, False, True)
        text = search_text(req.body, req.html)
        ops = [Deliver(user.uid, sent_meta, now, text)]
        seen = set()
        for r in recipients:
            if r.uid not in seen:
                seen.add(r.uid)
                ops.append(Deliver(r.uid, meta(r.uid, "inbox", keys[0], delivered.size, True, False), now, text))
        outbound = None
        if remote:
            outbound = await outbound_message(
                svc, user, delivered.raw, keys[0], delivered.message_id, remote, req.category, (),
                stable("outbound") or new_id(), now, delivered.segments, delivered.size)
        results = await svc.router.apply(ops)
        for res in results:
            if not res.ok:
                raise Unavailable(f"delivery failed: {res.message}")
        if outbound is not None:
            await svc.outbound.enqueue(outbound)  # type: ignore[union-attr]
        return {"id": sent_meta.id, "message_id": delivered.message_id,
                "status": "queued" if outbound is not None else "delivered"}

    # -- reading -------------------------------------------------------------
    async def list_emails(self, request: Request) -> Response:
        user = authenticate(self.svc, request)
        q = request.query_params
        folder = q.get("folder", "inbox")
        if folder not in FOLDERS:
            raise Unprocessable(f"folder must be one of {', '.join(sorted(FOLDERS))}", code="invalid_query")
        number, size = parse_paging(q.get("page_number"), q.get("page_size"), self.svc.config.limits)
        summaries, total = await self.svc.router.read(user.uid, "list_emails", folder, number, size)
        return _json({"emails": summaries, "page_number": number, "page_size": size, "total": total, "folder": folder})

    async def _meta(self, user: User, email_id: str) -> EmailMeta:
        if not email_id or len(email_id) > 64:
            raise NotFound("no such email")
        meta = await self.svc.router.read(user.uid, "get_email", email_id)
        if meta is None:
            raise NotFound("no such email")
        return meta

    async def _stored(self, meta: EmailMeta) -> bytes:
        """The stored form of the message: its source, or its skeleton."""
        try:
            return await asyncio.to_thread(self.svc.blobs.get, meta.blob)
        except StorageError as exc:
            log.error("email %s: %s", meta.id, exc)
            raise Unavailable(f"the message source could not be read from storage: {exc}") from exc

    async def _missing(self, refs: tuple[AttachmentRef, ...]) -> set[str]:
        blobs = self.svc.blobs
        found = await asyncio.gather(*(asyncio.to_thread(blobs.exists, r.blob) for r in refs))
        return {r.id for r, ok in zip(refs, found) if not ok}

    async def get_email(self, request: Request) -> Response:
        user = authenticate(self.svc, request)
        meta = await self._meta(user, request.path_params["id"])
        stored = await self._stored(meta)
        segments = skeleton.unpack(stored)
        parsed = await asyncio.to_thread(compose.parse, skeleton.text_view(segments) if segments else stored)
        missing = await self._missing(meta.attachments)
        out = meta.summary()
        out.update(
            body=parsed.text,
            html=parsed.html,
            bcc=[a.to_dict() for a in meta.bcc],
            headers=[[k, v] for k, v in parsed.headers],
            attachments=[{**r.to_dict(), "available": r.id not in missing} for r in meta.attachments]
            # A message received before every attachment got its own blob lists them as parsed.
            or [{**a, "filename": att.sanitize_filename(a["filename"])} for a in parsed.attachments],
        )
        return _json(out)

    async def get_raw(self, request: Request) -> Response:
        user = authenticate(self.svc, request)
        meta = await self._meta(user, request.path_params["id"])
        stored = await self._stored(meta)
        segments = skeleton.unpack(stored)
        if segments is None:
            return Response(stored, media_type="message/rfc822")
        if await self._missing(meta.attachments):
            raise Gone("an attachment of this message is missing from storage; GET /v1/emails/{id} still reads it",
                       code="content_missing")
        read = self.svc.blobs.read_range

        async def body():
            it = skeleton.iter_raw(segments, read)
            while True:
                chunk = await asyncio.to_thread(next, it, None)
                if chunk is None:
                    return
                yield chunk

        return StreamingResponse(body(), media_type="message/rfc822",
                                 headers={"Content-Length": str(skeleton.raw_size(segments))})

    async def import_message(self, request: Request) -> Response:
        """``POST /v1/import``: an RFC 5322 message into the caller's own mailbox."""
        user = authenticate(self.svc, request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "message/rfc822":
            raise Unprocessable("send the message as Content-Type: message/rfc822", code="invalid_content_type")
        folder = request.query_params.get("folder", "inbox")
        if folder not in FOLDERS:
            raise Unprocessable(f"folder must be one of {', '.join(sorted(FOLDERS))}", code="invalid_query")
        raw = await read_body(request, self.svc.config.limits.max_message_bytes)
        if not raw.strip():
            raise Unprocessable("the message is empty", code="empty_message")
        try:
            stored = await intake.store_raw(self.svc, raw)
        except StorageError as exc:
            raise Unavailable("message storage is unavailable; nothing was stored, retry later") from exc
        meta = intake.meta_for(stored, user.uid, folder, unread=folder == "inbox")
        text = search_text(stored.parsed.text, stored.parsed.html)
        (res,) = await self.svc.router.apply([Deliver(user.uid, meta, time.time(), text)])
        if not res.ok:
            raise Unavailable(f"the message could not be stored: {res.message}")
        return _json(meta.summary(), 201)

    async def upload_attachment(self, request: Request) -> Response:
        user = authenticate(self.svc, request)
        wait_s = self.svc.send_limiter.take(user.uid, time.monotonic())
        if wait_s > 0:
            raise RateLimited(f"uploading too fast; retry in {wait_s:.1f} s", retry_after_s=wait_s)
        return await self.files.upload(request, user)

    async def get_attachment(self, request: Request) -> Response:
        return await self.files.download(request, authenticate(self.svc, request))

    async def patch_email(self, request: Request) -> Response:
        user = authenticate(self.svc, request)
        email_id = request.path_params["id"]
        data = await read_json(request, 64 * 1024)
        if not isinstance(data, dict):
            raise BadRequest("the request body must be a JSON object", code="invalid_json")
        unknown = set(data) - {"unread", "folder"}
        if unknown:
            raise Unprocessable(f"unknown fields: {', '.join(sorted(unknown))}; allowed: unread, folder", code="unknown_field")
        unread, folder = data.get("unread"), data.get("folder")
        if unread is not None and not isinstance(unread, bool):
            raise Unprocessable("'unread' must be true or false", code="invalid_field")
        if folder is not None and folder not in FOLDERS:
            raise Unprocessable(f"'folder' must be one of {', '.join(sorted(FOLDERS))}", code="invalid_field")
        if unread is None and folder is None:
            raise Unprocessable("give 'unread' and/or 'folder'", code="invalid_field")
        if not email_id or len(email_id) > 64:
            raise NotFound("no such email")
        (res,) = await self.svc.router.apply([Update(user.uid, email_id, time.time(), unread=unread, folder=folder)])
        if not res.ok:
            raise NotFound("no such email") if res.error == "not_found" else Unprocessable(res.message)
        if res.event is not None:
            return _json(res.event.summary)
        return _json((await self._meta(user, email_id)).summary())

    async def delete_email(self, request: Request) -> Response:
        user = authenticate(self.svc, request)
        email_id = request.path_params["id"]
        if not email_id or len(email_id) > 64:
            raise NotFound("no such email")
        (res,) = await self.svc.router.apply([Delete(user.uid, email_id, time.time())])
        if not res.ok:
            raise NotFound("no such email")
        return Response(status_code=204)

    async def search(self, request: Request) -> Response:
        user = authenticate(self.svc, request)
        p = request.query_params
        number, size = parse_paging(p.get("page_number"), p.get("page_size"), self.svc.config.limits)
        try:
            query = search_mod.parse(p.get("q"), **{k: p.get(k) for k in
                                                    ("from", "to", "folder", "has_attachment", "unread", "after", "before")})
        except search_mod.QueryError as exc:
            raise BadRequest(str(exc), code="invalid_query") from None
        summaries, total = await self.svc.router.read(user.uid, "search", query, number, size)
        return _json({"emails": summaries, "page_number": number, "page_size": size, "total": total})

    async def events(self, request: Request) -> Response:
        user = authenticate(self.svc, request)
        since = parse_cursor(request.query_params.get("since"))
        events, complete, cursor = await self.svc.router.read(user.uid, "events_since", since, _EVENTS_PAGE)
        if not complete:
            raise Gone(
                f"cursor {since} is older than the events kept; reload with GET /v1/emails and continue from {cursor}",
                code="cursor_expired",
            )
        last = events[-1]["cursor"] if events else max(since, 0)
        return _json({"events": events, "cursor": last, "latest": cursor, "more": last < cursor})

    # -- operations ----------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        return _json({"status": "ok", "gateway": self.svc.name})

    async def metrics(self, request: Request) -> Response:
        token = self.svc.config.gateway.metrics_token
        client = request.client.host if request.client else ""
        if token:
            if bearer_token(request.headers.get("authorization")) != token:
                raise Unauthorized("send 'Authorization: Bearer <metrics_token>' from [gateway] metrics_token")
        elif client not in ("127.0.0.1", "::1"):
            raise Unauthorized("metrics are served to loopback only unless [gateway] metrics_token is set")
        self.svc.metrics.connections(self.svc.hub.connections)
        return Response(self.svc.metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi_json(self, request: Request) -> Response:
        return _json(openapi.SPEC)

    async def docs(self, request: Request) -> Response:
        return HTMLResponse(openapi.render_html())


_TAG_RE = re.compile(r"<[^>]*>")


def search_text(body: str | None, html: str | None) -> str:
    """The words of a message for the search index: the text part, and the HTML's text."""
    parts = [body or ""]
    if html:
        parts.append(htmllib.unescape(_TAG_RE.sub(" ", html)))
    return "\n".join(parts)[:200_000]


async def check_suppressed(svc: Services, user: User, remote: list[str]) -> None:
    """422 when a remote recipient hard-bounced earlier (the suppression list)."""
    hits = await svc.outbound.suppressed(user.uid, user.email, remote)  # type: ignore[union-attr]
    for address, why in hits:
        svc.events.record("suppressed", smtp_code=422, sender=user.email, recipient_domain=addresses.domain_of(address),
                          detail=f"refused at send: {why}")
    if hits:
        raise Unprocessable(suppression.refusal([a for a, _ in hits]), code="suppressed_recipient")


async def outbound_message(svc: Services, user: User, raw: bytes, blob: str, message_id: str, remote: list[str],
                           category: str | None, headers: tuple[tuple[str, str], ...], out_id: str,
                           now: float, segments: list | None = None, size: int = 0) -> OutboundMessage:
    """The spool record for the remote recipients: classified, and DKIM-signed when the
    sender's domain has a key. ``raw`` is the source, or with ``segments`` (a message
    whose attachments are stored apart) only its text view."""
    ob = svc.config.outbound
    cat = classify.category_of(category, headers, user.email, ob.sender_categories, ob.default_category)
    pool = classify.pool_for(cat, ob.pools)
    key = svc.dkim_key(addresses.domain_of(user.email))
    header = ""
    if key is not None:
        def sign() -> str:
            # The signature covers the bytes that leave: the full source, attachments included.
            full = raw if segments is None else b"".join(skeleton.iter_raw(segments, svc.blobs.read_range))
            return dkim_mod.signature_header(full, key)

        header = await asyncio.to_thread(sign)
    return OutboundMessage(id=out_id, message_id=message_id, sender_uid=user.uid, sender_email=user.email,
                           blob=blob, category=cat, pool=pool.name, recipients=tuple(remote), created_s=now,
                           size=size or len(raw), dkim_header=header)


def parse_cursor(value: str | None) -> int:
    if value in (None, ""):
        return 0
    try:
        cursor = int(value)
    except ValueError:
        raise BadRequest("'since' must be an integer cursor from an earlier event", code="invalid_query") from None
    if cursor < 0:
        raise BadRequest("'since' must not be negative", code="invalid_query")
    return cursor


def build_app(svc: Services):
    api = Api(svc)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        svc.metrics.error(exc.code)
        headers = {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(max(1, int(exc.retry_after_s + 0.999)))
        if isinstance(exc, PayloadTooLarge):
            # The rest of a body refused for its size is not read on: the connection
            # closes after the answer (a client sending more gets a reset; curl and
            # browsers read the answer first).
            headers["Connection"] = "close"
        return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        svc.metrics.error("internal")
        return JSONResponse({"error": {"code": "internal", "message": "internal error; see the server log"}}, 500)

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": {"code": "not_found", "message": f"no route {request.url.path}"}}, 404)

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": {"code": "method_not_allowed", "message": f"{request.method} is not allowed here"}}, 405)

    routes = [
        Route("/v1/send", api.send, methods=["POST"]),
        Route("/v1/emails", api.list_emails, methods=["GET"]),
        Route("/v1/emails/{id}", api.get_email, methods=["GET"]),
        Route("/v1/emails/{id}", api.patch_email, methods=["PATCH"]),
        Route("/v1/emails/{id}", api.delete_email, methods=["DELETE"]),
        Route("/v1/emails/{id}/raw", api.get_raw, methods=["GET"]),
        Route("/v1/events", api.events, methods=["GET"]),
        Route("/v1/search", api.search, methods=["GET"]),
        Route("/v1/import", api.import_message, methods=["POST"]),
        Route("/v1/attachments", api.upload_attachment, methods=["POST"]),
        Route("/v1/attachments/{id}", api.get_attachment, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/openapi.json", api.openapi_json, methods=["GET"]),
        Route("/docs", api.docs, methods=["GET"]),
        WebSocketRoute("/v1/connect", websocket.Endpoint(svc).handle),
    ]
    inner = Starlette(
        routes=routes,
        exception_handlers={ApiError: api_error, Exception: internal_error, 404: not_found, 405: method_not_allowed},
    )
    served_by = (b"x-raymail-gateway", svc.name.encode())

    async def app(scope, receive, send):
        # Say which gateway process answered: operators (and tests) can tell them apart.
        if scope["type"] != "http":
            return await inner(scope, receive, send)

        async def tagged_send(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), served_by]
            await send(message)

        return await inner(scope, receive, tagged_send)

    return app
