"""Active HTTP health checking, the pure half: when to probe and what the answers mean.

The trio shell runs ``GET <path>`` against each endpoint when ``due()`` says
so (bounded by ``timeout``) and reports with ``record(ep, ok, now)``; this
tracker turns the stream of answers into a HEALTHY/UNHEALTHY state with
hysteresis: ``unhealthy_threshold`` failures in a row mark an endpoint down,
``healthy_threshold`` successes in a row bring it back. Defaults are
Kubernetes' probe defaults (period 10 s, timeout 1 s, failureThreshold 3,
successThreshold 1); Envoy has no defaults for these fields.

New endpoints start HEALTHY: Kubernetes readiness already gated them into
the EndpointSlice, and starting them down would drop traffic after each
rollout until the first probe. The shell combines this filter with the
outlier detector's: an endpoint must pass both.

``passes`` is the verdict on one answer: a 2xx/3xx status and, when the check
names a service (Envoy's ``service_name``/``service_name_matcher``), the
answer's ``x-envoy-upstream-healthchecked-cluster`` header matching it (an
absent header is ``""``), as Envoy verifies the identity of what it probed.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from nodeproxy.discovery.snapshot import Endpoint
from nodeproxy.resilience import IllegalTransition


class HealthState(enum.Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


_TRANSITIONS = {
    (HealthState.HEALTHY, "fail"): HealthState.UNHEALTHY,
    (HealthState.UNHEALTHY, "pass"): HealthState.HEALTHY,
}


@dataclass(frozen=True)
class HealthCheckConfig:
    path: str = "/healthz"
    interval: float = 10.0
    timeout: float = 1.0
    unhealthy_threshold: int = 3
    healthy_threshold: int = 1
    # ("exact" | "prefix" | "regex", value) the answer's HEALTHCHECKED_CLUSTER must match
    service_name: tuple[str, str] | None = None


HEALTHCHECKED_CLUSTER = b"x-envoy-upstream-healthchecked-cluster"


def passes(config: HealthCheckConfig, status: int, headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether one probe answer (status, lowercased headers) counts as healthy."""
    if not 200 <= status < 400:
        return False
    if config.service_name is None:
        return True
    value = next((v for k, v in headers if k == HEALTHCHECKED_CLUSTER), b"").decode("latin-1")
    kind, want = config.service_name
    if kind == "exact":
        return value == want
    if kind == "prefix":
        return value.startswith(want)
    return re.fullmatch(want, value) is not None


class _Track:
    __slots__ = ("fails", "next_due", "passes", "state")

    def __init__(self, now: float) -> None:
        self.state = HealthState.HEALTHY
        self.passes = 0
        self.fails = 0
        self.next_due = now


class HealthTracker:
    """Per-cluster health-check state, keyed by endpoint address."""

    def __init__(self, config: HealthCheckConfig | None = None) -> None:
        self.config = config or HealthCheckConfig()
        self._tracks: dict[str, _Track] = {}

    def __repr__(self) -> str:
        down = sum(t.state is HealthState.UNHEALTHY for t in self._tracks.values())
        return f"<HealthTracker [{len(self._tracks)} endpoints, {down} unhealthy]>"

    def _track(self, ep: Endpoint, now: float) -> _Track:
        t = self._tracks.get(ep.address)
        if t is None:
            t = self._tracks[ep.address] = _Track(now)
        return t

    def due(self, endpoints: Sequence[Endpoint], now: float) -> list[Endpoint]:
        """Endpoints to probe now; each is scheduled ``interval`` later. Forgets departed ones."""
        live = {ep.address for ep in endpoints}
        if len(self._tracks) > len(live):
            self._tracks = {a: t for a, t in self._tracks.items() if a in live}
        out = []
        for ep in endpoints:
            t = self._track(ep, now)
            if now >= t.next_due:
                t.next_due = now + self.config.interval
                out.append(ep)
        return out

    def next_due(self) -> float | None:
        """When the shell should wake up next (None: nothing tracked)."""
        return min((t.next_due for t in self._tracks.values()), default=None)

    def record(self, ep: Endpoint, ok: bool, now: float) -> HealthState | None:
        """Fold in one probe answer; returns the new state when it changed."""
        t = self._track(ep, now)
        if ok:
            t.passes, t.fails = t.passes + 1, 0
            if t.state is HealthState.UNHEALTHY and t.passes >= self.config.healthy_threshold:
                return self._move(t, "pass")
        else:
            t.fails, t.passes = t.fails + 1, 0
            if t.state is HealthState.HEALTHY and t.fails >= self.config.unhealthy_threshold:
                return self._move(t, "fail")
        return None

    def _move(self, t: _Track, event: str) -> HealthState:
        try:
            t.state = _TRANSITIONS[(t.state, event)]
        except KeyError:
            raise IllegalTransition("health check", t.state, event) from None
        return t.state

    def state(self, ep: Endpoint) -> HealthState:
        t = self._tracks.get(ep.address)
        return t.state if t is not None else HealthState.HEALTHY

    def healthy(self, endpoints: Sequence[Endpoint]) -> Sequence[Endpoint]:
        """The endpoints currently passing their checks (may be empty)."""
        if all(self.state(ep) is HealthState.HEALTHY for ep in endpoints):
            return endpoints
        return tuple(ep for ep in endpoints if self.state(ep) is HealthState.HEALTHY)

    def unhealthy(self) -> frozenset[str]:
        """Addresses of the endpoints currently failing their checks."""
        return frozenset(a for a, t in self._tracks.items() if t.state is HealthState.UNHEALTHY)

    def assign(self, endpoints: Sequence[Endpoint], unhealthy: frozenset[str], now: float) -> None:
        """Take verdicts made elsewhere (a worker's supervisor probes; this worker does not).

        The prober's tracker already applied the thresholds; this one only mirrors
        its result, so the move is a plain assignment, not a transition.
        """
        for ep in endpoints:
            t = self._track(ep, now)
            t.state = HealthState.UNHEALTHY if ep.address in unhealthy else HealthState.HEALTHY
