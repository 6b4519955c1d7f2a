"""raymail/subscriptions.py: which gateways a shard pushes a user's events to."""

from __future__ import annotations

from raymail.subscriptions import Subscriptions


def test_a_reload_whose_calls_arrive_out_of_order_stays_subscribed():
    subs = Subscriptions()
    assert subs.subscribe("u", "gw-0", seq=1)
    # The page reloads: the old socket's unsubscribe (2) and the new one's subscribe (3)
    # run in the opposite order.
    assert subs.subscribe("u", "gw-0", seq=3)
    assert not subs.unsubscribe("u", "gw-0", seq=2, now=10.0)  # stale: ignored
    assert subs.gateways_for("u") == {"gw-0"}


def test_an_old_subscribe_after_the_unsubscribe_is_ignored():
    subs = Subscriptions()
    assert subs.unsubscribe("u", "gw-0", seq=5, now=10.0)
    assert not subs.subscribe("u", "gw-0", seq=4)
    assert subs.gateways_for("u") == set() and subs.users == 0


def test_in_order_changes_apply_and_other_gateways_are_independent():
    subs = Subscriptions()
    subs.subscribe("u", "gw-0", seq=1)
    subs.subscribe("u", "gw-1", seq=1)
    subs.subscribe("v", "gw-1", seq=2)
    assert subs.unsubscribe("u", "gw-0", seq=3, now=1.0)
    assert subs.gateways_for("u") == {"gw-1"} and subs.users == 2
    assert subs.subscribe("u", "gw-0", seq=4)
    assert subs.gateways_for("u") == {"gw-0", "gw-1"}


def test_unsubscribes_are_forgotten_after_a_while():
    subs = Subscriptions(remember_s=60.0)
    subs.unsubscribe("u", "gw-0", seq=5, now=0.0)
    subs.unsubscribe("v", "gw-0", seq=6, now=61.0)  # expires the first one's memory
    assert subs.subscribe("u", "gw-0", seq=1)  # no longer known to be stale
    assert not subs.subscribe("v", "gw-0", seq=2)  # still remembered


def test_a_restarted_gateway_starts_afresh():
    subs = Subscriptions()
    subs.subscribe("u", "gw-0", seq=100)
    subs.subscribe("u", "gw-1", seq=7)
    subs.forget_gateway("gw-0")
    assert subs.gateways_for("u") == {"gw-1"}
    assert subs.subscribe("u", "gw-0", seq=1)  # the new process's numbers
    assert subs.gateways_for("u") == {"gw-0", "gw-1"}


def test_changes_without_a_sequence_always_apply():
    subs = Subscriptions()
    subs.subscribe("u", "gw-0", seq=9)
    subs.learned("w", "gw-0")
    assert subs.unsubscribe("u", "gw-0")
    assert subs.gateways_for("u") == set() and subs.gateways_for("w") == {"gw-0"}
