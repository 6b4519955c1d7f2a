"""raymail/store/blobs.py: content-addressed blobs on a file:// URL."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from raymail.errors import StorageError
from raymail.store.blobs import BlobStore, blob_key


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "blobs"


@pytest.fixture
def store(root: Path) -> BlobStore:
    return BlobStore(root.as_uri())


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_constructor_creates_the_root(root: Path):
    BlobStore(root.as_uri())
    assert root.is_dir()


@pytest.mark.parametrize("data", [b"hello", b"", b"\x00\xff" * 1000, "ünïcode".encode()])
def test_put_returns_content_addressed_key_and_get_round_trips(store: BlobStore, root: Path, data: bytes):
    digest = hashlib.sha256(data).hexdigest()
    key = store.put("msg", data)
    assert key == f"msg/{digest[:2]}/{digest}"
    assert re.fullmatch(r"msg/[0-9a-f]{2}/[0-9a-f]{64}", key)
    assert (root / key).read_bytes() == data
    assert store.get(key) == data
    assert store.exists(key)


def test_same_bytes_twice_is_one_file(store: BlobStore, root: Path):
    k1 = store.put("att", b"same bytes")
    inode = (root / k1).stat().st_ino
    k2 = store.put("att", b"same bytes")
    assert (root / k1).stat().st_ino == inode  # not written again
    k3 = store.put("att", b"other bytes")
    assert k1 == k2 != k3
    assert all_files(root) == sorted([root / k1, root / k3])


def test_a_message_blob_stored_twice_is_still_one_file(store: BlobStore, root: Path):
    # Message blobs carry their own trace headers, so they are written without
    # looking for an existing copy first; the same bytes again replace it atomically.
    k1 = store.put("msg", b"same bytes")
    k2 = store.put("msg", b"same bytes")
    assert k1 == k2
    assert all_files(root) == [root / k1]
    assert store.get(k1) == b"same bytes"


def test_a_removed_fan_out_directory_is_made_again(store: BlobStore, root: Path):
    key = store.put("msg", b"first")
    (root / key).unlink()
    (root / key).parent.rmdir()
    again = store.put("msg", b"first")
    assert store.get(again) == b"first"


def test_no_temporary_files_are_left(store: BlobStore, root: Path):
    for i in range(20):
        store.put("msg", f"blob {i}".encode())
    files = all_files(root)
    assert len(files) == 20
    assert not [p for p in files if p.name.endswith(".tmp") or p.name.startswith(".")]


def test_missing_key_raises_storage_error(store: BlobStore):
    key = blob_key("msg", "0" * 64)
    assert not store.exists(key)
    with pytest.raises(StorageError, match="missing"):
        store.get(key)


def test_blob_key():
    assert blob_key("att", "abcdef") == "att/ab/abcdef"


def test_a_second_store_on_the_same_url_reads_the_blobs(root: Path):
    key = BlobStore(root.as_uri()).put("msg", b"shared")
    assert BlobStore(root.as_uri()).get(key) == b"shared"


def test_put_many(store: BlobStore, root: Path):
    first = store.put("att", b"already there")
    inode = (root / first).stat().st_ino
    items = [b"one", b"two", b"one", b"already there", b""]
    keys = store.put_many("att", items)
    assert keys == [blob_key("att", hashlib.sha256(d).hexdigest()) for d in items]
    assert keys[0] == keys[2] and keys[3] == first
    assert [store.get(k) for k in keys] == items
    assert (root / first).stat().st_ino == inode
    assert len(all_files(root)) == 4
    assert not [p for p in all_files(root) if p.name.endswith(".tmp")]
