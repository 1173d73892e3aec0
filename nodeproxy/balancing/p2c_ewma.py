"""P2C over peak-EWMA latency: the default balancer (Linkerd's, from Finagle).

Cost of an endpoint = decayed peak-EWMA latency x (active + 1) / weight, and
two random endpoints are compared, the cheaper one wins. A slow replica's
estimate jumps up on its first slow answer, so it loses almost every draw
until the estimate decays (time constant ``decay``, 10 s) back toward its
peers'; an endpoint with no sample yet costs ``default_rtt`` (30 ms). Both
defaults are Linkerd's.

A replica that fails fast (instant 500s or 429s) would look like the fastest
endpoint and attract all the traffic, so every FAILURE or THROTTLED outcome is
charged at least ``failure_penalty`` (1 s) of latency; it then decays like any
other sample, which lets the replica get a probe now and then and come back
when it answers well again. Ejection proper is the outlier detector's job.
"""

from __future__ import annotations

import random

from nodeproxy.balancing.feedback import (
    DEFAULT_DECAY,
    DEFAULT_FAILURE_PENALTY,
    DEFAULT_RTT,
    LoadTable,
)
from nodeproxy.balancing.weighted import TwoChoices, weight_of
from nodeproxy.discovery.snapshot import Endpoint


class P2CEwma(TwoChoices):
    """Power of two choices over peak-EWMA cost."""

    def __init__(
        self,
        rng: random.Random,
        *,
        default_rtt: float = DEFAULT_RTT,
        decay: float = DEFAULT_DECAY,
        failure_penalty: float = DEFAULT_FAILURE_PENALTY,
        loads: LoadTable | None = None,
    ) -> None:
        self.loads = loads or LoadTable(default_rtt, decay, failure_penalty)
        self._rng = rng

    def __repr__(self) -> str:
        return (
            f"<P2CEwma [{self.loads!r} | default_rtt {self.loads.default_rtt * 1000:g} ms,"
            f" decay {self.loads.decay:g} s]>"
        )

    def cost(self, ep: Endpoint, now: float) -> float:
        """Seconds of expected wait; exposed for ``/explain`` and ``/clusters``."""
        return self.loads.ewma(ep, now) * (self.loads.active(ep) + 1) / weight_of(ep)
