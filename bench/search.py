"""Search at scale: our index (tantivy segments + in-memory part + mailbox filters)
against SQLite FTS5 over the same generated corpus, in the same run.

Usage: python bench/search.py [--messages 1000000] [--users 100] [--queries 200]
The corpus: 100 users, three of them with 100,000 messages, the rest sharing the
remainder; Zipf-distributed words from a 50,000-word vocabulary; subjects of 3-10
words, bodies of lognormal length (median about 120 words).
Runs our code in-process (the same ``SearchIndex`` and ``search_mailbox`` the
mailbox shards use), without Ray or HTTP, so the figures are the engine's.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from common import pct, progress

from raymail.mailbox import Mailbox
from raymail.model import Address, EmailMeta
from raymail.search import parse
from raymail.store.index import SearchIndex, search_mailbox

VOCAB = 50_000
FOLDERS = ["inbox"] * 8 + ["archive", "sent"]


def make_vocab(rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = set()
    while len(words) < VOCAB:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(3, 10))))
    return sorted(words)


class Corpus:
    def __init__(self, messages: int, users: int, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.vocab = make_vocab(self.rng)
        weights = [1 / (r + 1) ** 1.07 for r in range(VOCAB)]  # Zipf
        self.cum = list(_accumulate(weights))
        big = min(3, users)
        big_each = min(100_000, messages // 10)
        rest = max(0, messages - big * big_each)
        self.sizes = [big_each] * big + [rest // max(1, users - big)] * (users - big)
        self.uids = [f"user-{i:03d}" for i in range(users)]
        self.senders = [Address(f"{self.word()}.{self.word()}@{self.word()}.test", self.word().title()) for _ in range(2000)]

    def word(self) -> str:
        return self.rng.choices(self.vocab, cum_weights=self.cum, k=1)[0]

    def words(self, n: int) -> str:
        return " ".join(self.rng.choices(self.vocab, cum_weights=self.cum, k=n))

    def messages(self):
        t0 = 1.7e9
        for uid, size in zip(self.uids, self.sizes, strict=True):
            for i in range(size):
                sender = self.rng.choice(self.senders)
                subject = self.words(self.rng.randint(3, 10))
                body = self.words(max(5, int(self.rng.lognormvariate(4.8, 0.6))))
                yield uid, EmailMeta(
                    id=uuid.uuid4().hex, uid=uid, message_id="", folder=self.rng.choice(FOLDERS), sender=sender,
                    to=(Address(f"{uid}@example.test"),), cc=(), bcc=(), subject=subject, snippet=body[:200],
                    date=t0 + i * 60, size=len(body) + 500, unread=self.rng.random() < 0.3,
                    has_attachments=self.rng.random() < 0.1, blob="",
                ), body


def _accumulate(xs):
    total = 0.0
    for x in xs:
        total += x
        yield total


def build(corpus: Corpus, path: Path) -> tuple[SearchIndex, dict[str, Mailbox], sqlite3.Connection, dict]:
    idx = SearchIndex(path / "tantivy", heap_bytes=256_000_000)
    db = sqlite3.connect(path / "fts5.sqlite3")
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("CREATE VIRTUAL TABLE docs USING fts5(uid, sender, subject, body, tokenize='unicode61')")
    db.execute("CREATE TABLE meta (rowid INTEGER PRIMARY KEY, uid TEXT, date REAL, folder TEXT, unread INT, att INT)")
    db.execute("CREATE INDEX meta_uid_date ON meta(uid, date)")
    boxes: dict[str, Mailbox] = {}
    ours_s = fts_s = 0.0
    batch = []
    n = 0
    for uid, meta, body in corpus.messages():
        mb = boxes.get(uid) or boxes.setdefault(uid, Mailbox(uid, 10))
        mb.deliver(meta, meta.date)
        seq = mb.next_seq - 1
        t = time.perf_counter()
        idx.add(uid, meta.id, meta.date, {"from_": f"{meta.sender.name} {meta.sender.email}", "to": meta.to[0].email,
                                          "subject": meta.subject, "body": body}, seq)
        if idx.pending >= 50_000:
            idx.commit()
        ours_s += time.perf_counter() - t
        n += 1
        batch.append((n, uid, meta, body))
        if len(batch) >= 10_000:
            fts_s += _fts_insert(db, batch)
            batch = []
        if n % 100_000 == 0:
            progress(f"indexed {n:,} messages (ours {n / ours_s:,.0f}/s, FTS5 {n / max(fts_s, 1e-9):,.0f}/s so far)")
    if batch:
        fts_s += _fts_insert(db, batch)
    t = time.perf_counter()
    idx.commit()
    ours_s += time.perf_counter() - t
    return idx, boxes, db, {"messages": n, "ours_s": ours_s, "fts_s": fts_s}


def _fts_insert(db: sqlite3.Connection, batch) -> float:
    t = time.perf_counter()
    db.executemany("INSERT INTO docs(rowid, uid, sender, subject, body) VALUES (?,?,?,?,?)",
                   [(n, fts_uid(uid), f"{m.sender.name} {m.sender.email}", m.subject, body) for n, uid, m, body in batch])
    db.executemany("INSERT INTO meta VALUES (?,?,?,?,?,?)",
                   [(n, uid, m.date, m.folder, int(m.unread), int(m.has_attachments)) for n, uid, m, _ in batch])
    db.commit()
    return time.perf_counter() - t


def fts_uid(uid: str) -> str:
    return "owner" + uid.replace("-", "")


def fts_query(db: sqlite3.Connection, uid: str, kind: str, words: list[str]) -> int:
    """The same question asked of FTS5, written the way FTS5 is fastest; returns the total.

    The owner is a token of its own in the FTS table, so a MATCH intersects posting
    lists; rowids follow arrival order, so "newest first" is ORDER BY rowid DESC.
    """
    if kind == "filter":
        where, args = "uid = ? AND unread = 1 AND folder = 'inbox'", [uid]
        db.execute(f"SELECT rowid FROM meta WHERE {where} ORDER BY date DESC LIMIT 50", args).fetchall()
        return db.execute(f"SELECT count(*) FROM meta WHERE {where}", args).fetchone()[0]
    match = {"term": words[0], "two": f"{words[0]} {words[1]}", "phrase": f'"{words[0]} {words[1]}"',
             "term+filters": words[0]}[kind]
    expr = f"uid:{fts_uid(uid)} AND ({match})"
    if kind == "term+filters":
        where = "rowid IN (SELECT rowid FROM docs WHERE docs MATCH ?) AND unread = 1 AND folder = 'inbox'"
        db.execute(f"SELECT rowid FROM meta WHERE {where} ORDER BY date DESC LIMIT 50", [expr]).fetchall()
        return db.execute(f"SELECT count(*) FROM meta WHERE {where}", [expr]).fetchone()[0]
    db.execute("SELECT rowid FROM docs WHERE docs MATCH ? ORDER BY rowid DESC LIMIT 50", [expr]).fetchall()
    return db.execute("SELECT count(*) FROM docs WHERE docs MATCH ?", [expr]).fetchone()[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    corpus = Corpus(args.messages, args.users)
    progress(f"generating and indexing {args.messages:,} messages for {args.users} users "
             f"(largest mailboxes: {corpus.sizes[:3]})")
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        idx, boxes, db, built = build(corpus, Path(tmp))
        print(f"indexing: {built['messages']:,} messages; ours {built['messages'] / built['ours_s']:,.0f} msgs/s, "
              f"SQLite FTS5 {built['messages'] / built['fts_s']:,.0f} msgs/s")
        rng = random.Random(11)
        mid_words = corpus.vocab[200:3000]  # moderately common words
        kinds = {
            "term": lambda w: w[0],
            "two": lambda w: f"{w[0]} {w[1]}",
            "phrase": lambda w: f'"{w[0]} {w[1]}"',
            "filter": lambda w: "is:unread in:inbox",
            "term+filters": lambda w: f"{w[0]} is:unread in:inbox",
        }
        print(f"{'query':<14}{'ours p50':>10}{'ours p99':>10}{'FTS5 p50':>10}{'FTS5 p99':>10}   (ms; {args.queries} "
              "queries each, half on the 100k mailboxes)")
        all_ours, all_fts = [], []
        for kind, make in kinds.items():
            ours, fts = [], []
            for i in range(args.queries):
                uid = corpus.uids[i % 3] if i % 2 == 0 else rng.choice(corpus.uids[3:] or corpus.uids)
                words = rng.sample(mid_words, 2)
                if kind == "phrase":  # a phrase that exists: two neighbours from a random message's subject
                    subj = rng.choice(list(boxes[uid].emails.values())).subject.split()
                    words = subj[:2] if len(subj) >= 2 else words
                q = parse(make(words))
                t = time.perf_counter()
                _, total = search_mailbox(idx, boxes[uid], q, 1, 50)
                ours.append(time.perf_counter() - t)
                t = time.perf_counter()
                fts_total = fts_query(db, uid, kind, words)
                fts.append(time.perf_counter() - t)
                if kind != "two" and total != fts_total:
                    print(f"  note: totals differ for {kind} {words}: ours {total}, FTS5 {fts_total}")
            all_ours += ours
            all_fts += fts
            ms = lambda xs, p: pct([x * 1000 for x in xs], p)  # noqa: E731
            print(f"{kind:<14}{ms(ours, 50):>10.2f}{ms(ours, 99):>10.2f}{ms(fts, 50):>10.2f}{ms(fts, 99):>10.2f}")
        ratio = statistics.fmean(all_fts) / statistics.fmean(all_ours)
        print(f"whole mix: ours p99 {pct([x * 1000 for x in all_ours], 99):.2f} ms, FTS5 p99 "
              f"{pct([x * 1000 for x in all_fts], 99):.2f} ms; ours is {ratio:.1f}x faster on average")
        # Findable at once: a document added just now is in the next search.
        uid = corpus.uids[0]
        fresh = EmailMeta(id=uuid.uuid4().hex, uid=uid, message_id="", folder="inbox", sender=corpus.senders[0],
                          to=(), cc=(), bcc=(), subject="zyzzyvafresh", snippet="", date=2e9, size=1, unread=True,
                          has_attachments=False, blob="")
        t = time.perf_counter()
        boxes[uid].deliver(fresh, fresh.date)
        idx.add(uid, fresh.id, fresh.date, {"subject": fresh.subject}, boxes[uid].next_seq - 1)
        found = search_mailbox(idx, boxes[uid], parse("zyzzyvafresh"), 1, 10)[1]
        print(f"added -> findable: {(time.perf_counter() - t) * 1000:.2f} ms (found {found}, before any commit)")


if __name__ == "__main__":
    main()
