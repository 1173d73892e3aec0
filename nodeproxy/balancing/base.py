"""The balancer interface: pick one endpoint from a snapshot's list.

Balancers are pure and synchronous; they take ``now`` so that latency-aware
policies (issue 5) can decay their state without reading a clock. One
balancer instance per cluster, owned by the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from nodeproxy.discovery.snapshot import Endpoint


class Balancer(Protocol):
    def pick(self, endpoints: Sequence[Endpoint], now: float) -> Endpoint | None:
        """Return the endpoint to use, or None when ``endpoints`` is empty."""
        ...
