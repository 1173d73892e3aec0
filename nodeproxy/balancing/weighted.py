"""Endpoint weights, and the two balancers that honour nothing but weights.

A weight says how much of the traffic one endpoint should take relative to
its peers (a bigger pod, a canary with a small share). It is read from the
endpoint (a ``weight`` attribute if the model grows one, else the label
``nodeproxy.io/weight``; anything unparsable or non-positive counts as 1), so
discovery decides weights and balancers only apply them.

``WeightedRoundRobin`` is nginx's smooth weighted round robin: deterministic,
and it interleaves (weights 5/1/1 give ``a a b a c a a``, not ``a a a a a b
c``). ``WeightedRandom`` draws from an injected ``random.Random``, which is
what a statistical split test wants. The load-aware balancers divide their
cost by the same weight, and ``two_choices`` is their shared P2C draw.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Sequence

from nodeproxy.balancing.feedback import LoadTable, Tracking
from nodeproxy.discovery.snapshot import Endpoint

WEIGHT_LABEL = "nodeproxy.io/weight"


def weight_of(ep: Endpoint) -> float:
    """The endpoint's weight (default 1)."""
    raw = getattr(ep, "weight", None)
    if raw is None:
        raw = ep.labels.get(WEIGHT_LABEL)
    if raw is None:
        return 1.0
    try:
        w = float(raw)
    except (TypeError, ValueError):
        return 1.0
    return w if w > 0 and math.isfinite(w) else 1.0


def two_choices(n: int, rng: random.Random) -> tuple[int, int]:
    """Two distinct indices in ``range(n)`` (n >= 2), uniformly."""
    i = rng.randrange(n)
    j = rng.randrange(n - 1)
    return i, (j + 1 if j >= i else j)


class TwoChoices(Tracking):
    """Power of two choices: draw two endpoints, keep the one whose ``cost`` is lower.

    Subclasses say what an endpoint costs (active requests, or latency x load).
    """

    _rng: random.Random

    def cost(self, ep: Endpoint, now: float) -> float:
        raise NotImplementedError

    def choose(self, endpoints: Sequence[Endpoint], now: float) -> Endpoint:
        if len(endpoints) == 1:
            return endpoints[0]
        i, j = two_choices(len(endpoints), self._rng)
        a, b = endpoints[i], endpoints[j]
        return b if self.cost(b, now) < self.cost(a, now) else a


class WeightedRoundRobin(Tracking):
    """Smooth weighted round robin (nginx), deterministic."""

    def __init__(self, loads: LoadTable | None = None) -> None:
        self.loads = loads or LoadTable()
        self._current: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"<WeightedRoundRobin [{len(self._current)} endpoints]>"

    def choose(self, endpoints: Sequence[Endpoint], now: float) -> Endpoint:
        """The endpoint with the highest running credit; its credit drops by the total."""
        if len(self._current) > 2 * len(endpoints) + 8:
            live = {ep.address for ep in endpoints}
            self._current = {a: c for a, c in self._current.items() if a in live}
        total = 0.0
        best: Endpoint | None = None
        best_credit = float("-inf")
        for ep in endpoints:
            w = weight_of(ep)
            total += w
            credit = self._current.get(ep.address, 0.0) + w
            self._current[ep.address] = credit
            if credit > best_credit:
                best, best_credit = ep, credit
        assert best is not None
        self._current[best.address] = best_credit - total
        return best


class WeightedRandom(Tracking):
    """Each pick independent, probability proportional to weight."""

    def __init__(self, rng: random.Random, loads: LoadTable | None = None) -> None:
        self.loads = loads or LoadTable()
        self._rng = rng
        self._cache: tuple[Sequence[Endpoint] | None, list[float]] = (None, [])

    def __repr__(self) -> str:
        return f"<WeightedRandom [{len(self._cache[1])} endpoints]>"

    def choose(self, endpoints: Sequence[Endpoint], now: float) -> Endpoint:
        """Draw one endpoint; cumulative weights are cached per endpoint list object."""
        seq, cum = self._cache
        if seq is not endpoints:
            cum = list(itertools.accumulate(weight_of(ep) for ep in endpoints))
            self._cache = (endpoints, cum)
        x = self._rng.random() * cum[-1]
        return endpoints[min(bisect.bisect_right(cum, x), len(endpoints) - 1)]
