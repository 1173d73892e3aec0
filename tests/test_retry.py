"""Retry policy decisions and the retry budget, as tables."""

from __future__ import annotations

import random

import pytest

from nodeproxy.resilience.budget import RetryBudget
from nodeproxy.resilience.overload import UnbalancedRelease
from nodeproxy.resilience.retry import (
    RetriesExhausted,
    RetryOn,
    RetryPolicy,
    TryFailure,
)

CF, RESET, TIMEOUT = TryFailure.CONNECT_FAILURE, TryFailure.RESET, TryFailure.TIMEOUT
DEFAULT = RetryPolicy()
ALL = RetryPolicy(retry_on=frozenset(RetryOn))
FIVE_XX = RetryPolicy(retry_on=RetryPolicy.parse_retry_on("5xx"))
CONNECT_ONLY = RetryPolicy(retry_on=RetryPolicy.parse_retry_on("connect-failure"))


@pytest.mark.parametrize(
    ("policy", "method", "outcome", "retry"),
    [
        # connect failures: always safe, even a POST
        (DEFAULT, "POST", CF, True),
        (CONNECT_ONLY, "POST", CF, True),
        # resets: only if idempotent (a body-less POST may have been acted on too)
        (DEFAULT, "GET", RESET, True),
        (DEFAULT, "POST", RESET, False),
        (DEFAULT, "post", TIMEOUT, False),
        (CONNECT_ONLY, "GET", RESET, False),
        # gateway errors
        (DEFAULT, "GET", 503, True),
        (DEFAULT, "get", 502, True),
        (DEFAULT, "GET", 500, False),  # 500 is not a gateway error
        (DEFAULT, "PUT", 504, True),
        (DEFAULT, "PATCH", 503, False),  # PATCH is not idempotent
        (DEFAULT, "DELETE", TIMEOUT, True),
        (CONNECT_ONLY, "GET", 503, False),
        # 5xx covers every 5xx and every local failure
        (FIVE_XX, "GET", 500, True),
        (FIVE_XX, "GET", 599, True),
        (FIVE_XX, "GET", TIMEOUT, True),
        (FIVE_XX, "GET", RESET, True),
        (FIVE_XX, "POST", 500, False),
        (ALL, "GET", 404, False),
        (ALL, "GET", 429, False),
        # nothing left
        (DEFAULT.increment(), "GET", CF, False),
    ],
)
def test_is_retryable(
    policy: RetryPolicy, method: str, outcome: TryFailure | int, retry: bool
) -> None:
    assert policy.is_retryable(method, outcome) is retry


def test_increment_is_immutable_and_bounded() -> None:
    p0 = RetryPolicy(num_retries=2)
    p1 = p0.increment()
    p2 = p1.increment()
    assert (p0.remaining, p1.remaining, p2.remaining) == (2, 1, 0)
    assert repr(p2).startswith("<RetryPolicy [2/2 retries")
    with pytest.raises(RetriesExhausted):
        p2.increment()


def test_parse_retry_on() -> None:
    assert RetryPolicy.parse_retry_on("5xx, reset,") == {RetryOn.FIVE_XX, RetryOn.RESET}
    with pytest.raises(ValueError, match="bogus"):
        RetryPolicy.parse_retry_on("5xx,bogus")


def test_backoff_full_jitter_within_envoy_bounds() -> None:
    rng = random.Random(9)
    p = RetryPolicy(num_retries=5, backoff_base=0.025, backoff_max=0.250)
    ceilings = []
    for _ in range(5):
        p = p.increment()
        samples = [p.backoff(rng) for _ in range(500)]
        ceilings.append(max(samples))
        assert min(samples) >= 0.0
        assert min(samples) < 0.1 * max(samples)  # full jitter: down to ~0
    expected = [0.025, 0.075, 0.175, 0.250, 0.250]
    for got, cap in zip(ceilings, expected, strict=True):
        assert cap * 0.95 <= got <= cap


@pytest.mark.parametrize(
    ("per_try", "now", "route_deadline", "expected"),
    [
        (None, 1.0, None, None),
        (None, 1.0, 16.0, 16.0),
        (2.0, 1.0, None, 3.0),
        (2.0, 1.0, 16.0, 3.0),
        (2.0, 15.0, 16.0, 16.0),  # the route timeout covers all tries
    ],
)
def test_try_deadline(
    per_try: float | None, now: float, route_deadline: float | None, expected: float | None
) -> None:
    assert RetryPolicy(per_try_timeout=per_try).try_deadline(now, route_deadline) == expected


def test_budget_floor_and_ratio() -> None:
    b = RetryBudget(ratio=0.2, min_retry_concurrency=3)
    assert [b.try_acquire_retry() for _ in range(4)] == [True, True, True, False]
    for _ in range(30):
        b.request_started()
    assert b.limit() == 6  # 20 % of 30 beats the floor of 3
    assert [b.try_acquire_retry() for _ in range(4)] == [True, True, True, False]
    assert b.denied == 2
    assert "6/6 retries | 30 requests | 2 denied" in repr(b)
    for _ in range(6):
        b.release_retry()
    with pytest.raises(UnbalancedRelease):
        b.release_retry()
    for _ in range(30):
        b.request_finished()
    with pytest.raises(UnbalancedRelease):
        b.request_finished()
