"""Per-key token buckets (the seed's load-balancer rate limit), no I/O."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_s: float


class TokenBuckets:
    """``take(key, now_s)`` returns 0.0 when allowed, else seconds until a token is free."""

    def __init__(self, rate_per_s: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, now_s: float, cost: float = 1.0) -> float:
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self.max_keys:
                self._evict_full(now_s)
            b = self._buckets[key] = _Bucket(float(self.burst), now_s)
        else:
            b.tokens = min(float(self.burst), b.tokens + (now_s - b.updated_s) * self.rate_per_s)
            b.updated_s = now_s
        if b.tokens >= cost:
            b.tokens -= cost
            return 0.0
        return (cost - b.tokens) / self.rate_per_s

    def exhausted(self, key: str, now_s: float) -> bool:
        """True when ``key`` has less than one token left (without taking any)."""
        b = self._buckets.get(key)
        if b is None:
            return False
        return min(float(self.burst), b.tokens + (now_s - b.updated_s) * self.rate_per_s) < 1.0

    def _evict_full(self, now_s: float) -> None:
        # A bucket that has refilled completely carries no information.
        full_after_s = self.burst / self.rate_per_s
        for k in [k for k, b in self._buckets.items() if now_s - b.updated_s >= full_after_s]:
            del self._buckets[k]
        if len(self._buckets) >= self.max_keys:
            self._buckets.clear()
