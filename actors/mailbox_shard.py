"""MailboxShard: hosts the per-user mailboxes whose uid hashes to this shard."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from actors.catalog import apply_and_collect
from raymail import codec
from raymail.config import Config
from raymail.errors import StorageError
from raymail.link import LinkServer
from raymail.mailbox import ShardState
from raymail.model import AttachmentRef, Delete, Deliver, EmailMeta, Event
from raymail.search import SearchQuery
from raymail.sharding import LINK_READS
from raymail.store.index import SearchIndex, search_mailbox
from raymail.store.log import DurableLog
from raymail.subscriptions import Subscriptions

log = logging.getLogger(__name__)

_GATEWAY_LOOKUP_EVERY_S = 1.0
# Rows for the storage catalog are gathered this long and sent as one call per table:
# a call per upload cost the shard and the catalog more CPU than the rows themselves.
# The catalog writes them out every few seconds anyway.
CATALOG_BATCH_S = 0.25
CATALOG_BATCH_ROWS = 2000  # sent at once past this many
CATALOG_NAME = "catalog"


class MailboxShard:
    """The single writer of its users' mailboxes.

    Guarantees:
    - ``apply_batch`` returns only after its changes are fsync'd in the shard's log
      (group commit: concurrent batches share one fsync).
    - One user's ops apply in the order they arrive; a batch applies in order.
    - Ops are idempotent under retry (delivering an existing id is a no-op), so
      callers and Ray may re-send a batch after a crash.
    - After a restart the state is exactly the acknowledged ops: the latest
      snapshot plus a replay of the log after it.
    - Reads never show a change before it is durable.
    - After each commit, the batch's events go to every gateway in one call each;
      pushes are best effort (clients catch up with ``since``).
    """

    def __init__(self, config: Config, index: int, gateway_names: list[str], namespace: str) -> None:
        self.config = config
        self.index = index
        self._gateway_names = gateway_names
        self._namespace = namespace
        self._gateways: dict[str, Any] = {}
        # Which gateways hold a WebSocket for which user: pushes go only there. After a
        # (re)start this is unknown until each gateway has said; until then that
        # gateway gets every push (see _learn_subscriptions).
        self._subs = Subscriptions()
        self._unsynced: set[str] = set(gateway_names)
        self.pushes_sent = 0
        self._gateways_checked_s = 0.0
        self._catalog: Any | None = None
        self._catalog_checked_s = 0.0
        self._catalog_rows: dict[str, list[dict]] = {}
        self._catalog_count = 0
        self._catalog_timer: asyncio.TimerHandle | None = None
        self._snapshotting = False
        started = time.perf_counter()
        self.log = DurableLog(config.data_path / "mailboxes" / f"shard-{index:03d}")
        rec = self.log.recover()
        retained = config.mailbox.events_retained
        self.state = (ShardState.load(codec.decode(rec.snapshot), retained, loaded_at=time.time()) if rec.snapshot
                      else ShardState(retained))
        replayed = 0
        delivered: dict[str, Deliver] = {}
        deleted: set[str] = set()
        for record in rec.records:
            for op in codec.decode(record):
                self.state.apply(op)
                replayed += 1
                if isinstance(op, Deliver):
                    delivered[op.email.id] = op
                elif isinstance(op, Delete):
                    deleted.add(op.email_id)
        self.search_index = SearchIndex(config.data_path / "index" / f"shard-{index:03d}")
        self._reindexing = False
        caught_up = self._catch_up_index(delivered, deleted)
        self.recovered = {
            "mailboxes": len(self.state.mailboxes),
            "snapshot": rec.snapshot is not None,
            "replayed_ops": replayed,
            "truncated_bytes": rec.truncated_bytes,
            "index_caught_up": caught_up,
            "seconds": round(time.perf_counter() - started, 3),
        }
        log.info("shard %d recovered: %s", index, self.recovered)
        self._committer = asyncio.get_event_loop().create_task(self._commit_index_loop())
        self._expirer = asyncio.get_event_loop().create_task(self._expire_uploads_loop())
        # Gateways on this host send their writes and reads here rather than through Ray.
        self._link = LinkServer({"apply_batch": self.apply_batch, "read": self.read}, f"shard-{index}")
        self._link.start_soon()
        self._learning = asyncio.get_event_loop().create_task(self._learn_subscriptions())

    async def link_endpoint(self) -> tuple[str, str]:
        """(node id, socket address) of this shard's same-host path."""
        return await self._link.endpoint()

    async def read(self, encoded: bytes) -> bytes:
        """One of the user-facing reads, ``codec [method, uid, *args]`` -> its codec
        result: the form reads take over the link (and through Ray after a lost link)."""
        method, *args = codec.decode(encoded)
        if method not in LINK_READS:
            raise ValueError(f"{method!r} is not a read served here")
        return codec.encode(await getattr(self, method)(*args))

    # -- search index ------------------------------------------------------
    @staticmethod
    def _index_fields(meta: EmailMeta, text: str) -> dict[str, str]:
        def addrs(items) -> str:
            return " ".join(f"{a.name} {a.email}" for a in items)

        return {"from_": addrs((meta.sender,)), "to": addrs(meta.to), "cc": addrs(meta.cc), "subject": meta.subject,
                "body": text or meta.snippet, "filenames": " ".join(a.filename for a in meta.attachments)}

    def _catch_up_index(self, delivered: dict[str, Deliver], deleted: set[str]) -> int:
        """After a restart: index what the log replayed and the last index commit missed."""
        idx = self.search_index
        if idx.rebuilt and any(mb.emails for mb in self.state.mailboxes.values()):
            asyncio.get_event_loop().create_task(self.reindex())  # no usable index: rebuild it from storage
            return 0
        added = 0
        for eid, op in delivered.items():
            mb = self.state.peek(op.uid)
            meta = mb.emails.get(eid) if mb else None
            if meta is not None and not idx.contains(eid):
                idx.add(op.uid, eid, meta.date, self._index_fields(meta, op.text), meta.seq)
                added += 1
        for eid in deleted:
            idx.delete(eid)
        idx.commit()
        return added

    async def _commit_index_loop(self) -> None:
        every_s = self.config.mailbox.index_commit_every_s
        while True:
            await asyncio.sleep(every_s / 2)
            try:
                if self.search_index.due(every_s):
                    self.search_index.commit()
            except Exception:  # noqa: BLE001 - keep committing; the log has what the index misses
                log.exception("shard %d: index commit failed", self.index)

    async def _expire_uploads_loop(self) -> None:
        """Uploads older than ``mailbox.upload_ttl_s`` are dropped, through the log
        like any change; a blob no mail references is then garbage."""
        ttl = self.config.mailbox.upload_ttl_s
        while True:
            await asyncio.sleep(min(ttl / 4, 300.0))
            try:
                now = time.time()
                ops = self.state.expired_uploads(now - ttl, now)
                if ops:
                    await self.apply_batch(codec.encode(ops))
                    log.info("shard %d: %d uploads of %d users expired", self.index,
                             sum(len(op.ids) for op in ops), len(ops))
            except Exception:  # noqa: BLE001 - keep sweeping; nothing is lost by a late expiry
                log.exception("shard %d: expiring uploads failed", self.index)

    async def reindex(self) -> dict:
        """Rebuild the index from the mailboxes and the stored messages."""
        from raymail import compose, skeleton
        from raymail.store.blobs import BlobStore

        if self._reindexing:
            return {"status": "already running"}
        self._reindexing = True
        started = time.perf_counter()
        try:
            blobs = BlobStore(self.config.storage_url, self.config.storage.options)
            idx = self.search_index
            idx.clear()  # on the loop thread: the writer is never used from two threads
            emails = [(uid, m) for uid, mb in self.state.mailboxes.items() for m in list(mb.emails.values())]
            done = missing = 0
            for uid, meta in emails:
                try:
                    stored = await asyncio.to_thread(blobs.get, meta.blob)
                    segments = skeleton.unpack(stored)
                    text = (await asyncio.to_thread(compose.parse, skeleton.text_view(segments) if segments else stored)).text
                except StorageError:
                    text, missing = "", missing + 1
                if self._email(uid, meta.id) is not None:  # still there
                    idx.add(uid, meta.id, meta.date, self._index_fields(meta, text), meta.seq)
                done += 1
                if done % 1000 == 0:
                    log.info("shard %d reindex: %d/%d messages", self.index, done, len(emails))
                    idx.commit()
            idx.commit()
            result = {"shard": self.index, "messages": done, "missing_blobs": missing,
                      "seconds": round(time.perf_counter() - started, 2)}
            log.info("shard %d reindex done: %s", self.index, result)
            return result
        finally:
            self._reindexing = False

    def _email(self, uid: str, email_id: str) -> EmailMeta | None:
        mb = self.state.peek(uid)
        return mb.emails.get(email_id) if mb else None

    async def search(self, uid: str, q: SearchQuery, page_number: int, page_size: int) -> tuple[list[dict], int]:
        """Newest first; exact for flags and folders whatever the commit cadence."""
        await self.log.wait_durable()
        mb = self.state.peek(uid)
        if mb is None:
            return [], 0
        metas, total = search_mailbox(self.search_index, mb, q, page_number, page_size)
        return [m.summary() for m in metas], total

    # -- writes ------------------------------------------------------------
    async def apply_batch(self, encoded_ops: bytes) -> bytes:
        """Apply codec-encoded ops; returns the codec-encoded ``OpResult`` list.

        Both sides are codec bytes: Ray moves bytes without pickling, and when every
        op changes state the received bytes are logged as they are.
        """
        ops = codec.decode(encoded_ops)
        results, catalog_rows = apply_and_collect(self.state, ops)
        idx = self.search_index
        for op, res in zip(ops, results, strict=True):
            if res.event is None:
                continue
            if isinstance(op, Deliver):
                meta = self._email(op.uid, op.email.id)  # as stored: with its arrival number
                if meta is not None:
                    idx.add(op.uid, meta.id, meta.date, self._index_fields(meta, op.text), meta.seq)
            elif isinstance(op, Delete):
                idx.delete(op.email_id)
        changed = [op for op, res in zip(ops, results, strict=True) if res.event is not None or res.changed]
        # Apply and enqueue with no await in between: the log order is the apply order.
        try:
            if changed:
                await self.log.append(encoded_ops if len(changed) == len(ops) else codec.encode(changed))
            else:
                await self.log.wait_durable()
        except StorageError:
            # Memory now holds changes the disk may not: die, let Ray restart the
            # shard from its log and re-send the calls in flight (ops are idempotent).
            log.critical("shard %d cannot write its log; restarting", self.index)
            os._exit(70)
        events = [(op.uid, res.event) for op, res in zip(ops, results, strict=True) if res.event is not None]
        if events:
            self._push(events)
        self._to_catalog(catalog_rows)
        if self.log.bytes_since_snapshot > self.config.mailbox.snapshot_every_bytes and not self._snapshotting:
            asyncio.ensure_future(self._snapshot())
        return codec.encode(results)

    async def _snapshot(self) -> None:
        self._snapshotting = True
        try:
            started = time.perf_counter()
            # The log before the snapshot goes away: the index must hold it first.
            self.search_index.commit()
            await self.log.snapshot(lambda: codec.encode(self.state.dump()))
            log.info("shard %d snapshot written in %.3f s", self.index, time.perf_counter() - started)
        except Exception:
            log.exception("shard %d snapshot failed; the log keeps growing until the next try", self.index)
        finally:
            self._snapshotting = False

    async def snapshot_now(self) -> dict:
        await self._snapshot()
        return {"bytes_since_snapshot": self.log.bytes_since_snapshot}

    # -- pushes ------------------------------------------------------------
    def _to_catalog(self, rows: dict[str, list[dict]]) -> None:
        """Tell the storage catalog about uploads and attachment references, after
        commit: gathered for CATALOG_BATCH_S, then one call per table."""
        for table, table_rows in rows.items():
            if table_rows:
                self._catalog_rows.setdefault(table, []).extend(table_rows)
                self._catalog_count += len(table_rows)
        if not self._catalog_count:
            return
        if self._catalog_count >= CATALOG_BATCH_ROWS:
            self._send_to_catalog()
        elif self._catalog_timer is None:
            self._catalog_timer = asyncio.get_running_loop().call_later(CATALOG_BATCH_S, self._send_to_catalog)

    def _send_to_catalog(self) -> list:
        """Send the gathered rows; returns the calls' refs."""
        if self._catalog_timer is not None:
            self._catalog_timer.cancel()
            self._catalog_timer = None
        rows, self._catalog_rows, self._catalog_count = self._catalog_rows, {}, 0
        catalog = self._catalog_handle()
        if catalog is None or not rows:
            return []
        try:
            return [catalog.add.remote(table, table_rows) for table, table_rows in rows.items()]
        except Exception:  # noqa: BLE001 - the catalog is derived data; mail goes on
            log.warning("catalog update failed", exc_info=True)
            return []

    def _catalog_handle(self) -> Any | None:
        if self._catalog is None and time.monotonic() - self._catalog_checked_s > _GATEWAY_LOOKUP_EVERY_S:
            import ray

            self._catalog_checked_s = time.monotonic()
            try:
                self._catalog = ray.get_actor(CATALOG_NAME, namespace=self._namespace)
            except ValueError:
                pass
        return self._catalog

    def _gateway_handles_by_name(self) -> dict[str, Any]:
        self._gateway_handles()
        return self._gateways

    def _gateway_handles(self) -> list[Any]:
        now = time.monotonic()
        if len(self._gateways) < len(self._gateway_names) and now - self._gateways_checked_s > _GATEWAY_LOOKUP_EVERY_S:
            import ray

            self._gateways_checked_s = now
            for name in self._gateway_names:
                if name not in self._gateways:
                    try:
                        self._gateways[name] = ray.get_actor(name, namespace=self._namespace)
                    except ValueError:
                        pass
        return list(self._gateways.values())

    def _push(self, events: list[tuple[str, Event]]) -> None:
        """Events go to the gateways holding a WebSocket for their user (and to any
        gateway whose sockets this shard has not learned yet), fire and forget."""
        per_gateway: dict[str, list[tuple[str, dict]]] = {}
        for uid, ev in events:
            targets = self._subs.gateways_for(uid) | self._unsynced
            if not targets:
                continue
            item = (uid, ev.to_dict())
            for name in targets:
                per_gateway.setdefault(name, []).append(item)
        if not per_gateway:
            return
        handles = self._gateway_handles_by_name()
        for name, items in per_gateway.items():
            handle = handles.get(name)
            if handle is None:
                continue
            try:
                handle.push.remote(codec.encode(items))  # bytes cross Ray without pickling
                self.pushes_sent += 1
            except Exception:  # noqa: BLE001 - a dead gateway must not slow writes
                log.warning("push to a gateway failed", exc_info=True)

    # -- who holds sockets for whom ------------------------------------------
    async def subscribe(self, uid: str, gateway: str, seq: int | None = None) -> int:
        """``gateway`` holds a WebSocket for ``uid``: from now on it gets the user's
        events. Returns the user's cursor (what is older, the client replays).
        ``seq`` orders this against the gateway's other changes (see Subscriptions)."""
        self._subs.subscribe(uid, gateway, seq)  # before any await: no event slips between
        return await self.cursor(uid)

    def unsubscribe(self, uid: str, gateway: str, seq: int | None = None) -> None:
        self._subs.unsubscribe(uid, gateway, seq, time.monotonic())

    def gateways_for(self, uid: str) -> list[str]:
        """The gateways this shard pushes ``uid``'s events to (operators ask it when a
        client says it gets nothing live)."""
        return sorted(self._subs.gateways_for(uid))

    def forget_gateway(self, gateway: str) -> None:
        """A gateway (re)started: it holds no sockets yet."""
        self._unsynced.discard(gateway)
        self._subs.forget_gateway(gateway)

    async def _learn_subscriptions(self) -> None:
        """Ask each gateway which of this shard's users it holds sockets for. A gateway
        that is not running holds none (its sockets subscribe when they connect); one
        that does not answer keeps getting every push until it does."""
        import ray
        from ray.exceptions import RayActorError, RayError

        delay = 0.5
        while self._unsynced:
            for name in list(self._unsynced):
                try:
                    handle = ray.get_actor(name, namespace=self._namespace)
                except ValueError:
                    self._unsynced.discard(name)  # not started: no sockets to learn
                    continue
                try:
                    uids = await asyncio.wait_for(
                        handle.subscriptions.remote(self.index), 10)
                except RayActorError:
                    self._unsynced.discard(name)  # gone: a restarted gateway starts with no sockets
                    continue
                except (TimeoutError, RayError) as exc:
                    log.info("shard %d: gateway %s did not list its sockets yet (%r)", self.index, name, exc)
                    continue
                for uid in uids:
                    self._subs.learned(uid, name)
                self._unsynced.discard(name)
            if self._unsynced:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    # -- reads -------------------------------------------------------------
    async def list_emails(self, uid: str, folder: str, page_number: int, page_size: int) -> tuple[list[dict], int]:
        await self.log.wait_durable()
        mb = self.state.peek(uid)
        if mb is None:
            return [], 0
        metas, total = mb.page(folder, page_number, page_size)
        return [m.summary() for m in metas], total

    async def get_email(self, uid: str, email_id: str) -> EmailMeta | None:
        await self.log.wait_durable()
        mb = self.state.peek(uid)
        return mb.emails.get(email_id) if mb else None

    async def cursor(self, uid: str) -> int:
        await self.log.wait_durable()
        mb = self.state.peek(uid)
        return mb.cursor if mb else 0

    async def events_since(self, uid: str, cursor: int, limit: int) -> tuple[list[dict], bool, int]:
        await self.log.wait_durable()
        mb = self.state.peek(uid)
        if mb is None:
            return [], True, 0
        events, complete = mb.events_after(cursor, limit)
        return [e.to_dict() for e in events], complete, mb.cursor

    async def get_attachment(self, uid: str, attachment_id: str) -> AttachmentRef | None:
        """The attachment if ``uid`` uploaded it or received mail carrying it."""
        await self.log.wait_durable()
        mb = self.state.peek(uid)
        return mb.attachment(attachment_id) if mb else None

    async def blob_keys(self) -> list[str]:
        """Every blob the shard's mailboxes reference: what garbage collection keeps."""
        await self.log.wait_durable()
        keys: set[str] = set()
        for mb in self.state.mailboxes.values():
            keys |= mb.blob_keys()
        return sorted(keys)

    async def all_ids(self, uid: str) -> list[str]:
        """Every email id of ``uid`` (for checks and tools; not on a hot path)."""
        await self.log.wait_durable()
        mb = self.state.peek(uid)
        return list(mb.emails) if mb else []

    def stats(self) -> dict:
        return {
            "index": self.index,
            "pid": os.getpid(),
            "mailboxes": len(self.state.mailboxes),
            "emails": sum(len(mb.emails) for mb in self.state.mailboxes.values()),
            "log_bytes_since_snapshot": self.log.bytes_since_snapshot,
            "recovered": self.recovered,
            "link_calls": self._link.served,
            "pushes_sent": self.pushes_sent,
            "subscribed_users": self._subs.users,
            "unsynced_gateways": sorted(self._unsynced),
            "link_refused": self._link.refused,
        }

    async def flush(self) -> bool:
        """The log durable and the catalog's rows delivered (before it closes)."""
        await self.log.wait_durable()
        sent = self._send_to_catalog()
        if sent:
            with contextlib.suppress(Exception):  # derived data: stopping goes on
                await asyncio.wait_for(asyncio.gather(*sent), 10)
        return True
