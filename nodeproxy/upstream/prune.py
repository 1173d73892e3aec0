"""Which upstream pools to forget: endpoints that left discovery a while ago (no I/O).

Why: ``Upstreams`` keeps one pool, and the metric series labelled with it, per
(cluster, endpoint) it ever sent to. With Kubernetes discovery pods come and
go all day, each with a new IP; kept forever, pools and Prometheus label sets
grow with the cluster's history instead of its size. So the reaper task asks
``Sweep`` which entries to drop: those whose endpoint has been absent from the
published snapshot for ``grace`` seconds *and* whose pool holds no connection
lent out. An endpoint that flaps (a readiness probe failing for a few seconds,
a slice rewritten) is back before its grace ends and keeps its pool and its
counters, so nothing churns. The absence clock starts when a sweep first sees
the endpoint missing, so an entry is dropped between ``grace`` and ``grace``
plus one sweep interval after it left.

``Presence`` answers "is it still there?" against one snapshot, building the
lookup sets only for the clusters it is asked about. A mesh peer pool (keyed by
peer node and caller identity, ``peer.py``) is present while its node still
has endpoints in the snapshot.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

from nodeproxy.discovery.snapshot import EndpointSnapshot

K = TypeVar("K", bound=Hashable)


class Presence:
    """Membership tests against one snapshot, each set built once on first use."""

    def __init__(self, snapshot: EndpointSnapshot) -> None:
        self._snapshot = snapshot
        self._addresses: dict[str, frozenset[str]] = {}
        self._nodes: frozenset[str] | None = None

    def has(self, cluster: str, address: str) -> bool:
        found = self._addresses.get(cluster)
        if found is None:
            eps = self._snapshot.endpoints(cluster)
            found = self._addresses[cluster] = frozenset(e.address for e in eps)
        return address in found

    def has_node(self, node: str) -> bool:
        if self._nodes is None:
            self._nodes = frozenset(
                e.node for eps in self._snapshot.clusters.values() for e in eps if e.node
            )
        return node in self._nodes


class Sweep(Generic[K]):
    """Remembers since when each entry has been absent; owned by the reaper task."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._absent: dict[K, float] = {}  # key -> first sweep that missed it

    def __repr__(self) -> str:
        return f"<Sweep [{len(self._absent)} absent, grace {self.grace:g}s]>"

    def due(self, now: float, entries: Iterable[tuple[K, bool, bool]]) -> list[K]:
        """The keys to drop now, from (key, present, busy) of every entry.

        Present entries forget their absence; a busy one (connections lent
        out) waits for the next sweep even when its grace is over.
        """
        absent: dict[K, float] = {}
        drop: list[K] = []
        for key, present, busy in entries:
            if present:
                continue
            since = self._absent.get(key, now)
            if now - since >= self.grace and not busy:
                drop.append(key)
            else:
                absent[key] = since
        self._absent = absent
        return drop
