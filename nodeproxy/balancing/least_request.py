"""Least request: the power of two choices on active requests (Envoy LEAST_REQUEST).

Scanning every endpoint for the least loaded one makes all proxies herd onto
the same replica; drawing two at random and keeping the less loaded one is
nearly as good and herd-free (Mitzenmacher). Envoy's default ``choice_count``
is 2, as here. Load is ``(active + 1) / weight``, so a weight-2 endpoint is
"half as busy" as a weight-1 one with the same requests in flight.

Active counts come from the feedback API (``on_start`` / ``on_complete``),
so the pipeline must report every try (see ``balancing/feedback.py``).
"""

from __future__ import annotations

import random

from nodeproxy.balancing.feedback import LoadTable
from nodeproxy.balancing.weighted import TwoChoices, weight_of
from nodeproxy.discovery.snapshot import Endpoint


class LeastRequest(TwoChoices):
    """P2C over ``(active + 1) / weight``; ties keep the first draw."""

    def __init__(self, rng: random.Random, loads: LoadTable | None = None) -> None:
        self.loads = loads or LoadTable()
        self._rng = rng

    def __repr__(self) -> str:
        return f"<LeastRequest [{self.loads!r}]>"

    def cost(self, ep: Endpoint, now: float) -> float:
        """What P2C compares; exposed for ``/explain`` and ``/clusters``."""
        return (self.loads.active(ep) + 1) / weight_of(ep)
