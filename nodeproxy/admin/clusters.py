"""The ``/clusters`` view: each cluster's settings and endpoints with their counters.

Why a separate view: operators reach for Envoy's ``/clusters`` first when a
service misbehaves ("which endpoints does the proxy think exist, and which
ones are failing?"). This joins three sources read once per request: the
config (settings), the current endpoint snapshot (who exists now) and the
stats registry (counters labelled by ``cluster`` and ``endpoint``, where the
endpoint label is ``EndpointConfig.address``). Pure: data in, dicts out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from typing import Any

from nodeproxy.runtime import Runtime
from nodeproxy.stats.names import (
    POOL_CONNECTIONS,
    REQUESTS,
    UPSTREAM_CONNECT_FAILURES,
    UPSTREAM_CONNECTIONS_OPENED,
    UPSTREAM_REQUESTS,
)
from nodeproxy.stats.registry import Labels, Stats

ENDPOINT_STATE_ACTIVE = "active"

Counts = dict[str, float]


def _index(series: dict[Labels, float], key: tuple[str, ...]) -> dict[tuple[str, ...], Counts]:
    """Group a metric's series by the values of ``key`` labels; the rest is flattened.

    ``{(("cluster","a"),("code_class","2xx"),("endpoint","h:1")): 3}`` with
    key ``("cluster","endpoint")`` -> ``{("a","h:1"): {"code_class=2xx": 3}}``.
    """
    out: dict[tuple[str, ...], Counts] = defaultdict(dict)
    for lbls, value in series.items():
        d = dict(lbls)
        if not all(k in d for k in key):
            continue
        rest = ",".join(f"{k}={v}" for k, v in lbls if k not in key)
        group = out[tuple(d[k] for k in key)]
        group[rest] = group.get(rest, 0) + value
    return out


def _by_class(counts: Counts) -> dict[str, float]:
    """``{"code_class=2xx": 3, "code_class=5xx": 1}`` -> rq_total and rq_<class>."""
    out: dict[str, float] = {"rq_total": sum(counts.values())}
    for rest, value in sorted(counts.items()):
        for pair in rest.split(","):
            if pair.startswith("code_class="):
                cls = pair.removeprefix("code_class=")
                out[f"rq_{cls}"] = out.get(f"rq_{cls}", 0) + value
    return out


def cluster_names(runtime: Runtime) -> list[str]:
    """Every configured cluster, then (sorted) those only discovery knows."""
    names = list(runtime.config.clusters)
    snapshot = runtime.endpoints.current()
    return names + sorted(n for n in snapshot.clusters if n not in runtime.config.clusters)


def active_clusters(runtime: Runtime) -> set[str]:
    """The clusters this process has traffic state or any counted request for: the
    services a node talks to, a handful of the thousands discovery may know."""
    stats = runtime.stats
    stats.collect()
    active = {name for name, _ in runtime.traffic.items()}
    series = [stats.counters.get(n, {}) for n in (REQUESTS, UPSTREAM_REQUESTS)]
    series += [stats.counters.get(UPSTREAM_CONNECT_FAILURES, {})]
    series += [stats.gauges.get(POOL_CONNECTIONS, {})]
    for table in series:
        for lbls in table:
            active.update(v for k, v in lbls if k == "cluster")
    return active


def clusters_view(
    runtime: Runtime, now: float = 0.0, only: Collection[str] | None = None
) -> dict[str, Any]:
    """Every configured (or discovered) cluster, its settings, endpoints and counters
    (``only``: just those of these names, in the same order).

    With ``now`` (the trio clock), each cluster that has served a request also
    shows its traffic state (``runtime.traffic``): breaker, overload counters,
    canary subset counters, and per endpoint the EWMA latency, active
    requests, balancer cost, outlier (ejection) state and active health-check
    state (``health``: healthy / unhealthy, None without ``health_check``).
    """
    stats: Stats = runtime.stats
    stats.collect()
    snapshot = runtime.endpoints.current()
    ce = ("cluster", "endpoint")
    upstream_rq = _index(stats.counters.get(UPSTREAM_REQUESTS, {}), ce)
    connect_fail = _index(stats.counters.get(UPSTREAM_CONNECT_FAILURES, {}), ce)
    opened = _index(stats.counters.get(UPSTREAM_CONNECTIONS_OPENED, {}), ce)
    pool = _index(stats.gauges.get(POOL_CONNECTIONS, {}), ce)
    downstream_rq = _index(stats.counters.get(REQUESTS, {}), ("cluster",))

    names = cluster_names(runtime)
    if only is not None:
        names = [n for n in names if n in only]
    clusters: list[dict[str, Any]] = []
    for name in names:
        cfg = runtime.config.clusters.get(name)
        settings: dict[str, Any] | None = None
        if cfg is not None:
            settings = {
                "namespace": cfg.namespace,
                "lb_policy": cfg.lb_policy,
                "connect_timeout": cfg.connect_timeout,
                "response_timeout": cfg.response_timeout,
                "idle_timeout": cfg.idle_timeout,
                "max_connections_per_endpoint": cfg.max_connections_per_endpoint,
            }
        endpoints: list[dict[str, Any]] = []
        traffic = runtime.traffic.get(name)
        for ep in snapshot.endpoints(name):
            key = (name, ep.address)
            pool_counts = pool.get(key, {})
            counters: dict[str, float] = _by_class(upstream_rq.get(key, {}))
            counters["cx_connect_fail"] = sum(connect_fail.get(key, {}).values())
            counters["cx_total"] = sum(opened.get(key, {}).values())
            counters["cx_active"] = pool_counts.get("state=active", 0)
            counters["cx_idle"] = pool_counts.get("state=idle", 0)
            state = traffic.peek_endpoint(ep, now) if traffic is not None else None
            endpoints.append(
                {
                    "address": ep.address,
                    "host": ep.host,
                    "port": ep.port,
                    "labels": dict(ep.labels),
                    "node": ep.node,
                    "state": _outlier_state(state),
                    "stats": counters,
                    "traffic": state,
                }
            )
        clusters.append(
            {
                "name": name,
                "settings": settings,
                "stats": _by_class(downstream_rq.get((name,), {})),
                "traffic": traffic.describe(now) if traffic is not None else None,
                "endpoints": endpoints,
            }
        )
    return {"snapshot_version": snapshot.version, "clusters": clusters}


def _outlier_state(state: dict[str, Any] | None) -> str:
    """``ejected`` (outlier detection) first, then ``unhealthy`` (active checks), else active."""
    if state is None:
        return ENDPOINT_STATE_ACTIVE
    outlier: dict[str, Any] = state["outlier"]
    if outlier["state"] == ENDPOINT_STATE_ACTIVE and state.get("health") == "unhealthy":
        return "unhealthy"
    return str(outlier["state"])


def _health_flags(ep: dict[str, Any]) -> str:
    """Envoy's ``health_flags``: ``healthy`` or the failed checks, ``/``-separated."""
    traffic = ep.get("traffic") or {}
    flags = ""
    if traffic.get("health") == "unhealthy":
        flags += "/failed_active_hc"
    if (traffic.get("outlier") or {}).get("state", ENDPOINT_STATE_ACTIVE) != ENDPOINT_STATE_ACTIVE:
        flags += "/failed_outlier_check"
    return flags or "healthy"


def _num(value: Any) -> str:
    if isinstance(value, float) and value == int(value):
        return str(int(value))
    return str(value)


def clusters_text(view: dict[str, Any]) -> str:
    """Envoy-style ``cluster::endpoint::stat::value`` lines, one fact per line."""
    lines: list[str] = []
    for c in view["clusters"]:
        name = c["name"]
        for key, value in (c["settings"] or {}).items():
            lines.append(f"{name}::{key}::{value}")
        for key, value in c["stats"].items():
            lines.append(f"{name}::{key}::{_num(value)}")
        for ep in c["endpoints"]:
            prefix = f"{name}::{ep['address']}"
            for key, value in ep["stats"].items():
                lines.append(f"{prefix}::{key}::{_num(value)}")
            lines.append(f"{prefix}::state::{ep['state']}")
            lines.append(f"{prefix}::health_flags::{_health_flags(ep)}")
            for key in ("ewma_ms", "active_requests", "cost", "health"):
                traffic = ep.get("traffic")
                if traffic is not None and (key != "health" or traffic[key] is not None):
                    lines.append(f"{prefix}::{key}::{_num(traffic[key])}")
            if ep["node"]:
                lines.append(f"{prefix}::node::{ep['node']}")
            for k, v in sorted(ep["labels"].items()):
                lines.append(f"{prefix}::label::{k}={v}")
    return "\n".join(lines) + "\n" if lines else ""
