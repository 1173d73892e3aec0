"""Immutable endpoint snapshots and the one object that holds the current one.

One writer per process: the config's static endpoints are published once
before anything starts (``discovery/setup.py``), Kubernetes discovery
publishes every change (through ``catalog.OverlayRegistry``, which keeps the
configured endpoints in each snapshot), and a worker process ``install``s the
snapshots its supervisor published (``workers/child.py``). Each publish
builds a complete new ``EndpointSnapshot`` (the clusters' endpoints, and the
Service IPs the intercept listener resolves) and swaps it in. Request tasks
call ``current()`` once per request and use what they got for the whole
decision, so a publish in the middle of a request can never be seen
half-applied. ``synced`` and ``first_sync`` say that the first complete list
has arrived: ``/ready`` and a process taking over in a handoff wait for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import trio

from nodeproxy.config.model import Config, EndpointConfig

Endpoint = EndpointConfig  # one backend address with labels; same shape as configured


@dataclass(frozen=True)
class EndpointSnapshot:
    version: int
    clusters: Mapping[str, tuple[Endpoint, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    # (ClusterIP, port) -> the cluster of that Service port (Kubernetes discovery only):
    # where an intercepted connection was going (intercept/resolve.py).
    service_ips: Mapping[tuple[str, int], str] = field(default_factory=lambda: MappingProxyType({}))

    def endpoints(self, cluster: str) -> tuple[Endpoint, ...]:
        return self.clusters.get(cluster, ())


class EndpointRegistry:
    """Holds the current snapshot; ``publish`` is called only by the discovery task."""

    def __init__(self) -> None:
        # The current snapshot. Readers take it (the data path reads this attribute, not
        # ``current()``: an interpreted call per request); only publish/install assign it.
        self.snapshot = EndpointSnapshot(version=0)
        self.first_sync = trio.Event()  # set by the first complete publish (or install)
        self.on_publish: Callable[[EndpointSnapshot], None] | None = None  # a supervisor's
        # what the first publish still waits for, for /ready (set by the discovery that publishes)
        self.waiting_for: Callable[[], str] = str

    def __repr__(self) -> str:
        n = sum(len(v) for v in self.snapshot.clusters.values())
        return (
            f"<EndpointRegistry [version {self.snapshot.version} | "
            f"{len(self.snapshot.clusters)} clusters, {n} endpoints]>"
        )

    @property
    def synced(self) -> bool:
        return self.first_sync.is_set()

    def current(self) -> EndpointSnapshot:
        return self.snapshot

    def publish(
        self,
        clusters: Mapping[str, tuple[Endpoint, ...]],
        service_ips: Mapping[tuple[str, int], str] | None = None,
    ) -> EndpointSnapshot:
        """A new snapshot of ``clusters`` (and ``service_ips``; None: the current ones)."""
        ips = (
            self.snapshot.service_ips
            if service_ips is None
            else MappingProxyType(dict(service_ips))
        )
        self.snapshot = EndpointSnapshot(
            version=self.snapshot.version + 1,
            clusters=MappingProxyType(dict(clusters)),
            service_ips=ips,
        )
        self.first_sync.set()
        if self.on_publish is not None:
            self.on_publish(self.snapshot)
        return self.snapshot

    def install(
        self,
        version: int,
        clusters: Mapping[str, tuple[Endpoint, ...]],
        service_ips: Mapping[tuple[str, int], str] | None = None,
    ) -> None:
        """Take a snapshot another process published, as it was (a worker's registry)."""
        self.snapshot = EndpointSnapshot(
            version=version,
            clusters=MappingProxyType(dict(clusters)),
            service_ips=MappingProxyType(dict(service_ips or {})),
        )
        self.first_sync.set()


def static_snapshot(config: Config) -> dict[str, tuple[Endpoint, ...]]:
    """Endpoints exactly as written in the config (the embedded default discovery)."""
    return {name: cluster.endpoints for name, cluster in config.clusters.items()}
