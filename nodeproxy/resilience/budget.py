"""The retry budget: retries may add only a fraction of the live load.

Retries multiply load exactly when a backend is already struggling; a fixed
``num_retries`` per request lets a fleet of clients triple the traffic to a
sick service. The budget caps retries *in flight* at ``ratio`` x requests in
flight, with a floor of ``min_retry_concurrency`` so a quiet service can still
retry at all (Envoy's ``retry_budget``: budget_percent 20 %, min 3). A denied
retry is not an error of its own: the caller returns the failure it has.

Counters, not time windows: acquire/release pair up like the overload
thresholds, and a release without an acquire raises ``UnbalancedRelease``.
"""

from __future__ import annotations

import math

from nodeproxy.resilience.overload import UnbalancedRelease

DEFAULT_RATIO = 0.2  # Envoy's budget_percent
DEFAULT_MIN_RETRY_CONCURRENCY = 3  # Envoy's min_retry_concurrency


class RetryBudget:
    """One per service; the pipeline reports requests and retries in flight."""

    def __init__(
        self,
        ratio: float = DEFAULT_RATIO,
        min_retry_concurrency: int = DEFAULT_MIN_RETRY_CONCURRENCY,
    ) -> None:
        self.ratio = ratio
        self.min_retry_concurrency = min_retry_concurrency
        self.active_requests = 0
        self.active_retries = 0
        self.denied = 0

    def __repr__(self) -> str:
        return (
            f"<RetryBudget [{self.active_retries}/{self.limit()} retries | "
            f"{self.active_requests} requests | {self.denied} denied]>"
        )

    def limit(self) -> int:
        """Retries allowed in flight right now."""
        return max(self.min_retry_concurrency, math.floor(self.ratio * self.active_requests))

    def request_started(self) -> None:
        self.active_requests += 1

    def request_finished(self) -> None:
        if self.active_requests <= 0:
            raise UnbalancedRelease("request finished more often than started")
        self.active_requests -= 1

    def try_acquire_retry(self) -> bool:
        """Take a retry slot, or count a denial and return False."""
        if self.active_retries >= self.limit():
            self.denied += 1
            return False
        self.active_retries += 1
        return True

    def release_retry(self) -> None:
        if self.active_retries <= 0:
            raise UnbalancedRelease("retry released more often than acquired")
        self.active_retries -= 1
