"""The traffic state of the whole process: per cluster, one balancer, detector, breaker, guard.

Why one per process and not one per listener: several listeners (and the
admin pages) send to the same clusters, and a slow or failing replica is slow
or failing for all of them; per-listener state would learn everything N times
and eject a replica on one port while another keeps hammering it. ``Runtime``
creates one ``Traffic`` lazily and every ``Pipeline`` uses it.

Ownership: request tasks mutate it only in synchronous code (no ``await``
between a read and its update), which trio makes atomic. Clusters come and go
with discovery (``config.clusters`` may be a live ``ClusterCatalog``): on each
new endpoint snapshot ``Traffic`` drops the state of clusters that vanished
and hands each outlier detector its cluster's full endpoint set, so the table
stays bounded by the clusters that exist.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import partial
from typing import Any

from nodeproxy.balancing.feedback import FeedbackBalancer
from nodeproxy.balancing.locality import LocalityAware
from nodeproxy.balancing.policies import make_balancer, subset, untried
from nodeproxy.config.model import ClusterConfig
from nodeproxy.discovery.snapshot import Endpoint, EndpointRegistry
from nodeproxy.errors import NoHealthyUpstream
from nodeproxy.resilience.breaker import CircuitBreaker
from nodeproxy.resilience.health import HealthTracker
from nodeproxy.resilience.outlier import HostState, OutlierDetector
from nodeproxy.resilience.overload import OverloadGuard, Resource
from nodeproxy.traffic.attempt import Attempt, Ticket


def subset_key(labels: Mapping[str, str]) -> str:
    """``{"version": "v2"}`` -> ``"version=v2"`` (``""`` for the whole cluster)."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class ClusterTraffic:
    """The decision state of one cluster; see the module docstring for the owner."""

    def __init__(self, cluster: ClusterConfig, rng: random.Random, local_node: str) -> None:
        self.name = cluster.name
        self.config = cluster
        self.balancer: FeedbackBalancer = make_balancer(
            cluster.lb_policy,
            rng,
            local_node=local_node,
            saturation=cluster.max_connections_per_endpoint,
        )
        self.outlier = OutlierDetector(cluster.outlier)
        bc = cluster.circuit_breaker
        self.breaker = (
            CircuitBreaker(bc.failure_threshold, bc.open_interval, bc.max_open_interval)
            if bc is not None
            else None
        )
        self.overload = OverloadGuard(cluster.overload)
        hc = cluster.health_check
        self.health = HealthTracker(hc) if hc is not None else None  # probed by health_check.py
        self.health_panics = 0  # picks made over all-unhealthy endpoints
        self.subset_requests: dict[str, int] = {}  # canary counters; keys come from the config

    def __repr__(self) -> str:
        return (
            f"<ClusterTraffic {self.name} [{self.balancer!r} | {self.outlier!r} | "
            f"{self.breaker!r} | {self.overload!r} | {self.health!r}]>"
        )

    def admit(self, now: float) -> Ticket:
        """Breaker, then overload: ``CircuitOpen`` / ``Overloaded`` (503) before any I/O."""
        permit = self.breaker.acquire(now) if self.breaker is not None else None
        try:
            self.overload.admit(Resource.REQUESTS)
        except BaseException:
            if self.breaker is not None and permit is not None:
                self.breaker.release(permit, now)
            raise
        return Ticket(self, permit)

    def candidates(
        self, endpoints: Sequence[Endpoint], labels: Mapping[str, str], now: float
    ) -> Sequence[Endpoint]:
        """The label subset, minus endpoints failing active health checks, minus ejected
        ones; either filter leaving nothing keeps what it was given (Envoy's panic mode)."""
        members: Sequence[Endpoint] = subset(endpoints, labels)
        if self.health is not None:
            passing = self.health.healthy(members)
            if passing:
                members = passing
            elif members:
                self.health_panics += 1
        return self.outlier.healthy(members, now)

    def start(
        self,
        ticket: Ticket,
        endpoints: Sequence[Endpoint],
        labels: Mapping[str, str],
        now: float,
        tried: Collection[str] = (),
    ) -> Attempt:
        """Pick an endpoint and count the try as in flight (``NoHealthyUpstream`` if none).

        ``tried``: addresses this request already tried (a retry); they are
        avoided while a candidate not in it is left (``balancing.policies.untried``).
        """
        candidates = self.candidates(endpoints, labels, now)
        if tried:
            candidates = untried(candidates, tried)
        endpoint = self.balancer.pick(candidates, now)
        if endpoint is None:
            where = f" subset {subset_key(labels)}" if labels else ""
            raise NoHealthyUpstream(f"cluster {self.name!r}{where} has no endpoints")
        if labels:
            key = subset_key(labels)
            self.subset_requests[key] = self.subset_requests.get(key, 0) + 1
        return Attempt(ticket, endpoint, self.balancer.on_start(endpoint, now))

    def cost(self, ep: Endpoint, now: float) -> float | None:
        """What the balancer compares for ``ep`` (P2C policies), else None."""
        inner: Any = self.balancer
        if isinstance(inner, LocalityAware):
            inner = inner.inner
        cost = getattr(inner, "cost", None)
        return float(cost(ep, now)) if cost is not None else None

    def describe_endpoint(self, ep: Endpoint, now: float) -> dict[str, object]:
        """Balancer load and outlier state of one endpoint, for ``/clusters`` and ``/explain``."""
        loads = self.balancer.loads
        cost = self.cost(ep, now)
        return {
            "ewma_ms": round(loads.ewma(ep, now) * 1000, 3),
            "active_requests": loads.active(ep),
            "cost": None if cost is None else round(cost, 6),
            "outlier": self.outlier.describe(ep, now),
            "health": self.health.state(ep).value if self.health is not None else None,
        }

    # -- read-only views for the admin pages (/explain, /clusters): they change nothing --

    def peek_candidates(
        self, endpoints: Sequence[Endpoint], labels: Mapping[str, str], now: float
    ) -> Sequence[Endpoint]:
        """The endpoints ``candidates`` would return, without counting a panic or adopting
        a host the outlier detector has not seen."""
        members: Sequence[Endpoint] = subset(endpoints, labels)
        if self.health is not None:
            members = self.health.healthy(members) or members
        live = [ep for ep in members if self.outlier.state(ep, now) is HostState.ACTIVE]
        return live or members

    def peek_endpoint(self, ep: Endpoint, now: float) -> dict[str, object]:
        """``describe_endpoint`` without adopting ``ep``: where the balancer's load table or
        the outlier detector has not seen it yet, it is described as a fresh entry would be
        (default EWMA, no failures) instead of being added (which would start its EWMA
        decay and count it in ``max_ejection_percent``)."""
        known_load = ep.address in self.balancer.loads._loads  # read only
        known_host = ep.address in self.outlier._hosts  # read only
        if known_load and known_host:
            return self.describe_endpoint(ep, now)
        view = ClusterTraffic(self.config, random.Random(0), "")  # scratch, thrown away
        if known_load:
            view.balancer = self.balancer
        if known_host:
            view.outlier = self.outlier
        view.health = self.health
        return view.describe_endpoint(ep, now)

    def describe(self, now: float) -> dict[str, object]:
        """Cluster-level state: policy, breaker, overload counters, canary counters."""
        return {
            "lb_policy": self.config.lb_policy,
            "breaker": self.breaker.describe(now) if self.breaker is not None else None,
            "overload": {
                r.value: {"active": self.overload.count(r), "limit": self.overload.limits.limit(r)}
                for r in Resource
            },
            "ejections": self.outlier.ejections,
            "panics": self.outlier.panics,
            "health_check": self._health_view(),
            "subset_requests": dict(self.subset_requests),
        }

    def _health_view(self) -> dict[str, object] | None:
        if self.health is None:
            return None
        hc = self.health.config
        return {
            "path": hc.path,
            "interval": hc.interval,
            "timeout": hc.timeout,
            "healthy_threshold": hc.healthy_threshold,
            "unhealthy_threshold": hc.unhealthy_threshold,
            "panics": self.health_panics,
        }


class Traffic:
    """Every cluster's ``ClusterTraffic``, created on first use, dropped when it vanishes."""

    def __init__(
        self,
        clusters: Mapping[str, ClusterConfig],
        registry: EndpointRegistry,
        local_node: str = "",
        rng: random.Random | None = None,
    ) -> None:
        self.clusters = clusters
        self.registry = registry
        self.local_node = local_node
        self.rng = rng or random.Random()
        # A worker's: told the cluster name when one of its breakers trips (workers/child.py)
        self.on_breaker_trip: Callable[[str], None] | None = None
        self._states: dict[str, ClusterTraffic] = {}
        self._version = -1

    def __repr__(self) -> str:
        return f"<Traffic [{len(self._states)} clusters | snapshot {self._version}]>"

    def __len__(self) -> int:
        return len(self._states)

    def sync(self, now: float) -> None:
        """On a new snapshot: forget vanished clusters, give detectors their endpoint sets."""
        snapshot = self.registry.snapshot
        if snapshot.version == self._version:
            return
        self._version = snapshot.version
        for name in [n for n in self._states if n not in self.clusters]:
            del self._states[name]
        for name, state in self._states.items():
            state.outlier.sync(snapshot.endpoints(name), now)

    def get(self, name: str) -> ClusterTraffic | None:
        """The state of ``name`` if any request created it (for admin pages)."""
        return self._states.get(name)

    def peek(self, cluster: ClusterConfig) -> ClusterTraffic | None:
        """The state a request to ``cluster`` would use if it exists; creates, replaces and
        syncs nothing (``/explain``)."""
        state = self._states.get(cluster.name)
        return state if state is not None and state.config is cluster else None

    def items(self) -> list[tuple[str, ClusterTraffic]]:
        """Every cluster's state, by name (a copy: safe to read across awaits)."""
        return sorted(self._states.items())

    def cluster(self, cluster: ClusterConfig, now: float) -> ClusterTraffic:
        """The state of ``cluster``, created on first use."""
        self.sync(now)
        state = self._states.get(cluster.name)
        if state is None or state.config is not cluster:
            state = self._states[cluster.name] = ClusterTraffic(cluster, self.rng, self.local_node)
            if self.on_breaker_trip is not None and state.breaker is not None:
                state.breaker.on_trip = partial(self.on_breaker_trip, cluster.name)
            state.outlier.sync(self.registry.current().endpoints(cluster.name), now)
        return state
