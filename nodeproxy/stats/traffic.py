"""The traffic state's numbers, read at scrape time: outlier, breaker, thresholds, subsets.

Why read and not counted: the sans-I/O cores (``resilience/outlier.py``,
``breaker.py``, ``overload.py``) already keep these counts for ``/clusters``,
and they change off the hot path or on it (an overload slot is taken twice a
request); reading them when someone scrapes costs the data path nothing. A
worker sends these with its registry (``workers/child.py``), so the
supervisor sums them like any counter.

The counters live as long as their cluster's state: a cluster that leaves
the config (or whose config changes) starts again from zero, which
Prometheus' ``rate()`` reads as a counter reset.
"""

from __future__ import annotations

from nodeproxy.resilience.breaker import BreakerState
from nodeproxy.resilience.overload import Resource
from nodeproxy.stats.names import (
    BREAKER_OPEN,
    BREAKER_OPENINGS,
    BREAKER_REJECTED,
    HELP,
    OUTLIER_EJECTIONS,
    OUTLIER_EJECTIONS_ACTIVE,
    OUTLIER_EJECTIONS_OVERFLOW,
    OVERLOAD_ACTIVE,
    OVERLOAD_LIMIT,
    OVERLOAD_OVERFLOW,
    SUBSET_REQUESTS,
)
from nodeproxy.stats.prometheus import Family, Kind
from nodeproxy.stats.registry import Labels, labels
from nodeproxy.traffic.state import Traffic

Samples = list[tuple[Labels, float]]


def traffic_families(traffic: Traffic, now: float) -> list[Family]:
    """Every cluster's resilience counters and gauges (clusters no request used yet
    have no state and no series)."""
    series: dict[str, Samples] = {}

    def add(name: str, lbls: Labels, value: float) -> None:
        series.setdefault(name, []).append((lbls, float(value)))

    for name, state in traffic.items():
        cluster = labels(cluster=name)
        for key, count in sorted(state.subset_requests.items()):
            add(SUBSET_REQUESTS, labels(cluster=name, subset=key), count)
        outlier = state.outlier
        add(OUTLIER_EJECTIONS_ACTIVE, cluster, outlier.ejected(now))
        for reason, count in sorted(outlier.ejections_by_reason.items()):
            add(OUTLIER_EJECTIONS, labels(cluster=name, reason=reason), count)
        add(OUTLIER_EJECTIONS_OVERFLOW, cluster, outlier.overflows)
        breaker = state.breaker
        if breaker is not None:
            add(BREAKER_OPEN, cluster, breaker.state(now) is not BreakerState.CLOSED)
            add(BREAKER_OPENINGS, cluster, breaker.trips)
            add(BREAKER_REJECTED, cluster, breaker.rejected)
        guard = state.overload
        for resource in Resource:
            lbls = labels(cluster=name, threshold=resource.value)
            add(OVERLOAD_ACTIVE, lbls, guard.count(resource))
            add(OVERLOAD_LIMIT, lbls, guard.limits.limit(resource))
            add(OVERLOAD_OVERFLOW, lbls, guard.overflows[resource])
    return [
        Family(name, _KINDS[name], HELP[name], tuple(samples))
        for name, samples in sorted(series.items())
    ]


_KINDS: dict[str, Kind] = {
    SUBSET_REQUESTS: "counter",
    OUTLIER_EJECTIONS_ACTIVE: "gauge",
    OUTLIER_EJECTIONS: "counter",
    OUTLIER_EJECTIONS_OVERFLOW: "counter",
    BREAKER_OPEN: "gauge",
    BREAKER_OPENINGS: "counter",
    BREAKER_REJECTED: "counter",
    OVERLOAD_ACTIVE: "gauge",
    OVERLOAD_LIMIT: "gauge",
    OVERLOAD_OVERFLOW: "counter",
}
