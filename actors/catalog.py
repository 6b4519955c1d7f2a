"""CatalogWriter: buffers attachment facts and writes them to storage as Parquet.

The catalog is two append-only tables under ``<root>/catalog/<table>/`` in blob
storage, read by ``pipelines/catalog.py`` (storage statistics):

- ``blobs``: one row per upload (who uploaded which content, its type and size);
- ``refs``: one row per change of a mailbox's attachments: ``delta`` is +1 when a
  mailbox gains a message carrying the attachment, -1 when that message is deleted;
- ``expired``: one row per upload that can no longer be named in a send (expired
  after ``mailbox.upload_ttl_s``, or withdrawn when its blob failed).

Layout and the compaction rule (shared by the writer and every reader):

- A flush writes ``part-<epoch_ms>-<random>.parquet``. The ``events`` table is
  partitioned by UTC day: its parts live in ``events/day=YYYY-MM-DD/`` (Hive
  style, so DuckDB and pyarrow datasets can prune by day); a flush writes one
  part per day its rows fall on, and compaction works per partition.
- A compaction reads the live parts, writes their rows as one
  ``compact-<epoch_ms>-<random>.parquet`` whose Parquet key-value metadata
  (``raymail.catalog.replaces``) names every part file it supersedes, and only
  then deletes those files. Readers skip every file named by a compacted part
  that is present, so a crash between the write and the deletes leaves files that
  are ignored (and removed by the next compaction), never rows counted twice.
  This is exact, unlike de-duplicating rows, which have no natural key.
- Writes are atomic: a local part is written under ``catalog/tmp/``, fsync'd and
  renamed; an object store gets a single PUT (S3 shows an object only once
  complete). Garbage collection never touches ``catalog/``.

Nothing here imports Ray; ``cluster/deploy.py`` applies ``ray.remote``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raymail.config import Config
from raymail.errors import StorageError
from raymail.mailbox import ShardState
from raymail.model import AddUpload, Delete, Deliver, EmailMeta, ExpireUploads, Op, OpResult
from raymail.store.blobs import BlobStore
from raymail.store.log import fsync_dir, write_new_file

log = logging.getLogger(__name__)

CATALOG_PREFIX = "catalog"
REPLACES_KEY = b"raymail.catalog.replaces"
TMP_MAX_AGE_S = 3600.0  # a local catalog/tmp/ file this old is left over from a crash

SCHEMAS: dict[str, pa.Schema] = {
    "blobs": pa.schema(
        [
            ("attachment_id", pa.string()),
            ("blob", pa.string()),
            ("sha256", pa.string()),
            ("size", pa.int64()),
            ("content_type", pa.string()),
            ("filename", pa.string()),
            ("owner_uid", pa.string()),
            ("ts", pa.float64()),
        ]
    ),
    "refs": pa.schema(
        [
            ("attachment_id", pa.string()),
            ("blob", pa.string()),
            ("sha256", pa.string()),
            ("size", pa.int64()),
            ("uid", pa.string()),
            ("email_id", pa.string()),
            ("delta", pa.int8()),
            ("ts", pa.float64()),
        ]
    ),
    "expired": pa.schema(
        [
            ("attachment_id", pa.string()),
            ("owner_uid", pa.string()),
            ("ts", pa.float64()),
        ]
    ),
    # Attachment blobs garbage collection removed from storage (``raymail storage
    # gc``): what was seen before ``ts`` is no longer stored.
    "collected": pa.schema(
        [
            ("blob", pa.string()),
            ("sha256", pa.string()),
            ("size", pa.int64()),
            ("ts", pa.float64()),
        ]
    ),
    # The mail event log (DESIGN.md "Outbound"): one row per step of a message.
    "events": pa.schema(
        [
            ("ts", pa.float64()),
            ("event", pa.string()),  # accepted | rejected | tempfailed | (outbound: queued, delivered, ...)
            ("message_id", pa.string()),
            ("sender", pa.string()),
            ("recipient_domain", pa.string()),
            ("pool", pa.string()),
            ("ip", pa.string()),
            ("smtp_code", pa.int32()),
            ("detail", pa.string()),
        ]
    ),
}


# Tables partitioned by the UTC day of their ``ts`` column.
DAY_PARTITIONED = frozenset({"events"})


def day_partition(ts_s: float) -> str:
    return "day=" + time.strftime("%Y-%m-%d", time.gmtime(ts_s))


def split_by_day(rows: pa.Table) -> dict[str, pa.Table]:
    """``rows`` split by the UTC day of ``ts``: {"day=YYYY-MM-DD": rows of that day}."""
    days = [day_partition(t) for t in rows.column("ts").to_pylist()]
    if len(set(days)) == 1:
        return {days[0]: rows}
    out: dict[str, list[int]] = {}
    for i, d in enumerate(days):
        out.setdefault(d, []).append(i)
    return {d: rows.take(pa.array(idx)) for d, idx in out.items()}


def schema_of(table: str) -> pa.Schema:
    try:
        return SCHEMAS[table]
    except (KeyError, TypeError):
        raise ValueError(f"unknown catalog table {table!r}; known: {', '.join(SCHEMAS)}") from None


def to_arrow(table: str, rows: list[dict]) -> pa.Table:
    """``rows`` as an Arrow table of ``table``'s schema; ValueError naming what is wrong."""
    schema = schema_of(table)
    names = schema.names
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"catalog table {table!r}: row {i} is a {type(row).__name__}, not a dict")
        missing = [n for n in names if n not in row]
        if missing:
            raise ValueError(f"catalog table {table!r}: row {i} is missing column(s) {', '.join(map(repr, missing))}")
        if table == "refs" and row["delta"] not in (1, -1):
            raise ValueError(f"catalog table 'refs': row {i} has delta {row['delta']!r}; it must be +1 or -1")
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as exc:
        raise ValueError(f"catalog table {table!r}: a value does not fit the schema: {exc}") from None


# -- the rows a shard's ops produce -----------------------------------------


def apply_and_collect(state: ShardState, ops: list[Op]) -> tuple[list[OpResult], dict[str, list[dict]]]:
    """Apply ``ops`` in order (as ``[state.apply(op) for op in ops]``) and return the
    results with the catalog rows of the ops that changed something.

    A deleted email's attachments are read just before its delete applies, so a
    batch that delivers and deletes the same email yields +1 then -1.
    """
    results: list[OpResult] = []
    rows: dict[str, list[dict]] = {"blobs": [], "refs": [], "expired": []}
    for op in ops:
        gone: EmailMeta | None = None
        ending: list[str] = []
        if isinstance(op, Delete) and (mb := state.peek(op.uid)) is not None:
            gone = mb.emails.get(op.email_id)
        elif isinstance(op, ExpireUploads) and (mb := state.peek(op.uid)) is not None:
            ending = [i for i in op.ids if i in mb.uploads]
        res = state.apply(op)
        results.append(res)
        if not res.ok:
            continue
        if isinstance(op, AddUpload) and res.changed:
            ref = op.attachment
            rows["blobs"].append({
                "attachment_id": ref.id, "blob": ref.blob, "sha256": ref.sha256, "size": ref.size,
                "content_type": ref.content_type, "filename": ref.filename, "owner_uid": op.uid, "ts": op.ts,
            })
        elif isinstance(op, Deliver) and res.event is not None:
            rows["refs"].extend(_ref_rows(op.uid, op.email, +1, op.ts))
        elif isinstance(op, Delete) and res.event is not None and gone is not None:
            rows["refs"].extend(_ref_rows(op.uid, gone, -1, op.ts))
        elif ending and res.changed:
            rows["expired"].extend({"attachment_id": i, "owner_uid": op.uid, "ts": op.ts} for i in ending)
    return results, rows


def _ref_rows(uid: str, meta: EmailMeta, delta: int, ts: float) -> list[dict]:
    return [
        {"attachment_id": ref.id, "blob": ref.blob, "sha256": ref.sha256, "size": ref.size,
         "uid": uid, "email_id": meta.id, "delta": delta, "ts": ts}
        for ref in meta.attachments
    ]


# -- storage layout ----------------------------------------------------------


def table_key(table: str) -> str:
    schema_of(table)
    return f"{CATALOG_PREFIX}/{table}"


@dataclass(frozen=True)
class Parts:
    """The part files of one table: ``live`` are read, ``replaced`` are superseded
    by a compacted part and ignored. Keys are relative to the store's root."""

    live: list[str]
    replaced: list[str]


def _part_ms(key: str) -> int:
    try:
        return int(key.rsplit("/", 1)[-1].split("-")[1])
    except (IndexError, ValueError):
        return 0


def list_parts(store: BlobStore, table: str) -> Parts:
    """The live and superseded part files of ``table``, oldest first."""
    keys = [
        k for k, _, _ in store.list(table_key(table) + "/")
        if k.endswith(".parquet") and k.rsplit("/", 1)[-1].startswith(("part-", "compact-"))
    ]
    keys.sort(key=lambda k: (_part_ms(k), k))
    replaced: set[str] = set()
    for key in keys:
        folder, _, name = key.rpartition("/")
        if name.startswith("compact-"):  # the names it replaces sit in its own folder (partition)
            replaced.update(f"{folder}/{n}" for n in _replaces(store, key))
    return Parts([k for k in keys if k not in replaced], [k for k in keys if k in replaced])


def _replaces(store: BlobStore, key: str) -> list[str]:
    try:
        with store.fs.open(f"{store.root}/{key}", "rb") as fh:
            meta = pq.ParquetFile(fh).schema_arrow.metadata or {}
    except FileNotFoundError:
        return []  # deleted meanwhile by a compaction that superseded it
    except Exception as exc:  # noqa: BLE001 - mapped at the boundary
        raise StorageError(f"could not read catalog part {key}: {exc}") from exc
    raw = meta.get(REPLACES_KEY)
    return list(json.loads(raw)) if raw else []


def read_parts(store: BlobStore, table: str, keys: list[str]) -> pa.Table:
    """The rows of the given part files, conformed to ``table``'s schema."""
    schema = schema_of(table)
    if not keys:
        return schema.empty_table()
    paths = [f"{store.root}/{k}" for k in keys]
    try:
        blobs = store.fs.cat(paths)  # concurrent on object stores
        if not isinstance(blobs, dict):
            blobs = {paths[0]: blobs}
        tables = [_conform(pq.read_table(pa.BufferReader(blobs[p])), schema) for p in paths]
    except Exception as exc:  # noqa: BLE001
        raise StorageError(f"could not read the catalog table {table!r}: {exc}") from exc
    return pa.concat_tables(tables)


def read_table(store: BlobStore, table: str) -> pa.Table:
    """Every row of ``table`` (superseded parts skipped); an empty table if none."""
    return read_parts(store, table, list_parts(store, table).live)


def _conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    cols = [
        t.column(f.name).cast(f.type) if f.name in t.column_names else pa.nulls(t.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(cols, schema=schema)


def write_part(store: BlobStore, table: str, rows: pa.Table, prefix: str = "part",
               replaces: list[str] | None = None, partition: str = "") -> str:
    """Write ``rows`` atomically as a new part file of ``table`` (in ``partition``, a
    folder such as ``day=2026-11-29``); returns its key."""
    name = f"{prefix}-{int(time.time() * 1000)}-{uuid.uuid4().hex[:12]}.parquet"
    key = f"{table_key(table)}/{partition + '/' if partition else ''}{name}"
    if replaces is not None:
        rows = rows.replace_schema_metadata({REPLACES_KEY: json.dumps(replaces).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(rows, sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    final = f"{store.root}/{key}"
    try:
        if store.local:
            tmp = Path(store.root) / CATALOG_PREFIX / "tmp" / f"{uuid.uuid4().hex}.parquet"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            Path(final).parent.mkdir(parents=True, exist_ok=True)
            write_new_file(tmp, data)
            os.replace(tmp, final)
            fsync_dir(Path(final).parent)
        else:
            store.fs.pipe_file(final, data)  # one PUT (or a multipart upload): all or nothing
    except Exception as exc:  # noqa: BLE001
        raise StorageError(f"could not write catalog part {key}: {exc}") from exc
    return key


# -- the actor ----------------------------------------------------------------


class CatalogWriter:
    """Buffers catalog rows in memory and writes them as Parquet parts.

    Guarantees:
    - ``add`` validates at once (ValueError naming the table or column) and never
      does storage I/O on the caller's behalf when an event loop runs: rows are
      written by a background task every ``flush_every_s``, or as soon as a
      table's buffer reaches ``flush_rows``.
    - A part appears whole or not at all; a failed write keeps its rows buffered
      for the next flush (at most ``max_buffered_rows`` per table: past that the
      oldest rows are dropped and counted in ``stats()``).
    - Best effort, not durable: rows buffered when the process dies are lost. The
      catalog feeds statistics; garbage collection never relies on it.
    - One writer per catalog: compactions are serialised inside this object only.

    Without a running event loop (unit tests, scripts) nothing happens in the
    background: ``flush()`` and ``compact()`` do the work when called. At least one
    method is ``async`` so that Ray runs this as an async actor (one thread).
    """

    def __init__(self, config: Config, flush_every_s: float = 2.0, flush_rows: int = 5000,
                 compact_every_s: float = 600.0, max_buffered_rows: int | None = None) -> None:
        if flush_every_s <= 0 or flush_rows <= 0:
            raise ValueError("CatalogWriter: flush_every_s and flush_rows must be positive")
        self.config = config
        self.flush_every_s = flush_every_s
        self.flush_rows = flush_rows
        self.compact_every_s = compact_every_s
        self.max_buffered_rows = max_buffered_rows or 20 * flush_rows
        self.store = BlobStore(config.storage_url, config.storage.options)
        self._chunks: dict[str, list[pa.Table]] = {t: [] for t in SCHEMAS}
        self._buffered: dict[str, int] = dict.fromkeys(SCHEMAS, 0)
        self._counters_lock = threading.Lock()
        self._compact_lock = threading.Lock()
        self._rows_written: dict[str, int] = dict.fromkeys(SCHEMAS, 0)
        self._parts_written: dict[str, int] = dict.fromkeys(SCHEMAS, 0)
        self._dropped_rows: dict[str, int] = dict.fromkeys(SCHEMAS, 0)
        self._flush_errors = 0
        self._adds = 0  # calls that brought rows
        self._last_error: str | None = None
        self._task: asyncio.Task | None = None
        self._flushes: set[asyncio.Task] = set()
        self._sweep_tmp()
        self._ensure_background()

    # -- messages ------------------------------------------------------------
    def add(self, table: str, rows: list[dict]) -> None:
        """Buffer ``rows`` for ``table``; flushes that table once it holds ``flush_rows``."""
        chunk = to_arrow(table, rows)
        if chunk.num_rows == 0:
            return
        self._adds += 1
        self._chunks[table].append(chunk)
        self._buffered[table] += chunk.num_rows
        self._trim(table)
        loop = self._ensure_background()
        if self._buffered[table] >= self.flush_rows:
            if loop is not None:
                # Taken now, so later adds start a new buffer instead of re-triggering this one.
                task = loop.create_task(self._write_async(self._take([table])))
                self._flushes.add(task)
                task.add_done_callback(self._flushes.discard)
            else:
                try:
                    self._flush_tables([table])
                except StorageError:
                    pass  # kept buffered; recorded in stats(); an explicit flush() raises

    def flush(self) -> dict:
        """Write every non-empty buffer now: ``{"parts": {table: key}, "rows": {table: n}}``.

        Raises StorageError if a table could not be written (its rows stay buffered).
        """
        return self._flush_tables(list(SCHEMAS))

    def compact(self, table: str, min_parts: int = 8) -> dict:
        """Combine ``table``'s live parts into one once there are at least ``min_parts``.

        Write first, delete after: see the module docstring for why a crash in
        between never makes readers count a row twice. Superseded files left by an
        earlier crash are deleted whatever the count.
        """
        schema_of(table)
        with self._compact_lock:
            parts = list_parts(self.store, table)
            out: dict[str, Any] = {"table": table, "parts": len(parts.live), "compacted": False,
                                   "part": None, "rows": 0, "deleted": 0}
            doomed = list(parts.replaced)
            base = table_key(table)
            folders: dict[str, list[str]] = {}
            for key in parts.live:
                folders.setdefault(key.rpartition("/")[0], []).append(key)
            for folder, live in sorted(folders.items()):
                if len(live) < max(2, min_parts):
                    continue
                rows = read_parts(self.store, table, live)
                stale = [k for k in parts.replaced if k.rpartition("/")[0] == folder]
                names = [k.rsplit("/", 1)[-1] for k in live + stale]
                partition = folder[len(base) + 1 :] if folder != base else ""
                out["part"] = write_part(self.store, table, rows, prefix="compact", replaces=names,
                                         partition=partition)
                out["compacted"] = True
                out["rows"] += rows.num_rows
                doomed += live
            for key in doomed:
                try:
                    self.store.delete(key)
                    out["deleted"] += 1
                except StorageError as exc:  # ignored by readers; the next compaction retries
                    log.warning("catalog: could not delete superseded part %s: %s", key, exc)
            if out["compacted"]:
                log.info("catalog: compacted %d parts of %r into %s (%d rows)",
                         len(parts.live), table, out["part"], out["rows"])
            return out

    def stats(self) -> dict:
        with self._counters_lock:
            return {
                "buffered_rows": dict(self._buffered),
                "rows_written": dict(self._rows_written),
                "parts_written": dict(self._parts_written),
                "dropped_rows": dict(self._dropped_rows),
                "flush_errors": self._flush_errors,
                "adds": self._adds,
                "last_error": self._last_error,
                "background": self._task is not None and not self._task.done(),
            }

    async def ready(self) -> dict:
        """Starts the background flusher if the constructor could not; returns ``stats()``."""
        self._ensure_background()
        return self.stats()

    async def close(self) -> dict:
        """Stop the background task and flush what is buffered (call before killing the actor)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
        return await self._flush_async(list(SCHEMAS))

    # -- flushing --------------------------------------------------------------
    def _ensure_background(self) -> asyncio.AbstractEventLoop | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._background())
        return loop

    async def _background(self) -> None:
        last_compact_s = time.monotonic()
        while True:
            await asyncio.sleep(self.flush_every_s)
            try:
                await self._flush_async(list(SCHEMAS))
            except Exception:  # noqa: BLE001 - keep flushing; rows stay buffered
                log.warning("catalog: background flush failed", exc_info=True)
            if self.compact_every_s > 0 and time.monotonic() - last_compact_s >= self.compact_every_s:
                last_compact_s = time.monotonic()
                for table in SCHEMAS:
                    try:
                        await asyncio.to_thread(self.compact, table)
                    except Exception:  # noqa: BLE001
                        log.warning("catalog: compaction of %r failed", table, exc_info=True)

    def _take(self, tables: list[str]) -> dict[str, list[pa.Table]]:
        taken = {}
        for t in tables:
            if self._chunks[t]:
                taken[t] = self._chunks[t]
                self._chunks[t] = []
                self._buffered[t] = 0
        return taken

    def _give_back(self, failed: dict[str, list[pa.Table]]) -> None:
        for t, chunks in failed.items():
            self._chunks[t] = chunks + self._chunks[t]
            self._buffered[t] += sum(c.num_rows for c in chunks)
            self._trim(t)

    def _trim(self, table: str) -> None:
        while self._buffered[table] > self.max_buffered_rows and len(self._chunks[table]) > 1:
            dropped = self._chunks[table].pop(0)
            self._buffered[table] -= dropped.num_rows
            with self._counters_lock:
                self._dropped_rows[table] += dropped.num_rows
            log.warning("catalog: dropped %d buffered %r rows (storage failing, buffer full)",
                        dropped.num_rows, table)

    def _write(self, taken: dict[str, list[pa.Table]]) -> tuple[dict, dict[str, list[pa.Table]], list[str]]:
        """Runs off the event loop: writes the parts; touches no buffer."""
        result: dict[str, dict] = {"parts": {}, "rows": {}}
        failed: dict[str, list[pa.Table]] = {}
        errors: list[str] = []
        for t, chunks in taken.items():
            rows = pa.concat_tables(chunks)
            # One part per table, or per day for a partitioned table; a part that fails
            # keeps only its own rows buffered (written ones must not come back).
            pieces = sorted(split_by_day(rows).items()) if t in DAY_PARTITIONED else [("", rows)]
            for partition, piece in pieces:
                try:
                    key = write_part(self.store, t, piece, partition=partition)
                except StorageError as exc:
                    failed.setdefault(t, []).append(piece)
                    errors.append(str(exc))
                    with self._counters_lock:
                        self._flush_errors += 1
                        self._last_error = str(exc)
                    log.warning("catalog: %s; %d rows stay buffered", exc, piece.num_rows)
                    continue
                result["parts"][t] = key
                result["rows"][t] = result["rows"].get(t, 0) + piece.num_rows
                with self._counters_lock:
                    self._rows_written[t] += piece.num_rows
                    self._parts_written[t] += 1
        return result, failed, errors

    def _flush_tables(self, tables: list[str]) -> dict:
        result, failed, errors = self._write(self._take(tables))
        self._give_back(failed)
        if errors:
            raise StorageError("; ".join(errors))
        return result

    async def _flush_async(self, tables: list[str]) -> dict:
        return await self._write_async(self._take(tables))

    async def _write_async(self, taken: dict[str, list[pa.Table]]) -> dict:
        if not taken:
            return {"parts": {}, "rows": {}}
        result, failed, _ = await asyncio.to_thread(self._write, taken)
        self._give_back(failed)  # back on the loop: buffers change on one thread only
        return result

    def _sweep_tmp(self) -> None:
        """Remove local ``catalog/tmp/`` files left by a crash mid-write (best effort)."""
        cutoff = time.time() - TMP_MAX_AGE_S
        try:
            for key, _, mtime_s in self.store.list(f"{CATALOG_PREFIX}/tmp/"):
                if mtime_s < cutoff:
                    self.store.delete(key)
        except StorageError as exc:
            log.warning("catalog: could not sweep %s/tmp/: %s", CATALOG_PREFIX, exc)
