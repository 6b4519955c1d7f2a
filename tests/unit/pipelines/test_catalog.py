"""Storage statistics over the catalog: exact numbers on hand-made rows."""

from __future__ import annotations

import json

import pytest

from actors.catalog import SCHEMAS, CatalogWriter, to_arrow
from pipelines.catalog import compute_stats, format_stats, load_tables, query, storage_stats
from raymail import config as config_mod
from raymail.errors import StorageError

S1, S2 = "1" * 64, "2" * 64


@pytest.fixture
def config(tmp_path) -> config_mod.Config:
    return config_mod.from_dict({"server": {"data_dir": str(tmp_path)}})


def upload(att: str, sha: str, size: int, ctype: str, owner: str) -> dict:
    return {"attachment_id": att, "blob": f"att/{sha[:2]}/{sha}", "sha256": sha, "size": size,
            "content_type": ctype, "filename": f"{att}.bin", "owner_uid": owner, "ts": 1.0}


def ref(att: str, sha: str, size: int, uid: str, email: str, delta: int) -> dict:
    return {"attachment_id": att, "blob": f"att/{sha[:2]}/{sha}", "sha256": sha, "size": size,
            "uid": uid, "email_id": email, "delta": delta, "ts": 2.0}


UPLOADS = [
    upload("a1", S1, 1000, "image/png", "alice"),
    upload("a2", S1, 1000, "image/png", "bob"),  # the same bytes again: stored once
    upload("a3", S2, 300, "application/pdf", "alice"),
]
REFS = [
    ref("a1", S1, 1000, "bob", "e1", 1),
    ref("a1", S1, 1000, "carol", "e2", 1),
    ref("a1", S1, 1000, "carol", "e2", -1),  # carol deleted it: no longer hers
    ref("a1", S1, 1000, "alice", "e3", 1),  # alice's sent copy
    ref("a3", S2, 300, "carol", "e4", 1),
    ref("a3", S2, 300, "carol", "e5", 1),  # two messages, one attachment held: counted once
    ref("a3", S2, 300, "dave", "e6", 1),
    ref("a3", S2, 300, "dave", "e6", -1),
    ref("a3", S2, 300, "dave", "e7", 1),
]


def write(config: config_mod.Config, uploads: list[dict], refs: list[dict]) -> None:
    w = CatalogWriter(config)
    # Several parts and a compaction in between, as in production.
    w.add("blobs", uploads[:1])
    w.add("refs", refs[:3])
    w.flush()
    w.add("blobs", uploads[1:])
    w.add("refs", refs[3:])
    w.flush()
    w.compact("refs", min_parts=2)


def test_storage_stats_on_known_rows(config):
    write(config, UPLOADS, REFS)
    stats = storage_stats(config)
    # physical: S1 (1000) + S2 (300); logical: uploads 2300 + live refs
    # (bob,a1) 1000 + (alice,a1) 1000 + (carol,a3) 300 + (dave,a3) 300 = 2600
    assert stats["rows"] == {"blobs": 3, "refs": 9, "expired": 0, "collected": 0, "events": 0}
    assert stats["unique_blobs"] == 2
    assert stats["physical_bytes"] == 1300
    assert stats["uploads"] == 3 and stats["live_references"] == 4
    assert stats["logical_bytes"] == 4900
    assert stats["dedup_ratio"] == pytest.approx(4900 / 1300)
    assert stats["top_users"] == [
        {"uid": "alice", "logical_bytes": 2300, "attachments": 3},
        {"uid": "bob", "logical_bytes": 2000, "attachments": 2},
        {"uid": "carol", "logical_bytes": 300, "attachments": 1},
        {"uid": "dave", "logical_bytes": 300, "attachments": 1},
    ]
    assert stats["content_types"] == [
        {"content_type": "image/png", "count": 2, "bytes": 2000},
        {"content_type": "application/pdf", "count": 1, "bytes": 300},
    ]
    json.dumps(stats)  # plain types only


def test_a_query_runs_duckdb_sql_over_the_tables_it_names(config):
    write(config, UPLOADS, REFS)
    cols, rows = query(config, "SELECT owner_uid, count(*) AS n, sum(size) AS bytes FROM blobs "
                               "GROUP BY owner_uid ORDER BY owner_uid")
    assert cols == ["owner_uid", "n", "bytes"] and rows == [("alice", 2, 1300), ("bob", 1, 1000)]
    cols, rows = query(config, "SELECT uid FROM refs GROUP BY uid, attachment_id HAVING sum(delta) > 0 ORDER BY 1")
    assert rows == [("alice",), ("bob",), ("carol",), ("dave",)]
    assert query(config, "SELECT count(*) FROM collected") == (["count_star()"], [(0,)])
    _, rows = query(config, "SELECT * FROM range(10)", max_rows=4)
    assert rows == [(0,), (1,), (2,), (3,), (4,)]  # one more than asked: there are more


@pytest.mark.parametrize("sql, words", [("SELECT nope FROM blobs", "nope"), ("SELECT * FROM mail", "mail"),
                                        ("SELEC 1", "SELEC")])
def test_a_bad_query_says_what_is_wrong_and_which_tables_there_are(config, sql, words):
    write(config, UPLOADS, REFS)
    with pytest.raises(ValueError, match=words) as err:
        query(config, sql)
    assert "blobs, refs, expired, collected, events" in str(err.value)


def test_empty_catalog(config):
    tables = load_tables(config)
    assert {n: t.schema for n, t in tables.items()} == SCHEMAS
    assert all(t.num_rows == 0 for t in tables.values())
    stats = storage_stats(config)
    assert stats["dedup_ratio"] == 1.0
    assert (stats["unique_blobs"], stats["physical_bytes"], stats["logical_bytes"]) == (0, 0, 0)
    assert stats["top_users"] == [] and stats["content_types"] == []
    assert "dedup ratio      1.00" in format_stats(stats)


def test_expired_uploads_leave_the_logical_bytes_and_stay_counted_as_uploads():
    tables = {"blobs": to_arrow("blobs", UPLOADS), "refs": to_arrow("refs", REFS),
              "expired": to_arrow("expired", [{"attachment_id": "a3", "owner_uid": "alice", "ts": 5.0}])}
    stats = compute_stats(tables)
    assert stats["uploads"] == 3 and stats["expired_uploads"] == 1
    assert stats["logical_bytes"] == 4900 - 300  # alice's a3 upload no longer counts; carol's copy does
    assert stats["top_users"][0] == {"uid": "alice", "logical_bytes": 2000, "attachments": 2}
    assert "uploads          3 (1 expired)" in format_stats(stats)


def test_top_users_are_the_ten_largest():
    uploads = [upload(f"a{i}", f"{i:064x}", 100 * (i + 1), "text/plain", f"user{i:02d}") for i in range(12)]
    stats = compute_stats({"blobs": to_arrow("blobs", uploads)})
    assert [u["uid"] for u in stats["top_users"]] == [f"user{i:02d}" for i in range(11, 1, -1)]
    assert stats["dedup_ratio"] == 1.0  # nothing shared
    assert stats["content_types"] == [{"content_type": "text/plain", "count": 12, "bytes": 7800}]


def test_a_reference_whose_upload_row_was_lost_still_counts_as_stored():
    stats = compute_stats({"refs": to_arrow("refs", [ref("a9", S2, 50, "erin", "e1", 1)])})
    assert (stats["unique_blobs"], stats["physical_bytes"], stats["logical_bytes"]) == (1, 50, 50)


def collected(sha: str, size: int, ts: float) -> dict:
    return {"blob": f"att/{sha[:2]}/{sha}", "sha256": sha, "size": size, "ts": ts}


def test_blobs_garbage_collection_removed_are_no_longer_stored():
    S3 = "3" * 64
    tables = {
        "blobs": to_arrow("blobs", [upload("a1", S1, 1000, "image/png", "alice"),
                                    upload("a3", S2, 300, "application/pdf", "alice"),
                                    upload("a4", S3, 50, "text/plain", "bob")]),
        # S2 was collected after it was last seen; S3 was collected, then uploaded again.
        "collected": to_arrow("collected", [collected(S2, 300, 5.0), collected(S3, 50, 0.5)]),
    }
    stats = compute_stats(tables)
    assert (stats["unique_blobs"], stats["physical_bytes"]) == (2, 1050)
    assert (stats["collected_blobs"], stats["collected_bytes"]) == (2, 350)
    assert stats["uploads"] == 3  # a history: the uploads happened
    before = compute_stats({"blobs": tables["blobs"]})
    assert (before["unique_blobs"], before["physical_bytes"]) == (3, 1350)


def test_format_stats_is_a_readable_report(config):
    write(config, UPLOADS, REFS)
    text = format_stats(storage_stats(config))
    assert "unique blobs     2" in text
    assert "physical bytes   1300 (1.3 KiB)" in text
    assert "dedup ratio      3.77" in text
    assert text.index("alice") < text.index("bob") < text.index("carol")
    assert text.index("image/png") < text.index("application/pdf")


def test_an_unreadable_part_is_a_storage_error(config):
    write(config, UPLOADS, REFS)
    part = next((config.data_path / "blobs" / "catalog" / "blobs").glob("part-*.parquet"))
    part.write_bytes(b"not parquet")
    with pytest.raises(StorageError, match="catalog table 'blobs'"):
        load_tables(config)
