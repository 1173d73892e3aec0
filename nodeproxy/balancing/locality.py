"""Same-node first, with spill-over: a wrapper around any feedback balancer.

A per-node proxy can skip the network hop when a replica lives on its own
node, so local endpoints are preferred. Unlike ``internalTrafficPolicy:
Local``, traffic is never dropped: when no local endpoint is left in the list
(the pipeline passes only endpoints the outlier detector still admits, so
"ejected" means "absent") or every local one is saturated (``saturation``
active requests or more), the pick is made over all endpoints instead.

This is the simple form of Envoy's zone-aware routing: all-or-nothing per
pick rather than a proportional spill, which is enough at node granularity
where a service usually has zero or one local replica.
"""

from __future__ import annotations

from collections.abc import Sequence

from nodeproxy.balancing.feedback import FeedbackBalancer, Tracking
from nodeproxy.discovery.snapshot import Endpoint

DEFAULT_SATURATION = 64  # = ClusterConfig.max_connections_per_endpoint's default


class LocalityAware(Tracking):
    """Prefer endpoints whose ``node`` is ``local_node``; spill over, never drop.

    Shares the inner balancer's ``LoadTable``, so the tries it counts (``on_start``,
    ``on_complete``) are the inner balancer's too."""

    def __init__(
        self, inner: FeedbackBalancer, local_node: str, saturation: int = DEFAULT_SATURATION
    ) -> None:
        self.inner = inner
        self.loads = inner.loads
        self.local_node = local_node
        self.saturation = saturation
        self.spills = 0  # picks that went off-node although local endpoints exist

    def __repr__(self) -> str:
        return (
            f"<LocalityAware [node {self.local_node!r} | saturation {self.saturation} |"
            f" {self.spills} spills | {self.inner!r}]>"
        )

    def candidates(self, endpoints: Sequence[Endpoint]) -> Sequence[Endpoint]:
        """The endpoints the inner balancer will choose from."""
        if not self.local_node:
            return endpoints
        local = [ep for ep in endpoints if ep.node == self.local_node]
        if not local:
            return endpoints
        free = [ep for ep in local if self.loads.active(ep) < self.saturation]
        if not free:
            self.spills += 1
            return endpoints
        return free if len(free) < len(endpoints) else endpoints

    def pick(self, endpoints: Sequence[Endpoint], now: float) -> Endpoint | None:
        return self.inner.pick(self.candidates(endpoints), now)
