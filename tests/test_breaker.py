"""The circuit breaker's exact state sequence, and the overload thresholds."""

from __future__ import annotations

import pytest

from nodeproxy.errors import CircuitOpen, Overloaded
from nodeproxy.resilience import IllegalTransition
from nodeproxy.resilience.breaker import (
    TRANSITIONS,
    BreakerEvent,
    BreakerState,
    CircuitBreaker,
)
from nodeproxy.resilience.overload import (
    OverloadGuard,
    OverloadLimits,
    Resource,
    UnbalancedRelease,
)

CLOSED, OPEN, HALF = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def run(b: CircuitBreaker, now: float, ok: bool) -> BreakerState:
    return b.record(b.acquire(now), now, ok)


def test_closed_open_half_open_closed() -> None:
    b = CircuitBreaker(failure_threshold=3, open_interval=5.0)
    assert [run(b, 0.0, False), run(b, 0.1, False)] == [CLOSED, CLOSED]
    assert run(b, 0.2, False) is OPEN
    with pytest.raises(CircuitOpen) as err:
        b.acquire(1.0)
    assert err.value.status == 503
    assert err.value.cause == "circuit_open"
    assert b.retry_after(1.0) == pytest.approx(4.2)
    assert b.state(5.199) is OPEN
    assert b.state(5.2) is HALF
    probe = b.acquire(5.2)
    assert probe.probe
    with pytest.raises(CircuitOpen):
        b.acquire(5.3)  # exactly one probe
    assert b.record(probe, 5.4, True) is CLOSED
    # the count was reset: two failures do not re-open
    assert [run(b, 6.0, False), run(b, 6.1, False)] == [CLOSED, CLOSED]
    assert run(b, 6.2, True) is CLOSED
    assert b.describe(6.2)["consecutive_failures"] == 0
    assert b.rejected == 2
    assert "closed | 0/3 failures | 1 trips, 2 rejected" in repr(b)


def test_failed_probe_reopens_with_backoff() -> None:
    b = CircuitBreaker(failure_threshold=1, open_interval=1.0, max_open_interval=3.0)
    assert run(b, 0.0, False) is OPEN
    assert run(b, 1.0, False) is OPEN  # probe failed: open again, for 2 s
    assert b.state(2.9) is OPEN
    assert run(b, 3.0, False) is OPEN  # 3 s now (capped)
    assert b.state(5.9) is OPEN
    assert run(b, 6.0, False) is OPEN
    assert b.state(8.99) is OPEN
    assert run(b, 9.0, True) is CLOSED
    assert run(b, 9.1, False) is OPEN
    assert b.state(10.1) is HALF  # closing reset the interval to 1 s
    assert b.trips == 5


def test_a_success_resets_the_consecutive_count() -> None:
    b = CircuitBreaker()
    for ok in [False, False, True, False, False, True]:
        assert run(b, 0.0, ok) is CLOSED


def test_stale_permits_are_ignored() -> None:
    b = CircuitBreaker(failure_threshold=1, open_interval=1.0)
    old = b.acquire(0.0)
    assert run(b, 0.0, False) is OPEN
    assert b.record(old, 1.5, True) is HALF  # a slow success from before cannot close it
    probe = b.acquire(1.5)
    assert b.record(probe, 1.6, True) is CLOSED
    assert b.record(old, 1.7, False) is CLOSED  # nor can a late failure re-trip it


def test_cancelled_probe_frees_the_slot() -> None:
    b = CircuitBreaker(failure_threshold=1, open_interval=1.0)
    run(b, 0.0, False)
    probe = b.acquire(1.0)
    b.release(probe, 1.1)
    assert b.acquire(1.2).probe


@pytest.mark.parametrize(
    ("state", "event"),
    [(s, e) for s in BreakerState for e in BreakerEvent if (s, e) not in TRANSITIONS],
)
def test_illegal_transitions_raise(state: BreakerState, event: BreakerEvent) -> None:
    b = CircuitBreaker()
    b._state = state
    with pytest.raises(IllegalTransition):
        b._move(event, 0.0)


def test_overload_thresholds() -> None:
    g = OverloadGuard(OverloadLimits(max_requests=2, max_retries=1))
    g.admit(Resource.REQUESTS)
    g.admit(Resource.REQUESTS)
    with pytest.raises(Overloaded, match="max_requests"):
        g.admit(Resource.REQUESTS)
    assert g.overflows[Resource.REQUESTS] == 1
    g.release(Resource.REQUESTS)
    assert g.try_admit(Resource.REQUESTS)
    assert g.try_admit(Resource.RETRIES)
    assert not g.try_admit(Resource.RETRIES)
    assert g.try_admit(Resource.CONNECTIONS)  # independent counters, Envoy defaults
    assert "requests 2/2" in repr(g)
    assert "connections 1/1024" in repr(g)
    assert g.count(Resource.PENDING) == 0
    with pytest.raises(UnbalancedRelease):
        g.release(Resource.PENDING)
