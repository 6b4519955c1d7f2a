"""Content-addressed blob storage over fsspec (``file://`` here, ``s3://`` later).

A blob's key is ``<kind>/<sha256[:2]>/<sha256>``; writing the same bytes twice
stores them once. Writes are atomic: a local blob is written under a temporary
name, fsync'd and renamed (then the directory is fsync'd); an object store gets a
single PUT. A crash never leaves a half blob under its final key.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import uuid
from pathlib import Path

import fsspec

from raymail.errors import StorageError
from raymail.store.log import fsync_dir


def _load_syncfs():
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    return fn


_syncfs = _load_syncfs()


def blob_key(kind: str, sha256_hex: str) -> str:
    return f"{kind}/{sha256_hex[:2]}/{sha256_hex}"


class BlobStore:
    def __init__(self, url: str, options: dict | None = None) -> None:
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **(options or {}))
        except (ImportError, ValueError) as exc:
            raise StorageError(f"[storage] cannot open {url!r}: {exc}") from exc
        self.root = root.rstrip("/")
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def put(self, kind: str, data: bytes) -> str:
        """Store ``data`` durably and return its key."""
        return self.put_many(kind, [data])[0]

    def put_many(self, kind: str, items: list[bytes]) -> list[str]:
        """Store several blobs durably; one directory fsync per directory touched."""
        keys = [blob_key(kind, hashlib.sha256(data).hexdigest()) for data in items]
        try:
            if self.local:
                self._put_local([(Path(self._path(k)), d) for k, d in zip(keys, items, strict=True)])
            else:
                for key, data in zip(keys, items, strict=True):
                    path = self._path(key)
                    if not self.fs.exists(path):
                        self.fs.pipe_file(path, data)
        except OSError as exc:
            raise StorageError(f"could not store blob {keys[0]}: {exc}") from exc
        return keys

    def _put_local(self, items: list[tuple[Path, bytes]]) -> None:
        fresh = [(p, d) for p, d in items if not p.exists()]
        if not fresh:
            return
        # With syncfs, one filesystem flush makes the whole batch durable (one journal
        # commit); without it, each file and directory is fsync'd on its own.
        group = _syncfs is not None and len(fresh) > 1
        dirs: set[Path] = set()
        renames = []
        for path, data in fresh:
            if path.parent not in dirs and not path.parent.is_dir():
                path.parent.mkdir(parents=True, exist_ok=True)
            dirs.add(path.parent)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if not group:
                    os.fsync(fd)
            finally:
                os.close(fd)
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

    def get(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self._path(key))
        except FileNotFoundError as exc:
            raise StorageError(f"blob {key} is missing from storage") from exc
        except OSError as exc:
            raise StorageError(f"could not read blob {key}: {exc}") from exc

    def exists(self, key: str) -> bool:
        try:
            return bool(self.fs.exists(self._path(key)))
        except OSError as exc:
            raise StorageError(f"could not check blob {key}: {exc}") from exc
