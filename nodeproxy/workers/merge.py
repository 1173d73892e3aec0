"""One set of numbers from N workers: the pure half of the supervisor's admin.

Why these rules (docs/admin.md): a scrape of the supervisor must read as if
one process had served everything.

- Counters and histograms are **summed** over the live workers, plus
  ``Retired``: the last totals received from every worker that has exited. A
  restarted worker starts again from zero, so without the retired part a
  counter would go backwards; with it, the sum never does (increments a
  worker made after its last report and before it died are lost, which a
  counter may do, and the periodic collection keeps that window short).
- Gauges are summed over the live workers only (open connections of a dead
  worker are gone), except the ones that are the same fact in every worker
  (``MAX_GAUGES``: build info, a breaker being open), which take the maximum.
- ``/clusters``: counters come from the merged stats; per-endpoint state is
  the worst of the workers' (ejected before unhealthy before active), active
  requests are summed, and each worker's own view is kept under ``workers``.
- The dashboard's per-source table: each live worker's rows summed by source
  (a worker that exited takes its rows with it); last seen is the latest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from nodeproxy.stats.names import BREAKER_OPEN, BUILD_INFO
from nodeproxy.stats.registry import Histogram, Labels, Stats
from nodeproxy.traffic.sources import SourceCounts, WireRow
from nodeproxy.workers.wire import StatsReply

MAX_GAUGES = frozenset({BUILD_INFO, BREAKER_OPEN})
_STATE_RANK = {"ejected": 2, "unhealthy": 1, "active": 0}


def add_histogram(into: Histogram, other: Histogram) -> None:
    if into.buckets != other.buckets:
        raise ValueError("histograms with different buckets cannot be merged")
    into.counts = [a + b for a, b in zip(into.counts, other.counts, strict=True)]
    into.total += other.total
    into.count += other.count


def add_counters(into: Stats, reply: StatsReply) -> None:
    """Add a worker's counters and histograms to ``into`` (not its gauges)."""
    for name, series in reply.counters.items():
        for lbls, value in series.items():
            into.inc(name, lbls, value)
    for name, hists in reply.histograms.items():
        target = into.histograms.setdefault(name, {})
        for lbls, hist in hists.items():
            mine = target.get(lbls)
            if mine is None:
                mine = target[lbls] = Histogram(buckets=hist.buckets)
            add_histogram(mine, hist)


def add_gauges(into: Stats, gauges: Mapping[str, Mapping[Labels, float]]) -> None:
    for name, series in gauges.items():
        for lbls, value in series.items():
            if name in MAX_GAUGES:
                into.gauge_set(name, lbls, max(into.gauge(name, lbls), value))
            else:
                into.gauge_add(name, lbls, value)


class Retired:
    """The last counters and CPU time of every worker that exited; only ever grows."""

    def __init__(self) -> None:
        self.stats = Stats()
        self.cpu_seconds = 0.0
        self.workers = 0

    def __repr__(self) -> str:
        return f"<Retired [{self.workers} workers, {len(self.stats.counters)} counters]>"

    def add(self, reply: StatsReply) -> None:
        add_counters(self.stats, reply)
        self.cpu_seconds += reply.cpu_seconds
        self.workers += 1


def merged(own: Stats, retired: Retired, live: Iterable[StatsReply]) -> Stats:
    """The supervisor's own stats, the retired totals and every live worker's, as one."""
    out = Stats()
    add_counters(out, StatsReply(0, own.counters, {}, own.histograms, 0, 0.0))
    add_gauges(out, own.gauges)
    add_counters(out, StatsReply(0, retired.stats.counters, {}, retired.stats.histograms, 0, 0.0))
    for reply in live:
        add_counters(out, reply)
        add_gauges(out, reply.gauges)
    return out


def _endpoint_traffic(per_worker: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    views = [t for t in per_worker.values() if t]
    if not views:
        return None
    worst = max(views, key=lambda t: _STATE_RANK.get(str(t["outlier"]["state"]), 0))
    costs = [t["cost"] for t in views if t.get("cost") is not None]
    return {
        "ewma_ms": max(t["ewma_ms"] for t in views),
        "active_requests": sum(t["active_requests"] for t in views),
        "cost": max(costs) if costs else None,
        "outlier": worst["outlier"],
        "health": worst["health"],
        "workers": per_worker,
    }


def merge_sources(
    workers: Iterable[Iterable[WireRow]], now: float
) -> list[tuple[str, SourceCounts]]:
    """Each worker's per-source rows summed by source; last seen is the latest of theirs."""
    out: dict[str, SourceCounts] = {}
    for rows in workers:
        for src, in_flight, requests, errors, limited, refused, queued, idle in rows:
            c = out.get(src)
            if c is None:
                c = out[src] = SourceCounts(last_seen=now - idle)
            c.in_flight += in_flight
            c.requests += requests
            c.errors += errors
            c.rate_limited += limited
            c.fairness_rejected += refused
            c.queued += queued
            c.last_seen = max(c.last_seen, now - idle)
    return list(out.items())


def merge_clusters(base: dict[str, Any], workers: Mapping[int, dict[str, Any]]) -> dict[str, Any]:
    """``base`` (the supervisor's view over the merged stats) with the workers' state."""
    by_worker = {
        str(i): {c["name"]: c for c in view.get("clusters", [])} for i, view in workers.items()
    }
    for cluster in base["clusters"]:
        name = cluster["name"]
        mine = {i: views.get(name) for i, views in by_worker.items()}
        traffic = {i: c["traffic"] for i, c in mine.items() if c and c.get("traffic")}
        cluster["traffic"] = {"workers": traffic} if traffic else None
        for ep in cluster["endpoints"]:
            per_worker: dict[str, dict[str, Any]] = {}
            states = []
            for i, c in mine.items():
                for theirs in c["endpoints"] if c else ():
                    if theirs["address"] == ep["address"]:
                        states.append(theirs["state"])
                        if theirs.get("traffic"):
                            per_worker[i] = theirs["traffic"]
            ep["traffic"] = _endpoint_traffic(per_worker)
            ep["state"] = max(states or ["active"], key=lambda s: _STATE_RANK.get(s, 0))
    return base
