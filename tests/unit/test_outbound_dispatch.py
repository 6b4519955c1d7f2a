"""raymail/outbound/dispatch.py: ready, waiting, queued and leased work, without Ray."""

from __future__ import annotations

from raymail.config import Pool
from raymail.outbound.dispatch import Dispatcher, Held
from raymail.outbound.records import Attempt, OutboundMessage, SpoolState

POOL = Pool("tx", ("10.0.0.1", "10.0.0.2"), ("transactional",))


def setup(rcpts_per_msg=(("a@x.test", "b@y.test"),), batch_size=10, lease_s=30.0):
    st = SpoolState()
    d = Dispatcher(st, (POOL,), lease_s=lease_s, batch_size=batch_size, entries_per_ip=1)
    for i, rcpts in enumerate(rcpts_per_msg):
        m = OutboundMessage(f"m{i}", f"<m{i}@h>", "u1", "s@h.test", "msg/k", "transactional", "tx", rcpts, 0.0)
        st.apply(m)
        for r in rcpts:
            d.schedule(m, r, 0.0, now=1.0)
    return st, d


def keys(entries):
    return [(m.id, r) for e in entries for m, rs in e for r in rs]


def test_take_groups_by_domain_and_bounds_the_queue():
    rcpts = [tuple(f"u{j}@d{j % 3}.test" for j in range(i, i + 3)) for i in range(0, 30, 3)]
    _, d = setup(rcpts, batch_size=5)
    entries = d.take(POOL, now=2.0)
    assert len(entries) == 2  # room: batch_size x 2 IPs x 1 entry each
    taken = keys(entries)
    assert len(taken) == 10 and len(set(taken)) == 10
    # Arrival order interleaves three domains; entries hold a domain's recipients together.
    assert [len({r.rpartition("@")[2] for _, rs in e for r in rs}) for e in entries] == [2, 2]
    assert d.take(POOL, now=2.0) == []  # the queue is full until claims drain it


def test_claim_leases_up_to_the_quota_and_frees_the_rest():
    _, d = setup()
    taken = keys(d.take(POOL, now=2.0))
    granted = d.claim("10.0.0.1", taken, left=1, now=3.0)
    assert granted == taken[:1] and d.leased[granted[0]][0] == "10.0.0.1"
    assert list(d.ready["tx"]) == taken[1:]  # back for another IP
    assert d.claim("10.0.0.2", taken, left=None, now=3.0) == taken[1:]  # the leased one is not given twice


def test_settle_respects_the_lease_owner_and_finished_work():
    st, d = setup()
    taken = keys(d.take(POOL, now=2.0))
    d.claim("10.0.0.1", taken, left=None, now=3.0)
    assert d.settle("10.0.0.2", taken[0]) is None  # not its lease
    assert d.settle("10.0.0.1", taken[0]).id == "m0"
    st.apply(Attempt("m0", taken[0][1], "delivered", 250, "ok", "10.0.0.1", 4.0))
    assert d.settle("10.0.0.1", taken[0]) is None  # finished: a late duplicate report


def test_expiry_of_leases_queue_entries_and_retry_times():
    st, d = setup(lease_s=10.0)
    a, b = keys(d.take(POOL, now=2.0))
    d.claim("10.0.0.1", [a], left=None, now=3.0)  # b stays in the queue, never claimed
    expired = d.expire(now=13.0)
    assert expired == [(a, "10.0.0.1")] and set(d.ready["tx"]) == {a, b}
    # a deferred recipient waits for its time
    st.apply(Attempt("m0", a[1], "deferred", 451, "later", "10.0.0.1", 13.0, next_s=50.0))
    d.ready["tx"].clear()
    d.schedule(st.messages["m0"], a[1], 50.0, now=13.0)
    d.expire(now=49.0)
    assert a not in d.ready["tx"]
    d.expire(now=50.0)
    assert a in d.ready["tx"]


def test_a_restarted_sender_and_a_lost_queue_give_work_back():
    _, d = setup()
    a, b = keys(d.take(POOL, now=2.0))
    d.claim("10.0.0.1", [a], left=None, now=3.0)
    # its lease, and what sits in the pool's queue (a dead sender's waiting call may take it)
    assert d.release_ip("10.0.0.1", "tx") == 2 and set(d.ready["tx"]) == {a, b}
    assert d.in_queue["tx"] == 0 and not d.dispatched
    again = keys(d.take(POOL, now=4.0))
    assert d.claim("10.0.0.2", [a], left=None, now=4.0) == [a]  # an old copy claimed first...
    assert d.claim("10.0.0.2", again, left=None, now=4.0) == [b]  # ...so its new copy is refused
    d.lost_queue("tx")
    assert not d.dispatched


def test_renewal_keeps_a_live_senders_lease_past_lease_s():
    st, d = setup(lease_s=10.0)
    a, b = keys(d.take(POOL, now=2.0))
    d.claim("10.0.0.1", [a, b], left=None, now=3.0)
    for now in (9.0, 15.0, 21.0):  # renewed every 6 s: held for 18 s with a 10 s lease
        assert d.renew("10.0.0.1", [a, b], now=now) == []
        assert d.expire(now=now + 9.0) == []
    assert d.leased[a] == ("10.0.0.1", 31.0)
    assert not d.ready["tx"]  # never queued again for the other IP
    # Without renewals (a dead sender) the lease still ends lease_s after the last one.
    assert d.expire(now=31.0) == [(a, "10.0.0.1"), (b, "10.0.0.1")]


def test_renewal_reports_what_the_ip_no_longer_holds():
    st, d = setup(lease_s=10.0)
    a, b = keys(d.take(POOL, now=2.0))
    d.claim("10.0.0.1", [a, b], left=None, now=3.0)
    d.expire(now=13.0)  # both expired: ready again
    d.take(POOL, now=13.0)
    assert d.claim("10.0.0.2", [a], left=None, now=13.5) == [a]
    # a: leased to another IP now; b: waiting in the queue, leased to nobody.
    assert d.renew("10.0.0.1", [a, b], now=14.0) == [a, b]
    assert d.leased[a] == ("10.0.0.2", 23.5) and b not in d.leased  # a refused renewal takes nothing
    st.apply(Attempt("m0", a[1], "delivered", 250, "ok", "10.0.0.2", 15.0))
    d.settle("10.0.0.2", a)
    assert d.renew("10.0.0.2", [a], now=16.0) == [a]  # finished


def test_held_leases_are_safe_while_renewals_keep_up():
    h = Held(lease_s=9.0)  # renewed every 3 s
    k1, k2 = ("m0", "a@x.test"), ("m0", "b@y.test")
    h.add([k1, k2], asked_at=100.0)  # surely ours until 109
    assert h.check([k1, k2], now=105.9) == ([k1, k2], [])
    assert h.check([k1, k2], now=106.0) == ([], [k1, k2])  # a renewal is overdue: ask first
    h.renewed([k1, k2], lost=[k2], asked_at=106.0, last_claim=h.claims)
    assert h.check([k1, k2], now=106.5) == ([k1], [])  # k2 went to another IP: not sent
    assert k2 not in h and h.keys() == [k1]
    h.done([k1])
    assert h.keys() == [] and h.check([k1], now=106.5) == ([], [])


def test_a_late_answer_does_not_undo_a_newer_claim():
    h = Held(lease_s=9.0)
    k = ("m0", "a@x.test")
    first = h.add([k], asked_at=0.0)
    asked, last_claim = h.keys(), h.claims  # a renewal goes out...
    h.done([k])  # ...k is reported (deferred) and claimed again before its answer
    second = h.add([k], asked_at=1.0)
    h.renewed(asked, lost=[k], asked_at=0.5, last_claim=last_claim)
    assert k in h
    h.done([k], claim=first)  # the first claim's entry ends: not this lease
    assert k in h
    h.done([k], claim=second)
    assert k not in h
