"""Blob garbage collection: what goes, what stays, on file:// (with os.utime) and s3:// (moto)."""

from __future__ import annotations

import os
import sys
import time
import types
import uuid
from pathlib import Path

import pytest

import pipelines.gc as gc
from pipelines.gc import GcAborted, collect, referenced_keys
from raymail.store.blobs import BlobStore

NOW = 1_700_000_000.0
OLD = NOW - 7200
YOUNG = NOW - 60
GRACE_S = 3600.0


@pytest.fixture(scope="module")
def moto_s3(moto):
    """A bucket on the session's S3-compatible server; yields (bucket, storage options)."""
    moto.bucket("gc-tests")
    yield "gc-tests", moto.options


@pytest.fixture
def store(tmp_path) -> BlobStore:
    return BlobStore((tmp_path / "blobs").as_uri())


def place(store: BlobStore, key: str, data: bytes, mtime_s: float) -> str:
    path = Path(store.root) / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime_s, mtime_s))
    return key


def keys(store: BlobStore) -> set[str]:
    return {k for prefix in ("msg/", "att/", "tmp/", "catalog/") for k, _, _ in store.list(prefix)}


@pytest.fixture
def layout(store):
    """One object of each kind; returns (referenced keys, every key by name)."""
    k = {
        "ref_att": place(store, "att/aa/" + "a" * 64, b"A" * 10, OLD),
        "ref_msg": place(store, "msg/bb/" + "b" * 64, b"B" * 20, OLD),
        "old_att": place(store, "att/cc/" + "c" * 64, b"C" * 30, OLD),
        "old_msg": place(store, "msg/dd/" + "d" * 64, b"D" * 40, OLD),
        "young_att": place(store, "att/ee/" + "e" * 64, b"E" * 50, YOUNG),
        "old_tmp": place(store, "tmp/" + uuid.uuid4().hex, b"T" * 60, OLD),
        "young_tmp": place(store, "tmp/" + uuid.uuid4().hex, b"t" * 70, YOUNG),
        "old_writer_tmp": place(store, "att/ff/.ffff.0123.tmp", b"W" * 80, OLD),
        "catalog": place(store, "catalog/blobs/part-1-x.parquet", b"P" * 90, OLD),
        "catalog_tmp": place(store, "catalog/tmp/x.parquet", b"p" * 5, OLD),
    }
    return {k["ref_att"], k["ref_msg"]}, k


def test_collect_deletes_only_old_unreferenced_objects(store, layout):
    referenced, k = layout
    lines: list[str] = []
    out = collect(store, referenced, GRACE_S, now_s=NOW, progress=lines.append)
    assert keys(store) == {k["ref_att"], k["ref_msg"], k["young_att"], k["young_tmp"], k["catalog"], k["catalog_tmp"]}
    assert out["scanned"] == 8 and out["scanned_bytes"] == 10 + 20 + 30 + 40 + 50 + 60 + 70 + 80
    assert (out["kept"], out["kept_bytes"]) == (2, 30)
    assert (out["skipped_young"], out["skipped_young_bytes"]) == (2, 120)
    assert (out["deleted"], out["deleted_bytes"]) == (4, 30 + 40 + 60 + 80)
    assert out["errors"] == 0 and out["dry_run"] is False and out["cutoff_s"] == NOW - GRACE_S
    assert lines and "deleted 4" in lines[-1]


def test_dry_run_deletes_nothing_and_reports_the_same(store, layout):
    referenced, _ = layout
    before = keys(store)
    out = collect(store, referenced, GRACE_S, now_s=NOW, dry_run=True, progress=lambda _: None)
    assert keys(store) == before
    assert (out["deleted"], out["deleted_bytes"], out["dry_run"]) == (4, 210, True)


def test_a_referenced_key_is_kept_even_under_tmp(store):
    key = place(store, "tmp/keep-me", b"x", OLD)
    out = collect(store, {key}, 0, now_s=NOW, progress=lambda _: None)
    assert key in keys(store) and out["kept"] == 1 and out["deleted"] == 0


def test_a_zero_grace_period_still_spares_objects_from_the_future(store):
    place(store, "att/00/" + "0" * 64, b"x", NOW + 5)
    assert collect(store, set(), 0, now_s=NOW, progress=lambda _: None)["skipped_young"] == 1
    with pytest.raises(ValueError, match="grace_s"):
        collect(store, set(), -1, now_s=NOW)


def test_recheck_keeps_what_became_referenced_after_the_listing(store, layout):
    _, k = layout
    out = collect(store, set(), GRACE_S, now_s=NOW, progress=lambda _: None, recheck=lambda: {k["old_att"]})
    assert k["old_att"] in keys(store) and k["ref_att"] not in keys(store)
    assert out["kept"] == 1 and out["deleted"] == 5


def test_an_object_rewritten_after_the_listing_is_kept(store, layout):
    _, k = layout

    def touch() -> set[str]:  # runs between the listing and the deletes
        os.utime(Path(store.root) / k["old_msg"], (NOW, NOW))
        return set()

    out = collect(store, set(), GRACE_S, now_s=NOW, progress=lambda _: None, recheck=touch)
    assert k["old_msg"] in keys(store)
    assert out["skipped_young"] == 3 and out["deleted"] == 5


def test_progress_every_thousand_objects(store, monkeypatch):
    monkeypatch.setattr(gc, "PROGRESS_EVERY", 2)
    for i in range(5):
        place(store, f"att/{i:02d}/{i:064x}", b"x", OLD)
    lines: list[str] = []
    collect(store, set(), GRACE_S, now_s=NOW, progress=lines.append)
    assert [ln for ln in lines if ln.startswith("gc: scanned") and "so far" in ln] == [
        "gc: scanned 2 objects, 2 to delete so far", "gc: scanned 4 objects, 4 to delete so far",
    ]
    assert "gc: deleted 2 of 5 objects" in lines and "gc: deleted 4 of 5 objects" in lines
    monkeypatch.undo()
    assert gc.PROGRESS_EVERY == 1000


def test_an_empty_store(store):
    out = collect(store, set(), GRACE_S, progress=lambda _: None)
    assert out["scanned"] == 0 and out["deleted"] == 0


def test_collect_on_s3(moto_s3):
    bucket, options = moto_s3
    store = BlobStore(f"s3://{bucket}/{uuid.uuid4().hex}", options)
    kept = store.put("att", b"referenced")
    gone = store.put("att", b"orphan")
    msg = store.put("msg", b"orphan message")
    store.fs.pipe_file(f"{store.root}/tmp/{uuid.uuid4().hex}", b"stale upload")
    store.fs.pipe_file(f"{store.root}/catalog/blobs/part-1-x.parquet", b"catalog")
    # S3 modification times cannot be set: look from the future instead.
    young = collect(store, {kept}, GRACE_S, progress=lambda _: None)
    assert young["skipped_young"] == 3 and young["deleted"] == 0
    out = collect(store, {kept}, GRACE_S, now_s=time.time() + 2 * GRACE_S, progress=lambda _: None)
    assert (out["kept"], out["deleted"]) == (1, 3)
    remaining = {k for p in ("att/", "msg/", "tmp/", "catalog/") for k, _, _ in store.list(p)}
    assert remaining == {kept, "catalog/blobs/part-1-x.parquet"}
    assert gone not in remaining and msg not in remaining


def test_unfinished_multipart_uploads_are_aborted_after_the_grace_period(moto_s3):
    bucket, options = moto_s3
    store = BlobStore(f"s3://{bucket}/{uuid.uuid4().hex}", options)
    neighbour = BlobStore(f"s3://{bucket}/{uuid.uuid4().hex}", options)  # another deployment's root

    def begin(on: BlobStore, key: str) -> str:
        b, path, _ = on.fs.split_path(on._path(key))
        upload_id = on.fs.call_s3("create_multipart_upload", Bucket=b, Key=path)["UploadId"]
        on.fs.call_s3("upload_part", Bucket=b, Key=path, UploadId=upload_id, PartNumber=1, Body=b"x" * 1000)
        return upload_id

    left = begin(store, "att/ab/" + "a" * 64)  # a process stopped mid-upload
    catalog = begin(store, "catalog/blobs/part-9.parquet")  # not ours to touch
    other = begin(neighbour, "att/cd/" + "c" * 64)
    assert {u for _, u, _ in store.unfinished_uploads()} == {left, catalog}
    young = collect(store, set(), GRACE_S, progress=lambda _: None)
    assert (young["unfinished_uploads"], young["aborted_uploads"]) == (2, 0)
    later = time.time() + 2 * GRACE_S
    dry = collect(store, set(), GRACE_S, now_s=later, dry_run=True, progress=lambda _: None)
    assert dry["aborted_uploads"] == 1 and len(store.unfinished_uploads()) == 2
    lines: list[str] = []
    out = collect(store, set(), GRACE_S, now_s=later, progress=lines.append)
    assert out["aborted_uploads"] == 1 and out["errors"] == 0
    assert "aborted 1 of 2 unfinished multipart uploads" in lines[-1]
    assert {u for _, u, _ in store.unfinished_uploads()} == {catalog}
    assert {u for _, u, _ in neighbour.unfinished_uploads()} == {other}


def test_a_local_store_has_no_unfinished_uploads(store, layout):
    assert store.unfinished_uploads() == []
    out = collect(store, set(), GRACE_S, now_s=NOW, progress=lambda _: None)
    assert (out["unfinished_uploads"], out["aborted_uploads"]) == (0, 0)


# -- referenced_keys, against a stand-in for the ray module --------------------------------------


class _Ref:
    def __init__(self, value):
        self.value = value


class _Method:
    def __init__(self, value):
        self._value = value

    def remote(self):
        return _Ref(self._value)


class _Shard:
    def __init__(self, keys_):
        self.blob_keys = _Method(keys_)


def fake_ray(monkeypatch, shards: dict[str, list[str]], fail: bool = False) -> list[tuple]:
    calls: list[tuple] = []

    def get_actor(name, namespace=None):
        calls.append((name, namespace))
        if name not in shards:
            raise ValueError(f"Failed to look up actor {name}")
        return _Shard(shards[name])

    def get(refs, timeout=None):
        if fail:
            raise TimeoutError("GetTimeoutError")
        return [r.value for r in refs]

    mod = types.SimpleNamespace(get_actor=get_actor, get=get, is_initialized=lambda: False)
    monkeypatch.setitem(sys.modules, "ray", mod)
    return calls


def test_referenced_keys_unions_every_shard(monkeypatch):
    calls = fake_ray(monkeypatch, {"shard-0": ["att/a", "msg/b"], "shard-1": ["msg/b", "msg/c"]})
    assert referenced_keys("ns", 2) == {"att/a", "msg/b", "msg/c"}
    assert calls == [("shard-0", "ns"), ("shard-1", "ns"), ("shard-2", "ns")]


@pytest.mark.parametrize(
    ("shards", "count", "fail", "message"),
    [
        ({"shard-0": []}, 2, False, "shard-1 is not running"),
        ({"shard-0": [], "shard-1": [], "shard-2": []}, 2, False, "shard-2 exists"),
        ({"shard-0": []}, 1, True, "did not report"),
    ],
)
def test_referenced_keys_refuses_an_incomplete_picture(monkeypatch, shards, count, fail, message):
    fake_ray(monkeypatch, shards, fail=fail)
    with pytest.raises(GcAborted, match=message):
        referenced_keys("ns", count)
