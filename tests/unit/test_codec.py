"""raymail/codec.py: every registered type round-trips, nested in containers."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from raymail import codec, search
from raymail.model import (
    Address,
    AddUpload,
    AttachmentRef,
    AuthSummary,
    Delete,
    Deliver,
    EmailMeta,
    Event,
    ExpireUploads,
    OpResult,
    Update,
    User,
)
from raymail.outbound import records

ATT = AttachmentRef(id="a1", sha256="ab" * 32, size=3, content_type="text/plain", filename="näme.txt", blob="att/ab/" + "ab" * 32)

A = Address("alice@example.com", "Alice Ünïcode")
B = Address("bob@example.org")
META = EmailMeta(
    id="e1",
    uid="u1",
    message_id="<m1@example.com>",
    folder="inbox",
    sender=A,
    to=(B,),
    cc=(A, B),
    bcc=(),
    subject="Grüße",
    snippet="hello",
    date=1700000000.25,
    size=1234,
    unread=True,
    has_attachments=False,
    blob="msg/ab/abcdef",
    seq=7,
)
AUTH = AuthSummary(spf="pass", dkim="fail", dmarc="pass", policy="reject", spf_domain="example.com",
                   dkim_domains=("example.com",), from_domain="example.com")
META_MX = dataclasses.replace(META, id="e2", auth=AUTH)
EVENT_SCALAR = Event(cursor=3, type="email.updated", email_id="e1", ts=1.5, summary={"id": "e1", "unread": False, "n": None})
EVENT_DELETED = Event(cursor=4, type="email.deleted", email_id="e1", ts=2.0, summary=None)

SAMPLES = [
    A,
    B,
    User(uid="u1", email="alice@example.com", name="Alice", profile_url="https://x.test/a", created_at=12.5),
    META,
    AUTH,
    META_MX,
    EVENT_SCALAR,
    EVENT_DELETED,
    Deliver(uid="u1", email=META, ts=99.0),
    Update(uid="u1", email_id="e1", ts=3.0, unread=False, folder=None),
    Update(uid="u1", email_id="e1", ts=3.0, unread=None, folder="archive"),
    Delete(uid="u1", email_id="e1", ts=4.0),
    OpResult(ok=True, event=EVENT_SCALAR),
    OpResult(ok=True, changed=True),
    ATT,
    AddUpload(uid="u1", attachment=ATT, ts=3.0),
    ExpireUploads(uid="u1", ids=("a1", "a2"), ts=5.0),
    OpResult(ok=False, error="not_found", message="no such email"),
    records.OutboundMessage(id="o1", message_id="<m1@example.com>", sender_uid="u1", sender_email="a@example.com",
                            blob="msg/ab/cd", category="transactional", pool="p1", recipients=("b@example.org",),
                            created_s=1.5, size=10, dkim_header="DKIM-Signature: v=1"),
    records.Attempt(message="o1", rcpt="b@example.org", action="retry", code=451, text="later", ip="127.0.0.2",
                    ts=2.5, next_s=62.5),
    records.QuotaUse(ip="127.0.0.2", day=3, count=7),
    records.Suppress(scope="sender", address="b@example.org", reason="550 5.1.1", ts=3.5),
    records.Unsuppress(scope="global", address="b@example.org"),
    records.Requeue(message="o1", rcpt="b@example.org", ts=4.5),
    records.DsnDone(message="o1", rcpts=("b@example.org", "c@example.org")),
    search.Clause(words=("quarterly", "report"), fields=("subject",), phrase=True),
    # A query as the gateway parses it and sends it to a shard.
    search.parse('quarterly "exact phrase" -draft from:alice', folder="inbox", unread="true", after="2026-01-01"),
]


def test_every_registered_type_has_a_sample():
    assert {type(s) for s in SAMPLES} == set(codec._BY_TYPE)


def test_email_meta_written_before_auth_existed_still_decodes():
    fields = [getattr(META, f.name) for f in dataclasses.fields(META) if f.name != "auth"]
    old = msgpack.packb(msgpack.ExtType(1, msgpack.packb([codec._BY_TYPE[EmailMeta], 1, fields],
                                                         default=codec._default, use_bin_type=True)),
                        use_bin_type=True)
    out = codec.decode(old)
    assert out == META and out.auth is None and out.summary()["auth"] is None
    assert codec.decode(codec.encode(META_MX)).summary()["auth"]["dkim_domains"] == ["example.com"]


@pytest.mark.parametrize("obj", SAMPLES, ids=lambda o: type(o).__name__)
def test_round_trip(obj):
    out = codec.decode(codec.encode(obj))
    assert type(out) is type(obj)
    assert out == obj
    # field by field, including types (bool stays bool, float stays float)
    for f in dataclasses.fields(obj):
        assert type(getattr(out, f.name)) is type(getattr(obj, f.name)), f.name


@pytest.mark.parametrize("obj", SAMPLES, ids=lambda o: type(o).__name__)
def test_round_trip_nested_in_lists_and_dicts(obj):
    value = [obj, [obj, {"k": obj, 5: [obj]}], "tail"]
    out = codec.decode(codec.encode(value))
    # arrays decode as tuples (documented)
    assert out == (obj, (obj, {"k": obj, 5: (obj,)}), "tail")


def test_lists_inside_dataclass_fields_come_back_as_tuples_and_reencode_identically():
    ev = Event(cursor=1, type="email.new", email_id="e1", ts=1.0, summary=META.summary())
    out = codec.decode(codec.encode(ev))
    assert out.summary["to"] == ({"name": "", "email": "bob@example.org"},)
    assert out.summary["from"] == {"name": "Alice Ünïcode", "email": "alice@example.com"}
    assert codec.encode(out) == codec.encode(ev)


@pytest.mark.parametrize(
    "value",
    [object(), [1, object()], {"k": {1, 2}}, dataclasses.make_dataclass("Unregistered", ["x"])(1)],
    ids=["object", "nested-object", "set-in-dict", "unregistered-dataclass"],
)
def test_unknown_type_raises_type_error(value):
    with pytest.raises(TypeError):
        codec.encode(value)


def test_unknown_tag_on_decode_is_refused():
    data = msgpack.packb(msgpack.ExtType(1, msgpack.packb([250, 1, []])))
    with pytest.raises(ValueError, match="unknown type tag 250"):
        codec.decode(data)


def test_foreign_ext_codes_pass_through():
    data = msgpack.packb(msgpack.ExtType(9, b"xyz"))
    assert codec.decode(data) == msgpack.ExtType(9, b"xyz")


def test_register_refuses_a_used_tag_for_another_class():
    other = dataclasses.make_dataclass("Other", ["x"])
    with pytest.raises(ValueError, match="already used by Address"):
        codec.register(1, other)
    assert codec._BY_TAG[1] is Address
