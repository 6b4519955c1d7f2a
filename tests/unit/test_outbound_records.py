"""raymail/outbound/records.py: the spool state is a replay of its log; the codec carries it."""

from __future__ import annotations

from raymail import codec
from raymail.outbound.records import (
    Attempt,
    DsnDone,
    OutboundMessage,
    QuotaUse,
    Requeue,
    SpoolState,
    Status,
    Suppress,
    Unsuppress,
)

DAY = 86_400


def msg(mid: str = "m1", rcpts=("a@x.test", "b@y.test")) -> OutboundMessage:
    return OutboundMessage(mid, f"<{mid}@h>", "u1", "s@h.test", "msg/abc", "transactional", "tx", rcpts, 10.0, 99)


def replay(records) -> SpoolState:
    st = SpoolState()
    for r in codec.decode(codec.encode(list(records))):  # through the codec, as from the log
        st.apply(r)
    return st


def test_lifecycle_and_finish():
    st = replay([
        msg(), msg(),  # an enqueue replayed twice is one message
        Attempt("m1", "a@x.test", "deferred", 451, "4.3.0 later", "10.0.0.1", 20.0, next_s=80.0),
        Attempt("m1", "b@y.test", "bounced", 550, "5.1.1 unknown", "10.0.0.1", 20.0),
    ])
    states = st.rcpts["m1"]
    assert states["a@x.test"].status is Status.DEFERRED and states["a@x.test"].next_s == 80.0
    assert states["b@y.test"].status is Status.BOUNCED
    assert [(m.id, r) for m, r, _ in st.pending()] == [("m1", "a@x.test")]
    st.apply(Attempt("m1", "a@x.test", "delivered", 250, "ok", "10.0.0.1", 90.0))
    assert "m1" not in st.messages and st.finished == 1 and list(st.pending()) == []
    assert st.known("m1")  # a retried enqueue of a finished message is not queued again
    st.apply(msg())
    assert "m1" not in st.messages
    # a late duplicate report for finished work changes nothing
    st.apply(Attempt("m1", "a@x.test", "bounced", 550, "late", "10.0.0.2", 95.0))
    assert "m1" not in st.rcpts


def test_bounces_wait_for_their_report_across_the_message_end():
    st = replay([msg(), Attempt("m1", "a@x.test", "bounced", 550, "5.1.1 unknown", "10.0.0.1", 20.0),
                 Attempt("m1", "b@y.test", "bounced", 451, "gave up", "10.0.0.1", 21.0)])
    assert "m1" not in st.messages  # finished...
    m, failures = st.bounces["m1"]  # ...but its bounce report is still owed
    assert m.id == "m1" and failures == [("a@x.test", 550, "5.1.1 unknown"), ("b@y.test", 451, "gave up")]
    back = SpoolState.load(codec.decode(codec.encode(st.dump())))
    assert back.bounces == st.bounces
    st.apply(DsnDone("m1", ("a@x.test",)))
    assert st.bounces["m1"][1] == [("b@y.test", 451, "gave up")]
    st.apply(DsnDone("m1", ("b@y.test",)))
    assert "m1" not in st.bounces


def test_dead_and_requeue():
    st = replay([msg(rcpts=("a@x.test",)), Attempt("m1", "a@x.test", "dead", 0, "blob gone", "", 20.0)])
    assert st.rcpts["m1"]["a@x.test"].status is Status.DEAD and list(st.pending()) == []
    st.apply(Requeue("m1", "a@x.test", 30.0))
    assert st.rcpts["m1"]["a@x.test"].status is Status.QUEUED and len(list(st.pending())) == 1


def test_warmup_counters_roll_over_by_day():
    st = replay([QuotaUse("10.0.0.1", 100, 3), QuotaUse("10.0.0.1", 100, 2)])
    caps = (5, 8)
    assert st.remaining("10.0.0.1", 100 * DAY + 5, caps, warmed=False) == 0
    assert st.remaining("10.0.0.1", 101 * DAY + 5, caps, warmed=False) == 8  # day 2 of use, nothing sent yet
    st.apply(QuotaUse("10.0.0.1", 101, 3))
    assert st.remaining("10.0.0.1", 101 * DAY, caps, warmed=False) == 5
    assert st.remaining("10.0.0.9", 101 * DAY, caps, warmed=False) == 5  # a new IP starts at day 1
    assert st.remaining("10.0.0.1", 101 * DAY, caps, warmed=True) is None


def test_suppression():
    st = replay([Suppress("u1", "Bob@X.test", "550 5.1.1", 1.0)])
    assert st.is_suppressed("u1", "bob@x.test") == "550 5.1.1"
    assert st.is_suppressed("u2", "bob@x.test") is None
    st.apply(Unsuppress("u1", "bob@x.test"))
    assert st.is_suppressed("u1", "bob@x.test") is None


def test_snapshot_round_trip():
    st = replay([msg(), Attempt("m1", "a@x.test", "deferred", 421, "conn", "10.0.0.1", 20.0, 50.0),
                 QuotaUse("10.0.0.1", 100, 4), Suppress("*", "c@z.test", "550", 2.0)])
    back = SpoolState.load(codec.decode(codec.encode(st.dump())))
    assert back.messages == st.messages and back.rcpts == st.rcpts
    assert back.suppressed == st.suppressed and back.ips == st.ips and back.recent == st.recent
