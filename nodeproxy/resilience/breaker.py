"""The per-service circuit breaker: fail fast instead of waiting for timeouts.

Three states, as a transition table (an illegal move raises
``IllegalTransition``):

- CLOSED: requests flow; ``failure_threshold`` (3) consecutive failures trip it.
- OPEN: every request is refused at once with ``CircuitOpen`` (503
  ``circuit_open``) without touching the backend, for ``open_interval``.
- HALF_OPEN: exactly one probe goes through, everyone else still gets
  ``CircuitOpen``. The probe's success closes the breaker (count reset); its
  failure re-opens it, for an interval that doubles up to
  ``max_open_interval`` (Linkerd's failure-accrual backoff; equal to
  ``open_interval`` by default, i.e. fixed).

``acquire`` hands out a ``Permit`` tagged with the breaker's generation, which
changes on every transition; outcomes of permits from an older generation
(requests that started before the breaker tripped) are ignored, so a slow
success from the old CLOSED period cannot close a HALF_OPEN breaker and a
late failure cannot re-trip a freshly closed one. What counts as a failure is
the pipeline's call (5xx, connect failure, reset, timeout; not 4xx).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from nodeproxy.errors import CircuitOpen
from nodeproxy.resilience import IllegalTransition


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerEvent(enum.Enum):
    TRIP = "trip"
    OPEN_ELAPSED = "open_elapsed"
    PROBE_SUCCEEDED = "probe_succeeded"
    PROBE_FAILED = "probe_failed"


TRANSITIONS: dict[tuple[BreakerState, BreakerEvent], BreakerState] = {
    (BreakerState.CLOSED, BreakerEvent.TRIP): BreakerState.OPEN,
    (BreakerState.OPEN, BreakerEvent.OPEN_ELAPSED): BreakerState.HALF_OPEN,
    (BreakerState.HALF_OPEN, BreakerEvent.PROBE_SUCCEEDED): BreakerState.CLOSED,
    (BreakerState.HALF_OPEN, BreakerEvent.PROBE_FAILED): BreakerState.OPEN,
}

DEFAULT_FAILURE_THRESHOLD = 3  # consecutive failures that open the breaker
DEFAULT_OPEN_INTERVAL = 5.0


@dataclass(frozen=True)
class Permit:
    """Permission for one request; report it back with ``record`` or ``release``."""

    generation: int
    probe: bool = False


class CircuitBreaker:
    """One per destination service, owned by the pipeline."""

    def __init__(
        self,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        open_interval: float = DEFAULT_OPEN_INTERVAL,
        max_open_interval: float | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        self.failure_threshold = failure_threshold
        self.open_interval = open_interval
        self.max_open_interval = max(open_interval, max_open_interval or open_interval)
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._failures = 0
        self._interval = open_interval
        self._opened_at = 0.0
        self._probe_out = False
        self.rejected = 0  # requests answered CircuitOpen
        self.trips = 0
        # Told when this breaker trips on its own failures (workers share trips, see
        # docs/architecture.md); not when ``force_open`` opens it.
        self.on_trip: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return (
            f"<CircuitBreaker [{self._state.value} | {self._failures}/{self.failure_threshold}"
            f" failures | {self.trips} trips, {self.rejected} rejected]>"
        )

    def _move(self, event: BreakerEvent, now: float) -> None:
        try:
            self._state = TRANSITIONS[(self._state, event)]
        except KeyError:
            raise IllegalTransition("circuit breaker", self._state, event) from None
        self._generation += 1
        self._probe_out = False
        if self._state is BreakerState.OPEN:
            self._opened_at = now
            self.trips += 1
        elif self._state is BreakerState.CLOSED:
            self._failures = 0
            self._interval = self.open_interval

    def state(self, now: float) -> BreakerState:
        """The state at ``now`` (OPEN turns HALF_OPEN once the interval is over)."""
        if self._state is BreakerState.OPEN and now >= self._opened_at + self._interval:
            self._move(BreakerEvent.OPEN_ELAPSED, now)
        return self._state

    def retry_after(self, now: float) -> float:
        """Seconds until a probe may be tried (0 unless OPEN)."""
        if self.state(now) is BreakerState.OPEN:
            return self._opened_at + self._interval - now
        return 0.0

    def acquire(self, now: float) -> Permit:
        """Admit one request or raise ``CircuitOpen``."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return Permit(self._generation)
        if state is BreakerState.HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return Permit(self._generation, probe=True)
        self.rejected += 1
        wait = self.retry_after(now)
        raise CircuitOpen(f"circuit open, next probe in {wait:.3f}s" if wait else "probe in flight")

    def record(self, permit: Permit, now: float, success: bool) -> BreakerState:
        """Report the outcome of an admitted request; returns the state after it."""
        state = self.state(now)
        if permit.generation != self._generation:
            return state  # from an earlier state: says nothing about the present
        if state is BreakerState.HALF_OPEN and permit.probe:
            if success:
                self._move(BreakerEvent.PROBE_SUCCEEDED, now)
            else:
                self._interval = min(self._interval * 2, self.max_open_interval)
                self._move(BreakerEvent.PROBE_FAILED, now)
        elif state is BreakerState.CLOSED:
            if success:
                self._failures = 0
            else:
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    self._move(BreakerEvent.TRIP, now)
                    if self.on_trip is not None:
                        self.on_trip()
        return self._state

    def force_open(self, now: float) -> None:
        """Trip now because a sibling breaker (another worker's, same service) tripped.

        Only a CLOSED breaker moves; one already OPEN or HALF_OPEN keeps its own timing.
        """
        if self.state(now) is BreakerState.CLOSED:
            self._move(BreakerEvent.TRIP, now)

    def release(self, permit: Permit, now: float) -> None:
        """The request ended with no verdict (cancelled): free the probe slot if it held it."""
        if permit.probe and permit.generation == self._generation:
            self._probe_out = False

    def describe(self, now: float) -> dict[str, object]:
        """For ``/clusters`` and ``/explain``."""
        return {
            "state": self.state(now).value,
            "consecutive_failures": self._failures,
            "retry_after": round(self.retry_after(now), 3),
            "trips": self.trips,
            "rejected": self.rejected,
        }
