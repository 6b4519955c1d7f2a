"""Create, find and stop raymail's actors. ``ray.remote`` is applied here only."""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from actors.catalog import CatalogWriter
from actors.mailbox_shard import CATALOG_NAME, MailboxShard
from actors.sender import SenderActor, sender_name
from actors.spool import SPOOL_NAME, OutboundSpool
from gateway.server import Gateway
from raymail.config import Config
from raymail.store.tls import ensure_certificate

log = logging.getLogger(__name__)


def shard_name(i: int) -> str:
    return f"shard-{i}"


def gateway_name(i: int) -> str:
    return f"gateway-{i}"


def _options(cfg: Config, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": cfg.cluster.namespace,
        "max_restarts": -1,  # Ray brings a dead actor back; it recovers from its log
        "max_task_retries": -1,  # calls in flight are re-sent to the new incarnation
        "num_cpus": 0,  # I/O bound; must not hold the CPUs of a 2-core machine
        "max_concurrency": 10_000,
    }


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def init_ray(cfg: Config) -> None:
    """Join ``cluster.address`` or start an embedded local Ray (with the dashboard)."""
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"namespace": cfg.cluster.namespace, "logging_level": logging.WARNING}
    if cfg.cluster.address:
        kwargs["address"] = cfg.cluster.address
    else:
        kwargs["include_dashboard"] = cfg.cluster.dashboard
        kwargs["dashboard_port"] = cfg.cluster.dashboard_port
        kwargs["dashboard_host"] = "127.0.0.1"
        if cfg.cluster.num_cpus:
            kwargs["num_cpus"] = cfg.cluster.num_cpus
    ray.init(**kwargs)


@dataclass
class Deployment:
    """The actors of one raymail instance (one namespace)."""

    config: Config
    shards: list[Any] = field(default_factory=list)
    gateways: list[Any] = field(default_factory=list)
    catalog: Any = None
    spool: Any = None
    senders: list[Any] = field(default_factory=list)
    port: int = 0
    smtp_port: int = 0
    submission_port: int = 0

    def start(self) -> Deployment:
        cfg = self.config
        cfg.data_path.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        names = [gateway_name(i) for i in range(cfg.gateway.processes)]
        if not cfg.server.tls_cert_file:
            # Made once, here, before any gateway process needs it for STARTTLS.
            ensure_certificate(cfg.data_path, cfg.server.hostname)
        # The storage catalog first: shards look it up by name when they commit.
        self.catalog = ray.remote(CatalogWriter).options(**_options(cfg, CATALOG_NAME)).remote(cfg)
        ray.get(self.catalog.ready.remote())
        shard_cls = ray.remote(MailboxShard)
        self.shards = [
            shard_cls.options(**_options(cfg, shard_name(i))).remote(cfg, i, names, cfg.cluster.namespace)
            for i in range(cfg.cluster.shards)
        ]
        stats = ray.get([s.stats.remote() for s in self.shards])
        for st in stats:
            log.info("mailbox shard %d ready: %s", st["index"], st["recovered"])
        snames = [shard_name(i) for i in range(cfg.cluster.shards)]
        if cfg.outbound.pools:
            self._start_outbound(snames)
        gw_cls = ray.remote(Gateway)
        # A fixed port for every gateway, also across restarts: resolve 0 once, here.
        self.port = cfg.server.http_port or _free_port(cfg.server.bind)
        self.smtp_port = cfg.server.smtp_port or _free_port(cfg.server.bind)
        self.submission_port = cfg.server.submission_port or _free_port(cfg.server.bind)
        self.gateways = [
            gw_cls.options(**_options(cfg, names[i])).remote(cfg, i, snames, self.port, self.smtp_port,
                                                             self.submission_port)
            for i in range(cfg.gateway.processes)
        ]
        ray.get([g.ready.remote() for g in self.gateways])
        log.info("raymail started in %.1f s: %d shards, %d gateways on port %d",
                 time.perf_counter() - started, len(self.shards), len(self.gateways), self.port)
        return self

    def _start_outbound(self, snames: list[str]) -> None:
        """The spool (the durable truth, and the queues) first; then one sender per pool IP."""
        cfg = self.config
        ns = cfg.cluster.namespace
        self.spool = ray.remote(OutboundSpool).options(**_options(cfg, SPOOL_NAME)).remote(cfg, snames, ns)
        log.info("outbound spool ready: %s", ray.get(self.spool.stats.remote())["recovered"])
        self.start_senders()

    def start_senders(self) -> None:
        cfg = self.config
        sender_cls = ray.remote(SenderActor)
        self.senders = [
            sender_cls.options(**_options(cfg, sender_name(pool.name, ip))).remote(
                cfg, pool.name, ip, SPOOL_NAME, cfg.cluster.namespace)
            for pool in cfg.outbound.pools for ip in pool.ips
        ]
        ray.get([s.stats.remote() for s in self.senders])

    def stop_senders(self) -> None:
        """Outbound mail waits in the spool until ``start_senders`` (operators, benchmarks)."""
        for s in self.senders:
            ray.kill(s, no_restart=True)
        self.senders = []

    def check(self) -> None:
        """Nudge every actor: a restarted gateway starts serving again on its first call."""
        ray.get([g.ready.remote() for g in self.gateways], timeout=30)

    def stop(self) -> None:
        try:
            ray.get([g.stop.remote() for g in self.gateways], timeout=15)
            ray.get([s.flush.remote() for s in self.shards], timeout=15)
            if self.spool is not None:
                ray.get(self.spool.flush.remote(), timeout=15)
            if self.catalog is not None:
                ray.get(self.catalog.close.remote(), timeout=15)
        except Exception:  # noqa: BLE001 - stopping must go on
            log.warning("some actors did not stop cleanly", exc_info=True)
        others = [a for a in (self.spool, self.catalog) if a is not None]
        for actor in self.gateways + self.senders + self.shards + others:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        self.gateways, self.shards, self.catalog, self.senders, self.spool = [], [], None, [], None
