"""Retry policy per route: an immutable value in the style of urllib3's ``Retry``.

A ``RetryPolicy`` answers three questions and never sleeps: may this failed
try be retried (``is_retryable``), how long to back off first (``backoff``,
full jitter from an injected ``random.Random``), and when must the next try
give up (``try_deadline``: the per-try timeout, never past the route's
deadline, because the route timeout covers all tries as in Envoy).
``increment()`` returns a new policy with one retry used, or raises
``RetriesExhausted``; the caller keeps the current one in a local variable.

Retrying is only *safe* when repeating the request cannot do harm: the method
is idempotent (RFC 9110 §9.2.2). A connect failure is always safe (nothing
was sent); any other failure of a POST or PATCH may come after the upstream
acted on it (a body-less POST included), so it is never sent twice. The conditions mirror
Envoy's ``retry_on``: ``connect-failure``, ``reset``, ``gateway-error``
(502/503/504, and per-try timeouts) and ``5xx`` (any 5xx, plus all of the
above). Defaults are Envoy's: 1 retry, backoff base 25 ms, max 250 ms.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, replace

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class RetryOn(enum.Enum):
    CONNECT_FAILURE = "connect-failure"
    RESET = "reset"
    GATEWAY_ERROR = "gateway-error"
    FIVE_XX = "5xx"
    RETRIABLE_STATUS_CODES = "retriable-status-codes"  # the statuses in retriable_status_codes
    RETRIABLE_4XX = "retriable-4xx"  # Envoy's: 409 only


class TryFailure(enum.Enum):
    """A try that ended without an upstream status."""

    CONNECT_FAILURE = "connect_failure"
    RESET = "reset"
    TIMEOUT = "timeout"  # the per-try timeout fired


# which retry_on conditions cover which outcome
_COVERS: dict[TryFailure, frozenset[RetryOn]] = {
    TryFailure.CONNECT_FAILURE: frozenset(RetryOn),
    TryFailure.RESET: frozenset({RetryOn.RESET, RetryOn.FIVE_XX}),
    TryFailure.TIMEOUT: frozenset({RetryOn.GATEWAY_ERROR, RetryOn.FIVE_XX}),
}
_GATEWAY = frozenset({502, 503, 504})


class RetriesExhausted(Exception):
    """``increment()`` on a policy with no retries left."""


@dataclass(frozen=True)
class RetryPolicy:
    retry_on: frozenset[RetryOn] = frozenset(
        {RetryOn.CONNECT_FAILURE, RetryOn.RESET, RetryOn.GATEWAY_ERROR}
    )
    num_retries: int = 1  # Envoy's default
    per_try_timeout: float | None = None  # None: each try may use the whole route timeout
    backoff_base: float = 0.025  # Envoy's base_interval
    backoff_max: float = 0.250  # Envoy's default: 10 x base
    retries_done: int = 0
    retriable_status_codes: frozenset[int] = frozenset()

    def __repr__(self) -> str:
        on = ",".join(sorted(r.value for r in self.retry_on))
        return f"<RetryPolicy [{self.retries_done}/{self.num_retries} retries | on {on}]>"

    @classmethod
    def parse_retry_on(cls, spec: str) -> frozenset[RetryOn]:
        """Envoy's comma-separated ``retry_on`` (``"5xx,reset"``); raises ValueError."""
        return frozenset(RetryOn(part.strip()) for part in spec.split(",") if part.strip())

    @property
    def remaining(self) -> int:
        return max(0, self.num_retries - self.retries_done)

    def covers(self, outcome: TryFailure | int) -> bool:
        """Whether ``retry_on`` names this outcome (a ``TryFailure`` or an HTTP status)."""
        if isinstance(outcome, TryFailure):
            return bool(self.retry_on & _COVERS[outcome])
        if outcome in _GATEWAY and RetryOn.GATEWAY_ERROR in self.retry_on:
            return True
        if outcome in self.retriable_status_codes:
            return RetryOn.RETRIABLE_STATUS_CODES in self.retry_on
        if outcome == 409 and RetryOn.RETRIABLE_4XX in self.retry_on:
            return True
        return 500 <= outcome <= 599 and RetryOn.FIVE_XX in self.retry_on

    def is_retryable(self, method: str, outcome: TryFailure | int) -> bool:
        """True when a retry is left, ``retry_on`` covers it, and it is safe to repeat."""
        if self.remaining == 0 or not self.covers(outcome):
            return False
        if outcome is TryFailure.CONNECT_FAILURE:
            return True
        return method.upper() in IDEMPOTENT_METHODS

    def increment(self) -> RetryPolicy:
        """A copy with one more retry used; raises ``RetriesExhausted`` if none is left."""
        if self.remaining == 0:
            raise RetriesExhausted(f"{self.num_retries} retries used")
        return replace(self, retries_done=self.retries_done + 1)

    def backoff(self, rng: random.Random) -> float:
        """Seconds to wait before the next retry: uniform in [0, min(max, base x (2^n - 1))].

        ``n`` is the number of the retry about to be made (Envoy's jittered
        exponential back-off); call it on the policy *after* ``increment()``.
        """
        n = max(1, self.retries_done)
        ceiling = min(self.backoff_max, self.backoff_base * (2**n - 1))
        return rng.uniform(0.0, ceiling)

    def try_deadline(self, now: float, route_deadline: float | None) -> float | None:
        """Absolute deadline for a try starting at ``now``."""
        per_try = None if self.per_try_timeout is None else now + self.per_try_timeout
        if per_try is None:
            return route_deadline
        return per_try if route_deadline is None else min(per_try, route_deadline)
