"""The typed configuration: loaded once from TOML, validated at start-up.

Every error names the subsystem and says what to change, e.g.
``[limits] max_recipients must be a positive integer, got 0``.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from raymail.errors import ConfigError

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "default.toml"


@dataclass(frozen=True)
class ServerConfig:
    data_dir: str = "./var"
    hostname: str = "mail.example.test"
    bind: str = "127.0.0.1"
    http_port: int = 8080
    smtp_port: int = 2525
    submission_port: int = 2587
    tls_cert_file: str = ""  # empty: a self-signed certificate made under <data_dir>/tls
    tls_key_file: str = ""


@dataclass(frozen=True)
class StorageConfig:
    url: str = ""  # empty: file://<data_dir>/blobs
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LimitsConfig:
    max_message_bytes: int = 26_214_400
    max_attachment_bytes: int = 26_214_400
    max_recipients: int = 100
    max_subject_chars: int = 998
    max_page_size: int = 200
    default_page_size: int = 50
    send_rate_per_s: float = 20.0
    send_burst: int = 200
    mx_messages_per_minute: int = 600  # per client IP on the MX; 450 past it
    smtp_connections_per_ip: int = 50  # open SMTP sessions per client IP and listener process; 421 past it
    smtp_connects_per_minute: int = 600  # new SMTP sessions per client IP and minute; 421 past it
    smtp_idle_timeout_s: float = 300.0  # RFC 5321 section 4.5.3.2 asks for at least 5 minutes
    smtp_session_max_s: float = 1800.0  # whole-session cap, however busy


@dataclass(frozen=True)
class ClusterConfig:
    address: str = ""  # empty: start an embedded local Ray
    namespace: str = "raymail"
    shards: int = 2
    dashboard: bool = True
    dashboard_port: int = 8265
    num_cpus: int = 0  # 0: let Ray detect


@dataclass(frozen=True)
class GatewayConfig:
    processes: int = 1
    allowed_origins: tuple[str, ...] = ()
    ws_queue_size: int = 256
    ws_ping_interval_s: float = 20.0
    ws_max_message_bytes: int = 65_536
    request_timeout_s: float = 15.0
    batch_max_ops: int = 512
    max_inflight_batches: int = 2
    metrics_token: str = ""
    socket_send_buffer_bytes: int = 0  # 0: kernel autotuning; small values bound memory per socket


@dataclass(frozen=True)
class MailboxConfig:
    snapshot_every_bytes: int = 32 * 1024 * 1024
    events_retained: int = 5000
    index_commit_every_s: float = 1.0  # search index commit cadence (the in-memory part covers the gap)
    upload_ttl_s: float = 86_400.0  # an upload can be named in sends this long; then only mail carrying it holds it


@dataclass(frozen=True)
class DnsConfig:
    servers: tuple[str, ...] = ()  # empty: the system resolver (/etc/resolv.conf)
    port: int = 53
    timeout_s: float = 5.0


@dataclass(frozen=True)
class MailAuthConfig:
    """SPF/DKIM/DMARC on the MX and what each verdict does to the message."""

    enabled: bool = True
    dmarc_reject_action: str = "reject"  # DMARC fail, p=reject: reject (550) | junk | inbox
    dmarc_quarantine_action: str = "junk"  # DMARC fail, p=quarantine: junk | inbox
    spf_fail_action: str = "inbox"  # SPF fail and no DMARC record: inbox | junk | reject
    dns_error_action: str = "accept"  # DMARC temperror: accept (recorded) | tempfail (451)
    max_dkim_signatures: int = 5
    authserv_id: str = ""  # empty: [server] hostname


MAILAUTH_ACTIONS = {
    "dmarc_reject_action": ("reject", "junk", "inbox"),
    "dmarc_quarantine_action": ("junk", "inbox"),
    "spf_fail_action": ("inbox", "junk", "reject"),
    "dns_error_action": ("accept", "tempfail"),
}


@dataclass(frozen=True)
class Pool:
    name: str
    ips: tuple[str, ...]
    categories: tuple[str, ...]


SUPPRESSION_SCOPES = ("sender", "global")


@dataclass(frozen=True)
class OutboundConfig:
    pools: tuple[Pool, ...] = ()
    warmup_daily_caps: tuple[int, ...] = (50, 100, 200, 500, 1000, 2000, 5000, 10000)
    warmed_ips: tuple[str, ...] = ()  # IPs with an established reputation: no warm-up cap
    routes: dict[str, str] = field(default_factory=dict)
    retry_backoff_s: tuple[int, ...] = (60, 300, 1800, 7200)
    retry_max_age_s: int = 432_000
    # Classification: an address or a domain -> category, for mail that names none.
    sender_categories: dict[str, str] = field(default_factory=dict)
    default_category: str = "transactional"
    suppression: str = "sender"  # a hard bounce suppresses the address for that sender, or for everyone
    lease_s: float = 300.0  # a sender that took work and went silent this long loses it to another
    batch_size: int = 100  # work items per queue entry (grouped by destination domain)
    per_domain_connections: int = 4  # per sender actor
    max_connections: int = 64  # per sender actor
    messages_per_connection: int = 100
    smtp_timeout_s: float = 60.0
    snapshot_every_bytes: int = 16 * 1024 * 1024  # the spool's log is compacted into a snapshot past this


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    mailbox: MailboxConfig = field(default_factory=MailboxConfig)
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    mailauth: MailAuthConfig = field(default_factory=MailAuthConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir).expanduser().resolve()

    @property
    def storage_url(self) -> str:
        if self.storage.url:
            return self.storage.url
        return (self.data_path / "blobs").as_uri()

    def with_overrides(self, **server_overrides: Any) -> Config:
        """Apply command-line overrides (None values are ignored) and re-validate."""
        changes = {k: v for k, v in server_overrides.items() if v is not None}
        address = changes.pop("address", None)
        cfg = replace(self, server=replace(self.server, **changes))
        if address is not None:
            cfg = replace(cfg, cluster=replace(cfg.cluster, address=address))
        validate(cfg)
        return cfg


def _section(raw: dict, name: str) -> dict:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _build(cls: type, section: str, values: dict) -> Any:
    known = {f.name: f for f in cls.__dataclass_fields__.values()}  # type: ignore[attr-defined]
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"[{section}] unknown key {key!r}; known keys: {', '.join(sorted(known))}")
        default = getattr(cls(), key) if _has_defaults(cls) else None
        kwargs[key] = _coerce(section, key, value, default)
    return cls(**kwargs)


def _has_defaults(cls: type) -> bool:
    try:
        cls()
    except TypeError:
        return False
    return True


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    if default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"[{section}] {key} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"[{section}] {key} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"[{section}] {key} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"[{section}] {key} must be a string, got {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"[{section}] {key} must be a list, got {value!r}")
        return tuple(value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"[{section}] {key} must be a table, got {value!r}")
        return dict(value)
    return value


def _int_list(where: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{where} must be a list of integers, got {value!r}")
    return tuple(value)


def _table(where: str, raw: dict, name: str, known: set[str]) -> dict:
    value = raw.pop(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table, got {value!r}")
    unknown = set(value) - known
    if unknown:
        raise ConfigError(f"{where} unknown keys: {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    return value


def _outbound(raw: dict) -> OutboundConfig:
    d = OutboundConfig()
    pools_raw = raw.pop("pools", [])
    if not isinstance(pools_raw, list):
        raise ConfigError("[[outbound.pools]] must be an array of tables")
    pools = []
    for i, p in enumerate(pools_raw):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str) or not p["name"]:
            raise ConfigError(f"[[outbound.pools]] entry {i} needs a name")
        unknown = set(p) - {"name", "ips", "categories"}
        if unknown:
            raise ConfigError(f"[[outbound.pools]] {p['name']!r}: unknown keys {', '.join(sorted(unknown))}")
        for key in ("ips", "categories"):
            if not isinstance(p.get(key, []), list) or not all(isinstance(x, str) for x in p.get(key, [])):
                raise ConfigError(f"[[outbound.pools]] {p['name']!r}: {key} must be a list of strings")
        pools.append(Pool(p["name"], tuple(p.get("ips", [])), tuple(p.get("categories", []))))
    warmup = _table("[outbound.warmup]", raw, "warmup", {"daily_caps", "warmed_ips"})
    retry = _table("[outbound.retry]", raw, "retry", {"backoff_s", "max_age_s"})
    routes = raw.pop("routes", {})
    if not isinstance(routes, dict) or not all(isinstance(v, str) for v in routes.values()):
        raise ConfigError("[outbound.routes] must be a table of \"domain\" = \"host:port\"")
    classes = raw.pop("sender_categories", {})
    if not isinstance(classes, dict) or not all(isinstance(v, str) for v in classes.values()):
        raise ConfigError('[outbound.sender_categories] must be a table of "address or domain" = "category"')
    scalars = {k: raw.pop(k) for k in _OUTBOUND_SCALARS if k in raw}
    if raw:
        raise ConfigError(f"[outbound] unknown keys: {', '.join(sorted(raw))}")
    for key, value in scalars.items():
        scalars[key] = _coerce("outbound", key, value, getattr(d, key))
    warmed = warmup.get("warmed_ips", [])
    if not isinstance(warmed, list) or not all(isinstance(x, str) for x in warmed):
        raise ConfigError("[outbound.warmup] warmed_ips must be a list of IP addresses")
    max_age_s = retry.get("max_age_s", d.retry_max_age_s)
    if not isinstance(max_age_s, int) or isinstance(max_age_s, bool):
        raise ConfigError(f"[outbound.retry] max_age_s must be an integer number of seconds, got {max_age_s!r}")
    return OutboundConfig(
        pools=tuple(pools),
        warmup_daily_caps=_int_list("[outbound.warmup] daily_caps", warmup.get("daily_caps", list(d.warmup_daily_caps))),
        routes=dict(routes),
        retry_backoff_s=_int_list("[outbound.retry] backoff_s", retry.get("backoff_s", list(d.retry_backoff_s))),
        retry_max_age_s=max_age_s,
        warmed_ips=tuple(warmed),
        sender_categories={k.lower(): v for k, v in classes.items()},
        **scalars,
    )


_OUTBOUND_SCALARS = ("default_category", "suppression", "lease_s", "batch_size", "per_domain_connections",
                     "max_connections", "messages_per_connection", "smtp_timeout_s", "snapshot_every_bytes")


def from_dict(raw: dict) -> Config:
    known = {"server", "storage", "limits", "cluster", "gateway", "mailbox", "outbound", "dns", "mailauth"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"[{key}] is not a known section; known: {', '.join(sorted(known))}")
    storage_raw = dict(_section(raw, "storage"))
    options = storage_raw.pop("options", {})
    if not isinstance(options, dict):
        raise ConfigError("[storage.options] must be a table")
    storage = replace(_build(StorageConfig, "storage", storage_raw), options=dict(options))

    outbound = _outbound(dict(_section(raw, "outbound")))
    cfg = Config(
        server=_build(ServerConfig, "server", _section(raw, "server")),
        storage=storage,
        limits=_build(LimitsConfig, "limits", _section(raw, "limits")),
        cluster=_build(ClusterConfig, "cluster", _section(raw, "cluster")),
        gateway=_build(GatewayConfig, "gateway", _section(raw, "gateway")),
        mailbox=_build(MailboxConfig, "mailbox", _section(raw, "mailbox")),
        outbound=outbound,
        dns=_build(DnsConfig, "dns", _section(raw, "dns")),
        mailauth=_build(MailAuthConfig, "mailauth", _section(raw, "mailauth")),
    )
    validate(cfg)
    return cfg


def _port(section: str, key: str, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ConfigError(f"[{section}] {key} must be a port number 0-65535 (0 picks a free one), got {value}")


def _positive(section: str, key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"[{section}] {key} must be positive, got {value}")


def validate(cfg: Config) -> None:
    s = cfg.server
    for key in ("http_port", "smtp_port", "submission_port"):
        _port("server", key, getattr(s, key))
    if not s.hostname or any(c.isspace() for c in s.hostname):
        raise ConfigError(f"[server] hostname must be a DNS name, got {s.hostname!r}")
    try:
        ipaddress.ip_address(s.bind)
    except ValueError:
        raise ConfigError(f"[server] bind must be an IP address such as 127.0.0.1, got {s.bind!r}") from None
    if cfg.storage.url and "://" not in cfg.storage.url:
        raise ConfigError(f"[storage] url must look like file:///path or s3://bucket/prefix, got {cfg.storage.url!r}")
    lim = cfg.limits
    for key in ("max_message_bytes", "max_attachment_bytes", "max_recipients", "max_subject_chars", "max_page_size", "default_page_size", "send_burst", "mx_messages_per_minute", "smtp_connections_per_ip", "smtp_connects_per_minute", "smtp_idle_timeout_s", "smtp_session_max_s"):
        _positive("limits", key, getattr(lim, key))
    _positive("limits", "send_rate_per_s", lim.send_rate_per_s)
    if lim.default_page_size > lim.max_page_size:
        raise ConfigError("[limits] default_page_size must not exceed max_page_size")
    _positive("cluster", "shards", cfg.cluster.shards)
    _port("cluster", "dashboard_port", cfg.cluster.dashboard_port)
    g = cfg.gateway
    for key in ("processes", "ws_queue_size", "ws_max_message_bytes", "request_timeout_s", "batch_max_ops", "max_inflight_batches"):
        _positive("gateway", key, getattr(g, key))
    for origin in g.allowed_origins:
        if not isinstance(origin, str) or "://" not in origin:
            raise ConfigError(f"[gateway] allowed_origins entries must be like https://mail.example.com, got {origin!r}")
    _positive("mailbox", "snapshot_every_bytes", cfg.mailbox.snapshot_every_bytes)
    _positive("mailbox", "events_retained", cfg.mailbox.events_retained)
    _positive("mailbox", "upload_ttl_s", cfg.mailbox.upload_ttl_s)
    _port("dns", "port", cfg.dns.port)
    _positive("dns", "timeout_s", cfg.dns.timeout_s)
    for server in cfg.dns.servers:
        try:
            ipaddress.ip_address(server)
        except (ValueError, TypeError):
            raise ConfigError(f"[dns] servers must be IP addresses such as 127.0.0.53, got {server!r}") from None
    for key, choices in MAILAUTH_ACTIONS.items():
        if getattr(cfg.mailauth, key) not in choices:
            raise ConfigError(f"[mailauth] {key} must be one of {', '.join(choices)}, got {getattr(cfg.mailauth, key)!r}")
    _positive("mailauth", "max_dkim_signatures", cfg.mailauth.max_dkim_signatures)
    if any(c.isspace() or c in ';()"' for c in cfg.mailauth.authserv_id):
        raise ConfigError(f"[mailauth] authserv_id must be a host name, got {cfg.mailauth.authserv_id!r}")
    names = set()
    for pool in cfg.outbound.pools:
        if pool.name in names:
            raise ConfigError(f"[outbound.pools] pool name {pool.name!r} is declared twice")
        names.add(pool.name)
        for ip in pool.ips:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise ConfigError(f"[outbound.pools] pool {pool.name!r}: {ip!r} is not an IP address") from None
    if any(c <= 0 for c in cfg.outbound.warmup_daily_caps):
        raise ConfigError("[outbound.warmup] daily_caps must all be positive")
    ob = cfg.outbound
    if ob.suppression not in SUPPRESSION_SCOPES:
        raise ConfigError(f"[outbound] suppression must be 'sender' or 'global', got {ob.suppression!r}")
    for key in ("lease_s", "batch_size", "per_domain_connections", "max_connections", "messages_per_connection",
                "smtp_timeout_s", "snapshot_every_bytes"):
        _positive("outbound", key, getattr(ob, key))
    if any(b < 0 for b in ob.retry_backoff_s) or not ob.retry_backoff_s:
        raise ConfigError("[outbound.retry] backoff_s must be a non-empty list of seconds >= 0")
    _positive("outbound.retry", "max_age_s", ob.retry_max_age_s)
    for pool in ob.pools:
        if not pool.ips:
            raise ConfigError(f"[outbound.pools] pool {pool.name!r} needs at least one IP in ips")
    for ip in ob.warmed_ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ConfigError(f"[outbound.warmup] warmed_ips: {ip!r} is not an IP address") from None
    for domain, target in cfg.outbound.routes.items():
        host, _, port = str(target).rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"[outbound.routes] {domain!r} must map to host:port, got {target!r}")


def load(path: str | os.PathLike | None = None) -> Config:
    """Load and validate a TOML configuration file (the embedded default if None)."""
    p = Path(path) if path else DEFAULT_CONFIG_PATH
    try:
        with open(p, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"[config] file not found: {p}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"[config] {p} is not valid TOML: {exc}") from exc
    return from_dict(raw)
