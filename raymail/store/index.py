"""Full-text index of one mailbox shard: tantivy segments plus an in-memory part.

tantivy makes documents visible only at a commit, which costs 12-25 ms, so the
index commits at most about once a second. Documents added since the last
commit live in a small in-memory part (the seed's "LSM" option) that is searched
beside the committed segments, so a message is findable the moment its write
returns. Mutable state (folder, unread) is never taken from the index: callers
filter hits with the mailbox, which is exact. The index is derived data: it can
be rebuilt from the mailboxes and their stored messages.
"""

from __future__ import annotations

import heapq
import logging
import shutil
import time
from pathlib import Path

import tantivy

from raymail.mailbox import Mailbox
from raymail.model import EmailMeta
from raymail.search import TEXT_FIELDS, Clause, SearchQuery, matches, tokenize

log = logging.getLogger(__name__)

SCHEMA_VERSION = "2"
MAX_TEXT_CHARS = 200_000


def _schema() -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("uid", stored=False, tokenizer_name="raw")
    sb.add_text_field("eid", stored=True, tokenizer_name="raw")
    for name in TEXT_FIELDS:
        sb.add_text_field(name, stored=False)
    sb.add_integer_field("date", stored=False, indexed=True, fast=True)
    # The mailbox's arrival number: hits ordered by it carry it, so no stored field is read.
    sb.add_integer_field("seq", stored=False, indexed=False, fast=True)
    return sb.build()


class SearchIndex:
    def __init__(self, path: Path, heap_bytes: int = 64_000_000) -> None:
        self.path = Path(path)
        self.schema = _schema()
        marker = self.path / "raymail-schema"
        self.rebuilt = False
        if self.path.exists() and (not marker.exists() or marker.read_text() != SCHEMA_VERSION):
            shutil.rmtree(self.path)  # an older layout: rebuild from the mailboxes
            self.rebuilt = True
        self.path.mkdir(parents=True, exist_ok=True)
        fresh = not any(p.name != "raymail-schema" for p in self.path.iterdir())
        self.index = tantivy.Index(self.schema, path=str(self.path), reuse=not fresh)
        marker.write_text(SCHEMA_VERSION)
        self.rebuilt = self.rebuilt or fresh
        self.writer = self.index.writer(heap_bytes, 1)
        # eid -> (uid, date, field texts, later field tokens): the part not yet committed
        self.recent: dict[str, tuple[str, float, dict, int]] = {}
        self.pending = 0
        self.deletes_pending = 0
        self.last_commit_s = time.monotonic()
        self.commits = 0

    # -- writes ------------------------------------------------------------
    def add(self, uid: str, eid: str, date: float, fields: dict[str, str], seq: int = 0) -> None:
        clipped = {k: v[:MAX_TEXT_CHARS] for k, v in fields.items() if v}
        doc = tantivy.Document(uid=uid, eid=eid, date=int(date), seq=seq, **clipped)
        self.writer.add_document(doc)
        self.recent[eid] = (uid, date, clipped, seq)  # tokenized when first searched
        self.pending += 1

    def delete(self, eid: str) -> None:
        self.writer.delete_documents_by_term("eid", eid)
        self.recent.pop(eid, None)
        self.pending += 1
        self.deletes_pending += 1

    def commit(self) -> None:
        if not self.pending:
            return
        started = time.perf_counter()
        self.writer.commit()
        self.index.reload()
        self.recent.clear()
        self.pending = 0
        self.deletes_pending = 0
        self.commits += 1
        self.last_commit_s = time.monotonic()
        log.debug("index commit in %.1f ms", (time.perf_counter() - started) * 1000)

    def due(self, every_s: float) -> bool:
        return self.pending > 0 and time.monotonic() - self.last_commit_s >= every_s

    def contains(self, eid: str) -> bool:
        if eid in self.recent:
            return True
        hits = self.index.searcher().search(tantivy.Query.term_query(self.schema, "eid", eid), 1)
        return hits.count > 0

    def clear(self) -> None:
        self.pending += 1
        self.commit()  # what is buffered goes in first, so the delete below covers it
        self.writer.delete_all_documents()
        self.recent.clear()
        self.pending += 1
        self.commit()

    # -- reads -------------------------------------------------------------
    def _clause_query(self, clause: Clause) -> tantivy.Query:
        per_field = []
        for f in clause.fields:
            if clause.phrase:
                per_field.append(tantivy.Query.phrase_query(self.schema, f, list(clause.words)))
            else:
                per_field.append(tantivy.Query.boolean_query(
                    [(tantivy.Occur.Must, tantivy.Query.term_query(self.schema, f, w)) for w in clause.words]))
        if len(per_field) == 1:
            return per_field[0]
        return tantivy.Query.boolean_query([(tantivy.Occur.Should, q) for q in per_field])

    def _query(self, uid: str, q: SearchQuery) -> tantivy.Query:
        parts = [(tantivy.Occur.Must, tantivy.Query.term_query(self.schema, "uid", uid))]
        for clause in q.clauses:
            occur = tantivy.Occur.MustNot if clause.negated else tantivy.Occur.Must
            parts.append((occur, self._clause_query(clause)))
        if q.after_s is not None or q.before_s is not None:
            lo = int(q.after_s) if q.after_s is not None else -(2**62)
            hi = int(q.before_s) - 1 if q.before_s is not None else 2**62
            parts.append((tantivy.Occur.Must, tantivy.Query.range_query(self.schema, "date", tantivy.FieldType.Integer,
                                                                         lo, hi)))
        return tantivy.Query.boolean_query(parts)

    def _recent_match(self, uid: str, q: SearchQuery) -> list[tuple[float, str]]:
        return [(date, eid) for date, eid, _ in self._recent_hits(uid, q)]

    def _recent_hits(self, uid: str, q: SearchQuery) -> list[tuple[float, str, int]]:
        out = []
        for eid, (doc_uid, date, fields, seq) in self.recent.items():
            if doc_uid != uid:
                continue
            tokens = fields.get("\0tokens")
            if tokens is None:
                tokens = fields["\0tokens"] = {k: tokenize(v, keep_gaps=True) for k, v in fields.items()}
            if q.after_s is not None and int(date) < int(q.after_s):
                continue
            if q.before_s is not None and int(date) > int(q.before_s) - 1:
                continue
            if all(matches(c, tokens) != c.negated for c in q.clauses):
                out.append((date, eid, seq))
        return out

    def search_all(self, uid: str, q: SearchQuery, limit: int) -> set[str]:
        """Every matching email id of ``uid`` (committed and recent), at most ``limit`` committed."""
        searcher = self.index.searcher()
        # Documents deleted since the last commit still take places among the hits.
        hits = searcher.search(self._query(uid, q), max(1, limit + self.deletes_pending))
        found = {searcher.doc(addr)["eid"][0] for _, addr in hits.hits}
        found.update(eid for _, eid in self._recent_match(uid, q))
        return found

    def search_seqs(self, uid: str, q: SearchQuery, limit: int) -> set[int]:
        """Like ``search_all`` but the mailbox arrival numbers, read from the fast field."""
        searcher = self.index.searcher()
        hits = searcher.search(self._query(uid, q), max(1, limit + self.deletes_pending), order_by_field="seq")
        found = {seq for seq, _ in hits.hits}
        found.update(seq for _, _, seq in self._recent_hits(uid, q))
        return found

    def search_top_seqs(self, uid: str, q: SearchQuery, limit: int) -> tuple[list[int], int]:
        """The ``limit`` latest arrival numbers that match, newest first, and the match count."""
        searcher = self.index.searcher()
        hits = searcher.search(self._query(uid, q), max(1, limit), order_by_field="seq")
        committed = [seq for seq, _ in hits.hits]
        recent = [seq for _, _, seq in self._recent_hits(uid, q)]
        overlap = len(set(committed) & set(recent))
        merged = sorted(set(committed) | set(recent), reverse=True)[:limit]
        return merged, hits.count + len(recent) - overlap

    def search_top(self, uid: str, q: SearchQuery, limit: int) -> tuple[list[str], int]:
        """The newest ``limit`` matching ids (committed and recent) and how many match in all."""
        searcher = self.index.searcher()
        hits = searcher.search(self._query(uid, q), max(1, limit), order_by_field="date")
        # Ordered by a fast field, a hit's first element is that field's value.
        committed = {searcher.doc(addr)["eid"][0]: date for date, addr in hits.hits}
        recent = self._recent_match(uid, q)
        overlap = sum(1 for _, eid in recent if eid in committed)  # re-added documents count once
        merged = dict(committed)
        merged.update((eid, date) for date, eid in recent)
        newest = sorted(merged.items(), key=lambda kv: kv[1], reverse=True)[:limit]
        return [eid for eid, _ in newest], hits.count + len(recent) - overlap

def _in_range(m: EmailMeta, q: SearchQuery) -> bool:
    return (q.after_s is None or m.date >= q.after_s) and (q.before_s is None or m.date < q.before_s)


def _meta_ok(m: EmailMeta, q: SearchQuery) -> bool:
    return (
        (q.folder is None or m.folder == q.folder)
        and (q.unread is None or m.unread == q.unread)
        and (q.has_attachment is None or m.has_attachments == q.has_attachment)
        and _in_range(m, q)
    )


def _folder_page(mb: Mailbox, q: SearchQuery, start: int, end: int) -> tuple[list[EmailMeta], int]:
    """A folder (optionally only unread or read) newest first, without looking at the rest."""
    seqs = mb.folders.get(q.folder or "", [])
    unread = mb.unread_count(q.folder or "")
    total = len(seqs) if q.unread is None else (unread if q.unread else len(seqs) - unread)
    out: list[EmailMeta] = []
    seen = 0
    for seq in reversed(seqs):
        meta = mb.emails[mb.by_seq[seq]]
        if q.unread is not None and meta.unread != q.unread:
            continue
        if seen >= start:
            out.append(meta)
            if len(out) >= end - start:
                break
        seen += 1
    return out, total


def _by_seq(mb: Mailbox, seq: int) -> EmailMeta | None:
    eid = mb.by_seq.get(seq)
    return mb.emails.get(eid) if eid is not None else None


def search_mailbox(
    index: SearchIndex, mb: Mailbox, q: SearchQuery, page_number: int, page_size: int
) -> tuple[list[EmailMeta], int]:
    """One user's search, newest first, with the exact total.

    Text comes from the index; folder, unread and attachments from the mailbox,
    so they are exact whatever the commit cadence. With text and no such filter
    (and no delete waiting for a commit), only the top of the index is read.
    """
    end = page_number * page_size
    needs_meta = q.folder is not None or q.unread is not None or q.has_attachment is not None
    if not q.clauses and q.folder is not None and q.has_attachment is None and q.after_s is None and q.before_s is None:
        return _folder_page(mb, q, end - page_size, end)
    if not q.clauses:
        metas = [m for m in mb.emails.values() if _meta_ok(m, q)]
    elif needs_meta or index.deletes_pending:
        seqs = index.search_seqs(mb.uid, q, len(mb.emails))
        metas = [m for s in seqs if (m := _by_seq(mb, s)) is not None and _meta_ok(m, q)]
    else:
        top, total = index.search_top_seqs(mb.uid, q, end)
        metas = [m for s in top if (m := _by_seq(mb, s)) is not None]
        metas.sort(key=lambda m: (m.date, m.seq), reverse=True)
        return metas[end - page_size : end], total
    if not q.clauses and not needs_meta and q.after_s is None and q.before_s is None:
        total = len(metas)
        top = heapq.nlargest(end, metas, key=lambda m: (m.date, m.seq))
        return top[end - page_size : end], total
    metas.sort(key=lambda m: (m.date, m.seq), reverse=True)
    return metas[end - page_size : end], len(metas)
