"""Local rate limits: token buckets per route and per source, answering 429 + Retry-After.

A bucket holds up to ``capacity`` tokens and gains ``rate`` per second; a
request takes one or is refused with the exact time until one is available,
which the shell sends as ``Retry-After`` (rounded up to whole seconds) on a
``RateLimited`` error. Refill is continuous rather than Envoy's discrete
``tokens_per_fill`` every ``fill_interval``; ``TokenBucket.envoy`` converts
Envoy's three numbers (same long-run rate and burst).

``KeyedBuckets`` is one bucket per key (source pod, identity, route) with a
hard bound on the number of keys: the least recently used key is forgotten
first. A forgotten key comes back with a full bucket, which only helps a
client that has been quiet longest, so a flooder (always recent) never
benefits.
"""

from __future__ import annotations

from collections import OrderedDict

from nodeproxy.errors import RateLimited


class TokenBucket:
    """``capacity`` burst, ``rate`` tokens per second, continuous refill."""

    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        if capacity <= 0 or rate <= 0:
            raise ValueError("capacity and rate must be positive")
        self.capacity = capacity
        self.rate = rate
        self.tokens = capacity
        self.updated = now

    @classmethod
    def envoy(
        cls, max_tokens: int, tokens_per_fill: int, fill_interval: float, now: float
    ) -> TokenBucket:
        """From Envoy's ``token_bucket`` fields."""
        return cls(float(max_tokens), tokens_per_fill / fill_interval, now)

    def __repr__(self) -> str:
        return f"<TokenBucket [{self.tokens:.2f}/{self.capacity:g} tokens | {self.rate:g}/s]>"

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def available(self, now: float) -> float:
        self._refill(now)
        return self.tokens

    def try_acquire(self, now: float, cost: float = 1.0) -> tuple[bool, float]:
        """Take ``cost`` tokens: ``(True, 0.0)``, or ``(False, seconds until possible)``."""
        self._refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return True, 0.0
        if cost > self.capacity:
            return False, float("inf")
        return False, (cost - self.tokens) / self.rate

    def acquire(self, now: float, cost: float = 1.0) -> None:
        """Like ``try_acquire`` but raises ``RateLimited`` carrying ``retry_after``."""
        ok, wait = self.try_acquire(now, cost)
        if not ok:
            raise RateLimited(f"retry in {wait:.3f}s", retry_after=wait)


class KeyedBuckets:
    """One ``TokenBucket`` per key, at most ``max_keys`` of them (LRU)."""

    def __init__(self, capacity: float, rate: float, max_keys: int = 10_000) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self.capacity = capacity
        self.rate = rate
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.limited = 0

    def __repr__(self) -> str:
        return (
            f"<KeyedBuckets [{len(self._buckets)}/{self.max_keys} keys | "
            f"{self.capacity:g} burst, {self.rate:g}/s | {self.limited} limited]>"
        )

    def __len__(self) -> int:
        return len(self._buckets)

    def bucket(self, key: str, now: float) -> TokenBucket:
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = TokenBucket(self.capacity, self.rate, now)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return b

    def try_acquire(self, key: str, now: float, cost: float = 1.0) -> tuple[bool, float]:
        ok, wait = self.bucket(key, now).try_acquire(now, cost)
        if not ok:
            self.limited += 1
        return ok, wait

    def acquire(self, key: str, now: float, cost: float = 1.0) -> None:
        """Raises ``RateLimited`` (429, ``retry_after``) when ``key``'s bucket is empty."""
        ok, wait = self.try_acquire(key, now, cost)
        if not ok:
            raise RateLimited(f"{key}: retry in {wait:.3f}s", retry_after=wait)
