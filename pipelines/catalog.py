"""Storage statistics from the attachment catalog: dedup ratio, top users, content types.

Reads the Parquet parts written by ``actors.catalog.CatalogWriter`` through the
store's fsspec filesystem (so ``s3://`` works without DuckDB's httpfs extension)
and queries the Arrow tables with DuckDB.

Definitions:
- physical bytes: each distinct content (sha256) once, whoever holds it, unless
  garbage collection removed it after it was last seen (uploaded or referenced);
- logical bytes: what users would pay without deduplication: every upload still
  usable (not expired) once for its uploader, plus, per (user, attachment) whose
  net ``delta`` is positive (a mailbox holds at least one message carrying it), the
  attachment's size once;
- uploads: every upload ever made (expired ones included), and of those expired;
- dedup ratio: logical / physical (1.0 when nothing is stored);
- content types: per type, the number of uploads and the bytes uploaded;
- collected: the attachment blobs garbage collection removed, and their bytes.
"""

from __future__ import annotations

import re

import duckdb
import pyarrow as pa

from actors.catalog import SCHEMAS, read_table
from raymail.config import Config
from raymail.store.blobs import BlobStore

TOP_USERS = 10


def load_tables(config: Config) -> dict[str, pa.Table]:
    """Every row of every catalog table (superseded parts skipped; empty if none)."""
    store = BlobStore(config.storage_url, config.storage.options)
    return {table: read_table(store, table) for table in SCHEMAS}


def storage_stats(config: Config) -> dict:
    return compute_stats(load_tables(config))


MAX_QUERY_ROWS = 10_000


def query(config: Config, sql: str, max_rows: int = MAX_QUERY_ROWS) -> tuple[list[str], list[tuple]]:
    """Run DuckDB ``sql`` over the catalog: each table it names (``blobs``, ``refs``,
    ``expired``, ``collected``, ``events``) is read with its superseded parts skipped,
    as the statistics read it. Returns the column names and up to ``max_rows`` rows
    (one more when there are more, for the caller to say so);
    DuckDB's own errors are ``ValueError``s that say what is wrong."""
    store = BlobStore(config.storage_url, config.storage.options)
    named = {t for t in SCHEMAS if re.search(rf"\b{t}\b", sql, re.IGNORECASE)}
    con = duckdb.connect(":memory:")
    try:
        for table in named:  # only those asked for: the event log can be large
            con.register(table, read_table(store, table))
        try:
            cur = con.execute(sql)
            if cur.description is None:
                return [], []
            return [d[0] for d in cur.description], cur.fetchmany(max_rows + 1)
        except duckdb.Error as exc:
            known = ", ".join(SCHEMAS)
            raise ValueError(f"{exc} (the catalog's tables: {known})") from None
    finally:
        con.close()


_UPLOADS = """
    SELECT attachment_id, any_value(owner_uid) AS uid, any_value(size) AS size,
           coalesce(any_value(content_type), '(unknown)') AS content_type
    FROM blobs GROUP BY attachment_id
"""
_LIVE_UPLOADS = """
    SELECT * FROM uploads WHERE attachment_id NOT IN (SELECT attachment_id FROM expired)
"""
_LIVE_REFS = """
    SELECT uid, attachment_id, any_value(size) AS size
    FROM refs GROUP BY uid, attachment_id HAVING sum(delta) > 0
"""
_CONTENTS = """
    SELECT seen.sha256, max(seen.size) AS size
    FROM (SELECT sha256, size, ts FROM blobs UNION ALL SELECT sha256, size, ts FROM refs) seen
    LEFT JOIN (SELECT sha256, max(ts) AS ts FROM collected GROUP BY sha256) gone USING (sha256)
    GROUP BY seen.sha256
    HAVING max(seen.ts) > coalesce(any_value(gone.ts), -1)
"""


def compute_stats(tables: dict[str, pa.Table]) -> dict:
    """The statistics of the module docstring over in-memory catalog tables."""
    con = duckdb.connect(":memory:")
    try:
        for name, schema in SCHEMAS.items():
            con.register(name, tables.get(name, schema.empty_table()))
        con.execute(f"CREATE TEMP VIEW uploads AS {_UPLOADS}")
        con.execute(f"CREATE TEMP VIEW live_uploads AS {_LIVE_UPLOADS}")
        con.execute(f"CREATE TEMP VIEW live_refs AS {_LIVE_REFS}")
        con.execute(f"CREATE TEMP VIEW contents AS {_CONTENTS}")

        def one(sql: str) -> tuple:
            row = con.execute(sql).fetchone()
            assert row is not None
            return row

        blobs, physical = one("SELECT count(*), CAST(coalesce(sum(size), 0) AS BIGINT) FROM contents")
        uploads, expired = one("SELECT count(*), count(*) FILTER (attachment_id IN (SELECT attachment_id FROM expired)) "
                               "FROM uploads")
        upload_bytes, = one("SELECT CAST(coalesce(sum(size), 0) AS BIGINT) FROM live_uploads")
        live, live_bytes = one("SELECT count(*), CAST(coalesce(sum(size), 0) AS BIGINT) FROM live_refs")
        collected, collected_bytes = one("SELECT count(*), CAST(coalesce(sum(size), 0) AS BIGINT) FROM collected")
        users = con.execute(f"""
            SELECT uid, CAST(sum(size) AS BIGINT) AS logical_bytes, count(*) AS attachments
            FROM (SELECT uid, size FROM live_uploads UNION ALL SELECT uid, size FROM live_refs)
            GROUP BY uid ORDER BY logical_bytes DESC, uid LIMIT {TOP_USERS}
        """).fetchall()
        types = con.execute("""
            SELECT content_type, count(*) AS n, CAST(sum(size) AS BIGINT) AS bytes
            FROM uploads GROUP BY content_type ORDER BY bytes DESC, content_type
        """).fetchall()
    finally:
        con.close()
    logical = int(upload_bytes) + int(live_bytes)
    return {
        "rows": {name: tables[name].num_rows if name in tables else 0 for name in SCHEMAS},
        "uploads": int(uploads),
        "expired_uploads": int(expired),
        "live_references": int(live),
        "unique_blobs": int(blobs),
        "physical_bytes": int(physical),
        "logical_bytes": logical,
        "dedup_ratio": logical / physical if physical else 1.0,
        "collected_blobs": int(collected),
        "collected_bytes": int(collected_bytes),
        "top_users": [{"uid": u, "logical_bytes": int(b), "attachments": int(n)} for u, b, n in users],
        "content_types": [{"content_type": t, "count": int(n), "bytes": int(b)} for t, n, b in types],
    }


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable


def format_stats(stats: dict) -> str:
    """``storage_stats`` as a short report for people."""
    lines = [
        f"attachment storage ({stats['rows']['blobs']} upload rows, {stats['rows']['refs']} reference rows)",
        f"  unique blobs     {stats['unique_blobs']}",
        f"  physical bytes   {stats['physical_bytes']} ({_human(stats['physical_bytes'])})",
        f"  logical bytes    {stats['logical_bytes']} ({_human(stats['logical_bytes'])})",
        f"  dedup ratio      {stats['dedup_ratio']:.2f}",
        f"  uploads          {stats['uploads']} ({stats['expired_uploads']} expired), "
        f"live mailbox references {stats['live_references']}",
        f"  removed by gc    {stats['collected_blobs']} blobs ({_human(stats['collected_bytes'])})",
    ]
    if stats["top_users"]:
        lines.append(f"top {len(stats['top_users'])} users by logical bytes")
        for u in stats["top_users"]:
            lines.append(f"  {u['uid']:<36} {_human(u['logical_bytes']):>10}  {u['attachments']} attachments")
    if stats["content_types"]:
        lines.append("content types by bytes uploaded")
        for c in stats["content_types"]:
            lines.append(f"  {c['content_type']:<36} {_human(c['bytes']):>10}  {c['count']} uploads")
    return "\n".join(lines)
