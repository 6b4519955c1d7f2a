"""raymail/mailbox.py: uploads, attachments of received mail, blob keys and snapshots."""

from __future__ import annotations

import pytest

from raymail import codec
from raymail.mailbox import Mailbox, ShardState
from raymail.model import (
    Address,
    AddUpload,
    AttachmentRef,
    Delete,
    Deliver,
    EmailMeta,
    ExpireUploads,
    OpResult,
    Update,
)

UID = "alice"


def ref(n: int, filename: str | None = None) -> AttachmentRef:
    sha = f"{n:064x}"
    return AttachmentRef(id=f"att{n}", sha256=sha, size=100 * n, content_type="application/pdf",
                         filename=filename or f"file{n}.pdf", blob=f"att/{sha[:2]}/{sha}")


def meta(i: int, *refs: AttachmentRef, folder: str = "inbox", uid: str = UID) -> EmailMeta:
    return EmailMeta(
        id=f"e{i}", uid=uid, message_id=f"<m{i}@example.com>", folder=folder,
        sender=Address("from@example.com", "From"), to=(Address(f"{uid}@example.com"),), cc=(), bcc=(),
        subject=f"subject {i}", snippet="", date=1000.0 + i, size=100, unread=True,
        has_attachments=bool(refs), blob=f"msg/00/{i:064d}", attachments=tuple(refs),
    )


def counts(mb: Mailbox) -> dict[str, int]:
    return {k: n for k, (_, n) in mb.attached.items()}


# -- AddUpload -----------------------------------------------------------------


def test_add_upload_through_apply_records_without_an_event():
    st = ShardState(events_retained=10)
    a = ref(1)
    res = st.apply(AddUpload(UID, a, ts=1.0))
    assert res == OpResult(ok=True, changed=True)
    mb = st.peek(UID)
    assert mb is not None
    assert mb.uploads == {a.id: a}
    assert mb.attachment(a.id) == a
    assert mb.cursor == 0 and len(mb.events) == 0
    assert mb.emails == {} and mb.next_seq == 1


def test_add_upload_again_is_an_unchanged_no_op():
    st = ShardState(events_retained=10)
    a = ref(1)
    st.apply(AddUpload(UID, a, ts=1.0))
    other = AttachmentRef(id=a.id, sha256="f" * 64, size=1, content_type="text/plain", filename="x", blob="att/ff/x")
    for again in (a, other):
        res = st.apply(AddUpload(UID, again, ts=2.0))
        assert res == OpResult(ok=True)
        assert res.changed is False
    assert st.peek(UID).uploads == {a.id: a}  # the first record stays


def test_uploads_belong_to_the_uploader_only():
    st = ShardState(events_retained=10)
    a = ref(1)
    st.apply(AddUpload(UID, a, ts=1.0))
    st.apply(AddUpload("bob", ref(2), ts=1.0))
    assert st.peek("bob").attachment(a.id) is None
    assert st.peek(UID).attachment(ref(2).id) is None
    assert st.peek("carol") is None


@pytest.mark.parametrize("attachment_id", ["", "att999", "ATT1", "att1 ", "e1"])
def test_attachment_of_an_unknown_id_is_none(attachment_id):
    mb = Mailbox(UID, 10)
    mb.add_upload(ref(1), 1.0)
    mb.deliver(meta(1, ref(1)), ts=1.0)
    assert mb.attachment(attachment_id) is None


def test_add_upload_codec_round_trip():
    op = AddUpload(UID, ref(3, filename="Grüße 日本.pdf"), ts=12.5)
    assert codec.decode(codec.encode(op)) == op
    assert codec.decode(codec.encode([op, Deliver(UID, meta(1, ref(3)), 1.0)])) == (
        op, Deliver(UID, meta(1, ref(3)), 1.0))


# -- attachments of received mail ------------------------------------------------


def test_received_attachments_are_readable_and_counted_per_email():
    mb = Mailbox(UID, 10)
    a, b, c = ref(1), ref(2), ref(3)
    assert mb.deliver(meta(1, a, b), ts=1.0).ok
    assert mb.deliver(meta(2, a), ts=2.0).ok
    assert mb.deliver(meta(3), ts=3.0).ok
    assert counts(mb) == {a.id: 2, b.id: 1}
    assert (mb.attachment(a.id), mb.attachment(b.id), mb.attachment(c.id)) == (a, b, None)

    assert mb.delete("e1", ts=4.0).ok
    assert counts(mb) == {a.id: 1}
    assert (mb.attachment(a.id), mb.attachment(b.id)) == (a, None)

    assert mb.delete("e2", ts=5.0).ok
    assert counts(mb) == {}
    assert mb.attachment(a.id) is None


@pytest.mark.parametrize(
    "ops, expected",
    [
        ([("deliver", 1, (1,)), ("deliver", 1, (1,))], {"att1": 1}),  # a retried delivery
        ([("deliver", 1, (1,)), ("delete", 1, ()), ("delete", 1, ())], {}),  # a retried delete
        ([("deliver", 1, (1, 1))], {"att1": 2}),  # the same file twice in one email
        ([("deliver", 1, (1, 1)), ("delete", 1, ())], {}),
        ([("deliver", 1, (1,)), ("deliver", 2, (1, 2)), ("deliver", 3, (2,))], {"att1": 2, "att2": 2}),
        ([("deliver", 1, (1,)), ("deliver", 2, (1,)), ("delete", 2, ()), ("deliver", 3, (1,))], {"att1": 2}),
        ([("delete", 9, ())], {}),
        ([("bad-folder", 1, (1,))], {}),
        ([("deliver", 1, (1,)), ("move", 1, ()), ("read", 1, ())], {"att1": 1}),
    ],
    ids=["redeliver", "redelete", "twice-in-one", "twice-in-one-deleted", "overlap", "re-add",
         "delete-missing", "invalid-folder", "updates-keep"],
)
def test_attached_reference_counts(ops, expected):
    st = ShardState(events_retained=10)
    for kind, i, refs in ops:
        refs = tuple(ref(n) for n in refs)
        if kind == "deliver":
            st.apply(Deliver(UID, meta(i, *refs), ts=float(i)))
        elif kind == "bad-folder":
            assert not st.apply(Deliver(UID, meta(i, *refs, folder="nope"), ts=1.0)).ok
        elif kind == "delete":
            st.apply(Delete(UID, f"e{i}", ts=9.0))
        elif kind == "move":
            assert st.apply(Update(UID, f"e{i}", ts=9.0, folder="trash")).event is not None
        elif kind == "read":
            assert st.apply(Update(UID, f"e{i}", ts=9.0, unread=False)).event is not None
    mb = st.mailbox(UID)
    assert counts(mb) == expected
    assert set(expected) == {r.id for m in mb.emails.values() for r in m.attachments}


def test_upload_stays_after_the_email_carrying_it_is_deleted():
    mb = Mailbox(UID, 10)
    a = ref(1)
    mb.add_upload(a, 1.0)
    mb.deliver(meta(1, a, folder="sent"), ts=1.0)
    mb.delete("e1", ts=2.0)
    assert mb.attachment(a.id) == a
    assert counts(mb) == {}


def test_attachments_are_per_mailbox():
    st = ShardState(events_retained=10)
    a = ref(1)
    st.apply(Deliver("bob", meta(1, a, uid="bob"), ts=1.0))
    st.apply(Deliver(UID, meta(1, a), ts=1.0))
    st.apply(Delete("bob", "e1", ts=2.0))
    assert st.peek("bob").attachment(a.id) is None
    assert st.peek(UID).attachment(a.id) == a


# -- blob_keys -------------------------------------------------------------------


def test_blob_keys_cover_messages_attachments_and_uploads():
    mb = Mailbox(UID, 10)
    assert mb.blob_keys() == set()
    a, b, u = ref(1), ref(2), ref(3)
    mb.deliver(meta(1, a, b), ts=1.0)
    mb.deliver(meta(2, a), ts=2.0)
    mb.add_upload(u, 1.0)
    assert mb.blob_keys() == {meta(1).blob, meta(2).blob, a.blob, b.blob, u.blob}

    mb.delete("e1", ts=3.0)
    assert mb.blob_keys() == {meta(2).blob, a.blob, u.blob}
    mb.delete("e2", ts=4.0)
    assert mb.blob_keys() == {u.blob}


def test_blob_keys_of_moved_mail_are_kept():
    mb = Mailbox(UID, 10)
    a = ref(1)
    mb.deliver(meta(1, a), ts=1.0)
    mb.update("e1", ts=2.0, unread=False, folder="trash")
    assert mb.blob_keys() == {meta(1).blob, a.blob}


# -- snapshots -------------------------------------------------------------------


def scripted() -> list:
    a, b, c, d = ref(1), ref(2, "Grüße.pdf"), ref(3), ref(4)
    return [
        AddUpload(UID, a, 1.0),
        AddUpload(UID, d, 1.5),
        Deliver(UID, meta(1, a, folder="sent"), 2.0),
        Deliver(UID, meta(2, b, c), 3.0),
        Deliver(UID, meta(3, b), 4.0),
        Deliver("bob", meta(4, b, uid="bob"), 5.0),
        AddUpload("carol", c, 6.0),
        Delete(UID, "e2", 7.0),
        Update(UID, "e3", 8.0, folder="archive"),
        AddUpload(UID, a, 9.0),  # repeated: no change
    ]


def view(st: ShardState) -> dict:
    ids = [f"att{n}" for n in range(1, 6)]
    return {
        uid: {
            "uploads": dict(mb.uploads),
            "uploaded_at": dict(mb.uploaded_at),
            "attached": dict(mb.attached),
            "attachment": [mb.attachment(i) for i in ids],
            "blob_keys": mb.blob_keys(),
            "emails": [mb.emails[k] for k in sorted(mb.emails)],
        }
        for uid, mb in st.mailboxes.items()
    }


@pytest.mark.parametrize("events_retained", [100, 2])
def test_dump_load_through_codec_keeps_uploads_and_attachment_references(events_retained):
    st = ShardState(events_retained)
    for op in scripted():
        st.apply(op)
    blob = codec.encode(st.dump())
    loaded = ShardState.load(codec.decode(blob), events_retained)

    assert view(loaded) == view(st)
    alice = loaded.peek(UID)
    assert set(alice.uploads) == {"att1", "att4"}
    assert counts(alice) == {"att1": 1, "att2": 1}
    assert alice.attachment("att2").filename == "Grüße.pdf"
    assert alice.attachment("att3") is None
    assert loaded.peek("carol").attachment("att3") == ref(3)
    assert codec.encode(loaded.dump()) == blob

    # the loaded reference counts keep working
    for s in (st, loaded):
        s.apply(Delete(UID, "e3", 10.0))
    assert loaded.peek(UID).attachment("att2") is None
    assert view(loaded) == view(st)


def test_load_of_a_snapshot_without_uploads():
    st = ShardState(10)
    st.apply(Deliver(UID, meta(1, ref(1)), 1.0))
    data = codec.decode(codec.encode(st.dump()))
    old = {**data, "mailboxes": [{k: v for k, v in mb.items() if k != "uploads"} for mb in data["mailboxes"]]}
    loaded = ShardState.load(old, 10)
    assert loaded.peek(UID).uploads == {}
    assert loaded.peek(UID).attachment("att1") == ref(1)


@pytest.mark.parametrize("expire", [False, True])
def test_replay_of_logged_ops_including_uploads_rebuilds_the_state(expire):
    live = ShardState(100)
    records = []
    ops = scripted()
    for op in ops:
        res = live.apply(op)
        if res.event is not None or res.changed:  # what the shard logs
            records.append(codec.encode([op]))
    assert len(records) == len(ops) - 1  # the repeated upload is not logged
    if expire:  # as the shard's sweep does: through the log
        (op,) = live.expired_uploads(before=1.2, now=50.0)
        assert live.apply(op).changed and set(live.peek(UID).uploads) == {"att4"}
        records.append(codec.encode([op]))
    replayed = ShardState(100)
    for rec in records:
        for op in codec.decode(rec):
            replayed.apply(op)
    assert view(replayed) == view(live)
    assert codec.encode(replayed.dump()) == codec.encode(live.dump())


def test_unsent_uploads_expire_and_what_was_sent_stays_reachable():
    st = ShardState(100)
    st.apply(AddUpload(UID, ref(1), 100.0))
    st.apply(AddUpload(UID, ref(2), 200.0))
    st.apply(AddUpload("bob", ref(3), 120.0))
    st.apply(Deliver(UID, meta(1, ref(1), folder="sent"), 130.0))  # att1 went out; att2 never did
    assert st.expired_uploads(before=100.0, now=300.0) == []  # strictly older only
    ops = st.expired_uploads(before=150.0, now=300.0)
    assert sorted(ops, key=lambda op: op.uid) == [ExpireUploads("alice", ("att1",), 300.0),
                                                  ExpireUploads("bob", ("att3",), 300.0)]
    for op in ops:
        assert st.apply(op) == OpResult(ok=True, changed=True)
    alice, bob = st.peek(UID), st.peek("bob")
    assert set(alice.uploads) == {"att2"} and set(alice.uploaded_at) == {"att2"}
    assert alice.attachment("att1") == ref(1)  # through the sent mail that carries it
    assert ref(1).blob in alice.blob_keys()
    assert bob.attachment("att3") is None and ref(3).blob not in bob.blob_keys()  # garbage now
    assert st.expired_uploads(before=150.0, now=301.0) == []
    assert st.apply(ops[0]) == OpResult(ok=True)  # again (a replayed op): nothing changes
    assert st.apply(ExpireUploads("nobody", ("att9",), 1.0)) == OpResult(ok=True)


def test_upload_times_survive_a_snapshot_and_an_older_snapshot_counts_from_its_load():
    st = ShardState(10)
    st.apply(AddUpload(UID, ref(1), 100.0))
    data = codec.decode(codec.encode(st.dump()))
    assert ShardState.load(data, 10).peek(UID).uploaded_at == {"att1": 100.0}
    old = {**data, "mailboxes": [{k: v for k, v in mb.items() if k != "uploaded_at"} for mb in data["mailboxes"]]}
    loaded = ShardState.load(old, 10, loaded_at=5000.0)
    assert loaded.peek(UID).uploaded_at == {"att1": 5000.0}
    assert loaded.expired_uploads(before=4000.0, now=6000.0) == []
