"""Token buckets: admission and Retry-After, driven by an explicit clock."""

from __future__ import annotations

import pytest

from nodeproxy.errors import RateLimited
from nodeproxy.resilience.ratelimit import KeyedBuckets, TokenBucket


def test_burst_then_refill_with_exact_retry_after() -> None:
    b = TokenBucket(capacity=3, rate=2.0, now=0.0)
    assert [b.try_acquire(0.0) for _ in range(3)] == [(True, 0.0)] * 3
    assert b.try_acquire(0.0) == (False, 0.5)
    assert b.try_acquire(0.25) == (False, 0.25)
    assert b.try_acquire(0.5) == (True, 0.0)
    assert b.available(100.0) == 3  # never above capacity
    assert "3.00/3 tokens | 2/s" in repr(b)


@pytest.mark.parametrize(
    ("times", "admitted"),
    [
        ([0.0] * 10, 5),  # a burst gets exactly the capacity
        ([i * 0.1 for i in range(20)], 20),  # 10/s under a 10/s rate: all in
        ([i * 0.05 for i in range(40)], 5 + 20),  # 20/s for 2 s: burst + 2 s of refill
    ],
)
def test_admissions_over_time(times: list[float], admitted: int) -> None:
    b = TokenBucket(capacity=5, rate=10.0, now=0.0)
    got = sum(b.try_acquire(t)[0] for t in times)
    assert abs(got - admitted) <= 1


def test_envoy_fields() -> None:
    b = TokenBucket.envoy(max_tokens=10, tokens_per_fill=5, fill_interval=1.0, now=0.0)
    assert (b.capacity, b.rate) == (10.0, 5.0)


def test_cost_above_capacity_never_fits() -> None:
    assert TokenBucket(2, 1.0, 0.0).try_acquire(0.0, cost=3) == (False, float("inf"))


def test_acquire_raises_rate_limited_with_retry_after() -> None:
    b = TokenBucket(1, 0.5, 0.0)
    b.acquire(0.0)
    with pytest.raises(RateLimited) as err:
        b.acquire(1.0)
    assert err.value.status == 429
    assert err.value.cause == "rate_limited"
    assert err.value.retry_after == pytest.approx(1.0)


def test_keyed_buckets_isolate_sources_and_stay_bounded() -> None:
    kb = KeyedBuckets(capacity=2, rate=1.0, max_keys=3)
    assert [kb.try_acquire("flood", 0.0)[0] for _ in range(5)] == [True, True, False, False, False]
    assert kb.try_acquire("polite", 0.0)[0]  # another source is unaffected
    assert kb.limited == 3
    with pytest.raises(RateLimited, match=r"flood: retry in 0\.900s"):
        kb.acquire("flood", 0.1)
    for k in ["a", "b", "c"]:
        kb.try_acquire(k, 0.2)
    assert len(kb) == 3  # "flood" and "polite", least recently used, were forgotten
    assert kb.bucket("flood", 0.2).available(0.2) == 2  # ...and come back full
    assert "3/3 keys" in repr(kb)
