"""Attachments end to end, on file:// and on s3:// (a real S3-compatible server)."""

from __future__ import annotations

import asyncio
import base64
import email
import hashlib
import math
import os
import quopri
import time
import uuid
from email import policy
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from conftest import start_app, storage_of

from actors.mailbox_shard import CATALOG_BATCH_S
from raymail.store.blobs import UPLOAD_PART_BYTES, BlobStore

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(150_000)


async def upload(app, token, data, ctype="image/png", filename="photo.png", **headers):
    async with app.client(token) as c:
        h = {"Content-Type": ctype, **headers}
        if filename is not None:
            h["X-Filename"] = filename
        return await c.post("/v1/attachments", content=data, headers=h)


def att_objects(app):
    return {k for k, _, _ in storage_of(app).list("att")}


async def test_upload_download_range_and_dedup(storage_app):
    app = storage_app
    alice, bob = app.user(), app.user()
    r = await upload(app, alice["token"], PNG)
    assert r.status_code == 201, r.text
    meta = r.json()
    assert meta["size"] == len(PNG) and meta["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert meta["content_type"] == "image/png" and meta["filename"] == "photo.png"
    async with app.client(alice["token"]) as c:
        got = await c.get(f"/v1/attachments/{meta['id']}")
        assert got.status_code == 200 and got.content == PNG
        assert got.headers["content-type"] == "image/png"
        assert got.headers["content-disposition"].startswith('attachment; filename="photo.png"')
        assert got.headers["x-content-type-options"] == "nosniff"
        assert got.headers["content-security-policy"] == "sandbox"
        part = await c.get(f"/v1/attachments/{meta['id']}", headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == PNG[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{len(PNG)}"
        tail = await c.get(f"/v1/attachments/{meta['id']}", headers={"Range": "bytes=-10"})
        assert tail.content == PNG[-10:]
        bad = await c.get(f"/v1/attachments/{meta['id']}", headers={"Range": f"bytes={len(PNG)}-"})
        assert bad.status_code == 416
    before = att_objects(app)
    r2 = await upload(app, bob["token"], PNG, filename="same.png")  # another user, same bytes
    assert r2.status_code == 201 and r2.json()["sha256"] == meta["sha256"] and r2.json()["id"] != meta["id"]
    assert att_objects(app) == before  # stored once
    assert not storage_of(app).list("tmp")
    async with app.client(bob["token"]) as c:  # bob cannot read alice's upload by its id
        assert (await c.get(f"/v1/attachments/{meta['id']}")).status_code == 404


@pytest.mark.parametrize("ctype", ["image/png", "text/html", "image/svg+xml"])
async def test_a_script_under_any_type_is_downloaded_never_run(storage_app, ctype):
    """Whatever type an upload declares, and whether or not its bytes match it (an
    HTML page labelled a PNG), a browser is told to save it (attachment), not to
    guess its type (nosniff), and to run nothing of it (a sandbox)."""
    app = storage_app
    alice = app.user()
    page = b"<html><script>fetch('/v1/emails')</script></html>"
    r = await upload(app, alice["token"], page, ctype=ctype, filename="invoice.html")
    assert r.status_code == 201, r.text
    async with app.client(alice["token"]) as c:
        got = await c.get(f"/v1/attachments/{r.json()['id']}")
    assert got.content == page and got.headers["content-type"].startswith(ctype)
    assert got.headers["content-disposition"].startswith("attachment;")
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-security-policy"] == "sandbox"


async def test_downloads_left_part_way_leave_the_next_ones_unharmed(storage_app):
    """Clients that hang up mid-download (more of them than the storage client keeps
    connections) leave the next downloads unharmed, on the read the gateway had in
    flight and on the storage reader it closes."""
    import asyncio

    app = storage_app
    alice = app.user()
    data = os.urandom(2 * 1024 * 1024 - 1000)  # two pieces of the gateway's reads
    aid = (await upload(app, alice["token"], data, ctype="application/zip", filename="big.zip")).json()["id"]
    for _ in range(12):
        async with app.client(alice["token"]) as c, c.stream("GET", f"/v1/attachments/{aid}") as resp:
            assert resp.status_code == 200
            async for _chunk in resp.aiter_raw(64 * 1024):
                break  # hang up after the first piece
    async with app.client(alice["token"]) as c:
        whole = await asyncio.wait_for(c.get(f"/v1/attachments/{aid}"), 20)
        assert whole.status_code == 200 and whole.content == data


async def test_send_with_attachments_and_access(storage_app):
    app = storage_app
    alice, bob, carol = app.user(), app.user(), app.user()
    doc = os.urandom(70_000)
    a1 = (await upload(app, alice["token"], PNG)).json()
    a2 = (await upload(app, alice["token"], doc, ctype="application/pdf", filename="r%C3%A9sum%C3%A9.pdf")).json()
    assert a2["filename"] == "résumé.pdf"
    async with app.client(alice["token"]) as c:
        r = await c.post("/v1/send", json={"subject": "files", "recipients": [bob["email"]], "body": "two files",
                                            "attachments": [a1["id"], a2["id"]]})
        assert r.status_code == 201, r.text
    async with app.client(bob["token"]) as c:
        summary = (await c.get("/v1/emails")).json()["emails"][0]
        assert summary["has_attachments"] is True
        full = (await c.get(f"/v1/emails/{summary['id']}")).json()
        assert full["body"].strip() == "two files"
        assert [(x["filename"], x["size"], x["content_type"], x["available"]) for x in full["attachments"]] == [
            ("photo.png", len(PNG), "image/png", True), ("résumé.pdf", len(doc), "application/pdf", True)]
        assert (await c.get(f"/v1/attachments/{a2['id']}")).content == doc  # a recipient may read it
        raw = (await c.get(f"/v1/emails/{summary['id']}/raw")).content
        assert len(raw) == summary["size"]
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg.get_content_type() == "multipart/mixed"
    parts = list(msg.iter_attachments())
    assert [p.get_filename() for p in parts] == ["photo.png", "résumé.pdf"]
    assert parts[0].get_payload(decode=True) == PNG and parts[1].get_payload(decode=True) == doc
    async with app.client(carol["token"]) as c:  # not a recipient: nothing
        assert (await c.get(f"/v1/attachments/{a1['id']}")).status_code == 404
        r = await c.post("/v1/send", json={"recipients": [bob["email"]], "attachments": [a1["id"]]})
        assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_attachment"
    async with app.client(bob["token"]) as c:  # forwarding what one received is allowed
        r = await c.post("/v1/send", json={"recipients": [carol["email"]], "body": "fwd", "attachments": [a1["id"]]})
        assert r.status_code == 201
    async with app.client(carol["token"]) as c:
        assert (await c.get(f"/v1/attachments/{a1['id']}")).content == PNG


async def test_multipart_form_upload(storage_app):
    app = storage_app
    alice = app.user()
    async with app.client(alice["token"]) as c:
        r = await c.post("/v1/attachments", files={"file": ("notes.txt", b"hello world\n" * 100, "text/plain")})
        assert r.status_code == 201, r.text
        assert r.json()["filename"] == "notes.txt" and r.json()["size"] == 1200
        data = os.urandom(1_500_000)  # past a local store's memory: streamed to storage in pieces
        r = await c.post("/v1/attachments", data={"note": "a field before the file"},
                         files={"file": ("résumé ../x.pdf", data, "application/pdf")})
        assert r.status_code == 201, r.text
        assert (r.json()["filename"], r.json()["content_type"]) == ("x.pdf", "application/pdf")
        assert (await c.get(f"/v1/attachments/{r.json()['id']}")).content == data


@pytest.mark.parametrize("form", [True, False], ids=["form", "raw"])
async def test_an_upload_over_the_limit_is_refused_while_it_arrives(storage_app, form):
    """An upload goes to storage as it arrives (a form's file too), so one past the
    limit is refused then, not once all of it was received into a temporary file,
    and the connection closes rather than read on: an endless chunked body ends."""
    app = storage_app
    alice = app.user()
    before = att_objects(app)
    sent = 0

    async def endless():
        nonlocal sent
        if form:
            yield b'--B0UND\r\nContent-Disposition: form-data; name="file"; filename="huge.bin"\r\n\r\n'
        piece = b"x" * 65536
        for _ in range(1024):  # 64 MiB, unless refused before
            sent += len(piece)
            yield piece

    async with app.client(alice["token"]) as c:
        try:
            r = await c.post("/v1/attachments", content=endless(),
                             headers={"Content-Type": FORM if form else "application/octet-stream"})
            assert r.status_code == 413, r.text
        except httpx.TransportError:
            pass  # the connection was closed under the rest of the body: refused all the same
    assert sent < 16 * 1024 * 1024, f"{sent} bytes were taken in before the refusal"
    assert att_objects(app) == before and not storage_of(app).list("tmp")


def form_body(*parts: tuple[bytes, bytes], boundary: bytes = b"B0UND") -> bytes:
    """A multipart/form-data body of (Content-Disposition parameters, content) parts."""
    out = b"".join(b"--" + boundary + b"\r\nContent-Disposition: form-data; " + params + b"\r\n\r\n" + data + b"\r\n"
                   for params, data in parts)
    return out + b"--" + boundary + b"--\r\n"


FORM = "multipart/form-data; boundary=B0UND"
LIMIT = 2 * 1024 * 1024  # storage_app's attachment limit


async def _chunked(data: bytes, size: int = 256 * 1024):
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize(
    "body, ctype, status, code",
    [
        (form_body((b'name="file"; filename="big.bin"', b"x" * (LIMIT + 1))), FORM, 413, "too_large"),
        (form_body((b'name="file"; filename="empty.txt"', b"")), FORM, 422, "empty_upload"),
        (form_body((b'name="note"', b"no file here")), FORM, 422, "no_file"),
        (form_body((b'name="note"', b"n" * 70_000), (b'name="file"; filename="a.txt"', b"abc")), FORM, 413,
         "too_large"),
        (form_body((b'name="file"; filename="a.txt"', b"abc" * 1000))[:-12], FORM, 400, "bad_request"),
        (form_body((b'name="file"; filename="a.txt"', b"abc")), "multipart/form-data", 400, "bad_request"),
        (form_body((b'name="file"; filename="a.txt"', b"abc"), boundary=b"b" * 300),
         "multipart/form-data; boundary=" + "b" * 300, 400, "bad_request"),
        (form_body(*[(b'name="f"', b"")] * 3000, (b'name="file"; filename="a.txt"', b"abc")), FORM, 413, "too_large"),
        (form_body((b'name="a"; filename="a.txt"', b"abc"), (b'name="b"; filename="b.txt"', b"def")), FORM, 400,
         "bad_request"),
    ],
    ids=["file-over-the-limit", "empty-file", "no-file", "fields-too-large", "cut-short", "no-boundary",
         "boundary-too-long", "many-empty-fields", "two-files"],
)
@pytest.mark.parametrize("chunked", [False, True], ids=["sized", "chunked"])
async def test_bad_form_uploads(storage_app, body, ctype, status, code, chunked):
    """A form is refused as its body arrives, whether or not it says its length (a
    chunked one cannot be refused up front): nothing kept, nothing left behind."""
    app = storage_app
    alice = app.user()
    before = att_objects(app)
    async with app.client(alice["token"]) as c:
        r = await c.post("/v1/attachments", content=_chunked(body) if chunked else body,
                         headers={"Content-Type": ctype})
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code
    assert att_objects(app) == before and not storage_of(app).list("tmp")


@pytest.mark.parametrize(
    "filename, expected",
    [("../../etc/passwd", "passwd"), ("a\x00b.txt", "ab.txt"), ("x" * 10_000 + ".txt", "x" * 196 + ".txt"),
     ("invoice\u202egnp.exe", "invoicegnp.exe"), ("..", "attachment"), ("C:\\win\\evil.bat", "evil.bat")],
)
async def test_hostile_filenames(storage_app, filename, expected):
    app = storage_app
    alice = app.user()
    # X-Filename carries percent-encoded UTF-8 (HTTP headers cannot hold NUL or non-Latin-1 text).
    r = await upload(app, alice["token"], b"data" * 10, ctype="text/plain", filename=quote(filename, safe=""))
    assert r.status_code == 201, r.text
    assert r.json()["filename"] == expected
    async with app.client(alice["token"]) as c:
        got = await c.get(f"/v1/attachments/{r.json()['id']}")
        disposition = got.headers["content-disposition"]
        assert "/" not in disposition.split("filename*")[0] and "\r" not in disposition and "\n" not in disposition


@pytest.mark.parametrize(
    "ctype, data, status, code",
    [(None, b"abc", 422, "invalid_content_type"), ("not a type", b"abc", 422, "invalid_content_type"),
     ("text/plain", b"", 422, "empty_upload"), ("multipart/mixed; boundary=x", b"abc", 422, "invalid_content_type"),
     ("multipart/form-data; boundary=zzz", b"garbage", 400, "bad_request")],
)
async def test_bad_uploads(storage_app, ctype, data, status, code):
    app = storage_app
    alice = app.user()
    before = att_objects(app)
    async with app.client(alice["token"]) as c:
        headers = {"Content-Type": ctype} if ctype else {}
        r = await c.post("/v1/attachments", content=data, headers=headers)
        if ctype is None:  # httpx adds no Content-Type for raw bytes
            assert "content-type" not in r.request.headers
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code
    assert att_objects(app) == before and not storage_of(app).list("tmp")


def content_digest(data: bytes) -> str:
    return f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"


@pytest.mark.parametrize("size", [150_000, 1_500_000], ids=["small", "past-a-local-store's-memory"])
async def test_an_upload_with_its_content_digest(storage_app, size):
    app = storage_app
    alice = app.user()
    data = os.urandom(size)
    r = await upload(app, alice["token"], data, ctype="application/zip", **{"Content-Digest": content_digest(data)})
    assert r.status_code == 201, r.text
    meta = r.json()
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()

    async def chunked():  # no Content-Length: checked all the same
        for i in range(0, len(data), 64 * 1024):
            yield data[i : i + 64 * 1024]

    async with app.client(alice["token"]) as c:
        r2 = await c.post("/v1/attachments", content=chunked(),
                          headers={"Content-Type": "application/zip", "Repr-Digest": content_digest(data)})
        assert r2.status_code == 201, r2.text
        got = await c.get(f"/v1/attachments/{meta['id']}")
        assert got.content == data and got.headers["repr-digest"] == content_digest(data)
        part = await c.get(f"/v1/attachments/{meta['id']}", headers={"Range": "bytes=0-9"})
        assert part.status_code == 206 and part.headers["repr-digest"] == content_digest(data)  # the whole file's
    assert storage_of(app).get(f"att/{meta['sha256'][:2]}/{meta['sha256']}") == data  # stored once, whole
    assert not storage_of(app).list("tmp")


async def test_an_upload_that_does_not_match_its_content_digest_keeps_nothing(storage_app):
    app = storage_app
    alice, mallory = app.user(), app.user()
    data = os.urandom(600_000)
    meta = (await upload(app, alice["token"], data, ctype="application/pdf")).json()
    before = att_objects(app)
    # Other bytes of the same length, claiming to be alice's: refused, and alice's file is untouched.
    other = os.urandom(len(data))
    r = await upload(app, mallory["token"], other, ctype="application/pdf", **{"Content-Digest": content_digest(data)})
    assert r.status_code == 400 and r.json()["error"]["code"] == "digest_mismatch", r.text
    assert "Content-Digest" in r.json()["error"]["message"]
    r = await upload(app, mallory["token"], other[:-1] + bytes([other[-1] ^ 1]), ctype="application/pdf",
                     **{"Content-Digest": content_digest(other)})
    assert r.status_code == 400 and r.json()["error"]["code"] == "digest_mismatch"
    await asyncio.sleep(0.3)  # a PUT cut off would have landed by now
    assert att_objects(app) == before and not storage_of(app).list("tmp")
    async with app.client(alice["token"]) as c:
        assert (await c.get(f"/v1/attachments/{meta['id']}")).content == data
    async with app.client(mallory["token"]) as c:  # and mallory got no id to read it by
        assert (await c.get("/v1/emails")).status_code == 200
    # Sent again, right: kept.
    r = await upload(app, mallory["token"], other, ctype="application/pdf", **{"Content-Digest": content_digest(other)})
    assert r.status_code == 201 and r.json()["sha256"] == hashlib.sha256(other).hexdigest()


@pytest.fixture(scope="module")
def s3_app(ray_cluster, moto, tmp_path_factory):
    """An object-store deployment with the default limits (25 MiB an attachment): room
    for uploads larger than one part."""
    a = start_app(tmp_path_factory.mktemp("s3-default-limits"),
                  storage={"url": moto.bucket(f"b{uuid.uuid4().hex[:10]}"), "options": moto.options})
    yield a
    a.deployment.stop()


def streamed_puts(app) -> dict:
    """The gateways' counts of PUTs sent while their uploads arrived, summed."""
    import ray

    out: dict = {}
    for g in app.deployment.gateways:
        for k, v in ray.get(g.stats.remote())["streamed_puts"].items():
            out[k] = out.get(k, 0) + v
    return out


async def test_a_large_upload_with_its_content_digest_is_sent_as_it_arrives(s3_app):
    app = s3_app
    alice, mallory = app.user(), app.user()
    data = os.urandom(2 * UPLOAD_PART_BYTES + 1_500_000)  # past what an upload keeps in memory
    before = streamed_puts(app)
    r = await upload(app, alice["token"], data, ctype="video/mp4", **{"Content-Digest": content_digest(data)})
    assert r.status_code == 201, r.text
    meta = r.json()
    counts = streamed_puts(app)
    assert counts["begun"] - before["begun"] == 1 and counts["stored"] - before["stored"] == 1
    key = f"att/{meta['sha256'][:2]}/{meta['sha256']}"
    store = storage_of(app)
    assert store.get(key) == data
    async with app.client(alice["token"]) as c:
        assert (await c.get(f"/v1/attachments/{meta['id']}")).content == data
    # The same bytes again: found stored, not sent.
    r = await upload(app, mallory["token"], data, ctype="video/mp4", **{"Content-Digest": content_digest(data)})
    assert r.status_code == 201 and r.json()["sha256"] == meta["sha256"]
    assert streamed_puts(app)["found_stored"] - before["found_stored"] == 1
    # Other bytes claiming a digest: refused, nothing kept.
    kept = att_objects(app)
    other = os.urandom(len(data))
    for claimed in (data, os.urandom(len(data))):  # a stored blob's digest, a new one
        r = await upload(app, mallory["token"], other, ctype="video/mp4", **{"Content-Digest": content_digest(claimed)})
        assert r.status_code == 400 and r.json()["error"]["code"] == "digest_mismatch", r.text
    await asyncio.sleep(0.5)  # a PUT cut off would have landed by now
    assert att_objects(app) == kept and store.get(key) == data and not store.list("tmp")
    assert streamed_puts(app)["sent_again"] == before["sent_again"]


@pytest.mark.parametrize("header", ["sha-256=:AAAA:", "sha-256=abc", "sha-256=:" + "!" * 44 + ":",
                                    "sha-256=:" + base64.b64encode(b"x" * 32).decode() + ":, sha-256=:"
                                    + base64.b64encode(b"y" * 32).decode() + ":"])
async def test_a_malformed_content_digest_is_refused(storage_app, header):
    app = storage_app
    alice = app.user()
    before = att_objects(app)
    r = await upload(app, alice["token"], b"abc", ctype="text/plain", **{"Content-Digest": header})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_digest", r.text
    assert "sha-256" in r.json()["error"]["message"]
    assert att_objects(app) == before


async def test_a_content_digest_of_another_algorithm_is_ignored(storage_app):
    app = storage_app
    alice = app.user()
    r = await upload(app, alice["token"], b"abc", ctype="text/plain", **{"Content-Digest": "sha-512=:AAAA:"})
    assert r.status_code == 201


async def test_upload_over_the_limit_stores_nothing(storage_app):
    app = storage_app
    alice = app.user()
    before = att_objects(app)
    big = os.urandom(2 * 1024 * 1024 + 1)
    r = await upload(app, alice["token"], big, ctype="application/octet-stream")
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"

    async def chunked():  # no Content-Length: the limit is enforced while streaming
        for i in range(0, len(big), 256 * 1024):
            yield big[i : i + 256 * 1024]

    async with app.client(alice["token"]) as c:
        r = await c.post("/v1/attachments", content=chunked(), headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 413
    assert att_objects(app) == before and not storage_of(app).list("tmp")


async def test_a_declared_length_over_the_limit_is_refused_before_the_body(storage_app):
    """Content-Length past the limit: 413 at once, before any of the body is sent,
    and the connection closes (a client need not send 10 GiB to learn it)."""
    app = storage_app
    alice = app.user()
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        writer.write(b"POST /v1/attachments HTTP/1.1\r\nHost: raymail\r\nAuthorization: Bearer "
                     + alice["token"].encode() + b"\r\nContent-Type: application/zip\r\n"
                     b"Content-Length: 10737418240\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)  # to the end: the server closes
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and b"connection: close" in head.lower(), head
    assert b'"too_large"' in body and b"limited to 2097152 bytes" in body


async def test_an_upload_over_the_default_limit_stores_nothing_on_s3(s3_app):
    """Past the default 25 MiB, the upload spooled (past what is kept in memory), with
    and without a declared digest: 413, nothing stored, no spool file left."""
    app = s3_app
    alice = app.user()
    limit = app.config.limits.max_attachment_bytes
    assert limit == 25 * 1024 * 1024
    big = os.urandom(limit + 1)
    before = att_objects(app)

    async def chunked():
        for i in range(0, len(big), 1024 * 1024):
            yield big[i : i + 1024 * 1024]

    async with app.client(alice["token"]) as c:
        r = await c.post("/v1/attachments", content=chunked(), headers={"Content-Type": "application/zip"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large", r.text
        # Declaring a digest changes nothing: refused when the bytes pass the limit.
        r = await c.post("/v1/attachments", content=chunked(), headers={
            "Content-Type": "application/zip", "Content-Digest": content_digest(big[:limit])})
        assert r.status_code == 413, r.text
    await asyncio.sleep(0.5)  # a PUT cut off would have landed by now
    assert att_objects(app) == before and not storage_of(app).list("tmp")
    assert not [p for p in (app.config.data_path / "spool").rglob("*") if p.is_file()]


async def test_message_over_the_limit_with_attachments(storage_app):
    app = storage_app
    alice, bob = app.user(), app.user()
    ids = [(await upload(app, alice["token"], os.urandom(1_500_000), ctype="application/zip")).json()["id"]
           for _ in range(3)]
    async with app.client(alice["token"]) as c:
        r = await c.post("/v1/send", json={"recipients": [bob["email"]], "attachments": ids})
        assert r.status_code == 413
        r = await c.post("/v1/send", json={"recipients": [bob["email"]], "attachments": ids[:1]})
        assert r.status_code == 201


async def test_blob_deleted_under_a_referenced_message(storage_app):
    app = storage_app
    alice, bob = app.user(), app.user()
    data = os.urandom(5000)
    a = (await upload(app, alice["token"], data, ctype="application/pdf", filename="gone.pdf")).json()
    async with app.client(alice["token"]) as c:
        assert (await c.post("/v1/send", json={"recipients": [bob["email"]], "body": "still here",
                                                "attachments": [a["id"]]})).status_code == 201
    storage_of(app).delete(f"att/{a['sha256'][:2]}/{a['sha256']}")
    async with app.client(bob["token"]) as c:
        eid = (await c.get("/v1/emails")).json()["emails"][0]["id"]
        full = await c.get(f"/v1/emails/{eid}")
        assert full.status_code == 200 and full.json()["body"].strip() == "still here"
        assert full.json()["attachments"][0]["available"] is False
        r = await c.get(f"/v1/attachments/{a['id']}")
        assert r.status_code == 410 and r.json()["error"]["code"] == "content_missing"
        assert (await c.get(f"/v1/emails/{eid}/raw")).status_code == 410
    # uploading the same bytes again heals every message that carries them
    assert (await upload(app, alice["token"], data, ctype="application/pdf")).status_code == 201
    async with app.client(bob["token"]) as c:
        assert (await c.get(f"/v1/attachments/{a['id']}")).content == data


@pytest.mark.parametrize("backend, declared", [("file", False), ("s3", False), ("s3", True)],
                         ids=["file", "s3", "s3-declared-digest"])
async def test_storage_unavailable_mid_upload_then_retry(ray_cluster, tmp_path, backend, declared):
    """Storage fails while an upload arrives: 503, no blob and no temporary file
    left, the upload's record withdrawn; once storage is back, the same upload is
    stored. On S3 the store's path dies (a relay switched off) while the store keeps
    its objects; a declared digest has the PUT already under way when it dies. On
    file:// the blobs' folder cannot be written (it was made a file)."""
    from conftest import MotoServer, start_app
    from relay import Switch

    server = switch = None
    if backend == "s3":
        server = MotoServer()
        url = server.bucket("flaky")
        switch = Switch(server.endpoint)
        storage = {"url": url, "options": {**server.options, "endpoint_url": switch.endpoint}}
        check = BlobStore(url, server.options)  # straight to the store, not through the switch
    else:
        storage = {"url": f"file://{tmp_path / 'blobs'}"}
        check = BlobStore(storage["url"])
    app = start_app(tmp_path, storage=storage)
    att_dir = Path(check.root) / "att"
    try:
        alice = app.user()
        data = os.urandom(12 * 1024 * 1024)
        sha = hashlib.sha256(data).hexdigest()
        key = f"att/{sha[:2]}/{sha}"

        def fail() -> None:
            if switch is not None:
                switch.switch_off()
            else:
                att_dir.mkdir(parents=True, exist_ok=True)
                att_dir.rename(att_dir.with_name("att-away"))
                att_dir.write_bytes(b"not a folder")

        def recover() -> None:
            if switch is not None:
                switch.switch_on()
            else:
                att_dir.unlink()
                att_dir.with_name("att-away").rename(att_dir)

        async def body():
            for i in range(0, len(data), 1024 * 1024):
                if i == 9 * 1024 * 1024:
                    fail()  # mid-upload
                yield data[i : i + 1024 * 1024]

        headers = {"Content-Type": "application/zip"}
        if declared:
            headers |= {"Content-Digest": content_digest(data), "Content-Length": str(len(data))}
        async with app.client(alice["token"]) as c:
            r = await c.post("/v1/attachments", content=body(), headers=headers)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "unavailable"
        recover()
        assert not check.exists(key) and not check.list("tmp")  # no blob, not even part of one
        spool = app.config.data_path / "spool"
        assert not [p for p in spool.rglob("*") if p.is_file()], "a spooled upload was left behind"
        # The upload was recorded while its blob was being written; the record is withdrawn.
        from pipelines.gc import referenced_keys

        for _ in range(50):
            if key not in referenced_keys(app.config.cluster.namespace, app.config.cluster.shards):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the failed upload stayed recorded")
        before = {k for k, _, _ in check.list("att")}
        r = await upload(app, alice["token"], data, ctype="application/zip")  # storage is back: a retry works
        assert r.status_code == 201 and r.json()["sha256"] == sha
        assert {k for k, _, _ in check.list("att")} - before == {key}
        async with app.client(alice["token"]) as c:
            assert (await c.get(f"/v1/attachments/{r.json()['id']}")).content == data
    finally:
        app.deployment.stop()
        if server is not None:
            switch.close()
            server.stop()


@pytest.mark.parametrize("backend", ["file", "s3"])
async def test_a_100_mib_upload_keeps_the_gateway_memory_bounded(ray_cluster, tmp_path, backend):
    """The issue's bound: under 64 MiB over the gateway's baseline while a 100 MiB
    upload streams in (sampled every 5 ms from /proc), plain, as a form's file, and,
    on S3, declaring its digest (sent on to the store as it arrives)."""
    import ray
    from conftest import MotoServer, start_app
    from procs import PeakRss

    mib = 1024 * 1024
    server = MotoServer() if backend == "s3" else None
    storage = {"url": server.bucket("mem"), "options": server.options} if server else {}
    app = start_app(tmp_path, storage=storage, limits={"max_attachment_bytes": 128 * mib, "max_message_bytes": 128 * mib})
    try:
        alice = app.user()
        pid = ray.get(app.deployment.gateways[0].stats.remote())["pid"]
        chunk = os.urandom(mib)
        digest = hashlib.sha256(chunk * 100).digest()
        declared = {"Content-Length": str(100 * mib),
                    "Content-Digest": f"sha-256=:{base64.b64encode(digest).decode()}:"}

        async def body():
            for _ in range(100):
                yield chunk

        async def form():
            yield b'--B0UND\r\nContent-Disposition: form-data; name="file"; filename="big.zip"\r\n\r\n'
            async for piece in body():
                yield piece
            yield b"\r\n--B0UND--\r\n"

        for headers in ({}, {"Content-Type": FORM}, declared) if server else ({}, {"Content-Type": FORM}):
            with PeakRss(pid) as rss:
                async with app.client(alice["token"]) as c:
                    r = await c.post("/v1/attachments", content=form() if headers.get("Content-Type") else body(),
                                     headers={"Content-Type": "application/zip", **headers})
            assert r.status_code == 201 and r.json()["size"] == 100 * mib, r.text
            grew = (rss.peak - rss.base) / 1024
            assert grew < 64, f"the gateway grew by {grew:.1f} MiB ({headers})"
    finally:
        app.deployment.stop()
        if server is not None:
            server.stop()


def _mime_with_attachment(data: bytes) -> bytes:
    from email.message import EmailMessage

    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = "Zed <zed@elsewhere.test>"
    msg["To"] = "someone@example.test"
    msg["Subject"] = "Quarterly report"
    msg["Message-ID"] = "<q1@elsewhere.test>"
    msg.set_content("Report attached.\n")
    msg.add_attachment(data, maintype="application", subtype="pdf", filename="q1 report.pdf")
    return msg.as_bytes()


async def test_the_catalog_gets_uploads_in_batches(storage_app):
    app = storage_app
    alice = app.user()
    catalog = app.deployment.catalog
    before = await catalog.stats.remote()
    n = 30
    began = time.monotonic()
    for _ in range(n):  # one after another: each its own batch of ops at the shard
        assert (await upload(app, alice["token"], os.urandom(2000), ctype="application/zip")).status_code == 201
    took = time.monotonic() - began
    for _ in range(100):  # the rows reach the catalog within a quarter of a second, then a flush writes them
        await catalog.flush.remote()
        after = await catalog.stats.remote()
        if after["rows_written"]["blobs"] - before["rows_written"]["blobs"] >= n:
            break
        await asyncio.sleep(0.1)
    assert after["rows_written"]["blobs"] - before["rows_written"]["blobs"] >= n, after
    # One shard holds alice: her uploads' rows came in a call every quarter second
    # (CATALOG_BATCH_S), not one call each; on a slow day the uploads take longer.
    windows = math.ceil(took / CATALOG_BATCH_S) + 2
    assert windows < n, f"{n} uploads took {took:.1f} s: too slow to tell batches from single calls"
    assert after["adds"] - before["adds"] <= max(n // 3, windows), (before["adds"], after["adds"], took)


async def test_import_extracts_attachments_and_keeps_the_bytes(storage_app):
    app = storage_app
    alice = app.user()
    data = os.urandom(40_000)
    raw = _mime_with_attachment(data)
    async with app.client(alice["token"]) as c:
        r = await c.post("/v1/import", content=raw, headers={"Content-Type": "message/rfc822"})
        assert r.status_code == 201, r.text
        summary = r.json()
        assert summary["subject"] == "Quarterly report" and summary["has_attachments"] is True
        assert summary["from"] == {"name": "Zed", "email": "zed@elsewhere.test"} and summary["size"] == len(raw)
        full = (await c.get(f"/v1/emails/{summary['id']}")).json()
        (a,) = full["attachments"]
        assert (a["filename"], a["size"], a["content_type"]) == ("q1 report.pdf", len(data), "application/pdf")
        assert a["sha256"] == hashlib.sha256(data).hexdigest()
        assert (await c.get(f"/v1/attachments/{a['id']}")).content == data
        assert (await c.get(f"/v1/emails/{summary['id']}/raw")).content == raw  # byte for byte
        before = att_objects(app)
        again = await c.post("/v1/import", content=raw, headers={"Content-Type": "message/rfc822"})
        assert again.status_code == 201 and att_objects(app) == before  # the file is stored once


def _mime_from_other_mailers() -> tuple[bytes, dict[str, bytes]]:
    """A message as other mailers write them, LF line ends as in a saved file:
    base64 wrapped at 72 characters, a quoted-printable CSV, a tiny 8bit file with a
    hostile name, and an inline image the HTML shows (part of the body)."""
    pdf = os.urandom(30_000)
    csv = "name,city\nZoë,Zürich\n".encode() * 200
    note = b"tiny"
    b64 = base64.b64encode(pdf)
    wrapped = b"\n".join(b64[i : i + 72] for i in range(0, len(b64), 72))
    qp = quopri.encodestring(csv).rstrip(b"\n")  # the last line end belongs to the boundary
    logo = base64.encodebytes(os.urandom(5_000))
    raw = b"\n".join([
        b"From: Zed <zed@elsewhere.test>", b"To: someone@example.test", b"Subject: from elsewhere",
        b"Message-ID: <other@elsewhere.test>", b"MIME-Version: 1.0",
        b'Content-Type: multipart/mixed; boundary="XX"', b"", b"--XX",
        b"Content-Type: text/html; charset=utf-8", b"", b"<p>see <img src='cid:logo'></p>", b"--XX",
        b"Content-Type: image/png", b"Content-ID: <logo>", b'Content-Disposition: inline; filename="logo.png"',
        b"Content-Transfer-Encoding: base64", b"", logo.rstrip(b"\n"), b"--XX",
        b'Content-Type: application/pdf; name="report.pdf"', b"Content-Transfer-Encoding: base64", b"", wrapped,
        b"--XX", b"Content-Type: text/csv; charset=utf-8", b'Content-Disposition: attachment; filename="cities.csv"',
        b"Content-Transfer-Encoding: quoted-printable", b"", qp, b"--XX",
        b"Content-Type: application/octet-stream", b'Content-Disposition: attachment; filename="../../etc/passwd"',
        b"Content-Transfer-Encoding: 8bit", b"", note, b"--XX--", b"",
    ])
    return raw, {"report.pdf": pdf, "cities.csv": quopri.decodestring(qp), "passwd": note}


async def test_every_attachment_of_a_received_message_is_served_whatever_its_encoding(storage_app):
    """Each attachment of a message from elsewhere gets an id, a blob and its decoded
    bytes, as an uploaded one does; the message's source stays byte for byte."""
    app = storage_app
    alice, bob = app.user(), app.user()
    raw, files = _mime_from_other_mailers()
    async with app.client(alice["token"]) as c:
        before = att_objects(app)
        r = await c.post("/v1/import", content=raw, headers={"Content-Type": "message/rfc822"})
        assert r.status_code == 201, r.text
        assert r.json()["has_attachments"] is True
        full = (await c.get(f"/v1/emails/{r.json()['id']}")).json()
        listed = {a["filename"]: a for a in full["attachments"]}
        assert sorted(listed) == sorted(files)  # the inline image is the body's; the hostile name is cut to its last part
        for name, data in files.items():
            a = listed[name]
            assert (a["size"], a["sha256"], a["available"]) == (len(data), hashlib.sha256(data).hexdigest(), True)
            got = await c.get(f"/v1/attachments/{a['id']}")
            assert got.status_code == 200 and got.content == data, name
        assert listed["cities.csv"]["content_type"] == "text/csv"
        assert len(att_objects(app) - before) == 3
        # The PDF's body (base64 in 72-character LF lines) was cut out of the stored message.
        stored = {k: n for k, n, _ in storage_of(app).list("msg")}
        assert min(stored.values()) < len(raw) - 30_000
        assert (await c.get(f"/v1/emails/{r.json()['id']}/raw")).content == raw  # byte for byte
    async with app.client(bob["token"]) as c:
        assert (await c.get(f"/v1/attachments/{listed['report.pdf']['id']}")).status_code == 404


@pytest.mark.parametrize("raw", [b"\x00\xff garbage without headers", b"Subject: =?broken?=\r\nMessage-ID: <\r\n\r\nbody",
                                 b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n" * 50])
async def test_import_of_malformed_mime_is_kept_as_received(storage_app, raw):
    app = storage_app
    alice = app.user()
    async with app.client(alice["token"]) as c:
        r = await c.post("/v1/import", content=raw, headers={"Content-Type": "message/rfc822"})
        assert r.status_code == 201, r.text
        eid = r.json()["id"]
        assert (await c.get(f"/v1/emails/{eid}")).status_code == 200
        assert (await c.get(f"/v1/emails/{eid}/raw")).content == raw
        bad = await c.post("/v1/import", content=raw, headers={"Content-Type": "text/plain"})
        assert bad.status_code == 422


async def test_unsent_uploads_expire_and_what_was_sent_stays_readable(ray_cluster, tmp_path):
    from conftest import start_app

    from pipelines.gc import referenced_keys

    app = start_app(tmp_path, cluster={"shards": 1}, mailbox={"upload_ttl_s": 2.0})
    try:
        alice, bob = app.user(), app.user()
        sent = (await upload(app, alice["token"], PNG)).json()
        async with app.client(alice["token"]) as c:
            r = await c.post("/v1/send", json={"recipients": [bob["email"]], "body": "b", "attachments": [sent["id"]]})
            assert r.status_code == 201, r.text
        kept = os.urandom(5000)
        unsent = (await upload(app, alice["token"], kept, ctype="application/pdf", filename="draft.pdf")).json()
        async with app.client(alice["token"]) as c:
            assert (await c.get(f"/v1/attachments/{unsent['id']}")).content == kept  # usable at first
            for _ in range(100):  # 2 s of life, swept every 0.5 s
                if (await c.get(f"/v1/attachments/{unsent['id']}")).status_code == 404:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the unsent upload never expired")
            r = await c.post("/v1/send", json={"recipients": [bob["email"]], "attachments": [unsent["id"]]})
            assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_attachment"
            assert "an upload can be named for 2 s" in r.json()["error"]["message"]
            assert (await c.get(f"/v1/attachments/{sent['id']}")).content == PNG  # through the sent mail
        async with app.client(bob["token"]) as c:
            assert (await c.get(f"/v1/attachments/{sent['id']}")).content == PNG
        refs = referenced_keys(app.config.cluster.namespace, 1)
        assert f"att/{sent['sha256'][:2]}/{sent['sha256']}" in refs
        assert f"att/{unsent['sha256'][:2]}/{unsent['sha256']}" not in refs  # garbage for the collector now
    finally:
        app.deployment.stop()
