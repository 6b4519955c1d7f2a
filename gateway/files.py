"""``/v1/attachments``: streamed uploads into content-addressed storage, and downloads
with Range support to the uploader and to recipients of mail that carries them."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import unquote

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.services import Services
from raymail import attachments as att
from raymail.errors import (
    ApiError,
    BadRequest,
    Gone,
    NotFound,
    PayloadTooLarge,
    StorageError,
    Unavailable,
    Unprocessable,
)
from raymail.model import AddUpload, AttachmentRef, ExpireUploads, User
from raymail.store.blobs import BlobMissing, BlobReader, Upload

log = logging.getLogger(__name__)

WRITE_BUFFER_BYTES = 1024 * 1024  # chunks are gathered to this size before each storage write
READ_CHUNK_BYTES = 1024 * 1024
WRITE_QUEUE = 4


class RangeNotSatisfiable(ApiError):
    status = 416
    code = "range_not_satisfiable"


def _filename(request: Request) -> str | None:
    raw = request.headers.get("x-filename")
    return unquote(raw) if raw else None


def _created(ref: AttachmentRef) -> Response:
    from gateway.app import _json

    return _json(ref.to_dict(), 201)


FORM_FIELDS_BYTES = 64 * 1024  # a form's bytes other than its file's, boundaries and headers included


class FormFile:
    """The file of a ``multipart/form-data`` body (RFC 7578), read as the body
    arrives: its bytes go on to storage as they come, hashed and held to the size
    limit on the way, with no temporary copy. The form's other parts are read and
    dropped; everything but the file's bytes (other fields, part headers,
    boundaries) is held to ``FORM_FIELDS_BYTES``; a second file is refused."""

    def __init__(self, request: Request) -> None:
        _, params = parse_options_header(request.headers.get("content-type", ""))
        if not params.get(b"boundary"):
            raise BadRequest("the multipart/form-data body has no boundary parameter in its Content-Type")
        self._body = request.stream().__aiter__()
        self._events: deque[tuple[str, object]] = deque()  # what the parser found in the latest chunk
        self._fed = 0  # bytes of the body given to the parser
        self._file_bytes = 0  # of which the file's own
        self._in_file = False
        self._files = 0
        self._headers: dict[bytes, bytes] = {}
        self._name = self._value = b""
        try:
            self._parser = MultipartParser(params[b"boundary"], callbacks={
                "on_part_begin": self._part_begin,
                "on_header_field": lambda data, start, end: self._add_name(data[start:end]),
                "on_header_value": lambda data, start, end: self._add_value(data[start:end]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": lambda: self._events.append(("done", None)),
            }, max_header_count=8, max_header_size=8192)
        except FormParserError as exc:  # a boundary too long
            raise BadRequest(f"the multipart body cannot be read: {exc}") from None

    def _part_begin(self) -> None:
        self._headers = {}

    def _add_name(self, piece: bytes) -> None:
        self._name += piece

    def _add_value(self, piece: bytes) -> None:
        self._value += piece

    def _header_end(self) -> None:
        self._headers[self._name.lower()] = self._value
        self._name = self._value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b"").decode("latin-1"))
        if b"filename" in options:
            self._files += 1
            if self._files > 1:
                raise BadRequest("send one file per upload: this form has more than one")
            self._in_file = True
            # Browsers send the name as UTF-8.
            name = options[b"filename"].decode("utf-8", errors="replace")
            self._events.append(("file", (name, self._headers.get(b"content-type", b"").decode("latin-1"))))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._file_bytes += end - start
            self._events.append(("data", bytes(data[start:end])))

    def _part_end(self) -> None:
        if self._in_file:
            self._in_file = False
            self._events.append(("end", None))

    async def _next(self) -> tuple[str, object]:
        while not self._events:
            try:
                chunk = await self._body.__anext__()
            except StopAsyncIteration:
                raise BadRequest("the multipart body ended before its closing boundary") from None
            self._fed += len(chunk)
            try:
                self._parser.write(chunk)
            except FormParserError as exc:  # the parse errors are of this kind
                raise BadRequest(f"the multipart body could not be read: {exc}") from None
            if self._fed - self._file_bytes > FORM_FIELDS_BYTES:
                raise PayloadTooLarge(f"a form's parts other than its file are limited to {FORM_FIELDS_BYTES} "
                                      "bytes (send the file alone, or as the raw body)")
        return self._events.popleft()

    async def open(self) -> tuple[str, str]:
        """Reads up to the file's part: (its filename, its Content-Type)."""
        while True:
            kind, value = await self._next()
            if kind == "done":
                raise Unprocessable("the form has no file field", code="no_file")
            if kind == "file":
                return value

    async def chunks(self) -> AsyncIterator[bytes]:
        """The file's bytes as they arrive, then the rest of the form, dropped: an
        upload is kept only from a whole, well-formed body."""
        while (event := await self._next())[0] != "end":
            yield event[1]
        while (await self._next())[0] != "done":
            pass


class FilesApi:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.limit_bytes = svc.config.limits.max_attachment_bytes
        self._withdrawing: set[asyncio.Task] = set()

    async def upload(self, request: Request, user: User) -> Response:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.limit_bytes + 64 * 1024:
            raise PayloadTooLarge(f"attachments are limited to {self.limit_bytes} bytes")
        ctype_header = request.headers.get("content-type", "")
        if ctype_header.lower().startswith("multipart/form-data"):
            return await self._upload_form(request, user)
        try:
            content_type = att.normalize_content_type(ctype_header)
        except att.AttachmentError as exc:
            raise Unprocessable(str(exc), code="invalid_content_type") from None
        try:
            digest = att.declared_sha256(request.headers.get("content-digest"), request.headers.get("repr-digest"))
        except att.AttachmentError as exc:
            raise BadRequest(str(exc), code="invalid_digest") from None
        filename = att.sanitize_filename(_filename(request))
        size = int(declared) if declared and declared.isdigit() else None
        ref = await self._store(user, request.stream(), content_type, filename, digest, size)
        return _created(ref)

    async def _upload_form(self, request: Request, user: User) -> Response:
        form = FormFile(request)
        filename, ctype_header = await form.open()
        try:
            content_type = att.normalize_content_type(ctype_header or "application/octet-stream")
        except att.AttachmentError as exc:
            raise Unprocessable(str(exc), code="invalid_content_type") from None
        ref = await self._store(user, form.chunks(), content_type, att.sanitize_filename(filename))
        return _created(ref)

    async def _store(self, user: User, body: AsyncIterator[bytes], content_type: str, filename: str,
                     digest: bytes | None = None, size: int | None = None) -> AttachmentRef:
        """``digest``: the SHA-256 the client declared (RFC 9530), checked before
        anything is kept; a small upload of known ``size`` to an object store is
        then sent to it while it arrives."""
        upload: Upload = self.svc.blobs.upload("att")  # no I/O yet
        if digest is not None:
            upload.expect(digest, size)
        # A pipeline: while one buffer is hashed and written in a worker thread, the
        # event loop receives the next. At most WRITE_QUEUE buffers wait: bounded memory.
        # A small upload (kept in memory until its commit writes it once) is hashed
        # on the loop as it arrives instead: no I/O, no thread round trips.
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=WRITE_QUEUE)

        failed: list[StorageError] = []

        async def writer() -> None:
            # Keeps taking buffers after a failure (dropping them), so a receive
            # blocked on a full queue is never stranded.
            while (data := await queue.get()) is not None:
                if not failed:
                    try:
                        await asyncio.to_thread(upload.write, data)
                    except StorageError as exc:
                        failed.append(exc)
            if failed:
                raise failed[0]

        writing = asyncio.ensure_future(writer())
        pending: list[bytes] = []
        pending_bytes = 0
        total = 0
        inline = True

        async def hand_over(data: bytes) -> None:
            if failed:
                raise failed[0]
            await queue.put(data)

        try:
            async for chunk in body:
                total += len(chunk)
                if total > self.limit_bytes:
                    raise PayloadTooLarge(f"attachments are limited to {self.limit_bytes} bytes")
                if inline:
                    if upload.fits_in_memory(len(chunk)):
                        upload.write(chunk)  # hashed as it arrives; no I/O
                        continue
                    inline = False  # from here on, in order through the worker thread
                pending.append(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= WRITE_BUFFER_BYTES:
                    data, pending, pending_bytes = b"".join(pending), [], 0
                    await hand_over(data)
            if total == 0:
                raise Unprocessable("the upload is empty", code="empty_upload")
            if pending:
                await hand_over(b"".join(pending))
            await queue.put(None)
            await writing
            if not upload.digest_matches():
                raise BadRequest("the body does not match its Content-Digest (sha-256): it was changed or cut "
                                 "short on the way; nothing was kept, send it again", code="digest_mismatch")
            return await self._commit_recorded(user, upload, content_type, filename)
        except StorageError as exc:
            writing.cancel()
            await asyncio.to_thread(upload.abort)
            log.error("attachment upload failed: %s", exc)
            # Read (and drop) the rest of the body, within the limit, so the client
            # gets the 503 instead of a connection closed under its upload.
            try:
                async for chunk in body:
                    total += len(chunk)
                    if total > self.limit_bytes:
                        break
            except Exception:  # noqa: BLE001 - the client may be gone; the 503 stands
                pass
            raise Unavailable("attachment storage failed during the upload; nothing was kept, retry") from exc
        except BaseException:
            writing.cancel()
            await asyncio.to_thread(upload.abort)
            raise

    async def _commit_recorded(self, user: User, upload: Upload, content_type: str, filename: str) -> AttachmentRef:
        """Make the blob durable and record the upload in the owner's mailbox at once:
        the 201 waits for both. A record whose blob then failed is withdrawn; nobody
        learned its id meanwhile."""
        key, sha = upload.key_and_sha()
        ref = AttachmentRef(id=uuid.uuid4().hex, sha256=sha, size=upload.size, content_type=content_type,
                            filename=filename, blob=key)
        recording = asyncio.ensure_future(self.svc.router.apply([AddUpload(user.uid, ref, time.time())]))
        try:
            await upload.commit_async()
        except BaseException:
            withdraw = asyncio.ensure_future(self._withdraw(user, ref, recording))  # even if this request is cancelled
            self._withdrawing.add(withdraw)  # held until done: the loop keeps only weak references
            withdraw.add_done_callback(self._withdrawing.discard)
            raise
        (res,) = await recording
        if not res.ok:
            raise Unavailable(f"the upload could not be recorded: {res.message}")
        return ref

    async def _withdraw(self, user: User, ref: AttachmentRef, recording: asyncio.Future) -> None:
        try:
            (res,) = await recording
        except Exception:  # noqa: BLE001 - never recorded: nothing to withdraw
            return
        if not res.ok:
            return
        try:
            (res,) = await self.svc.router.apply([ExpireUploads(user.uid, (ref.id,), time.time())])
            if not res.ok:
                raise Unavailable(res.message)
        except Exception:  # noqa: BLE001 - it expires with the others; its id was never given out
            log.warning("upload %s of a failed blob stays recorded until uploads expire", ref.id, exc_info=True)

    async def download(self, request: Request, user: User) -> Response:
        attachment_id = request.path_params["id"]
        ref = await self.lookup(user, attachment_id)
        if ref is None:
            raise NotFound("no such attachment")
        try:
            rng = att.parse_range(request.headers.get("range"), ref.size)
        except att.AttachmentError as exc:
            raise RangeNotSatisfiable(str(exc)) from None
        start, end = rng if rng else (0, ref.size - 1)
        # The first chunk is read before any header goes out: a blob missing from
        # storage is a 410 and unreachable storage a 503, not a cut-off 200. The size
        # is the recorded one, so an object store gets one streamed GET and no HEAD.
        first, fh = await self._open(ref, start, end + 1)
        headers = {
            "Content-Disposition": att.content_disposition(ref.filename),
            "Accept-Ranges": "bytes",
            "ETag": f'"{ref.sha256}"',
            "Repr-Digest": att.repr_digest(ref.sha256),  # RFC 9530: the whole file's, for a range too
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox",
            "Content-Length": str(end - start + 1 if ref.size else 0),
        }
        status = 200
        if rng:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{ref.size}"
        if fh is None or start + len(first) > end:  # all of it in hand: a plain response, no streaming task
            if fh is not None:
                fh.close_soon()
            return Response(first, status_code=status, headers=headers, media_type=ref.content_type)
        return StreamingResponse(self._stream(fh, first, start + len(first), end + 1), status_code=status,
                                 headers=headers, media_type=ref.content_type)

    async def _open(self, ref: AttachmentRef, start: int, stop: int) -> tuple[bytes, BlobReader | None]:
        blobs = self.svc.blobs
        try:
            if stop <= start:  # an empty blob: only its presence to check
                await asyncio.to_thread(blobs.size, ref.blob)
                return b"", None
            return await blobs.open_and_read(ref.blob, start, stop, min(READ_CHUNK_BYTES, stop - start))
        except StorageError as exc:
            if isinstance(exc, BlobMissing):
                raise Gone("the attachment's content is missing from storage", code="content_missing") from exc
            raise Unavailable("attachment storage is unavailable; retry later") from exc

    async def _stream(self, fh: BlobReader | None, first: bytes, pos: int, stop: int) -> AsyncIterator[bytes]:
        if fh is None:
            return
        try:
            chunk = first
            while chunk:
                yield chunk
                if pos >= stop:
                    break
                chunk = await fh.aread(min(READ_CHUNK_BYTES, stop - pos))
                pos += len(chunk)
        finally:
            # Closing cannot fail (nothing was written) and never holds the response up.
            fh.close_soon()

    async def lookup(self, user: User, attachment_id: str) -> AttachmentRef | None:
        """The attachment if ``user`` may use it (uploaded or received), else None."""
        if not attachment_id or len(attachment_id) > 64:
            return None
        return await self.svc.router.read(user.uid, "get_attachment", attachment_id)
