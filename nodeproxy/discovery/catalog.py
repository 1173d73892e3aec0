"""Clusters that exist because discovery found them, beside the configured ones.

Why: the data path, the upstream pools and the admin pages all look a cluster
up in ``config.clusters`` (its timeouts, pool size, namespace). With
Kubernetes discovery most clusters are not in the config: they appear and go
as Services do. ``ClusterCatalog`` is a read-only ``Mapping`` that answers for
both: a configured cluster as written, and every other cluster of the current
endpoint snapshot with default settings (``ClusterConfig`` defaults, its
namespace read from the name). app.py puts it in place of ``config.clusters``,
so none of those readers changes. Its only writer is the registry's publisher
(discovery): the view follows each snapshot and keeps nothing of a cluster
that left it. A discovered cluster's settings are made the first time
something asks for them and kept while it exists: at 6000 Services (18000
clusters with their ports) memory follows the clusters traffic goes to, not
all of them.

``OverlayRegistry`` keeps configured endpoints alive under discovery: a
``services`` entry with ``endpoints`` (a database outside the cluster, say)
stays as written in every published snapshot; a configured service without
endpoints takes its endpoints from discovery and its settings from the config.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from nodeproxy.config.model import ClusterConfig
from nodeproxy.discovery.snapshot import Endpoint, EndpointRegistry, EndpointSnapshot


class OverlayRegistry(EndpointRegistry):
    """An ``EndpointRegistry`` whose every publish keeps the configured endpoints."""

    def __init__(self, static: Mapping[str, tuple[Endpoint, ...]]) -> None:
        super().__init__()
        self.static = {name: eps for name, eps in static.items() if eps}

    def publish(
        self,
        clusters: Mapping[str, tuple[Endpoint, ...]],
        service_ips: Mapping[tuple[str, int], str] | None = None,
    ) -> EndpointSnapshot:
        return super().publish({**clusters, **self.static}, service_ips)


class ClusterCatalog(Mapping[str, ClusterConfig]):
    """Configured clusters plus the discovered ones of the current snapshot."""

    def __init__(
        self,
        configured: Mapping[str, ClusterConfig],
        registry: EndpointRegistry,
        default_namespace: str = "default",
        template: ClusterConfig | None = None,
    ) -> None:
        self._configured = configured
        self._registry = registry
        self._default_ns = default_namespace
        self._template = template or ClusterConfig(name="")
        self._version = -1
        self._discovered: dict[str, ClusterConfig] = {}  # made on first use
        self._count = 0  # discovered clusters in the current snapshot

    def __repr__(self) -> str:
        return (
            f"<ClusterCatalog [{len(self._configured)} configured, "
            f"{len(self) - len(self._configured)} discovered, {len(self._sync())} in use]>"
        )

    def _sync(self) -> dict[str, ClusterConfig]:
        """Settings made so far, of clusters still in the snapshot (pruned once per version)."""
        snapshot = self._registry.current()
        if snapshot.version != self._version:
            clusters = snapshot.clusters
            self._discovered = {n: c for n, c in self._discovered.items() if n in clusters}
            self._count = sum(1 for n in clusters if n not in self._configured)
            self._version = snapshot.version
        return self._discovered

    def _cluster(self, name: str) -> ClusterConfig:
        service = name.partition(":")[0]  # "svc.ns:8080" -> "svc.ns"
        _, dot, ns = service.partition(".")
        return ClusterConfig(
            name=name,
            namespace=ns if dot else self._default_ns,
            connect_timeout=self._template.connect_timeout,
            response_timeout=self._template.response_timeout,
            lb_policy=self._template.lb_policy,
            max_connections_per_endpoint=self._template.max_connections_per_endpoint,
            idle_timeout=self._template.idle_timeout,
        )

    def __getitem__(self, name: str) -> ClusterConfig:
        configured = self._configured.get(name)
        if configured is not None:
            return configured
        made = self._sync()
        cluster = made.get(name)
        if cluster is None:
            if name not in self._registry.current().clusters:
                raise KeyError(name)
            cluster = made[name] = self._cluster(name)
        return cluster

    def __contains__(self, name: object) -> bool:
        return name in self._configured or name in self._registry.current().clusters

    def __iter__(self) -> Iterator[str]:
        yield from self._configured
        yield from [n for n in self._registry.current().clusters if n not in self._configured]

    def __len__(self) -> int:
        self._sync()
        return len(self._configured) + self._count
