"""CatalogWriter: buffering, flushing, compaction and validation on file:// and s3:// (moto)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import actors.catalog as catalog
from actors.catalog import SCHEMAS, CatalogWriter, apply_and_collect, list_parts, read_table
from raymail import config as config_mod
from raymail.errors import StorageError
from raymail.mailbox import ShardState
from raymail.model import (
    Address,
    AddUpload,
    AttachmentRef,
    Delete,
    Deliver,
    EmailMeta,
    ExpireUploads,
    Update,
)

# -- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_s3(moto):
    """A bucket on the session's S3-compatible server; yields (bucket, storage options)."""
    moto.bucket("catalog-tests")
    yield "catalog-tests", moto.options


@pytest.fixture(params=["file", "s3"])
def config(request, tmp_path) -> config_mod.Config:
    raw: dict = {"server": {"data_dir": str(tmp_path)}}
    if request.param == "s3":
        bucket, options = request.getfixturevalue("moto_s3")
        raw["storage"] = {"url": f"s3://{bucket}/{uuid.uuid4().hex}", "options": options}
    return config_mod.from_dict(raw)


@pytest.fixture
def local_config(tmp_path) -> config_mod.Config:
    return config_mod.from_dict({"server": {"data_dir": str(tmp_path)}})


def blob_row(i: int, **over) -> dict:
    row = {"attachment_id": f"a{i}", "blob": f"att/00/{i:064x}", "sha256": f"{i:064x}", "size": 100 + i,
           "content_type": "image/png", "filename": f"f{i}.png", "owner_uid": f"u{i % 3}", "ts": 1000.0 + i}
    return {**row, **over}


def ref_row(i: int, delta: int = 1, **over) -> dict:
    row = {"attachment_id": f"a{i}", "blob": f"att/00/{i:064x}", "sha256": f"{i:064x}", "size": 100 + i,
           "uid": f"u{i % 5}", "email_id": f"e{i}", "delta": delta, "ts": 2000.0 + i}
    return {**row, **over}


def ids(table: pa.Table) -> list[str]:
    return sorted(table.column("attachment_id").to_pylist())


# -- buffering and flushing ------------------------------------------------------------


def test_rows_stay_buffered_until_flush(config):
    w = CatalogWriter(config, flush_rows=100)
    w.add("blobs", [blob_row(i) for i in range(3)])
    w.add("refs", [ref_row(1), ref_row(1, delta=-1)])
    assert w.stats()["buffered_rows"] == {"blobs": 3, "refs": 2, "expired": 0, "collected": 0, "events": 0}
    assert list_parts(w.store, "blobs").live == []
    assert read_table(w.store, "blobs").num_rows == 0

    out = w.flush()
    assert out["rows"] == {"blobs": 3, "refs": 2}
    assert set(out["parts"]) == {"blobs", "refs"}
    assert out["parts"]["blobs"].startswith("catalog/blobs/part-") and out["parts"]["blobs"].endswith(".parquet")
    blobs = read_table(w.store, "blobs")
    assert blobs.schema == SCHEMAS["blobs"]
    assert blobs.to_pylist() == [blob_row(i) for i in range(3)]
    assert read_table(w.store, "refs").column("delta").to_pylist() == [1, -1]
    st = w.stats()
    assert st["buffered_rows"] == {"blobs": 0, "refs": 0, "expired": 0, "collected": 0, "events": 0}
    assert st["rows_written"] == {"blobs": 3, "refs": 2, "expired": 0, "collected": 0, "events": 0} and st["parts_written"] == {"blobs": 1, "refs": 1, "expired": 0, "collected": 0, "events": 0}
    assert st["background"] is False  # no event loop: nothing runs behind our back
    assert w.flush() == {"parts": {}, "rows": {}}


def test_a_full_buffer_flushes_that_table_only(config):
    w = CatalogWriter(config, flush_rows=5)
    w.add("refs", [ref_row(0)])
    w.add("blobs", [blob_row(i) for i in range(3)])
    assert list_parts(w.store, "blobs").live == []
    w.add("blobs", [blob_row(i) for i in range(3, 6)])
    assert len(list_parts(w.store, "blobs").live) == 1
    assert list_parts(w.store, "refs").live == []
    assert w.stats()["buffered_rows"] == {"blobs": 0, "refs": 1, "expired": 0, "collected": 0, "events": 0}
    assert ids(read_table(w.store, "blobs")) == sorted(f"a{i}" for i in range(6))


def test_part_files_are_parquet_under_catalog_and_no_temporaries_remain(local_config):
    w = CatalogWriter(local_config)
    w.add("blobs", [blob_row(1)])
    key = w.flush()["parts"]["blobs"]
    root = Path(w.store.root)
    assert pq.read_table(root / key).schema.equals(SCHEMAS["blobs"])
    assert list((root / "catalog" / "tmp").iterdir()) == []


def test_a_stale_local_temporary_is_swept_at_start(local_config):
    tmp = Path(local_config.storage_url.removeprefix("file://")) / "catalog" / "tmp"
    tmp.mkdir(parents=True)
    (tmp / "old.parquet").write_bytes(b"half")
    (tmp / "new.parquet").write_bytes(b"being written")
    old = time.time() - catalog.TMP_MAX_AGE_S - 10
    os.utime(tmp / "old.parquet", (old, old))
    CatalogWriter(local_config)
    assert sorted(p.name for p in tmp.iterdir()) == ["new.parquet"]


def test_a_failed_write_keeps_the_rows_for_the_next_flush(config, monkeypatch):
    w = CatalogWriter(config)
    w.add("blobs", [blob_row(1), blob_row(2)])
    real = catalog.write_part

    def broken(*args, **kwargs):
        raise StorageError("storage is down")

    monkeypatch.setattr(catalog, "write_part", broken)
    with pytest.raises(StorageError, match="storage is down"):
        w.flush()
    w.add("blobs", [blob_row(3)])
    st = w.stats()
    assert st["buffered_rows"]["blobs"] == 3 and st["flush_errors"] == 1 and "down" in st["last_error"]
    monkeypatch.setattr(catalog, "write_part", real)
    assert w.flush()["rows"] == {"blobs": 3}
    assert ids(read_table(w.store, "blobs")) == ["a1", "a2", "a3"]


def test_the_buffer_is_bounded_while_storage_fails(local_config, monkeypatch):
    w = CatalogWriter(local_config, flush_rows=1000, max_buffered_rows=4)

    def broken(*args, **kwargs):
        raise StorageError("down")

    monkeypatch.setattr(catalog, "write_part", broken)
    for i in range(6):
        w.add("refs", [ref_row(i)])
    st = w.stats()
    assert st["buffered_rows"]["refs"] == 4 and st["dropped_rows"]["refs"] == 2


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "rows", "message"),
    [
        ("attachments", [blob_row(1)], "unknown catalog table 'attachments'"),
        ("blobs", [{k: v for k, v in blob_row(1).items() if k != "owner_uid"}], "missing column(s) 'owner_uid'"),
        ("refs", [ref_row(1), {k: v for k, v in ref_row(2).items() if k not in ("uid", "ts")}],
         "row 1 is missing column(s) 'uid', 'ts'"),
        ("refs", [ref_row(1, delta=2)], "delta 2"),
        ("blobs", [blob_row(1, size="big")], "'blobs': a value does not fit"),
        ("blobs", ["not a row"], "row 0 is a str"),
    ],
)
def test_bad_rows_are_refused_naming_what_is_wrong(local_config, table, rows, message):
    w = CatalogWriter(local_config)
    with pytest.raises(ValueError) as exc:
        w.add(table, rows)
    assert message in str(exc.value)
    assert w.stats()["buffered_rows"] == {"blobs": 0, "refs": 0, "expired": 0, "collected": 0, "events": 0}


def test_extra_keys_are_ignored_and_an_empty_add_is_a_no_op(local_config):
    w = CatalogWriter(local_config)
    w.add("blobs", [])
    w.add("blobs", [{**blob_row(1), "note": "ignored"}])
    w.flush()
    assert read_table(w.store, "blobs").to_pylist() == [blob_row(1)]


# -- compaction ------------------------------------------------------------------------------


def _parts(w: CatalogWriter, table: str, n: int, per_part: int = 2) -> None:
    for p in range(n):
        w.add(table, [blob_row(p * per_part + i) for i in range(per_part)])
        w.flush()


def test_compaction_combines_parts_into_one(config):
    w = CatalogWriter(config)
    _parts(w, "blobs", 9)
    before = read_table(w.store, "blobs")
    out = w.compact("blobs", min_parts=8)
    assert out["compacted"] and out["parts"] == 9 and out["rows"] == 18 and out["deleted"] == 9
    parts = list_parts(w.store, "blobs")
    assert parts.replaced == [] and len(parts.live) == 1 and "/compact-" in parts.live[0]
    assert parts.live == [out["part"]]
    after = read_table(w.store, "blobs")
    assert after.schema == SCHEMAS["blobs"] and sorted(after.to_pylist(), key=str) == sorted(before.to_pylist(), key=str)


def test_compaction_waits_for_enough_parts(config):
    w = CatalogWriter(config)
    _parts(w, "blobs", 3)
    out = w.compact("blobs", min_parts=8)
    assert not out["compacted"] and out["parts"] == 3 and out["deleted"] == 0
    assert len(list_parts(w.store, "blobs").live) == 3
    assert w.compact("refs")["parts"] == 0
    with pytest.raises(ValueError, match="unknown catalog table"):
        w.compact("nope")


def test_a_crash_between_write_and_delete_never_counts_rows_twice(config, monkeypatch):
    w = CatalogWriter(config)
    _parts(w, "blobs", 4)
    monkeypatch.setattr(w.store, "delete", lambda key: (_ for _ in ()).throw(StorageError("crash")))
    out = w.compact("blobs", min_parts=2)
    assert out["compacted"] and out["deleted"] == 0
    parts = list_parts(w.store, "blobs")
    assert len(parts.live) == 1 and len(parts.replaced) == 4  # the old files are still there...
    assert ids(read_table(w.store, "blobs")) == sorted(f"a{i}" for i in range(8))  # ...and ignored
    monkeypatch.undo()

    # The next compaction, with new parts, supersedes the first one and cleans up everything.
    w.add("blobs", [blob_row(100)])
    w.flush()
    out = w.compact("blobs", min_parts=2)
    assert out["compacted"] and out["parts"] == 2 and out["deleted"] == 6
    parts = list_parts(w.store, "blobs")
    assert len(parts.live) == 1 and parts.replaced == []
    assert ids(read_table(w.store, "blobs")) == sorted([*(f"a{i}" for i in range(8)), "a100"])


def test_duckdb_reads_the_live_part_files_as_they_are(local_config, monkeypatch):
    """The parts are plain Parquet: DuckDB reads the live ones (``list_parts``) to the
    same rows, even while a crashed compaction's superseded files are still there."""
    import duckdb

    w = CatalogWriter(local_config)
    _parts(w, "blobs", 4)
    monkeypatch.setattr(w.store, "delete", lambda key: (_ for _ in ()).throw(StorageError("crash")))
    w.compact("blobs", min_parts=2)
    w.add("blobs", [blob_row(50)])
    w.flush()
    parts = list_parts(w.store, "blobs")
    assert len(parts.live) == 2 and len(parts.replaced) == 4
    files = [str(Path(w.store.root) / k) for k in parts.live]
    got = duckdb.sql(f"SELECT attachment_id, size FROM read_parquet({files}) ORDER BY attachment_id").fetchall()
    want = read_table(w.store, "blobs").sort_by("attachment_id")
    assert got == list(zip(want.column("attachment_id").to_pylist(), want.column("size").to_pylist()))
    assert len(got) == 9


def test_superseded_leftovers_are_removed_even_below_min_parts(local_config, monkeypatch):
    w = CatalogWriter(local_config)
    _parts(w, "blobs", 2)
    monkeypatch.setattr(w.store, "delete", lambda key: (_ for _ in ()).throw(StorageError("crash")))
    w.compact("blobs", min_parts=2)
    monkeypatch.undo()
    out = w.compact("blobs", min_parts=8)
    assert not out["compacted"] and out["deleted"] == 2
    assert list_parts(w.store, "blobs").replaced == []
    assert ids(read_table(w.store, "blobs")) == ["a0", "a1", "a2", "a3"]


# -- with an event loop (as the Ray actor runs) ---------------------------------------------


async def test_the_background_task_flushes_on_a_timer(local_config):
    w = CatalogWriter(local_config, flush_every_s=0.05, flush_rows=1000)
    assert w.stats()["background"] is True
    w.add("refs", [ref_row(1)])
    for _ in range(100):
        if list_parts(w.store, "refs").live:
            break
        await asyncio.sleep(0.02)
    assert ids(read_table(w.store, "refs")) == ["a1"]
    w.add("blobs", [blob_row(2)])
    out = await w.close()
    assert w.stats()["background"] is False
    assert out["rows"] == {"blobs": 1}
    assert ids(read_table(w.store, "blobs")) == ["a2"]


async def test_a_full_buffer_is_written_off_the_caller(local_config):
    w = CatalogWriter(local_config, flush_every_s=60, flush_rows=3)
    w.add("blobs", [blob_row(i) for i in range(3)])  # returns at once; a task writes the part
    assert w.stats()["buffered_rows"]["blobs"] == 0
    for _ in range(100):
        if list_parts(w.store, "blobs").live:
            break
        await asyncio.sleep(0.02)
    assert len(list_parts(w.store, "blobs").live) == 1
    assert (await w.ready())["rows_written"]["blobs"] == 3
    await w.close()


# -- rows from a shard's ops -------------------------------------------------------------------


def _ref(i: int) -> AttachmentRef:
    sha = f"{i:064x}"
    return AttachmentRef(id=f"att{i}", sha256=sha, size=10 * i, content_type="text/plain",
                         filename=f"f{i}.txt", blob=f"att/{sha[:2]}/{sha}")


def _email(email_id: str, *refs: AttachmentRef) -> EmailMeta:
    return EmailMeta(id=email_id, uid="", message_id=f"<{email_id}@x>", folder="inbox",
                     sender=Address("a@example.test"), to=(), cc=(), bcc=(), subject="s", snippet="",
                     date=1.0, size=10, unread=True, has_attachments=bool(refs), blob="msg/00/00",
                     attachments=refs)


def test_apply_and_collect_matches_plain_apply_and_yields_rows():
    ops = [
        AddUpload("alice", _ref(1), 10.0),
        AddUpload("alice", _ref(1), 11.0),  # a retry: no row
        Deliver("bob", _email("e1", _ref(1), _ref(2)), 12.0),
        Deliver("bob", _email("e1", _ref(1), _ref(2)), 12.0),  # a retry: no row
        Deliver("bob", _email("e2"), 13.0),  # no attachments: no row
        Update("bob", "e1", 14.0, unread=False),
        Delete("bob", "e1", 15.0),
        Delete("bob", "e1", 16.0),  # already gone: no row
        Delete("carol", "e9", 17.0),  # no mailbox: no row
    ]
    plain = ShardState(100)
    expected = [plain.apply(op) for op in ops]
    results, rows = apply_and_collect(ShardState(100), ops)
    assert [(r.ok, r.changed, r.event is None) for r in results] == [
        (r.ok, r.changed, r.event is None) for r in expected
    ]
    assert rows["blobs"] == [{"attachment_id": "att1", "blob": _ref(1).blob, "sha256": _ref(1).sha256, "size": 10,
                              "content_type": "text/plain", "filename": "f1.txt", "owner_uid": "alice", "ts": 10.0}]
    assert [(r["attachment_id"], r["uid"], r["email_id"], r["delta"], r["ts"]) for r in rows["refs"]] == [
        ("att1", "bob", "e1", 1, 12.0), ("att2", "bob", "e1", 1, 12.0),
        ("att1", "bob", "e1", -1, 15.0), ("att2", "bob", "e1", -1, 15.0),
    ]
    catalog.to_arrow("blobs", rows["blobs"])  # they fit the schemas
    catalog.to_arrow("refs", rows["refs"])


def test_expired_uploads_yield_a_row_each_once():
    ops = [AddUpload("alice", _ref(1), 10.0), AddUpload("alice", _ref(2), 11.0),
           ExpireUploads("alice", ("att1", "att9"), 20.0),  # att9 was never uploaded: no row
           ExpireUploads("alice", ("att1",), 21.0),  # a replay: no row
           ExpireUploads("nobody", ("att2",), 22.0)]
    _, rows = apply_and_collect(ShardState(100), ops)
    assert rows["expired"] == [{"attachment_id": "att1", "owner_uid": "alice", "ts": 20.0}]
    catalog.to_arrow("expired", rows["expired"])


def test_deliver_then_delete_in_one_batch_yields_both_rows():
    _, rows = apply_and_collect(ShardState(100), [Deliver("bob", _email("e1", _ref(3)), 1.0), Delete("bob", "e1", 2.0)])
    assert [r["delta"] for r in rows["refs"]] == [1, -1]


# -- the event log: partitioned by UTC day ------------------------------------------

DAY_S = 86_400


def event_row(ts: float, event: str = "delivered") -> dict:
    return {"ts": ts, "event": event, "message_id": f"<{ts}@x>", "sender": "a@x.test", "recipient_domain": "y.test",
            "pool": "tx", "ip": "10.0.0.1", "smtp_code": 250, "detail": ""}


def test_events_are_written_per_day_partition_and_compacted_per_partition(config):
    w = CatalogWriter(config)
    day1, day2 = 20_000 * DAY_S, 20_001 * DAY_S  # 2024-10-04 and 2024-10-05 (UTC)
    for i in range(3):
        w.add("events", [event_row(day1 + i), event_row(day2 + i)])
        w.flush()
    parts = list_parts(w.store, "events")
    folders = sorted({k.rsplit("/", 2)[-2] for k in parts.live})
    assert folders == ["day=2024-10-04", "day=2024-10-05"] and len(parts.live) == 6
    assert len(read_table(w.store, "events")) == 6
    out = w.compact("events", min_parts=3)
    assert out["compacted"] and out["rows"] == 6 and out["deleted"] == 6
    parts = list_parts(w.store, "events")
    assert len(parts.live) == 2 and all("/compact-" in k for k in parts.live)
    assert sorted({k.rsplit("/", 2)[-2] for k in parts.live}) == folders
    rows = read_table(w.store, "events").to_pylist()
    assert sorted(r["ts"] for r in rows) == sorted([day1 + i for i in range(3)] + [day2 + i for i in range(3)])


def test_a_failed_day_keeps_only_its_own_rows(local_config, monkeypatch):
    import actors.catalog as catalog_mod

    w = CatalogWriter(local_config)
    w.add("events", [event_row(20_000 * DAY_S), event_row(20_001 * DAY_S)])
    real = catalog_mod.write_part

    def flaky(store, table, rows, prefix="part", replaces=None, partition=""):
        if partition == "day=2024-10-05":
            raise StorageError("disk full")
        return real(store, table, rows, prefix, replaces, partition)

    monkeypatch.setattr(catalog_mod, "write_part", flaky)
    with pytest.raises(StorageError):
        w.flush()
    assert w.stats()["buffered_rows"]["events"] == 1
    monkeypatch.undo()
    w.flush()
    assert sorted(r["ts"] for r in read_table(w.store, "events").to_pylist()) == [20_000 * DAY_S, 20_001 * DAY_S]
