"""Content-addressed blob storage over fsspec: ``file://`` (default) or ``s3://`` (s3fs).

A blob's key is ``<kind>/<sha256[:2]>/<sha256>``; writing the same bytes twice
stores them once. Writes are atomic: a local blob is written under a temporary
name, fsync'd and renamed (then the directory is fsync'd); an object store gets a
single PUT. A streamed upload is hashed on the way and kept in memory while small
(written once at commit, as above); a larger one goes to a local file as it
arrives, which a local store renames into place and an object store gets under
the final key as one PUT read from that file (up to 100 MiB) or a multipart
upload, visible only once complete. An upload whose client declared its SHA-256
and length goes to an object store while it arrives, as one PUT under that
digest's key whose last piece waits for the hash to match. A crash never leaves
a half blob under its final key; stale ``tmp/`` files and idle multipart uploads
are removed by the garbage collector.

Every storage failure leaves as ``StorageError`` (``BlobMissing`` when the blob is
not there); fsspec, OS and S3 client errors are mapped here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import hashlib
import logging
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import fsspec
import fsspec.asyn

from raymail.errors import StorageError
from raymail.ids import new_id
from raymail.store.log import fsync_dir, write_new_file


def _load_syncfs():
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    return fn


_syncfs = _load_syncfs()
log = logging.getLogger(__name__)


def blob_key(kind: str, sha256_hex: str) -> str:
    return f"{kind}/{sha256_hex[:2]}/{sha256_hex}"


class BlobMissing(StorageError):
    """The blob is not in storage (deleted, or never written)."""


# Blobs of these kinds are nearly always new (a stored message carries its own trace
# headers): an object store is not asked whether it holds them before a PUT, and the
# rare repeat is simply written again (same bytes, same key: harmless).
UNIQUE_KINDS = frozenset({"msg"})

UPLOAD_PART_BYTES = 8 * 1024 * 1024  # kept in memory up to this; a multipart upload's part size
LOCAL_MEMORY_BYTES = 1024 * 1024  # a local upload up to this is written once, at commit
UPLOAD_CONCURRENCY = 3  # multipart parts in flight at once per upload: 24 MiB of buffers at most
# Bytes given to a PUT sent while its upload arrives and not yet sent, at most: past
# this, a write from a worker thread waits for the store.
STREAM_QUEUE_BYTES = 8 * 1024 * 1024
# s3fs sends data under 100 MiB as one PUT and larger data as a multipart upload.
S3FS_SINGLE_PUT_BYTES = 100 * 1024 * 1024


def _loop_of(fs):
    """The event loop ``fs`` sends its requests on (an asynchronous client does not
    keep it: ``BlobStore.loop_fs`` notes it)."""
    return getattr(fs, "bound_loop", None) or fs.loop


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _on_loop(fs, coro):
    """Await ``coro`` on ``fs``'s event loop: directly when it is the running one,
    else from this loop with no worker thread between (s3fs's own loop runs in its
    own thread)."""
    loop = _loop_of(fs)
    if loop is asyncio.get_running_loop():
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))


def _checked(digest: bytes) -> dict:
    """A PUT's argument that has the object store check the body against its SHA-256
    (computed already for the key), so the client neither signs the body by hashing
    it again nor computes a CRC32 of it: integrity is checked all the same."""
    return {"ChecksumSHA256": base64.b64encode(digest).decode("ascii")}


class _Body:
    """A PUT's body that arrives while it is sent: an async iterable for the HTTP
    client, file-like enough for the S3 client (which never reads it), and not
    seekable, so the client cannot retry it."""

    def __init__(self, stream: _StreamedPut) -> None:
        self._stream = stream

    def read(self, n: int = -1) -> bytes:
        raise StorageError("a streamed body is sent as it arrives, not read")

    async def __aiter__(self):
        while (item := await self._stream._queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
            self._stream._sent(len(item))  # the HTTP client took it (its own buffer is bounded)


class _StreamedPut:
    """One PUT of a small upload to an object store, sent from its pieces as they
    are: while the upload arrives, under the key of the SHA-256 its client declared,
    or at the commit (no copy of the pieces into one buffer, and none by the client).

    The last piece is held back until the upload's own hash matches the declared
    one: a body that does not match never reaches the store complete, the PUT is
    cut off, and an object store keeps nothing of a PUT cut off (the checksum
    header would also have it refuse the body).

    With ``look_first`` (a large upload), the store is asked first whether it holds
    the blob: then nothing is sent (``existing``). A ``feed`` from a worker thread
    waits while ``STREAM_QUEUE_BYTES`` wait to be sent: memory stays bounded, and a
    slow store slows the client down. ``feed``, ``finish`` and ``cancel`` may be
    called from any thread; the PUT is sent by the running loop's client (by the
    storage client on its own loop when there is no running loop)."""

    def __init__(self, store: BlobStore, path: str, size: int, digest: bytes, look_first: bool = False) -> None:
        fs = store.loop_fs()  # the running loop's client, if any: no thread hop per piece
        self._loop = _loop_of(fs)
        self._queue: asyncio.Queue = asyncio.Queue()  # used on that loop only
        self._held: bytes | None = None
        self.size = size
        self.existing = False  # found stored: nothing was sent
        self._queued = 0  # bytes given to the queue and not yet sent
        self._cv = threading.Condition()
        self._stopped = False  # cancelled, or the PUT ended: nothing more is sent
        self.future = asyncio.run_coroutine_threadsafe(self._put(fs, path, size, digest, look_first), self._loop)
        self.future.add_done_callback(lambda _: self._stop())

    async def _put(self, fs, path: str, size: int, digest: bytes, look_first: bool) -> None:
        bucket, key, _ = fs.split_path(path)
        try:
            await fs.set_session()
            if look_first:
                try:
                    await fs._call_s3("head_object", Bucket=bucket, Key=key)
                    self.existing = True
                except FileNotFoundError:
                    pass
            if self.existing:
                async for _ in _Body(self):
                    pass  # taken and dropped, up to the end or the cancel
                return
            await fs.s3.put_object(Bucket=bucket, Key=key, Body=_Body(self), ContentLength=size, **_checked(digest))
        except Exception as exc:  # noqa: BLE001 - mapped at the boundary
            raise StorageError(f"the PUT sent while its upload arrived failed: {exc}") from exc

    def _send(self, item) -> None:
        if isinstance(item, bytes):
            with self._cv:
                self._queued += len(item)
        if _running_loop() is self._loop:
            self._queue.put_nowait(item)
        else:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _sent(self, n: int) -> None:
        with self._cv:
            self._queued -= n
            self._cv.notify_all()

    def _stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()

    def feed(self, data: bytes) -> None:
        """The next bytes; the latest are held back until ``finish``. Outside an
        event loop, waits while too many are still to be sent."""
        if not data or self._stopped:
            return  # an empty piece (the end of a request's body) must not release the held one
        if self._held is not None:
            self._send(self._held)
        self._held = data
        if _running_loop() is None:
            with self._cv:
                while self._queued > STREAM_QUEUE_BYTES and not self._stopped:
                    self._cv.wait()

    def finish(self) -> None:
        """Send what was held back: the PUT completes."""
        if self._held is not None:
            self._send(self._held)
            self._held = None
        self._send(None)

    def cancel(self, why: str) -> None:
        """Cut the PUT off; nothing is stored."""
        self._held = None
        self._stop()
        self._send(StorageError(why))


class Upload:
    """A blob being streamed in: hashed on the way, invisible until ``commit``."""

    def __init__(self, store: BlobStore, kind: str) -> None:
        """No I/O: an event loop may create one."""
        self.store = store
        self.kind = kind
        self.sha = hashlib.sha256()
        self.size = 0
        # A small blob is kept in memory and written once, at commit, under its final
        # key: up to one part on an object store (one PUT), up to LOCAL_MEMORY_BYTES
        # on a local one. A larger one goes to a local file as it arrives (memory
        # stays bounded): a local store renames that file into place, an object store
        # is sent from it under the final key (no server-side copy). Nothing is
        # visible before the commit.
        self._small: list[bytes] | None = []
        self._small_bytes = 0
        self._memory_limit = LOCAL_MEMORY_BYTES if store.local else UPLOAD_PART_BYTES
        self.tmp = ""  # that local file, once there is one
        self._fh = None
        self._aborted = False
        self._done: tuple[str, str, int] | None = None
        # An abort can come from another thread while a write is under way there (a
        # request given up mid-upload): it waits for that write, so no file is made
        # after the abort removed what there was.
        self._lock = threading.Lock()
        self._expected: bytes | None = None  # the SHA-256 its client declared
        self._stream: _StreamedPut | None = None

    def expect(self, digest: bytes, size: int | None) -> None:
        """The client declared the blob's SHA-256 (and its ``size``, when known)
        before sending it: the commit refuses other bytes (``digest_matches``).
        An upload of known size to an object store, up to one PUT's worth
        (``single_put_max_bytes``), is then sent while it arrives, under that
        digest's key, instead of once it is whole (while fewer than
        ``max_streamed_puts`` are)."""
        self._expected = digest
        if (self.store.local or self.size != 0 or not size or size > self.store.single_put_max_bytes
                or self._stream is not None or not self.store._take_stream_slot()):
            return
        path = self.store._path(blob_key(self.kind, digest.hex()))
        self._stream = _StreamedPut(self.store, path, size, digest, look_first=size > self._memory_limit)
        self._stream.future.add_done_callback(lambda _: self.store._give_stream_slot())
        self.store._count_stream("begun")

    def digest_matches(self) -> bool:
        """False when the client declared a SHA-256 other than the bytes'."""
        return self._expected is None or self.sha.digest() == self._expected

    def _stop_stream(self, why: str) -> None:
        if self._stream is not None:
            self._stream.cancel(why)
            self._stream = None

    def _finish_stream(self, final: str) -> bool:
        """True when the PUT sent while a large upload arrived stored it (or found it
        stored: its modification time is then renewed). False when there was none,
        or it failed: the upload is then sent the usual way, from its file."""
        stream, self._stream = self._stream, None
        if stream is None:
            return False
        if self.size != stream.size or _running_loop() is stream._loop:  # that loop cannot be waited for here
            stream.cancel("sent the usual way")
            return False
        stream.finish()
        try:
            stream.future.result()
        except Exception as exc:  # noqa: BLE001 - sent again, whole
            log.info("a PUT sent while its upload arrived failed (%s); sending the upload again, whole", exc)
            self.store._count_stream("sent_again")
            return False
        if stream.existing:
            self.store._reuse(final)
        self.store._count_stream("found_stored" if stream.existing else "stored")
        return True

    def key_and_sha(self) -> tuple[str, str]:
        """The blob's key and SHA-256 (hex) for what was written so far."""
        sha = self.sha.hexdigest()
        return blob_key(self.kind, sha), sha

    def fits_in_memory(self, more: int) -> bool:
        """True when writing ``more`` bytes next does no I/O (they join a small
        upload, kept in memory until the commit)."""
        return self._small is not None and self._small_bytes + more <= self._memory_limit

    def write(self, data: bytes) -> None:
        """Hash and keep ``data``, the next bytes of the blob; calls must come in
        order, one at a time."""
        with self._lock:
            self._write(data)

    def _write(self, data: bytes) -> None:
        if self._aborted:
            raise StorageError("the upload was aborted")
        self.sha.update(data)
        self.size += len(data)
        if self._stream is not None:
            if self.size <= self._stream.size:
                # The latest bytes are held back: nothing completes the PUT yet. In a
                # worker thread, this waits while the store is behind.
                self._stream.feed(data)
            else:  # past its declared size: sent the usual way
                self._stop_stream("the upload is larger than its client declared")
        if self._small is not None:
            self._small.append(data)
            self._small_bytes += len(data)
            if self._small_bytes <= self._memory_limit:
                return
            data, self._small = b"".join(self._small), None  # too big to keep: to a file from here on
        try:
            if self._fh is None:
                self._fh = self._open_file()
            view = memoryview(data)
            while view:
                written = self._fh.write(view)
                view = view[written if written is not None else len(view) :]
        except Exception as exc:  # noqa: BLE001
            self._abort()
            raise StorageError(f"storage failed during the upload: {exc}") from exc

    def _open_file(self):
        if self.store.local:  # under the store's tmp/, on the blobs' filesystem: renamed into place
            self.tmp = f"{self.store.root}/tmp/{uuid.uuid4().hex}"
            Path(self.tmp).parent.mkdir(parents=True, exist_ok=True)
            return open(self.tmp, "wb", buffering=0)  # noqa: SIM115 - closed in commit/abort
        fh = tempfile.NamedTemporaryFile(dir=self.store.spool_dir, prefix="upload-",  # noqa: SIM115
                                         delete=False, buffering=0)
        self.tmp = fh.name
        return fh

    def commit(self) -> tuple[str, str, int]:
        """Make the blob durable under its content address; returns (key, sha256, size)."""
        with self._lock:  # an abort from another thread waits: the blob is kept or gone, never half
            return self._commit()

    def _commit(self) -> tuple[str, str, int]:
        if self._aborted:
            raise StorageError("the upload was aborted")
        if self._done is not None:
            return self._done  # committed already: nothing more to write
        if not self.digest_matches():
            self._abort()
            raise StorageError("the upload does not match the SHA-256 its client declared")
        if self._small is not None:
            self._stop_stream("sent the usual way")  # commit_async sends a small upload's streamed PUT
        key, sha = self.key_and_sha()
        final = self.store._path(key)
        fs = self.store.fs
        try:
            if self._small is not None:
                data, self._small = b"".join(self._small), []
                if self.store.local:  # a temporary name, fsync'd, renamed; kept as is when already there
                    self.store._put_local([(Path(final), data)], reuse=self.kind not in UNIQUE_KINDS)
                else:
                    # One PUT, atomic. Not asked first whether the bytes are there: for
                    # a blob this small the question costs as much as sending it again,
                    # and the same bytes under the same key are still stored once (the
                    # PUT also renews LastModified for garbage collection).
                    self.store._put_objects([(final, data, self.sha.digest())])
            elif self.store.local:
                if os.path.exists(final):  # deduplicated: the same bytes are stored already
                    self._fh.close()
                    os.unlink(self.tmp)  # never made durable: nothing needs it
                    os.utime(final)  # fresh again: garbage collection's grace period restarts
                else:
                    os.fsync(self._fh.fileno())
                    self._fh.close()
                    Path(final).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(self.tmp, final)
                    fsync_dir(Path(final).parent)
            else:
                self._fh.close()
                if self._finish_stream(final):
                    pass  # sent while it arrived
                elif self.store._reuse(final):
                    pass  # the same bytes are stored already
                elif self.size <= self.store.single_put_max_bytes:
                    self.store._put_streamed(self.tmp, final, self.size, self.sha.digest())
                else:
                    # Multipart, parts in parallel; the object appears only when the
                    # upload completes.
                    fs.put_file(self.tmp, final, chunksize=UPLOAD_PART_BYTES, max_concurrency=UPLOAD_CONCURRENCY)
                os.unlink(self.tmp)
        except Exception as exc:  # noqa: BLE001
            self._abort()
            raise StorageError(f"storage failed while finishing the upload: {exc}") from exc
        self._done = (key, sha, self.size)
        return self._done

    async def commit_async(self) -> tuple[str, str, int]:
        """``commit`` for an event loop: a small upload to an object store is sent
        by the running loop's client, with no worker thread between, its pieces as
        they are (no copy into one buffer); anything else commits in a worker thread."""
        if self._small is None or self.store.local or self._aborted or self._done is not None:
            return await asyncio.to_thread(self.commit)
        if not self.digest_matches():
            self.abort()
            raise StorageError("the upload does not match the SHA-256 its client declared")
        key, sha = self.key_and_sha()
        path = self.store._path(key)
        pieces, self._small = self._small, []
        stream, self._stream = self._stream, None
        declared = stream is not None  # sent while it arrived
        if stream is None and self.size:  # nothing sent yet: the pieces go now, under the key just known
            stream = _StreamedPut(self.store, path, self.size, self.sha.digest())
            for piece in pieces:
                stream.feed(piece)
        sent = False
        try:
            if stream is not None and self.size == stream.size:
                stream.finish()
                try:
                    await asyncio.wrap_future(stream.future)
                    sent = True
                except Exception as exc:  # noqa: BLE001 - sent again below, whole
                    log.info("a PUT of pieces failed (%s); sending the upload again, whole", exc)
                if declared:
                    self.store._count_stream("stored" if sent else "sent_again")
            elif stream is not None:
                stream.cancel("the upload is smaller than its client declared")
            if not sent:  # the storage client's own retries can rewind this one
                fs = self.store.loop_fs()
                await _on_loop(fs, self.store._put_objects_async([(path, b"".join(pieces), self.sha.digest())], fs))
        except Exception as exc:  # noqa: BLE001
            self.abort()
            raise StorageError(f"storage failed while finishing the upload: {exc}") from exc
        self._done = (key, sha, self.size)
        return self._done

    def abort(self) -> None:
        stream = self._stream
        if stream is not None:
            stream._stop()  # a write waiting for the store stops waiting (and frees the lock)
        with self._lock:
            self._abort()

    def _abort(self) -> None:
        if self._done is not None:
            return  # committed: the blob stays
        self._aborted = True
        self._small = None
        self._stop_stream("the upload was aborted")
        if self._fh is None:
            return  # nothing was written anywhere
        with contextlib.suppress(Exception):  # best effort; GC removes what is left in tmp/
            self._fh.close()
        with contextlib.suppress(Exception):
            os.unlink(self.tmp)  # nothing under the final key yet


class BlobStore:
    # A reused object older than this gets its modification time refreshed, so the
    # garbage collector's grace period starts again for it (it must exceed this).
    refresh_after_s = 60.0
    # A spooled upload up to this size goes as one PUT read from the spool file as it
    # is sent (s3fs's own limit for one PUT, without reading the file into memory); a
    # larger one as a multipart upload with parts in parallel.
    single_put_max_bytes = S3FS_SINGLE_PUT_BYTES
    # PUTs sent while their uploads arrive hold a connection to the store for as long
    # as their clients take: at most this many at once, so that slow clients never
    # take all of the client's connections (past it, uploads are sent once whole).
    max_streamed_puts = 4

    def __init__(self, url: str, options: dict | None = None, spool_dir: str | os.PathLike | None = None) -> None:
        """``spool_dir``: where large uploads to an object store wait for their hash
        (the system's temporary directory when None)."""
        options = dict(options or {})
        if url.startswith(("s3://", "s3a://")):
            # Fail over to a 503 in seconds when the object store is down, rather than
            # retrying for half a minute while a client waits; clients retry.
            config = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2, "mode": "standard"},
                      # Bodies are not hashed again to sign them (as over HTTPS): every
                      # PUT carries a checksum the store verifies, our SHA-256 or the
                      # client's default CRC32.
                      "s3": {"payload_signing_enabled": False}}
            options["config_kwargs"] = {**config, **options.get("config_kwargs", {})}
            # No answers from a kept listing: other processes (and this one's event-loop
            # clients) write and delete blobs, and a stale listing would call a new
            # blob missing or a removed one present (deduplicating against nothing).
            options["use_listings_cache"] = False
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **options)
        except (ImportError, ValueError) as exc:
            raise StorageError(f"[storage] cannot open {url!r}: {exc}") from exc
        self._options = options
        self._loop_clients: dict[asyncio.AbstractEventLoop, object] = {}  # until aclose (a client holds its loop)
        self._streams_lock = threading.Lock()
        self._streams = 0  # PUTs sent while their uploads arrive, now
        # Those PUTs so far: begun, stored by them, found stored already (nothing
        # sent), and the uploads sent again whole after theirs failed.
        self.stream_counts = dict.fromkeys(("begun", "stored", "found_stored", "sent_again"), 0)
        self.root = root.rstrip("/")
        if hasattr(self.fs, "retries"):
            self.fs.retries = 3  # s3fs's own retry loop, on top of botocore's
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.spool_dir = spool_dir
        self._made_dirs: set[Path] = set()
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        elif spool_dir is not None:
            Path(spool_dir).mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def loop_fs(self):
        """The object store's client for the running event loop, made the first time
        it is asked for there: the storage client's own loop runs in its own thread,
        and awaiting it from another loop costs two thread hops a call. It is kept
        until ``aclose``. Outside an event loop, and for a local store, the storage
        client itself."""
        loop = _running_loop()
        if loop is None or self.local or loop is self.fs.loop:
            return self.fs
        fs = self._loop_clients.get(loop)
        if fs is None:
            fs = type(self.fs)(**{**self._options, "asynchronous": True, "skip_instance_cache": True})
            fs.retries = self.fs.retries
            fs.bound_loop = loop
            self._loop_clients[loop] = fs
        return fs

    def _take_stream_slot(self) -> bool:
        with self._streams_lock:
            if self._streams >= self.max_streamed_puts:
                return False
            self._streams += 1
            return True

    def _give_stream_slot(self) -> None:
        with self._streams_lock:
            self._streams -= 1

    def _count_stream(self, what: str) -> None:
        with self._streams_lock:
            self.stream_counts[what] += 1

    async def aclose(self) -> None:
        """Close the running event loop's client, if it has one (its connections
        would otherwise be left to the garbage collector)."""
        fs = self._loop_clients.pop(_running_loop(), None)
        if fs is not None and fs._s3 is not None:
            with contextlib.suppress(Exception):  # closing: nothing to lose
                await fs._s3.close()

    def put(self, kind: str, data: bytes) -> str:
        """Store ``data`` durably and return its key."""
        return self.put_many(kind, [data])[0]

    def put_many(self, kind: str, items: list[bytes]) -> list[str]:
        """Store several blobs durably; one directory fsync per directory touched."""
        digests = [hashlib.sha256(data).digest() for data in items]
        keys = [blob_key(kind, d.hex()) for d in digests]
        try:
            if self.local:
                self._put_local([(Path(self._path(k)), d) for k, d in zip(keys, items, strict=True)],
                                reuse=kind not in UNIQUE_KINDS)
            else:
                sends = [(self._path(k), d, dig) for k, d, dig in zip(keys, items, digests, strict=True)]
                if kind not in UNIQUE_KINDS:  # already stored: not sent again
                    sends = [item for item in sends if not self._reuse(item[0])]
                # One concurrent batch of PUTs; each is atomic, and a PUT of the same
                # bytes just replaces them (renewing LastModified).
                if sends:
                    self._put_objects(sends)
        except Exception as exc:  # noqa: BLE001 - mapped at the boundary
            raise StorageError(f"could not store blob {keys[0]}: {exc}") from exc
        return keys

    def _put_objects(self, sends: list[tuple[str, bytes, bytes]]) -> None:
        """PUT each (path, data, sha256 digest) to the object store at once (the
        client's connection pool bounds how many are in flight)."""
        fsspec.asyn.sync(self.fs.loop, self._put_objects_async, sends)

    async def _put_objects_async(self, sends: list[tuple[str, bytes, bytes]], fs=None) -> None:
        # The checksum is an argument of one PUT: a multipart upload's parts get
        # the client's default CRC32.
        fs = fs or self.fs
        await asyncio.gather(*(
            fs._pipe_file(path, data, **(_checked(digest) if len(data) < S3FS_SINGLE_PUT_BYTES else {}))
            for path, data, digest in sends))

    def _put_streamed(self, local_path: str, path: str, size: int, digest: bytes) -> None:
        """One PUT of a local file to the object store, read as it is sent: memory
        stays bounded, and the object appears whole or not at all."""
        bucket, key, _ = self.fs.split_path(path)

        async def put() -> None:
            # The client is asked directly: s3fs's own retry loop would send the file
            # again from where the failed attempt stopped reading it. The client's own
            # retries rewind it (tested with a connection cut mid-body).
            await self.fs.set_session()
            with open(local_path, "rb") as body:
                await self.fs.s3.put_object(Bucket=bucket, Key=key, Body=body, ContentLength=size, **_checked(digest))

        fsspec.asyn.sync(self.fs.loop, put)

    def _reuse(self, path: str) -> bool:
        """On an object store: True when ``path`` exists already; an old one is then
        copied onto itself (a server-side copy, no bytes sent) to renew its
        LastModified, as ``os.utime`` does for a local file."""
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            return False
        if time.time() - mtime_of(info) > self.refresh_after_s:
            self.fs.setxattr(path, raymail_reused=str(int(time.time())))
        return True

    def _put_local(self, items: list[tuple[Path, bytes]], reuse: bool = True) -> None:
        """``reuse``: look for each blob first (a new one of a unique kind is just written)."""
        fresh = []
        for p, d in items:
            if reuse and p.exists():
                os.utime(p)  # reused: garbage collection's grace period restarts
            else:
                fresh.append((p, d))
        if not fresh:
            return
        # With syncfs, one filesystem flush makes the whole batch durable (one journal
        # commit); without it, each file and directory is fsync'd on its own.
        group = _syncfs is not None and len(fresh) > 1
        dirs: set[Path] = set()
        renames = []
        for path, data in fresh:
            if path.parent not in self._made_dirs:  # fan-out directories are never removed
                path.parent.mkdir(parents=True, exist_ok=True)
                self._made_dirs.add(path.parent)
            dirs.add(path.parent)
            tmp = path.with_name(f".{path.name}.{new_id()}.tmp")
            try:
                write_new_file(tmp, data, fsync=not group)
            except FileNotFoundError:  # its directory was removed since: make it again
                path.parent.mkdir(parents=True, exist_ok=True)
                write_new_file(tmp, data, fsync=not group)
            renames.append((tmp, path))
        if group:
            self._syncfs()  # file contents are durable before any becomes visible
        for tmp, path in renames:
            os.replace(tmp, path)
        if group:
            self._syncfs()
        else:
            for d in dirs:
                fsync_dir(d)

    def _syncfs(self) -> None:
        fd = os.open(self.root, os.O_RDONLY)
        try:
            if _syncfs(fd) != 0:  # type: ignore[misc]
                raise OSError(ctypes.get_errno(), "syncfs failed")
        finally:
            os.close(fd)

    @staticmethod
    @contextlib.contextmanager
    def _reading(key: str):
        """Map a read's library errors: BlobMissing when absent, StorageError otherwise."""
        try:
            yield
        except StorageError:
            raise
        except FileNotFoundError as exc:
            raise BlobMissing(f"blob {key} is missing from storage") from exc
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"could not read blob {key}: {exc}") from exc

    def get(self, key: str) -> bytes:
        with self._reading(key):
            if self.local:  # a plain read: fsspec's path handling costs more than reading a few KiB
                with open(self._path(key), "rb") as fh:
                    return fh.read()
            return self.fs.cat_file(self._path(key))

    def exists(self, key: str) -> bool:
        try:
            return bool(self.fs.exists(self._path(key)))
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"could not check blob {key}: {exc}") from exc

    def upload(self, kind: str) -> Upload:
        return Upload(self, kind)

    def size(self, key: str) -> int:
        with self._reading(key):
            return int(self.fs.size(self._path(key)))

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end of the blob, none past it)."""
        if length <= 0:
            return b""
        with self._reading(key):
            if self.local:
                with open(self._path(key), "rb") as fh:
                    fh.seek(start)
                    return fh.read(length)
            try:
                return self.fs.cat_file(self._path(key), start=start, end=start + length)
            except OSError as exc:
                if _past_the_end(exc):
                    return b""  # at or past the end, as a file read would say
                raise

    def reader(self, key: str, start: int = 0, stop: int | None = None) -> BlobReader:
        """Sequential reads of bytes ``start`` to ``stop`` (the end when None). On an
        object store this is one streamed GET, sent at the first ``read``: a missing
        blob then shows there (``BlobMissing``), not here."""
        with self._reading(key):
            if self.local:
                fh = open(self._path(key), "rb")  # noqa: SIM115 - closed by BlobReader.close
                fh.seek(start)
            else:
                fh = _ObjectStream(self.fs, self._path(key), start, stop)
            return BlobReader(key, fh)

    async def open_and_read(self, key: str, start: int, stop: int, n: int) -> tuple[bytes, BlobReader]:
        """``reader(key, start, stop)`` and its first ``read(n)``, for an event loop:
        one worker-thread round trip for a local file; for an object store, none
        (the GET is sent by the running loop's own client; read it with ``aread``)."""
        if self.local:
            def both() -> tuple[bytes, BlobReader]:
                fh = self.reader(key, start, stop)
                try:
                    return fh.read(n), fh
                except BaseException:
                    fh.close()
                    raise

            return await asyncio.to_thread(both)
        fh = BlobReader(key, _ObjectStream(self.loop_fs(), self._path(key), start, stop))
        try:
            return await fh.aread(n), fh
        except BaseException:
            fh.close()  # a body cut part-way is closed on its client's loop: this one
            raise

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self._path(key))
        except FileNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"could not delete blob {key}: {exc}") from exc

    def list(self, prefix: str) -> list[tuple[str, int, float]]:
        """(key, size, modified epoch seconds) of every object under ``prefix``."""
        base = f"{self.root}/{prefix}".rstrip("/")
        try:
            if self.local and not os.path.isdir(base):
                return []
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return []
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"could not list {prefix}: {exc}") from exc
        out = []
        for path, info in found.items():
            key = path[len(self.root) + 1 :] if path.startswith(self.root + "/") else path
            out.append((key, int(info.get("size") or 0), mtime_of(info)))
        return out

    def unfinished_uploads(self) -> list[tuple[str, str, float]]:
        """(key, upload id, epoch seconds it was last active) of each multipart upload
        under the store's root that was neither completed nor aborted (a process
        stopped mid-upload): its parts take space, invisibly. None on a local store.
        Last active: when its latest part came, or else when it began."""
        if self.local:
            return []
        bucket, _, prefix = self.root.partition("/")
        out = []
        try:
            args = {"Bucket": bucket, "Prefix": f"{prefix}/" if prefix else ""}
            while True:
                page = self.fs.call_s3("list_multipart_uploads", **args)
                for u in page.get("Uploads", []):
                    key = u["Key"][len(args["Prefix"]) :]
                    parts = self.fs.call_s3("list_parts", Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
                    active = [p["LastModified"].timestamp() for p in parts.get("Parts", [])]
                    out.append((key, u["UploadId"], max(active, default=u["Initiated"].timestamp())))
                if not page.get("IsTruncated"):
                    return out
                args |= {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"could not list unfinished uploads: {exc}") from exc

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Drop an unfinished multipart upload's parts."""
        bucket, path, _ = self.fs.split_path(self._path(key))
        try:
            self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=path, UploadId=upload_id)
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"could not abort the upload of {key}: {exc}") from exc


def _past_the_end(exc: OSError) -> bool:
    """s3fs's error for a range that starts at or past the end of an object."""
    return "InvalidRange" in str(exc) or "not satisfiable" in str(exc) or "416" in str(exc)


class _ObjectStream:
    """One ranged GET whose body is read as it arrives, on the loop of the client it
    is given: ``read`` blocks a worker thread on it, as every fsspec call does;
    ``aread`` awaits it from an event loop (directly when it is that loop)."""

    def __init__(self, fs, path: str, start: int, stop: int | None) -> None:
        self.fs = fs
        self.bucket, self.key, _ = fs.split_path(path)
        self.range = f"bytes={start}-{'' if stop is None else stop - 1}"
        self.left = None if stop is None else stop - start  # bytes of the range not yet read
        self.body = None
        self.done = False

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes, fewer only at the end: one call into s3fs's event loop,
        however many pieces the body arrives in."""
        if self.done:
            return b""
        return fsspec.asyn.sync(_loop_of(self.fs), self._read, n)

    async def aread(self, n: int) -> bytes:
        """``read`` for an event loop."""
        if self.done:
            return b""
        return await _on_loop(self.fs, self._read(n))

    async def _read(self, n: int) -> bytes:
        if self.body is None:
            try:
                resp = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key, Range=self.range)
            except OSError as exc:
                if _past_the_end(exc):  # nothing to read there
                    self.done = True
                    return b""
                raise
            self.body = resp["Body"]
        pieces: list[bytes] = []
        got = 0
        while got < n:
            piece = await self.body.read(n - got)  # what has arrived, up to the rest of n
            if not piece:
                self.done = True
                break
            pieces.append(piece)
            got += len(piece)
        if self.left is not None:
            self.left -= got
            if self.left <= 0:  # the whole range: the body is at its end, its connection given back
                self.done = True
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def closes_at_once(self) -> bool:
        """True when ``close`` does not wait for the storage client's loop."""
        return self.body is None or self.done or _running_loop() is _loop_of(self.fs)

    def close(self) -> None:
        """A body read to its end has given its connection back already; one left
        part-way is closed on its client's loop, which owns it."""
        if self.body is not None and not self.done:
            if _running_loop() is _loop_of(self.fs):
                self.body.close()
            else:
                fsspec.asyn.sync(_loop_of(self.fs), self._close)
        self.body = None

    async def _close(self) -> None:
        self.body.close()


class BlobReader:
    """A blob open for sequential reads; library errors leave as ``StorageError``."""

    def __init__(self, key: str, fh) -> None:
        self.key = key
        self._fh = fh

    def read(self, n: int) -> bytes:
        with BlobStore._reading(self.key):
            return self._fh.read(n)

    async def aread(self, n: int) -> bytes:
        """``read`` for an event loop: an object's body is read on the storage
        client's loop, a local file in a worker thread."""
        with BlobStore._reading(self.key):
            if isinstance(self._fh, _ObjectStream):
                return await self._fh.aread(n)
            return await asyncio.to_thread(self._fh.read, n)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # nothing was written: nothing to lose
            self._fh.close()

    def close_soon(self) -> None:
        """``close`` from an event loop: at once when that cannot block (a local file,
        an object's body read to its end or owned by this loop's client), else in a
        worker thread."""
        loop = _running_loop()
        if loop is not None and isinstance(self._fh, _ObjectStream) and not self._fh.closes_at_once():
            loop.run_in_executor(None, self.close)
        else:
            self.close()  # (with no running loop, there is nobody to hold up)


def mtime_of(info: dict) -> float:
    """The modification time in an fsspec ``info`` dict, whatever the backend calls it."""
    for name in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(name)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        return float(value)
    return 0.0
