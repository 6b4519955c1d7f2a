"""What a gateway process needs to answer requests, built once per process."""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass

from gateway.blobwriter import BlobWriter
from gateway.events import EventSink
from gateway.hub import Hub
from gateway.metrics import GatewayMetrics
from gateway.outbound import OutboundClient
from gateway.router import ShardRouter
from raymail.config import Config
from raymail.dns import Resolver
from raymail.model import User
from raymail.outbound.dkim import DomainKey, key_dir, load_key
from raymail.ratelimit import TokenBuckets
from raymail.store.blobs import BlobStore
from raymail.store.directory import Directory

_USER_CACHE_TTL_S = 30.0


@dataclass
class Services:
    config: Config
    name: str
    directory: Directory
    router: ShardRouter
    blobs: BlobStore
    hub: Hub
    metrics: GatewayMetrics
    send_limiter: TokenBuckets

    def __post_init__(self) -> None:
        self.blob_writer = BlobWriter(self.blobs, "msg")
        self.events = EventSink(self.config.cluster.namespace)
        g = self.config.gateway
        # None when no IP pool is configured: mail then stays inside the local domains.
        self.outbound = OutboundClient(
            "outbound-spool", self.config.cluster.namespace, self.name, self.config.outbound.suppression,
            max_items=g.batch_max_ops, max_inflight=g.max_inflight_batches, timeout_s=g.request_timeout_s,
        ) if self.config.outbound.pools else None
        self.resolver = Resolver.from_config(self.config.dns)  # one TTL cache per process
        self._by_token: dict[str, tuple[User, float]] = {}
        self._by_email: dict[str, tuple[User, float]] = {}
        self._dkim: dict[str, tuple[DomainKey | None, float, int]] = {}
        self._key_dir = str(key_dir(self.config.data_path))  # resolved once: a stat per send, not a realpath
        # Orders this process's subscribe/unsubscribe calls at the shards (Ray may run
        # them out of order); it starts from the clock, so it also grows across restarts.
        self._sub_seq = itertools.count(time.time_ns())

    def next_sub_seq(self) -> int:
        return next(self._sub_seq)

    def dkim_key(self, domain: str) -> DomainKey | None:
        """The domain's DKIM key: re-read every 30 s, or at once when the key directory
        changes (``raymail domain add`` takes effect without a restart)."""
        now = time.monotonic()
        try:
            stamp = os.stat(self._key_dir).st_mtime_ns
        except FileNotFoundError:
            stamp = 0
        hit = self._dkim.get(domain)
        if hit is not None and hit[1] > now and hit[2] == stamp:
            return hit[0]
        key = load_key(self.config.data_path, domain)
        self._dkim[domain] = (key, now + _USER_CACHE_TTL_S, stamp)
        return key

    def user_for_token(self, token: str) -> User | None:
        now = time.monotonic()
        hit = self._by_token.get(token)
        if hit is not None and hit[1] > now:
            return hit[0]
        user = self.directory.user_by_token(token)
        if user is not None:
            if len(self._by_token) > 100_000:
                self._by_token.clear()
            self._by_token[token] = (user, now + _USER_CACHE_TTL_S)
        return user

    def user_for_email(self, email: str) -> User | None:
        key = email.lower()
        now = time.monotonic()
        hit = self._by_email.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        user = self.directory.user_by_email(email)
        if user is not None:
            if len(self._by_email) > 100_000:
                self._by_email.clear()
            self._by_email[key] = (user, now + _USER_CACHE_TTL_S)
        return user
