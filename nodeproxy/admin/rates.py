"""Rates for the dashboard: a bounded ring of earlier polls' counter samples (no I/O).

Counters only grow, so a rate needs an earlier reading. ``History`` keeps a
small ring of the counter samples taken at earlier polls (at most one per
``min_spacing`` seconds, ``max_samples`` of them, none older than needed for
``window``) and each poll compares with the newest sample at least ``window``
seconds old (or the oldest one kept, when the page has not been open that
long). The interval actually used is reported; the first poll after a quiet
spell has none and its rates are ``None``. A counter that went backwards
(series forgotten, worker replaced) counts as 0. Latency quantiles come the
same way from the histogram's bucket counts over the window, or over the
process lifetime when the window saw no request. Nothing is sampled while
nobody polls; every viewer shares the ring.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nodeproxy.stats.registry import Histogram

WINDOW = 10.0
MIN_SPACING = 1.0
MAX_SAMPLES = 64

Key = tuple[str, ...]


@dataclass(frozen=True)
class Sample:
    """Cumulative counters (flat keys) and latency bucket counts per cluster at ``at``."""

    at: float
    counters: Mapping[Key, float]
    buckets: Mapping[str, tuple[int, ...]]


class History:
    """The ring of earlier polls' samples; owned by the admin context, mutated per poll."""

    def __init__(
        self,
        window: float = WINDOW,
        min_spacing: float = MIN_SPACING,
        max_samples: int = MAX_SAMPLES,
    ) -> None:
        self.window = window
        self.min_spacing = min_spacing
        self._ring: deque[Sample] = deque(maxlen=max_samples)

    def __repr__(self) -> str:
        return f"<History [{len(self._ring)} samples, window {self.window:g}s]>"

    def __len__(self) -> int:
        return len(self._ring)

    def advance(self, sample: Sample) -> Sample | None:
        """The sample to compare ``sample`` with (None: no earlier one); keeps ``sample``."""
        ring = self._ring
        while len(ring) >= 2 and ring[1].at <= sample.at - self.window:
            ring.popleft()  # ring[0] stays the newest sample at least a window old
        base = ring[0] if ring and ring[0].at < sample.at else None
        if not ring or sample.at - ring[-1].at >= self.min_spacing:
            ring.append(sample)
        return base


@dataclass(frozen=True)
class Rates:
    now: Sample
    base: Sample | None

    @property
    def seconds(self) -> float | None:
        return None if self.base is None else self.now.at - self.base.at

    def delta(self, *key: str) -> float | None:
        if self.base is None:
            return None
        return max(self.now.counters.get(key, 0.0) - self.base.counters.get(key, 0.0), 0.0)

    def per_second(self, *key: str) -> float | None:
        d, s = self.delta(*key), self.seconds
        return None if d is None or not s else round(d / s, 3)

    def ratio(self, prefix: Key) -> float | None:
        total, errors = self.delta(*prefix, "rq"), self.delta(*prefix, "err")
        if total is None or errors is None or total == 0:
            return None
        return round(errors / total, 4)

    def latency(self, cluster: str, lifetime: Histogram | None) -> dict[str, Any]:
        counts = self.now.buckets.get(cluster)
        old = self.base.buckets.get(cluster) if self.base is not None else None
        if lifetime is not None and counts is not None and old is not None:
            diff = [max(a - b, 0) for a, b in zip(counts, old, strict=True)]
            if sum(diff):
                recent = Histogram(lifetime.buckets, diff, 0.0, sum(diff))
                return _quantiles(recent, "window")
        return _quantiles(lifetime, "lifetime")


def _quantiles(hist: Histogram | None, over: str) -> dict[str, Any]:
    if hist is None or hist.count == 0:
        return {"p50_ms": None, "p99_ms": None, "count": 0, "over": over}
    p50, p99 = hist.estimate(0.5), hist.estimate(0.99)  # the histogram is in ms
    return {"p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "count": hist.count, "over": over}
