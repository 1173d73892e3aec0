"""Choosing a balancer by name, and the label-subset filter canary routing uses.

``make_balancer`` is the one place that maps an ``lb_policy`` string to a
balancer, so the config, the pipeline and ``/explain`` agree on the names.
Every balancer it returns takes outcome feedback (``FeedbackBalancer``), so
the pipeline reports tries the same way whatever the policy; round robin
ignores the loads for picking but still counts them for ``/clusters``.
``untried`` narrows a retry's candidates to endpoints not tried yet, before
any policy picks, so every policy honours it.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence

from nodeproxy.balancing.feedback import FeedbackBalancer, LoadTable, Tracking
from nodeproxy.balancing.least_request import LeastRequest
from nodeproxy.balancing.locality import DEFAULT_SATURATION, LocalityAware
from nodeproxy.balancing.p2c_ewma import P2CEwma
from nodeproxy.balancing.round_robin import RoundRobin
from nodeproxy.balancing.weighted import WeightedRandom, WeightedRoundRobin
from nodeproxy.config.model import LB_POLICIES
from nodeproxy.discovery.snapshot import Endpoint

POLICIES = LB_POLICIES


class TrackedRoundRobin(Tracking):
    """The existing ``RoundRobin`` plus load counting."""

    def __init__(self, loads: LoadTable | None = None) -> None:
        self.loads = loads or LoadTable()
        self._rr = RoundRobin()

    def __repr__(self) -> str:
        return f"<TrackedRoundRobin [{self._rr!r} | {self.loads!r}]>"

    def pick(self, endpoints: Sequence[Endpoint], now: float) -> Endpoint | None:
        self.loads.prune(endpoints, now)
        return self._rr.pick(endpoints, now)


def make_balancer(
    policy: str,
    rng: random.Random,
    *,
    local_node: str = "",
    saturation: int = DEFAULT_SATURATION,
) -> FeedbackBalancer:
    """A fresh balancer for one cluster; ``local_node`` enables same-node preference.

    Raises ``ValueError`` on an unknown policy name (the config loader should
    have rejected it already).
    """
    inner: FeedbackBalancer
    if policy == "p2c_ewma":
        inner = P2CEwma(rng)
    elif policy == "least_request":
        inner = LeastRequest(rng)
    elif policy == "round_robin":
        inner = TrackedRoundRobin()
    elif policy == "weighted_round_robin":
        inner = WeightedRoundRobin()
    elif policy == "random":
        inner = WeightedRandom(rng)
    else:
        raise ValueError(f"unknown lb_policy {policy!r}; expected one of {', '.join(POLICIES)}")
    return LocalityAware(inner, local_node, saturation) if local_node else inner


def subset(endpoints: Sequence[Endpoint], labels: Mapping[str, str]) -> tuple[Endpoint, ...]:
    """Endpoints carrying every ``labels`` pair (empty ``labels`` keeps all).

    A canary split is a route-level weighted choice between subsets (``version:
    v1`` 90 / ``version: v2`` 10); an empty result is the caller's
    ``NoHealthyUpstream``, never a silent fallback to other versions.
    """
    if not labels:
        return tuple(endpoints)
    items = tuple(labels.items())
    return tuple(ep for ep in endpoints if all(ep.labels.get(k) == v for k, v in items))


def untried(endpoints: Sequence[Endpoint], tried: Collection[str]) -> Sequence[Endpoint]:
    """``endpoints`` minus the addresses in ``tried``; all of them if none would be left.

    A retry's candidates: Envoy's ``previous_hosts`` retry host predicate
    (a retry goes to a host this request has not tried yet while one exists),
    with the fallback Envoy reaches after ``host_selection_retry_max_attempts``.
    """
    if not tried:
        return endpoints
    rest = tuple(ep for ep in endpoints if ep.address not in tried)
    return rest or endpoints
