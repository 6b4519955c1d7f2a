"""raymail/outbound: classification, warm-up, retry policy, suppression scopes."""

from __future__ import annotations

import pytest

from raymail.config import Pool
from raymail.outbound import classify, retry, suppression, warmup
from raymail.outbound.retry import Action

POOLS = (Pool("tx", ("10.0.0.1",), ("transactional",)), Pool("mk", ("10.0.0.2",), ("marketing",)))


@pytest.mark.parametrize("requested, headers, sender, expected", [
    ("marketing", [], "a@x.test", "marketing"),
    (None, [("List-Unsubscribe", "<mailto:u@x.test>")], "a@x.test", "marketing"),
    (None, [("Precedence", " Bulk ")], "a@x.test", "marketing"),
    (None, [("Precedence", "first-class")], "a@x.test", "transactional"),
    (None, [], "news@x.test", "marketing"),  # by address
    (None, [], "b@promo.test", "marketing"),  # by domain
    (None, [], "a@x.test", "transactional"),  # the default
])
def test_category(requested, headers, sender, expected):
    classes = {"news@x.test": "marketing", "promo.test": "marketing"}
    assert classify.category_of(requested, headers, sender, classes, "transactional") == expected


def test_pool_for_falls_back_to_the_first_pool():
    assert classify.pool_for("marketing", POOLS).name == "mk"
    assert classify.pool_for("newsletters", POOLS).name == "tx"
    with pytest.raises(ValueError):
        classify.pool_for("marketing", ())


CAPS = (2, 5, 10)


@pytest.mark.parametrize("first_day, today, used, warmed, expected", [
    (None, 100, 0, False, 2),  # never used: day 1 of the schedule
    (100, 100, 2, False, 0),  # at its cap
    (100, 101, 1, False, 4),
    (100, 102, 0, False, 10),
    (100, 103, 500, False, None),  # past the schedule: warmed
    (100, 100, 7, True, None),  # configured as warmed
    (100, 100, 9, False, 0),  # over (a burst granted before a restart) is still 0
])
def test_warmup_remaining(first_day, today, used, warmed, expected):
    assert warmup.remaining(first_day, today, used, CAPS, warmed) == expected


def test_warmup_grant_and_days():
    assert warmup.grant(10, None) == 10 and warmup.grant(10, 3) == 3 and warmup.grant(2, 0) == 0
    assert warmup.day_of(86_399.9) == 0 and warmup.day_of(86_400) == 1
    assert warmup.cap_for(0, CAPS) == 2 and warmup.cap_for(3, CAPS) is None


BACKOFF = (10, 60, 300)


@pytest.mark.parametrize("code, attempts, age_s, action, delay_s", [
    (250, 1, 0, Action.DELIVERED, None),
    (550, 1, 0, Action.BOUNCED, None),
    (421, 1, 0, Action.DEFERRED, 10),
    (451, 2, 0, Action.DEFERRED, 60),
    (450, 9, 0, Action.DEFERRED, 300),  # the last back-off repeats
    (450, 3, 900, Action.BOUNCED, None),  # the next try would be past the maximum age
    (retry.INTERNAL, 1, 0, Action.DEAD, None),
])
def test_retry_decide(code, attempts, age_s, action, delay_s):
    d = retry.decide(code, attempts, created_s=1000.0, now_s=1000.0 + age_s, backoff_s=BACKOFF, max_age_s=1000)
    assert d.action is action
    if delay_s is not None:
        assert d.next_s == 1000.0 + age_s + delay_s
    assert d.expired == (age_s == 900)


@pytest.mark.parametrize("code, text, status", [
    (550, "5.1.1 No such user", "5.1.1"),
    (550, "no such user", "5.0.0"),
    (451, "4.3.0 try later", "4.3.0"),
    (451, "5.1.1 wrong class", "4.0.0"),
    (0, "blob gone", "5.0.0"),
])
def test_enhanced_status(code, text, status):
    assert retry.enhanced_status(code, text) == status


def test_suppression_scope():
    assert suppression.scope_for("sender", "u1") == "u1"
    assert suppression.scope_for("global", "u1") == suppression.GLOBAL
    assert suppression.key("u1", " Bob@X.test ") == ("u1", "bob@x.test")
    assert "bob@x.test" in suppression.refusal(["bob@x.test"])


@pytest.mark.parametrize("code, text, expected", [
    (550, "5.1.1 <x@d.test>: Recipient address rejected: User unknown", True),
    (550, "5.1.10 null MX", True),
    (550, "5.1.2 no such domain", True),
    (550, "5.2.1 mailbox disabled", True),
    (550, "no such user here", True),  # no enhanced status: 550 is "mailbox unavailable"
    (553, "mailbox name not allowed", True),
    (554, "5.7.1 Message rejected as spam", False),
    (550, "5.7.26 unauthenticated mail is prohibited", False),
    (552, "5.2.2 mailbox full", False),
    (552, "5.3.4 message too big", False),
    (554, "transaction failed", False),
    (451, "4.1.1 try later", False),
])
def test_only_a_bad_address_is_suppressed(code, text, expected):
    assert suppression.suppresses(code, text) is expected
