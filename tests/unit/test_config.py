"""raymail/config.py: loading, validation errors that name the subsystem, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from raymail import config
from raymail.config import Config, ConfigError, Pool


def test_load_default_file_matches_the_shipped_toml():
    cfg = config.load()
    assert cfg.server.data_dir == "./var"
    assert cfg.server.hostname == "mail.example.test"
    assert cfg.server.bind == "127.0.0.1"
    assert (cfg.server.http_port, cfg.server.smtp_port, cfg.server.submission_port) == (8080, 2525, 2587)
    assert cfg.storage.url == "" and cfg.storage.options == {}
    assert cfg.limits.max_message_bytes == 26_214_400
    assert cfg.limits.max_recipients == 100
    assert cfg.limits.send_rate_per_s == 20.0 and isinstance(cfg.limits.send_rate_per_s, float)
    assert cfg.cluster.shards == 2 and cfg.cluster.dashboard is True
    assert cfg.gateway.allowed_origins == () and cfg.gateway.ws_queue_size == 256
    assert cfg.mailbox.events_retained == 5000
    assert cfg.outbound.pools == (
        Pool("transactional", ("127.0.0.2",), ("transactional",)),
        Pool("marketing", ("127.0.0.3",), ("marketing",)),
    )
    assert cfg.outbound.routes == {"partner.test": "127.0.0.1:2626"}
    assert cfg.outbound.retry_backoff_s == (60, 300, 1800, 7200)
    assert cfg.outbound.retry_max_age_s == 432_000


def test_empty_dict_gives_the_dataclass_defaults():
    assert config.from_dict({}) == Config()


def test_load_custom_file(tmp_path: Path):
    p = tmp_path / "c.toml"
    p.write_text('[limits]\nmax_recipients = 7\n[gateway]\nallowed_origins = ["https://mail.example.com"]\n')
    cfg = config.load(p)
    assert cfg.limits.max_recipients == 7
    assert cfg.gateway.allowed_origins == ("https://mail.example.com",)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "[config] file not found"),
        ("[limits\nmax_recipients = 1", "is not valid TOML"),
    ],
    ids=["missing", "bad-toml"],
)
def test_load_errors(tmp_path: Path, content, message):
    p = tmp_path / "c.toml"
    if content is not None:
        p.write_text(content)
    with pytest.raises(ConfigError) as exc:
        config.load(p)
    assert message in str(exc.value)
    assert str(exc.value).startswith("[config]")


@pytest.mark.parametrize(
    "raw, starts_with, contains",
    [
        # unknown sections and keys
        ({"bogus": {}}, "[bogus]", "not a known section"),
        ({"limits": {"max_recpients": 5}}, "[limits]", "unknown key 'max_recpients'"),
        ({"server": {"port": 1}}, "[server]", "unknown key 'port'"),
        ({"outbound": {"nope": 1}}, "[outbound]", "unknown keys: nope"),
        ({"limits": 5}, "[limits]", "must be a table"),
        ({"storage": {"options": [1]}}, "[storage.options]", "must be a table"),
        # type errors
        ({"limits": {"max_recipients": "10"}}, "[limits]", "max_recipients must be an integer"),
        ({"limits": {"max_recipients": True}}, "[limits]", "max_recipients must be an integer"),
        ({"limits": {"max_recipients": 1.5}}, "[limits]", "max_recipients must be an integer"),
        ({"limits": {"send_rate_per_s": "fast"}}, "[limits]", "send_rate_per_s must be a number"),
        ({"limits": {"send_rate_per_s": False}}, "[limits]", "send_rate_per_s must be a number"),
        ({"cluster": {"dashboard": 1}}, "[cluster]", "dashboard must be true or false"),
        ({"server": {"hostname": 5}}, "[server]", "hostname must be a string"),
        ({"gateway": {"allowed_origins": "https://a.test"}}, "[gateway]", "allowed_origins must be a list"),
        # values out of range
        ({"server": {"http_port": 65536}}, "[server]", "http_port must be a port number 0-65535"),
        ({"server": {"smtp_port": -1}}, "[server]", "smtp_port must be a port number"),
        ({"server": {"submission_port": 100000}}, "[server]", "submission_port must be a port number"),
        ({"cluster": {"dashboard_port": 70000}}, "[cluster]", "dashboard_port must be a port number"),
        ({"limits": {"max_recipients": 0}}, "[limits]", "max_recipients must be positive, got 0"),
        ({"limits": {"send_rate_per_s": 0}}, "[limits]", "send_rate_per_s must be positive"),
        ({"limits": {"default_page_size": 300}}, "[limits]", "default_page_size must not exceed max_page_size"),
        ({"cluster": {"shards": 0}}, "[cluster]", "shards must be positive"),
        ({"gateway": {"ws_queue_size": -1}}, "[gateway]", "ws_queue_size must be positive"),
        ({"mailbox": {"events_retained": 0}}, "[mailbox]", "events_retained must be positive"),
        ({"server": {"hostname": "mail example"}}, "[server]", "hostname must be a DNS name"),
        ({"server": {"hostname": ""}}, "[server]", "hostname must be a DNS name"),
        ({"server": {"bind": "localhost"}}, "[server]", "bind must be an IP address"),
        ({"storage": {"url": "/var/blobs"}}, "[storage]", "url must look like"),
        ({"gateway": {"allowed_origins": ["mail.example.com"]}}, "[gateway]", "allowed_origins entries"),
        # outbound pools, warmup, routes
        (
            {"outbound": {"pools": [{"name": "p", "ips": ["300.1.1.1"]}]}},
            "[outbound.pools]",
            "pool 'p': '300.1.1.1' is not an IP address",
        ),
        (
            {"outbound": {"pools": [{"name": "p", "ips": ["10.0.0.1", "not-an-ip"]}]}},
            "[outbound.pools]",
            "'not-an-ip' is not an IP address",
        ),
        (
            {"outbound": {"pools": [{"name": "p", "ips": ["10.0.0.1"]}, {"name": "p", "ips": ["10.0.0.2"]}]}},
            "[outbound.pools]",
            "pool name 'p' is declared twice",
        ),
        ({"outbound": {"pools": [{"ips": ["10.0.0.1"]}]}}, "[[outbound.pools]]", "entry 0 needs a name"),
        ({"outbound": {"pools": [{"name": "p", "ips": "10.0.0.1"}]}}, "[[outbound.pools]]", "ips must be a list"),
        ({"outbound": {"warmup": {"daily_caps": [10, 0]}}}, "[outbound.warmup]", "daily_caps must all be positive"),
        ({"outbound": {"routes": {"x.test": "nohost"}}}, "[outbound.routes]", "'x.test' must map to host:port"),
        ({"outbound": {"routes": {"x.test": "h:port"}}}, "[outbound.routes]", "must map to host:port"),
    ],
)
def test_from_dict_errors_name_the_subsystem(raw, starts_with, contains):
    with pytest.raises(ConfigError) as exc:
        config.from_dict(raw)
    msg = str(exc.value)
    assert msg.startswith(starts_with), msg
    assert contains in msg, msg


@pytest.mark.parametrize(
    "raw, check",
    [
        ({"server": {"http_port": 0}}, lambda c: c.server.http_port == 0),
        ({"server": {"http_port": 65535}}, lambda c: c.server.http_port == 65535),
        ({"server": {"bind": "::1"}}, lambda c: c.server.bind == "::1"),
        ({"limits": {"send_rate_per_s": 3}}, lambda c: c.limits.send_rate_per_s == 3.0 and type(c.limits.send_rate_per_s) is float),
        ({"limits": {"default_page_size": 200}}, lambda c: c.limits.default_page_size == 200),
        ({"storage": {"url": "s3://bucket/p", "options": {"key": "k"}}}, lambda c: c.storage_url == "s3://bucket/p" and c.storage.options == {"key": "k"}),
        (
            {"outbound": {"pools": [{"name": "v6", "ips": ["::1", "10.0.0.1"], "categories": ["marketing"]}]}},
            lambda c: c.outbound.pools == (Pool("v6", ("::1", "10.0.0.1"), ("marketing",)),),
        ),
        ({"outbound": {"retry": {"backoff_s": [1, 2], "max_age_s": 10}}}, lambda c: c.outbound.retry_backoff_s == (1, 2) and c.outbound.retry_max_age_s == 10),
        ({"outbound": {"warmup": {"daily_caps": [5]}}}, lambda c: c.outbound.warmup_daily_caps == (5,)),
    ],
)
def test_from_dict_accepts_valid_values(raw, check):
    assert check(config.from_dict(raw))


@pytest.mark.parametrize(
    "raw",
    [
        {"outbound": {"retry": {"max_age_s": "5 days"}}},  # ValueError from int()
        {"outbound": {"warmup": {"daily_caps": "100"}}},  # TypeError comparing str <= int
        {"outbound": {"routes": ["partner.test"]}},  # TypeError from dict()
        {"outbound": {"retry": {"backoff_s": "60"}}},  # accepted as ('6', '0')
        {"outbound": {"retry": {"max_age": 5}}},  # typo silently ignored
        {"outbound": {"warmup": {"caps": [1]}}},  # typo silently ignored
        {"outbound": {"pools": [{"name": "p", "ips": ["10.0.0.1"], "categoris": ["marketing"]}]}},  # typo ignored
    ],
    ids=["retry-max_age_s-str", "warmup-caps-str", "routes-list", "backoff-str", "retry-typo", "warmup-typo", "pool-typo"],
)
def test_outbound_subtables_are_validated(raw):
    with pytest.raises(ConfigError) as exc:
        config.from_dict(raw)
    assert str(exc.value).lstrip("[").startswith("outbound")


def test_storage_url_defaults_under_data_dir(tmp_path: Path):
    cfg = config.from_dict({"server": {"data_dir": str(tmp_path / "d")}})
    assert cfg.data_path == (tmp_path / "d").resolve()
    assert cfg.storage_url == (tmp_path / "d" / "blobs").resolve().as_uri()
    assert cfg.storage_url.startswith("file:///")


def test_with_overrides_applies_server_and_address_and_revalidates(tmp_path: Path):
    base = config.load()
    cfg = base.with_overrides(data_dir=str(tmp_path), http_port=9090, address="auto", bind=None, hostname=None)
    assert cfg.server.data_dir == str(tmp_path)
    assert cfg.server.http_port == 9090
    assert cfg.server.bind == base.server.bind  # None is ignored
    assert cfg.server.hostname == base.server.hostname
    assert cfg.cluster.address == "auto"
    assert cfg.storage_url == (tmp_path.resolve() / "blobs").as_uri()
    # the original is unchanged
    assert base.server.http_port == 8080 and base.cluster.address == ""
    assert base.with_overrides() == base


@pytest.mark.parametrize(
    "overrides, contains",
    [
        ({"http_port": 70000}, "[server] http_port must be a port number"),
        ({"smtp_port": -5}, "[server] smtp_port must be a port number"),
        ({"bind": "not-an-ip"}, "[server] bind must be an IP address"),
    ],
)
def test_with_overrides_rejects_invalid(overrides, contains):
    with pytest.raises(ConfigError) as exc:
        config.load().with_overrides(**overrides)
    assert contains in str(exc.value)


def test_mailauth_defaults_match_the_shipped_toml():
    shipped = config.load().mailauth
    assert shipped == config.MailAuthConfig()
    assert (shipped.enabled, shipped.dmarc_reject_action, shipped.dmarc_quarantine_action) == (True, "reject", "junk")
    assert (shipped.spf_fail_action, shipped.dns_error_action, shipped.max_dkim_signatures) == ("inbox", "accept", 5)


@pytest.mark.parametrize(
    "values, contains",
    [
        ({"dmarc_reject_action": "bounce"}, "[mailauth] dmarc_reject_action must be one of reject, junk, inbox"),
        ({"dmarc_quarantine_action": "reject"}, "[mailauth] dmarc_quarantine_action must be one of junk, inbox"),
        ({"spf_fail_action": "drop"}, "[mailauth] spf_fail_action must be one of inbox, junk, reject"),
        ({"dns_error_action": "reject"}, "[mailauth] dns_error_action must be one of accept, tempfail"),
        ({"max_dkim_signatures": 0}, "[mailauth] max_dkim_signatures must be positive"),
        ({"enabled": "yes"}, "[mailauth] enabled must be true or false"),
        ({"authserv_id": "mx.example.test; x"}, "[mailauth] authserv_id must be a host name"),
        ({"spf": "strict"}, "[mailauth] unknown key 'spf'"),
    ],
)
def test_mailauth_errors_name_the_key(values, contains):
    with pytest.raises(ConfigError) as err:
        config.from_dict({"mailauth": values})
    assert contains in str(err.value)


def test_mailauth_accepts_every_documented_action():
    for key, choices in config.MAILAUTH_ACTIONS.items():
        for choice in choices:
            assert getattr(config.from_dict({"mailauth": {key: choice}}).mailauth, key) == choice
