"""In-process metrics: counters, gauges and fixed-bucket histograms with labels.

One ``Stats`` object per process, owned by the app and handed to every
component. All mutation is synchronous (no ``await`` between read and write),
so trio's single thread needs no locks. The admin server renders it as
Prometheus text and as JSON (``prometheus.py``); the metric names are
constants in ``names.py``.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

Labels = tuple[tuple[str, str], ...]
OTHER = "other"  # the label value past a ``Bounded`` cap

# Latency buckets in milliseconds (Envoy's and Linkerd's unit): 0.5 ms .. 30 s.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    30000.0,
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


class Bounded:
    """Caps the label values that come from outside the config (client IPs, callers).

    The first ``cap`` distinct values map to themselves, every later one to
    ``"other"``, so a family labelled through one ``Bounded`` has at most
    ``cap + 1`` values of that label however many clients come and go.
    """

    __slots__ = ("_seen", "cap")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._seen: set[str] = set()

    def __repr__(self) -> str:
        return f"<Bounded [{len(self._seen)}/{self.cap}]>"

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) < self.cap:
            self._seen.add(value)
            return value
        return OTHER
