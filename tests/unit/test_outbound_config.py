"""The [outbound] keys beyond pools, warm-up, routes and retry: parsed and checked at start-up."""

from __future__ import annotations

import pytest

from raymail import config
from raymail.config import ConfigError


def test_outbound_keys_are_read():
    cfg = config.from_dict({"outbound": {
        "pools": [{"name": "p", "ips": ["10.0.0.1"], "categories": ["transactional"]}],
        "suppression": "global", "lease_s": 5, "batch_size": 7, "sender_categories": {"News@X.test": "marketing"},
        "warmup": {"warmed_ips": ["10.0.0.1"]},
    }})
    ob = cfg.outbound
    assert ob.suppression == "global" and ob.lease_s == 5.0 and isinstance(ob.lease_s, float)
    assert ob.batch_size == 7 and ob.sender_categories == {"news@x.test": "marketing"}
    assert ob.warmed_ips == ("10.0.0.1",)


@pytest.mark.parametrize("outbound, message", [
    ({"suppression": "everyone"}, "[outbound] suppression must be 'sender' or 'global'"),
    ({"lease_s": 0}, "[outbound] lease_s must be positive"),
    ({"snapshot_every_bytes": -1}, "[outbound] snapshot_every_bytes must be positive"),
    ({"batch_size": "10"}, "[outbound] batch_size must be an integer"),
    ({"sender_categories": {"a@b.test": 1}}, "[outbound.sender_categories] must be a table"),
    ({"warmup": {"warmed_ips": ["nope"]}}, "[outbound.warmup] warmed_ips: 'nope' is not an IP address"),
    ({"retry": {"backoff_s": []}}, "[outbound.retry] backoff_s must be a non-empty list"),
    ({"pools": [{"name": "p", "ips": []}]}, "pool 'p' needs at least one IP"),
])
def test_outbound_errors_say_what_to_change(outbound, message):
    with pytest.raises(ConfigError) as exc:
        config.from_dict({"outbound": outbound})
    assert message in str(exc.value)
