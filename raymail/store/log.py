"""An append-only log with group commit, snapshots and recovery by replay.

Layout of one log directory::

    seg-00000003.wal      records appended since snapshot 3
    snap-00000003.bin     the state covering every segment numbered below 3

A record is ``length:u32 crc32:u32 payload``. Recovery loads the newest valid
snapshot, replays the segments from its number on, and truncates a torn tail.

Guarantee: ``await append(...)`` returns only after the record is fsync'd; all
appends that arrive while a write is in flight share the next fsync (group commit).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from raymail.errors import StorageError

log = logging.getLogger(__name__)

_HDR = struct.Struct(">II")
_SNAP_MAGIC = b"RMSNAP1\n"
_SEG_RE = re.compile(r"^seg-(\d{8})\.wal$")
_SNAP_RE = re.compile(r"^snap-(\d{8})\.bin$")


def frame(payload: bytes) -> bytes:
    if not payload:
        raise ValueError("log records must not be empty")
    return _HDR.pack(len(payload), zlib.crc32(payload)) + payload


def read_frames(data: bytes) -> tuple[list[bytes], int]:
    """Split valid frames off the front of ``data``; returns them and the valid length."""
    out, pos, n = [], 0, len(data)
    while pos + _HDR.size <= n:
        length, crc = _HDR.unpack_from(data, pos)
        end = pos + _HDR.size + length
        if length == 0 or end > n:
            break  # nothing writes empty records: zeros are a torn, zero-filled tail
        payload = data[pos + _HDR.size : end]
        if zlib.crc32(payload) != crc:
            break
        out.append(payload)
        pos = end
    return out, pos


def write_new_file(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> None:
    """Create ``path`` (it must not exist) holding ``data``, fsync'd unless told not to."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Recovered:
    snapshot: bytes | None
    records: list[bytes]
    truncated_bytes: int


class DurableLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._seg_no = 0
        self._fd: int | None = None
        self.bytes_since_snapshot = 0
        # Pending work, in order: ("rec", frame_bytes, future) or ("snap", state_fn, future).
        self._queue: list[tuple[str, object, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self._broken: BaseException | None = None

    # -- recovery ----------------------------------------------------------
    def recover(self) -> Recovered:
        snaps = sorted(int(m.group(1)) for p in self.path.iterdir() if (m := _SNAP_RE.match(p.name)))
        snapshot, base = None, 0
        for n in reversed(snaps):
            data = (self.path / f"snap-{n:08d}.bin").read_bytes()
            if data.startswith(_SNAP_MAGIC):
                frames, _ = read_frames(data[len(_SNAP_MAGIC) :])
                if frames:
                    snapshot, base = frames[0], n
                    break
            log.warning("ignoring damaged snapshot %s", n)
        segs = sorted(int(m.group(1)) for p in self.path.iterdir() if (m := _SEG_RE.match(p.name)))
        records: list[bytes] = []
        truncated = 0
        live = [n for n in segs if n >= base]
        for n in live:
            p = self.path / f"seg-{n:08d}.wal"
            data = p.read_bytes()
            frames, valid = read_frames(data)
            records.extend(frames)
            if valid < len(data):
                # A torn tail from a crash mid-write: it was never acknowledged.
                truncated += len(data) - valid
                with open(p, "r+b") as fh:
                    fh.truncate(valid)
                    fh.flush()
                    os.fsync(fh.fileno())
                log.warning("truncated %d torn bytes from %s", len(data) - valid, p.name)
        self._seg_no = max(live) if live else base
        for n in segs:
            if n < base:
                (self.path / f"seg-{n:08d}.wal").unlink(missing_ok=True)
        self._open_segment(self._seg_no)
        self.bytes_since_snapshot = sum(len(r) + _HDR.size for r in records)
        return Recovered(snapshot, records, truncated)

    def _open_segment(self, n: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.path / f"seg-{n:08d}.wal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._seg_no = n
        fsync_dir(self.path)

    # -- writing -----------------------------------------------------------
    async def append(self, payload: bytes) -> None:
        """Return once ``payload`` is on stable storage."""
        fr = frame(payload)
        self.bytes_since_snapshot += len(fr)
        await self._enqueue("rec", fr)

    async def snapshot(self, state_fn: Callable[[], bytes]) -> None:
        """Write a snapshot and drop the segments it covers.

        ``state_fn`` is called at the point in the write order where every earlier
        record is already written, and before any later one, so the caller must
        not apply ops between scheduling the snapshot and ``state_fn`` running:
        call it synchronously here (the caller's state reflects exactly the
        records appended so far).
        """
        state = state_fn()
        self.bytes_since_snapshot = 0
        await self._enqueue("snap", state)

    async def wait_durable(self) -> None:
        """Wait until everything appended so far is durable."""
        if self._queue or (self._flusher and not self._flusher.done()):
            await self._enqueue("barrier", None)

    async def _enqueue(self, kind: str, data: object) -> None:
        if self._broken is not None:
            raise StorageError(f"mailbox log is unusable after an earlier failure: {self._broken}")
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((kind, data, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_loop())
        await fut

    async def _flush_loop(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                await asyncio.to_thread(self._write_batch, batch)
            except BaseException as exc:  # noqa: BLE001 - every waiter must hear of it
                self._broken = exc
                err = StorageError(f"mailbox log write failed: {exc}")
                for _, _, fut in batch + self._queue:
                    if not fut.done():
                        fut.set_exception(err)
                self._queue = []
                log.exception("mailbox log write failed; the shard must restart and replay")
                return
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    def _write_batch(self, batch: list) -> None:
        pending: list[bytes] = []
        for kind, data, _ in batch:
            if kind == "rec":
                pending.append(data)  # type: ignore[arg-type]
            elif kind == "snap":
                self._write_sync(b"".join(pending))
                pending = []
                self._write_snapshot(data)  # type: ignore[arg-type]
        self._write_sync(b"".join(pending))

    def _write_sync(self, data: bytes) -> None:
        assert self._fd is not None
        if data:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        os.fsync(self._fd)

    def _write_snapshot(self, state: bytes) -> None:
        n = self._seg_no + 1
        tmp = self.path / f"snap-{n:08d}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(_SNAP_MAGIC)
            fh.write(frame(state))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path / f"snap-{n:08d}.bin")
        self._open_segment(n)  # fsyncs the directory, making the rename durable too
        for p in self.path.iterdir():
            m = _SEG_RE.match(p.name) or _SNAP_RE.match(p.name)
            if m and int(m.group(1)) < n:
                p.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
