"""In-process metrics: counters, gauges and fixed-bucket histograms with labels.

One ``Stats`` object per process, owned by the app and handed to every
component. All mutation is synchronous (no ``await`` between read and write),
so trio's single thread needs no locks. The admin server renders it as
Prometheus text and as JSON. Metric names live here as constants so the data
path and the admin pages cannot drift apart.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

Labels = tuple[tuple[str, str], ...]

# -- metric names (Prometheus conventions) ------------------------------------
REQUESTS = "nodeproxy_requests_total"  # {listener, cluster, code_class}
PROXY_ERRORS = "nodeproxy_errors_total"  # {cause}
UPSTREAM_CONNECT_FAILURES = "nodeproxy_upstream_connect_failures_total"  # {cluster, endpoint}
UPSTREAM_REQUESTS = "nodeproxy_upstream_requests_total"  # {cluster, endpoint, code_class}
UPSTREAM_CONNECTIONS_OPENED = "nodeproxy_upstream_connections_opened_total"  # {cluster, endpoint}
DOWNSTREAM_CONNECTIONS_ACTIVE = "nodeproxy_downstream_connections_active"  # {listener}
DOWNSTREAM_CONNECTIONS_TOTAL = "nodeproxy_downstream_connections_total"  # {listener}
DOWNSTREAM_CONNECTIONS_REJECTED = (
    "nodeproxy_downstream_connections_rejected_total"  # {listener, reason}
)
DOWNSTREAM_CONNECTIONS_EVICTED = "nodeproxy_downstream_connections_evicted_total"  # {listener}
POOL_CONNECTIONS = "nodeproxy_upstream_pool_connections"  # {cluster, endpoint, state=idle|active}
REQUEST_DURATION = "nodeproxy_request_duration_seconds"  # histogram {cluster}
BYTES_RECEIVED = "nodeproxy_downstream_bytes_received_total"  # {listener}
BYTES_SENT = "nodeproxy_downstream_bytes_sent_total"  # {listener}
RETRIES = "nodeproxy_retries_total"  # {cluster, reason}: tries made again (issue 5)
RETRIES_DENIED = "nodeproxy_retries_denied_total"  # {cluster}: refused by the retry budget
RATE_LIMITED = "nodeproxy_rate_limited_total"  # {listener, scope=listener|route, key=total|source}
FAIRNESS_QUEUED = "nodeproxy_fairness_queued_total"  # {listener}: waited for a per-source slot
FAIRNESS_REJECTED = "nodeproxy_fairness_rejected_total"  # {listener, reason}
UPGRADES = "nodeproxy_upgrades_total"  # {listener, protocol}: tunnels opened (101 relayed)
TUNNEL_BYTES = "nodeproxy_tunnel_bytes_total"  # {listener, direction=upstream|downstream}
BUILD_INFO = "nodeproxy_build_info"  # {version, codec, codec_version}: always 1
SIGNER_UP = "nodeproxy_certificate_signer_up"  # mesh.signer only
SIGNER_REQUESTS = "nodeproxy_certificate_signer_requests_total"  # {result=ok|refused|error}
EARLIEST_EXPIRY = "nodeproxy_certificate_earliest_expiry_timestamp_seconds"

HELP: dict[str, str] = {
    REQUESTS: "Downstream requests answered, by cluster and status class.",
    PROXY_ERRORS: "Requests answered by the proxy itself, by cause (x-nodeproxy-error).",
    UPSTREAM_CONNECT_FAILURES: "Upstream connection attempts that failed or timed out.",
    UPSTREAM_REQUESTS: "Requests sent upstream, by endpoint and status class.",
    UPSTREAM_CONNECTIONS_OPENED: "Upstream connections opened.",
    DOWNSTREAM_CONNECTIONS_ACTIVE: "Open downstream connections.",
    DOWNSTREAM_CONNECTIONS_TOTAL: "Downstream connections accepted.",
    DOWNSTREAM_CONNECTIONS_REJECTED: "Downstream connections refused: total or per-source cap.",
    DOWNSTREAM_CONNECTIONS_EVICTED: "Idle keep-alive connections closed to make room at the cap.",
    POOL_CONNECTIONS: "Upstream pool connections by state.",
    REQUEST_DURATION: "Time from request headers received to response completed.",
    BYTES_RECEIVED: "Bytes read from downstream clients.",
    BYTES_SENT: "Bytes written to downstream clients.",
    RETRIES: "Upstream tries repeated by a route's retry policy, by reason.",
    RETRIES_DENIED: "Retries not made: the retry budget or max_retries said no.",
    RATE_LIMITED: "Requests answered 429 by a local rate limit.",
    FAIRNESS_QUEUED: "Requests that waited for their source's concurrency slot.",
    FAIRNESS_REJECTED: "Requests refused 503 by per-source fairness (queue full or wait too long).",
    UPGRADES: "Upgraded connections (101 relayed, bytes spliced), by protocol.",
    TUNNEL_BYTES: "Bytes carried by upgraded connections, by direction.",
    SIGNER_UP: "1 when the last certificate request to the signer got an answer, 0 when not.",
    SIGNER_REQUESTS: "Certificate renewal attempts against the signer, by result.",
    EARLIEST_EXPIRY: "Unix time when the first of this node's certificates expires.",
    BUILD_INFO: "The running release and HTTP/1.1 codec (h11 or h11-mypyc); the value is 1.",
}

# Latency buckets in seconds: 0.5 ms .. 30 s.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


def labels(**kv: str) -> Labels:
    """Canonical, hashable label set (sorted by name)."""
    return tuple(sorted(kv.items()))


@dataclass
class Histogram:
    """Counts per bucket (``counts[i]`` holds values <= ``buckets[i]``; the last is +Inf)."""

    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the q-quantile (inf if beyond the last)."""
        if self.count == 0:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return self.buckets[i] if i < len(self.buckets) else float("inf")
        return float("inf")

    def estimate(self, q: float) -> float:
        """The q-quantile, interpolated linearly inside its bucket (Prometheus-style).

        Lands in ``+Inf``: the last finite bound (the best the buckets can say).
        Always finite, so it can go into JSON.
        """
        if self.count == 0:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, c in enumerate(self.counts):
            if c and seen + c >= rank:
                if i == len(self.buckets):
                    return self.buckets[-1]
                lower = self.buckets[i - 1] if i > 0 else 0.0
                return lower + (self.buckets[i] - lower) * max(rank - seen, 0.0) / c
            seen += c
        return self.buckets[-1]

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper_bound, count <= bound)`` per bucket, ending with ``(inf, count)``."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, c in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += c
            out.append((bound, running))
        return out


class Stats:
    """The process's metrics registry."""

    def __init__(self) -> None:
        self.counters: dict[str, dict[Labels, float]] = {}
        self.gauges: dict[str, dict[Labels, float]] = {}
        self.histograms: dict[str, dict[Labels, Histogram]] = {}
        # Gauges read from their owners when someone looks (``collect``), not
        # written on every change: the pool sizes would cost four writes a request.
        self._collectors: list[Callable[[Stats], None]] = []

    def __repr__(self) -> str:
        return (
            f"<Stats [{len(self.counters)} counters, {len(self.gauges)} gauges, "
            f"{len(self.histograms)} histograms]>"
        )

    # The mutators run several times per proxied request: plain get() first,
    # because setdefault(name, {}) would build (and drop) a dict on every call.

    def inc(self, name: str, lbls: Labels = (), value: float = 1) -> None:
        series = self.counters.get(name)
        if series is None:
            series = self.counters[name] = {}
        series[lbls] = series.get(lbls, 0) + value

    def gauge_add(self, name: str, lbls: Labels = (), delta: float = 1) -> None:
        series = self.gauges.get(name)
        if series is None:
            series = self.gauges[name] = {}
        series[lbls] = series.get(lbls, 0) + delta

    def gauge_set(self, name: str, lbls: Labels = (), value: float = 0) -> None:
        series = self.gauges.get(name)
        if series is None:
            series = self.gauges[name] = {}
        series[lbls] = value

    def observe(self, name: str, lbls: Labels, value: float) -> None:
        series = self.histograms.get(name)
        if series is None:
            series = self.histograms[name] = {}
        hist = series.get(lbls)
        if hist is None:
            hist = series[lbls] = Histogram()
        hist.observe(value)

    def add_collector(self, collect: Callable[[Stats], None]) -> None:
        """Call ``collect(self)`` before every read of the gauges (it sets its own)."""
        self._collectors.append(collect)

    def collect(self) -> None:
        """Bring scrape-time gauges up to date; every reader of ``gauges`` calls this."""
        for collect in self._collectors:
            collect(self)

    def drop_series(self, doomed: Callable[[Labels], bool]) -> int:
        """Forget every series whose labels ``doomed`` picks (an endpoint that is gone)."""
        dropped = 0
        tables: tuple[dict[str, dict[Labels, Any]], ...] = (
            self.counters,
            self.gauges,
            self.histograms,
        )
        for table in tables:
            for series in table.values():
                for lbls in [lbls for lbls in series if doomed(lbls)]:
                    del series[lbls]
                    dropped += 1
        return dropped

    def counter(self, name: str, lbls: Labels = ()) -> float:
        return self.counters.get(name, {}).get(lbls, 0)

    def gauge(self, name: str, lbls: Labels = ()) -> float:
        self.collect()
        return self.gauges.get(name, {}).get(lbls, 0)

    def sum_counter(self, name: str, **match: str) -> float:
        """Sum of a counter over every series whose labels include ``match``."""
        return sum(
            v
            for lbls, v in self.counters.get(name, {}).items()
            if all(pair in lbls for pair in match.items())
        )

    def histogram(self, name: str, lbls: Labels = ()) -> Histogram | None:
        return self.histograms.get(name, {}).get(lbls)

    def series(self, name: str) -> Iterable[tuple[Labels, float]]:
        yield from self.counters.get(name, {}).items()
        self.collect()
        yield from self.gauges.get(name, {}).items()
