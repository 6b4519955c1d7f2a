"""gateway/blobwriter.py: group commit of message blobs, on the event loop when small."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

import gateway.blobwriter as bw
from gateway.blobwriter import BlobWriter
from raymail.errors import StorageError
from raymail.store.blobs import BlobStore, blob_key


@pytest.fixture
def store(tmp_path) -> BlobStore:
    return BlobStore((tmp_path / "blobs").as_uri())


def key_of(data: bytes) -> str:
    return blob_key("msg", hashlib.sha256(data).hexdigest())


async def test_concurrent_small_puts_share_inline_batches(store: BlobStore):
    w = BlobWriter(store, "msg")
    datas = [f"message {i}".encode() for i in range(20)]
    keys = await asyncio.gather(*(w.put(d) for d in datas))
    assert keys == [key_of(d) for d in datas]
    assert [store.get(k) for k in keys] == datas
    assert w.thread_batches == 0 and 1 <= w.inline_batches < 20  # together, not one by one


async def test_a_large_batch_is_written_in_a_thread(store: BlobStore):
    w = BlobWriter(store, "msg")
    big = b"x" * (bw.INLINE_BYTES + 1)
    assert await w.put(big) == key_of(big)
    assert store.get(key_of(big)) == big
    assert (w.inline_batches, w.thread_batches) == (0, 1)


async def test_after_a_slow_inline_batch_the_next_ones_go_to_a_thread(store: BlobStore, monkeypatch):
    monkeypatch.setattr(bw, "SLOW_INLINE_S", 0.0)  # every inline batch now counts as slow
    w = BlobWriter(store, "msg")
    await w.put(b"first")
    await w.put(b"second")
    await w.put(b"third")
    assert (w.inline_batches, w.thread_batches) == (1, 2)
    assert store.get(key_of(b"third")) == b"third"


async def test_a_failed_batch_fails_every_waiter_and_the_next_batch_works(store: BlobStore, tmp_path):
    w = BlobWriter(store, "msg")
    (tmp_path / "blobs" / "msg").write_bytes(b"a file where the blob directory belongs")
    results = await asyncio.gather(w.put(b"a"), w.put(b"b"), return_exceptions=True)
    assert all(isinstance(r, StorageError) for r in results), results
    (tmp_path / "blobs" / "msg").unlink()
    assert await w.put(b"a") == key_of(b"a")
    assert store.get(key_of(b"a")) == b"a"
