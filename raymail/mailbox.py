"""Mailbox state: per-user folders, flags and an event stream, as pure data.

``ShardState`` holds many users' mailboxes and applies ops. Applying the same ops
in the same order always yields the same state, which is what log replay relies
on. Ops are idempotent where a retry can repeat them: delivering an id that is
already present changes nothing.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import replace
from typing import Any

from raymail.model import (
    FOLDERS,
    AddUpload,
    AttachmentRef,
    Delete,
    Deliver,
    EmailMeta,
    Event,
    EventType,
    ExpireUploads,
    Op,
    OpResult,
    Update,
)


class Mailbox:
    """One user's mail. Folder lists hold ``seq`` numbers in arrival order."""

    __slots__ = ("uid", "emails", "folders", "by_seq", "next_seq", "cursor", "events", "uploads", "uploaded_at",
                 "attached", "unread_in")

    def __init__(self, uid: str, events_retained: int) -> None:
        self.uid = uid
        self.emails: dict[str, EmailMeta] = {}
        self.folders: dict[str, list[int]] = {}
        self.by_seq: dict[int, str] = {}
        self.next_seq = 1
        self.cursor = 0
        self.events: deque[Event] = deque(maxlen=events_retained)
        self.uploads: dict[str, AttachmentRef] = {}
        self.uploaded_at: dict[str, float] = {}  # upload id -> when (epoch seconds)
        self.unread_in: dict[str, int] = {}  # folder -> unread messages in it
        # attachment id -> (ref, how many of this user's emails carry it)
        self.attached: dict[str, tuple[AttachmentRef, int]] = {}

    def attachment(self, attachment_id: str) -> AttachmentRef | None:
        """An attachment this user uploaded or received; None for anybody else's."""
        ref = self.uploads.get(attachment_id)
        if ref is not None:
            return ref
        hit = self.attached.get(attachment_id)
        return hit[0] if hit else None

    def add_upload(self, ref: AttachmentRef, ts: float) -> OpResult:
        if ref.id in self.uploads:
            return OpResult(ok=True)
        self.uploads[ref.id] = ref
        self.uploaded_at[ref.id] = ts
        return OpResult(ok=True, changed=True)

    def expire_uploads(self, ids: tuple[str, ...]) -> OpResult:
        gone = [i for i in ids if self.uploads.pop(i, None) is not None]
        for i in gone:
            self.uploaded_at.pop(i, None)
        return OpResult(ok=True, changed=bool(gone))

    def _attach(self, meta: EmailMeta, delta: int) -> None:
        for ref in meta.attachments:
            _, n = self.attached.get(ref.id, (ref, 0))
            if n + delta > 0:
                self.attached[ref.id] = (ref, n + delta)
            else:
                self.attached.pop(ref.id, None)

    # -- reads -------------------------------------------------------------
    def page(self, folder: str, page_number: int, page_size: int) -> tuple[list[EmailMeta], int]:
        """Newest first. ``page_number`` starts at 1."""
        seqs = self.folders.get(folder, [])
        total = len(seqs)
        end = total - (page_number - 1) * page_size
        start = max(0, end - page_size)
        if end <= 0:
            return [], total
        return [self.emails[self.by_seq[s]] for s in reversed(seqs[start:end])], total

    def unread_count(self, folder: str) -> int:
        return self.unread_in.get(folder, 0)

    def _count(self, meta: EmailMeta, delta: int) -> None:
        if meta.unread:
            self.unread_in[meta.folder] = self.unread_in.get(meta.folder, 0) + delta

    def events_after(self, cursor: int, limit: int) -> tuple[list[Event], bool]:
        """Events with cursor > ``cursor``; the flag is False if some were dropped already."""
        if cursor >= self.cursor:
            return [], True
        oldest = self.events[0].cursor if self.events else self.cursor + 1
        complete = cursor + 1 >= oldest
        start = max(0, cursor + 1 - oldest)
        out = [self.events[i] for i in range(start, min(len(self.events), start + limit))]
        return out, complete

    # -- writes ------------------------------------------------------------
    def _event(self, kind: EventType, email_id: str, ts: float, summary: dict | None) -> Event:
        self.cursor += 1
        ev = Event(cursor=self.cursor, type=kind.value, email_id=email_id, ts=ts, summary=summary)
        self.events.append(ev)
        return ev

    def deliver(self, meta: EmailMeta, ts: float) -> OpResult:
        if meta.id in self.emails:
            return OpResult(ok=True)  # a retried delivery: already here
        if meta.folder not in FOLDERS:
            return OpResult(ok=False, error="invalid", message=f"unknown folder {meta.folder!r}")
        meta = replace(meta, seq=self.next_seq, uid=self.uid)
        self.next_seq += 1
        self.emails[meta.id] = meta
        self.by_seq[meta.seq] = meta.id
        self.folders.setdefault(meta.folder, []).append(meta.seq)
        self._attach(meta, +1)
        self._count(meta, +1)
        return OpResult(ok=True, event=self._event(EventType.NEW, meta.id, ts, meta.summary()))

    def update(self, email_id: str, ts: float, unread: bool | None, folder: str | None) -> OpResult:
        meta = self.emails.get(email_id)
        if meta is None:
            return OpResult(ok=False, error="not_found", message="no such email")
        if folder is not None and folder not in FOLDERS:
            return OpResult(ok=False, error="invalid", message=f"unknown folder {folder!r}")
        new = meta
        if unread is not None and unread != meta.unread:
            new = replace(new, unread=unread)
        if folder is not None and folder != meta.folder:
            self._remove_seq(meta)
            new = replace(new, folder=folder)
            bisect.insort(self.folders.setdefault(folder, []), new.seq)
        if new is meta:
            return OpResult(ok=True)
        self._count(meta, -1)
        self._count(new, +1)
        self.emails[email_id] = new
        return OpResult(ok=True, event=self._event(EventType.UPDATED, email_id, ts, new.summary()))

    def delete(self, email_id: str, ts: float) -> OpResult:
        meta = self.emails.pop(email_id, None)
        if meta is None:
            return OpResult(ok=False, error="not_found", message="no such email")
        self._remove_seq(meta)
        del self.by_seq[meta.seq]
        self._attach(meta, -1)
        self._count(meta, -1)
        return OpResult(ok=True, event=self._event(EventType.DELETED, email_id, ts, None))

    def _remove_seq(self, meta: EmailMeta) -> None:
        seqs = self.folders[meta.folder]
        i = bisect.bisect_left(seqs, meta.seq)
        if i < len(seqs) and seqs[i] == meta.seq:
            seqs.pop(i)

    # -- snapshots ---------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        emails = sorted(self.emails.values(), key=lambda m: m.seq)
        return {"uid": self.uid, "emails": emails, "next_seq": self.next_seq, "cursor": self.cursor,
                "events": list(self.events), "uploads": list(self.uploads.values()),
                "uploaded_at": dict(self.uploaded_at)}

    def blob_keys(self) -> set[str]:
        """Every blob this mailbox references (for garbage collection)."""
        keys = {m.blob for m in self.emails.values()}
        keys.update(ref.blob for m in self.emails.values() for ref in m.attachments)
        keys.update(ref.blob for ref in self.uploads.values())
        return keys

    @classmethod
    def load(cls, data: dict[str, Any], events_retained: int, loaded_at: float | None = None) -> Mailbox:
        mb = cls(data["uid"], events_retained)
        for meta in data["emails"]:
            mb.emails[meta.id] = meta
            mb.by_seq[meta.seq] = meta.id
            mb.folders.setdefault(meta.folder, []).append(meta.seq)
            mb._attach(meta, +1)
            mb._count(meta, +1)
        mb.uploads = {ref.id: ref for ref in data.get("uploads", ())}
        # A snapshot from before upload times were kept: its uploads count from now.
        now = loaded_at if loaded_at is not None else 0.0
        mb.uploaded_at = {i: data.get("uploaded_at", {}).get(i, now) for i in mb.uploads}
        mb.next_seq = data["next_seq"]
        mb.cursor = data["cursor"]
        mb.events.extend(data["events"])
        return mb


class ShardState:
    """All mailboxes of one shard; the single writer for each of them."""

    def __init__(self, events_retained: int) -> None:
        self.events_retained = events_retained
        self.mailboxes: dict[str, Mailbox] = {}

    def mailbox(self, uid: str) -> Mailbox:
        mb = self.mailboxes.get(uid)
        if mb is None:
            mb = self.mailboxes[uid] = Mailbox(uid, self.events_retained)
        return mb

    def peek(self, uid: str) -> Mailbox | None:
        return self.mailboxes.get(uid)

    def apply(self, op: Op) -> OpResult:
        if isinstance(op, Deliver):
            return self.mailbox(op.uid).deliver(op.email, op.ts)
        if isinstance(op, Update):
            mb = self.peek(op.uid)
            if mb is None:
                return OpResult(ok=False, error="not_found", message="no such email")
            return mb.update(op.email_id, op.ts, op.unread, op.folder)
        if isinstance(op, AddUpload):
            return self.mailbox(op.uid).add_upload(op.attachment, op.ts)
        if isinstance(op, ExpireUploads):
            mb = self.peek(op.uid)
            return mb.expire_uploads(op.ids) if mb is not None else OpResult(ok=True)
        if isinstance(op, Delete):
            mb = self.peek(op.uid)
            if mb is None:
                return OpResult(ok=False, error="not_found", message="no such email")
            return mb.delete(op.email_id, op.ts)
        return OpResult(ok=False, error="invalid", message=f"unknown op {type(op).__name__}")

    def expired_uploads(self, before: float, now: float) -> list[ExpireUploads]:
        """One op per user whose uploads from before ``before`` (epoch seconds) are
        still kept, naming them."""
        ops = []
        for uid, mb in self.mailboxes.items():
            old = tuple(i for i, ts in mb.uploaded_at.items() if ts < before)
            if old:
                ops.append(ExpireUploads(uid, old, now))
        return ops

    def dump(self) -> dict[str, Any]:
        return {"version": 1, "mailboxes": [mb.dump() for mb in self.mailboxes.values()]}

    @classmethod
    def load(cls, data: dict[str, Any], events_retained: int, loaded_at: float | None = None) -> ShardState:
        """``loaded_at``: the upload time given to uploads of a snapshot that has none."""
        st = cls(events_retained)
        for mb in data["mailboxes"]:
            st.mailboxes[mb["uid"]] = Mailbox.load(mb, events_retained, loaded_at)
        return st
