"""Gateway metrics, recorded twice: for ``GET /metrics`` (Prometheus text) and
through ``ray.util.metrics`` so the Ray dashboard shows them."""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class GatewayMetrics:
    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        self.registry = CollectorRegistry()
        self._accepted = Counter("raymail_messages_accepted", "Messages accepted (201)", registry=self.registry)
        self._errors = Counter("raymail_errors", "Error responses by code", ["code"], registry=self.registry)
        self._push = Histogram(
            "raymail_push_latency_seconds", "From accepting a change to queueing its push", buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._send = Histogram(
            "raymail_send_latency_seconds", "POST /v1/send handling time", buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._conns = Gauge("raymail_websocket_connections", "Open WebSocket connections", registry=self.registry)
        self._ray = None
        self._pending_accepted = 0
        self._push_sample = 0
        self._flushed_s = time.monotonic()
        try:
            from ray.util import metrics as rm

            tags = {"gateway": gateway}
            self._ray = {
                "accepted": rm.Counter("raymail_messages_accepted", "Messages accepted", tag_keys=("gateway",)),
                "errors": rm.Counter("raymail_errors", "Error responses", tag_keys=("gateway", "code")),
                "push": rm.Histogram(
                    "raymail_push_latency_s", "Push latency", boundaries=list(_LATENCY_BUCKETS_S), tag_keys=("gateway",)
                ),
                "conns": rm.Gauge("raymail_websocket_connections", "Open WebSockets", tag_keys=("gateway",)),
            }
            for m in self._ray.values():
                m.set_default_tags(tags)
        except Exception:  # noqa: BLE001 - metrics must never stop the gateway
            log.info("ray.util.metrics unavailable; /metrics only")

    def accepted(self, n: int = 1) -> None:
        self._accepted.inc(n)
        if self._ray:
            # Ray's metric calls cost more than the Prometheus ones: hand them
            # over in bulk, at most about once a second.
            self._pending_accepted += n
            now = time.monotonic()
            if now - self._flushed_s >= 1.0:
                self._ray["accepted"].inc(self._pending_accepted)
                self._pending_accepted = 0
                self._flushed_s = now

    def error(self, code: str) -> None:
        self._errors.labels(code=code).inc()
        if self._ray:
            self._ray["errors"].inc(1, tags={"code": code})

    def push_latency(self, seconds: float) -> None:
        self._push.observe(seconds)
        if self._ray and self._push_sample % 16 == 0:  # a sample is enough for the dashboard
            self._ray["push"].observe(seconds)
        self._push_sample += 1

    def send_latency(self, seconds: float) -> None:
        self._send.observe(seconds)

    def connections(self, n: int) -> None:
        self._conns.set(n)
        if self._ray:
            self._ray["conns"].set(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
