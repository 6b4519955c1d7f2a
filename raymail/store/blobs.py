"""Content-addressed blob storage over fsspec (``file://`` here, ``s3://`` later).

A blob's key is ``<kind>/<sha256[:2]>/<sha256>``; writing the same bytes twice
stores them once. Writes are atomic: a local blob is written under a temporary
name, fsync'd and renamed (then the directory is fsync'd); an object store gets a
single PUT. A crash never leaves a half blob under its final key.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import fsspec

from raymail.errors import StorageError


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
        key = blob_key(kind, hashlib.sha256(data).hexdigest())
        path = self._path(key)
        try:
            if self.local:
                self._put_local(Path(path), data)
            elif not self.fs.exists(path):
                self.fs.pipe_file(path, data)
        except OSError as exc:
            raise StorageError(f"could not store blob {key}: {exc}") from exc
        return key

    @staticmethod
    def _put_local(path: Path, data: bytes) -> None:
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

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
