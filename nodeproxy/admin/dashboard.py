"""The live dashboard's data: one JSON-able dict per poll of ``/dashboard.json``.

Why a builder of its own: the page (``dashboard_page.py``) must show, at a
glance, what the other admin pages spread out: per service the endpoints and
their state, request and error rates, latency and the breaker; per calling
pod what it has in flight and how often it was throttled. Everything here is
pure: the ``/clusters`` view (the workers' merged one under a supervisor),
the metric families, the per-source table and ``now`` go in, a dict comes out.

Rates (requests, errors, throttling per second) and windowed latency come
from ``rates.py``: a bounded ring of earlier polls' samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nodeproxy.admin.rates import History, Key, Rates, Sample
from nodeproxy.stats.names import (
    POOL_CONNECTIONS,
    REQUEST_DURATION_MS,
    REQUESTS,
    UPSTREAM_CONNECT_FAILURES,
    UPSTREAM_REQUESTS,
)
from nodeproxy.stats.prometheus import Family
from nodeproxy.stats.registry import Histogram
from nodeproxy.traffic.sources import SourceCounts

MAX_SOURCES_SHOWN = 100  # the busiest; the rest are counted
MAX_IDLE_NAMES = 50
STATES = ("healthy", "unhealthy", "ejected", "draining")
_BREAKER_RANK = {"closed": 0, "half_open": 1, "open": 2}


def _series(families: Sequence[Family]) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {f.name: [(dict(lbls), v) for lbls, v in f.samples] for f in families}


def _hists(families: Sequence[Family]) -> dict[str, Histogram]:
    """The latency histogram per cluster (summed over the routes that send to it)."""
    out: dict[str, Histogram] = {}
    for fam in families:
        if fam.name == REQUEST_DURATION_MS:
            for lbls, h in fam.histograms:
                cluster = dict(lbls).get("cluster", "")
                mine = out.get(cluster)
                if mine is None:
                    out[cluster] = Histogram(h.buckets, list(h.counts), h.total, h.count)
                else:
                    mine.counts = [a + b for a, b in zip(mine.counts, h.counts, strict=True)]
                    mine.total += h.total
                    mine.count += h.count
    return out


def _counters(
    families: Sequence[Family], sources: Sequence[tuple[str, SourceCounts]]
) -> dict[Key, float]:
    """Every counter a rate is shown for, under a flat key."""
    out: dict[Key, float] = {}

    def add(key: Key, value: float) -> None:
        out[key] = out.get(key, 0.0) + value

    series = _series(families)
    for lbls, v in series.get(REQUESTS, []):
        c = lbls.get("cluster", "")
        add(("c", c, "rq"), v)
        if lbls.get("code_class") == "5xx":
            add(("c", c, "err"), v)
    for lbls, v in series.get(UPSTREAM_REQUESTS, []):
        key = ("e", lbls.get("cluster", ""), lbls.get("endpoint", ""))
        add((*key, "rq"), v)
        if lbls.get("code_class") == "5xx":
            add((*key, "err"), v)
    for lbls, v in series.get(UPSTREAM_CONNECT_FAILURES, []):
        key = ("e", lbls.get("cluster", ""), lbls.get("endpoint", ""))
        add((*key, "rq"), v)  # an attempt that failed before any request went out
        add((*key, "err"), v)
    for src, counts in sources:
        add(("s", src, "rq"), counts.requests)
        add(("s", src, "thr"), counts.throttled)
    return out


def _breaker(traffic: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The cluster's breaker; under a supervisor, the worst of the workers'."""
    if not traffic:
        return None
    views = list(traffic["workers"].values()) if "workers" in traffic else [traffic]
    breakers = [v["breaker"] for v in views if v.get("breaker")]
    if not breakers:
        return None
    worst = max(breakers, key=lambda b: _BREAKER_RANK.get(str(b["state"]), 0))
    return {**worst, "trips": sum(b["trips"] for b in breakers)}


def _ejections(traffic: Mapping[str, Any] | None) -> int:
    if not traffic:
        return 0
    views = list(traffic["workers"].values()) if "workers" in traffic else [traffic]
    return int(sum(v.get("ejections", 0) for v in views))


def _endpoint(
    cluster: str,
    ep: Mapping[str, Any],
    state: str,
    pool: Mapping[str, float],
    r: Rates,
    now: float,
) -> dict[str, Any]:
    traffic: Mapping[str, Any] = ep.get("traffic") or {}
    outlier: Mapping[str, Any] = traffic.get("outlier") or {}
    until = outlier.get("ejected_until")
    per_worker = "workers" in traffic  # a worker's clock is not ours
    key = ("e", cluster, ep["address"])
    return {
        "address": ep["address"],
        "node": ep.get("node", ""),
        "labels": dict(ep.get("labels", {})),
        "state": state,
        "in_flight": traffic.get("active_requests", 0),
        "requests": int(r.now.counters.get((*key, "rq"), 0)),
        "errors": int(r.now.counters.get((*key, "err"), 0)),
        "rps": r.per_second(*key, "rq"),
        "error_ratio": r.ratio(key),
        "ewma_ms": traffic.get("ewma_ms"),
        "times_ejected": outlier.get("times_ejected", 0),
        "ejected_for_s": None if until is None or per_worker else round(max(until - now, 0), 3),
        "connections": {"active": pool.get("active", 0), "idle": pool.get("idle", 0)},
    }


def build(
    view: Mapping[str, Any],
    families: Sequence[Family],
    sources: Sequence[tuple[str, SourceCounts]] | None,
    node: Mapping[str, Any],
    now: float,
    history: History,
    idle: Sequence[str] = (),
) -> dict[str, Any]:
    """The dashboard at ``now``; see docs/admin.md ("`/`: the live dashboard") for every field.

    ``view`` may leave out clusters with no traffic (``clusters_view(only=...)``);
    ``idle`` names them, for the list of services this node does not talk to."""
    hists = _hists(families)
    sample = Sample(
        now,
        _counters(families, sources or ()),
        {c: tuple(h.counts) for c, h in hists.items()},
    )
    r = Rates(sample, history.advance(sample))
    pools: dict[tuple[str, str], dict[str, float]] = {}
    for lbls, v in _series(families).get(POOL_CONNECTIONS, []):
        pool = pools.setdefault((lbls.get("cluster", ""), lbls.get("endpoint", "")), {})
        pool[lbls.get("state", "")] = pool.get(lbls.get("state", ""), 0) + v
    remembered: dict[str, set[str]] = {}  # cluster -> endpoints with series
    for cluster, address in {k[1:3] for k in sample.counters if k[0] == "e"} | set(pools):
        remembered.setdefault(cluster, set()).add(address)
    active = {k[1] for k in sample.counters if k[0] == "c"} | set(remembered)

    clusters: list[dict[str, Any]] = []
    idle_names: list[str] = []
    for c in view["clusters"]:
        name = c["name"]
        if c.get("traffic") is None and name not in active:
            idle_names.append(name)
            continue
        endpoints = []
        listed = set()
        for ep in c["endpoints"]:
            listed.add(ep["address"])
            state = "healthy" if ep["state"] == "active" else str(ep["state"])
            pool = pools.get((name, ep["address"]), {})
            endpoints.append(_endpoint(name, ep, state, pool, r, now))
        for address in sorted(remembered.get(name, set()) - listed):  # gone from discovery
            pool = pools.get((name, address), {})
            endpoints.append(_endpoint(name, {"address": address}, "draining", pool, r, now))
        settings = c.get("settings") or {}
        key = ("c", name)
        clusters.append(
            {
                "name": name,
                "namespace": settings.get("namespace"),
                "lb_policy": settings.get("lb_policy"),
                "requests": int(sample.counters.get((*key, "rq"), 0)),
                "errors": int(sample.counters.get((*key, "err"), 0)),
                "rps": r.per_second(*key, "rq"),
                "error_ratio": r.ratio(key),
                "latency": r.latency(name, hists.get(name)),
                "breaker": _breaker(c.get("traffic")),
                "ejections": _ejections(c.get("traffic")),
                "endpoint_states": {s: sum(e["state"] == s for e in endpoints) for s in STATES},
                "endpoints": endpoints,
            }
        )
    idle_names += idle
    return {
        "node": dict(node),
        "now": round(now, 3),
        "rate_window_s": None if r.seconds is None else round(r.seconds, 3),
        "snapshot_version": view.get("snapshot_version"),
        "clusters": clusters,
        "idle_clusters": {"count": len(idle_names), "names": idle_names[:MAX_IDLE_NAMES]},
        "sources": None if sources is None else _sources(sources, r, now),
    }


def _sources(rows: Sequence[tuple[str, SourceCounts]], r: Rates, now: float) -> dict[str, Any]:
    """The busiest sources first: in flight, then throttled, then requests."""
    ranked = sorted(rows, key=lambda s: (-s[1].in_flight, -s[1].throttled, -s[1].requests, s[0]))
    shown = [
        {
            "source": src,
            "in_flight": c.in_flight,
            "requests": c.requests,
            "errors": c.errors,
            "rate_limited": c.rate_limited,
            "fairness_rejected": c.fairness_rejected,
            "queued": c.queued,
            "throttled": c.throttled,
            "rps": r.per_second("s", src, "rq"),
            "throttled_per_s": r.per_second("s", src, "thr"),
            "idle_s": round(max(now - c.last_seen, 0.0), 3),
        }
        for src, c in ranked[:MAX_SOURCES_SHOWN]
    ]
    return {"count": len(rows), "rows": shown}
