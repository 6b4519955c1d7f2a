"""raymail/mailbox.py: Mailbox and ShardState as pure data."""

from __future__ import annotations

import json

import pytest

from raymail import codec
from raymail.mailbox import Mailbox, ShardState
from raymail.model import Address, Delete, Deliver, EmailMeta, Event, EventType, OpResult, Update

UID = "u1"


def meta(i: int, folder: str = "inbox", unread: bool = True, uid: str = UID) -> EmailMeta:
    return EmailMeta(
        id=f"e{i}",
        uid=uid,
        message_id=f"<m{i}@example.com>",
        folder=folder,
        sender=Address("from@example.com", "From"),
        to=(Address("u1@example.com"),),
        cc=(),
        bcc=(),
        subject=f"subject {i}",
        snippet=f"snippet {i}",
        date=1000.0 + i,
        size=100 + i,
        unread=unread,
        has_attachments=False,
        blob=f"msg/00/{i:064d}",
    )


def filled(n: int, events_retained: int = 100) -> Mailbox:
    mb = Mailbox(UID, events_retained)
    for i in range(1, n + 1):
        assert mb.deliver(meta(i), ts=float(i)).ok
    return mb


def ids(metas) -> list[str]:
    return [m.id for m in metas]


def events_json(events: list[Event]) -> str:
    return json.dumps([e.to_dict() for e in events], sort_keys=True)


# -- deliver -----------------------------------------------------------------


def test_deliver_assigns_seq_cursor_and_emits_new():
    mb = Mailbox(UID, 10)
    r1 = mb.deliver(meta(1, uid="someone-else"), ts=5.0)
    r2 = mb.deliver(meta(2), ts=6.0)
    assert r1.ok and r2.ok and r1.error is None
    assert (mb.emails["e1"].seq, mb.emails["e2"].seq) == (1, 2)
    assert mb.emails["e1"].uid == UID  # the mailbox owns it
    assert mb.cursor == 2 and mb.next_seq == 3
    assert r1.event == Event(cursor=1, type=EventType.NEW.value, email_id="e1", ts=5.0, summary=mb.emails["e1"].summary())
    assert r2.event.cursor == 2 and r2.event.type == "email.new"
    assert r1.event.to_dict()["email"]["subject"] == "subject 1"


def test_duplicate_deliver_is_a_no_op():
    mb = filled(2)
    before = (dict(mb.emails), mb.cursor, mb.next_seq, list(mb.events), {k: list(v) for k, v in mb.folders.items()})
    res = mb.deliver(meta(1, folder="archive", unread=False), ts=99.0)
    assert res == OpResult(ok=True)
    assert res.event is None
    after = (dict(mb.emails), mb.cursor, mb.next_seq, list(mb.events), {k: list(v) for k, v in mb.folders.items()})
    assert after == before


def test_deliver_to_unknown_folder_is_invalid_and_changes_nothing():
    mb = filled(1)
    res = mb.deliver(meta(2, folder="spamfolder"), ts=1.0)
    assert (res.ok, res.error, res.event) == (False, "invalid", None)
    assert "spamfolder" in res.message
    assert mb.cursor == 1 and "e2" not in mb.emails and mb.next_seq == 2


# -- paging ------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, page_number, page_size, expected",
    [
        (5, 1, 2, ["e5", "e4"]),
        (5, 2, 2, ["e3", "e2"]),
        (5, 3, 2, ["e1"]),
        (5, 4, 2, []),
        (5, 100, 2, []),
        (5, 1, 10, ["e5", "e4", "e3", "e2", "e1"]),
        (5, 1, 5, ["e5", "e4", "e3", "e2", "e1"]),
        (5, 2, 5, []),
        (0, 1, 10, []),
    ],
)
def test_page_newest_first_with_total(n, page_number, page_size, expected):
    page, total = filled(n).page("inbox", page_number, page_size)
    assert ids(page) == expected
    assert total == n


def test_page_of_an_empty_folder():
    assert filled(3).page("archive", 1, 10) == ([], 0)


# -- update ------------------------------------------------------------------


def test_update_unread_emits_updated_with_new_summary():
    mb = filled(2)
    res = mb.update("e1", ts=10.0, unread=False, folder=None)
    assert res.ok
    assert res.event.type == "email.updated" and res.event.cursor == 3 and res.event.ts == 10.0
    assert res.event.email_id == "e1"
    assert res.event.summary["unread"] is False
    assert res.event.summary == mb.emails["e1"].summary()
    assert mb.emails["e1"].unread is False
    assert mb.unread_count("inbox") == 1


def test_update_folder_moves_between_lists_keeping_order():
    mb = filled(5)
    for eid in ("e4", "e2"):
        res = mb.update(eid, ts=1.0, unread=None, folder="archive")
        assert res.ok and res.event.summary["folder"] == "archive"
    assert ids(mb.page("inbox", 1, 10)[0]) == ["e5", "e3", "e1"]
    assert ids(mb.page("archive", 1, 10)[0]) == ["e4", "e2"]
    assert mb.page("archive", 1, 10)[1] == 2
    # moving back puts each one back in arrival order, not at the top
    mb.update("e2", ts=2.0, unread=None, folder="inbox")
    mb.update("e4", ts=3.0, unread=None, folder="inbox")
    assert ids(mb.page("inbox", 1, 10)[0]) == ["e5", "e4", "e3", "e2", "e1"]
    assert mb.page("archive", 1, 10) == ([], 0)
    assert [e.cursor for e in mb.events][-4:] == [6, 7, 8, 9]


def test_update_both_fields_is_one_event():
    mb = filled(1)
    res = mb.update("e1", ts=1.0, unread=False, folder="trash")
    assert res.event.cursor == 2
    assert (res.event.summary["unread"], res.event.summary["folder"]) == (False, "trash")
    assert mb.cursor == 2


@pytest.mark.parametrize(
    "unread, folder",
    [(None, None), (True, None), (None, "inbox"), (True, "inbox")],
)
def test_no_op_update_is_ok_without_event(unread, folder):
    mb = filled(1)
    res = mb.update("e1", ts=1.0, unread=unread, folder=folder)
    assert res == OpResult(ok=True)
    assert mb.cursor == 1 and len(mb.events) == 1


@pytest.mark.parametrize(
    "email_id, folder, error",
    [("nope", None, "not_found"), ("e1", "nowhere", "invalid")],
)
def test_update_errors(email_id, folder, error):
    mb = filled(1)
    res = mb.update(email_id, ts=1.0, unread=False, folder=folder)
    assert (res.ok, res.error, res.event) == (False, error, None)
    assert mb.cursor == 1 and mb.emails["e1"].unread is True


# -- delete ------------------------------------------------------------------


def test_delete_emits_deleted_and_removes_from_lists():
    mb = filled(3)
    mb.update("e2", ts=1.0, unread=None, folder="archive")
    res = mb.delete("e2", ts=7.0)
    assert res.ok
    assert res.event == Event(cursor=5, type="email.deleted", email_id="e2", ts=7.0, summary=None)
    assert "email" not in res.event.to_dict()
    assert "e2" not in mb.emails and 2 not in mb.by_seq
    assert mb.page("archive", 1, 10) == ([], 0)
    mb.delete("e3", ts=8.0)
    assert mb.page("inbox", 1, 10) == ([mb.emails["e1"]], 1)
    again = mb.delete("e3", ts=9.0)
    assert (again.ok, again.error, again.event) == (False, "not_found", None)
    assert mb.cursor == 6


# -- events ------------------------------------------------------------------


def test_events_after_all_retained():
    mb = filled(4)
    evs, complete = mb.events_after(0, 100)
    assert complete and [e.cursor for e in evs] == [1, 2, 3, 4]
    evs, complete = mb.events_after(2, 100)
    assert complete and [e.cursor for e in evs] == [3, 4]
    assert mb.events_after(4, 100) == ([], True)
    assert mb.events_after(10, 100) == ([], True)
    evs, complete = mb.events_after(0, 2)
    assert complete and [e.cursor for e in evs] == [1, 2]


@pytest.mark.parametrize(
    "cursor, limit, expected, complete",
    [
        (0, 100, [4, 5, 6], False),  # 1..3 are gone
        (2, 100, [4, 5, 6], False),
        (3, 100, [4, 5, 6], True),
        (4, 100, [5, 6], True),
        (3, 2, [4, 5], True),
        (5, 1, [6], True),
        (6, 100, [], True),
    ],
)
def test_events_after_with_few_retained(cursor, limit, expected, complete):
    mb = filled(6, events_retained=3)
    evs, done = mb.events_after(cursor, limit)
    assert [e.cursor for e in evs] == expected
    assert done is complete


def test_empty_mailbox_events():
    assert Mailbox(UID, 3).events_after(0, 10) == ([], True)


# -- ShardState --------------------------------------------------------------


def ops_script() -> list:
    ops: list = []
    for uid in ("alice", "bob", "carol"):
        for i in range(1, 8):
            ops.append(Deliver(uid=uid, email=meta(i, uid=uid, unread=i % 2 == 0), ts=float(i)))
    ops += [
        Update(uid="alice", email_id="e3", ts=20.0, unread=True),
        Update(uid="alice", email_id="e5", ts=21.0, folder="archive"),
        Update(uid="alice", email_id="e2", ts=22.0, folder="trash", unread=False),
        Update(uid="alice", email_id="e5", ts=23.0, folder="inbox"),
        Update(uid="bob", email_id="e1", ts=24.0, unread=False),  # no-op (already read)
        Delete(uid="bob", email_id="e4", ts=25.0),
        Deliver(uid="bob", email=meta(1, uid="bob"), ts=26.0),  # duplicate
        Delete(uid="carol", email_id="missing", ts=27.0),  # not found
        Update(uid="nobody", email_id="e1", ts=28.0, unread=False),  # no mailbox
        Delete(uid="nobody", email_id="e1", ts=29.0),
        Update(uid="carol", email_id="e7", ts=30.0, folder="junk"),
        Deliver(uid="carol", email=meta(8, uid="carol", folder="sent"), ts=31.0),
    ]
    return ops


def test_shard_state_apply_results():
    st = ShardState(events_retained=100)
    results = [st.apply(op) for op in ops_script()]
    assert all(r.ok for r in results[:21])
    tail = [(r.ok, r.error, r.event is not None) for r in results[21:]]
    assert tail == [
        (True, None, True),
        (True, None, True),
        (True, None, True),
        (True, None, True),
        (True, None, False),
        (True, None, True),
        (True, None, False),
        (False, "not_found", False),
        (False, "not_found", False),
        (False, "not_found", False),
        (True, None, True),
        (True, None, True),
    ]
    assert st.peek("nobody") is None
    assert st.apply("not an op") == OpResult(ok=False, error="invalid", message="unknown op str")
    alice = st.peek("alice")
    assert ids(alice.page("inbox", 1, 10)[0]) == ["e7", "e6", "e5", "e4", "e3", "e1"]
    assert ids(alice.page("trash", 1, 10)[0]) == ["e2"]
    assert alice.cursor == 11


def observable(st: ShardState) -> dict:
    out = {}
    for uid, mb in st.mailboxes.items():
        pages = {f: (ids(mb.page(f, 1, 1000)[0]), mb.page(f, 1, 1000)[1]) for f in ("inbox", "archive", "trash", "junk", "sent")}
        evs, complete = mb.events_after(0, 10_000)
        out[uid] = {
            "pages": pages,
            "metas": [mb.emails[i] for i in mb.emails],
            "cursor": mb.cursor,
            "next_seq": mb.next_seq,
            "events": events_json(evs),
            "complete": complete,
            "unread": mb.unread_count("inbox"),
        }
    return out


@pytest.mark.parametrize("events_retained", [100, 4])
def test_dump_load_through_codec_round_trip(events_retained):
    st = ShardState(events_retained)
    for op in ops_script():
        st.apply(op)
    blob = codec.encode(st.dump())
    loaded = ShardState.load(codec.decode(blob), events_retained)
    assert observable(loaded) == observable(st)
    assert codec.encode(loaded.dump()) == blob
    # the loaded state keeps working identically
    for s in (st, loaded):
        s.apply(Deliver(uid="alice", email=meta(50, uid="alice"), ts=50.0))
        s.apply(Update(uid="alice", email_id="e1", ts=51.0, folder="archive"))
    assert observable(loaded) == observable(st)
    assert codec.encode(loaded.dump()) == codec.encode(st.dump())


def test_replay_of_logged_ops_rebuilds_identical_state():
    ops = ops_script()
    live = ShardState(100)
    records = []
    for start in range(0, len(ops), 5):  # batches, as the shard logs them
        batch = ops[start : start + 5]
        results = [live.apply(op) for op in batch]
        changed = [op for op, r in zip(batch, results) if r.event is not None]
        if changed:
            records.append(codec.encode(changed))
    replayed = ShardState(100)
    for rec in records:
        for op in codec.decode(rec):
            replayed.apply(op)
    assert codec.encode(replayed.dump()) == codec.encode(live.dump())
    assert observable(replayed) == observable(live)
    # replaying all ops (including the no-ops) from scratch is the same too
    again = ShardState(100)
    for op in ops:
        again.apply(op)
    assert codec.encode(again.dump()) == codec.encode(live.dump())
