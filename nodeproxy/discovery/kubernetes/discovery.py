"""Kubernetes discovery: the reflectors, and the one task that publishes their result.

``KubernetesDiscovery.run`` starts one ``Reflector`` per watched resource and a
publisher. Reflectors only mark the state dirty; the publisher wakes, waits for
every resource to have listed once, translates the caches (pure functions in
``translate.py``) and calls ``EndpointRegistry.publish`` -- the registry's only
writer, as the snapshot contract wants. Bursts of events coalesce into one
publish, and a change that does not alter the clusters (a pod status update, a
bookmark) publishes nothing. The first publish sets ``registry.synced``, which
turns ``/ready`` to 200; until then the proxy is not ready.

Watched: Services, EndpointSlices (or v1 Endpoints when configured), Pods on
this node (``fieldSelector=spec.nodeName=<node>``; only with a node name) and
Nodes. ``watched_resources`` lists them for RBAC checks.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
import trio

from nodeproxy.discovery.kubernetes.access import ApiAccess, from_kubeconfig, in_cluster
from nodeproxy.discovery.kubernetes.apiclient import ApiClient
from nodeproxy.discovery.kubernetes.project import PROJECTIONS, SERVICE_NAME_LABEL
from nodeproxy.discovery.kubernetes.reflector import Reflector, ReflectorSettings
from nodeproxy.discovery.kubernetes.store import K8S_PUBLISHES, Resource
from nodeproxy.discovery.kubernetes.translate import (
    NODE_PROXY_PORT,
    PodIdentity,
    Translator,
    node_proxies,
    pod_identities,
)
from nodeproxy.discovery.snapshot import EndpointRegistry
from nodeproxy.stats.registry import Stats

log = structlog.get_logger("nodeproxy.discovery.kubernetes")

EndpointsApi = Literal["endpointslices", "endpoints"]


@dataclass(frozen=True)
class KubernetesDiscoveryConfig:
    """What a ``discovery: {kubernetes: ...}`` config block would hold."""

    endpoints_api: EndpointsApi = "endpointslices"
    node_name: str = ""  # $NODE_NAME from the downward API; '' = do not watch pods
    kubeconfig: str | None = None  # None = in-cluster service account
    context: str | None = None
    node_proxy_port: int = NODE_PROXY_PORT
    reflector: ReflectorSettings = field(default_factory=ReflectorSettings)


def watched_resources(config: KubernetesDiscoveryConfig) -> list[Resource]:
    """The collections discovery lists and watches, with their selectors."""
    resources = [Resource("services", "", "/api/v1/services")]
    if config.endpoints_api == "endpointslices":
        resources.append(
            Resource(
                "endpointslices",
                "discovery.k8s.io",
                "/apis/discovery.k8s.io/v1/endpointslices",
                label_selector=SERVICE_NAME_LABEL,
            )
        )
    else:
        resources.append(Resource("endpoints", "", "/api/v1/endpoints"))
    if config.node_name:
        resources.append(
            Resource("pods", "", "/api/v1/pods", field_selector=f"spec.nodeName={config.node_name}")
        )
    resources.append(Resource("nodes", "", "/api/v1/nodes"))
    return resources


def api_access(config: KubernetesDiscoveryConfig) -> ApiAccess:
    """The kubeconfig's access when one is configured, else the in-cluster service account."""
    if config.kubeconfig:
        return from_kubeconfig(config.kubeconfig, config.context)
    return in_cluster()


class KubernetesDiscovery:
    """Owns the reflectors and is the only writer of ``registry``."""

    def __init__(
        self,
        client: ApiClient,
        registry: EndpointRegistry,
        stats: Stats,
        config: KubernetesDiscoveryConfig,
        default_namespace: str = "default",
        rng: random.Random | None = None,
        on_refresh: Callable[[], None] | None = None,
    ) -> None:
        self.registry = registry
        self.on_refresh = on_refresh  # after each refresh: node_proxies/pod_identities are new
        self.stats = stats
        self.config = config
        self.default_namespace = default_namespace
        rng = rng or random.Random()
        self.reflectors = {
            r.name: Reflector(
                client, r, stats, self._mark_dirty, config.reflector, rng, PROJECTIONS[r.name]
            )
            for r in watched_resources(config)
        }
        self.translator = Translator(default_namespace)
        self.node_proxies: Mapping[str, str] = {}
        self.pod_identities: Mapping[str, PodIdentity] = {}
        self._dirty = trio.Event()
        self._published: bool | None = None  # None until the first publish
        registry.waiting_for = self.waiting_for

    def __repr__(self) -> str:
        stores = ", ".join(repr(r.store) for r in self.reflectors.values())
        return f"<KubernetesDiscovery [{'synced' if self.synced else 'syncing'}] {stores}>"

    @property
    def synced(self) -> bool:
        """Every resource has been listed once (then the first snapshot is published)."""
        return all(r.store.synced for r in self.reflectors.values())

    def waiting_for(self) -> str:
        """The resources not listed yet, with their last error ('' once synced)."""
        parts = []
        for r in self.reflectors.values():
            if not r.store.synced:
                err = f": {r.failures} failures, last: {r.last_error}" if r.last_error else ""
                parts.append(f"{r.resource.name}{err}")
        return "; ".join(parts)

    def _mark_dirty(self) -> None:
        self._dirty.set()

    def _objects(self, name: str) -> Iterable[Any]:
        r = self.reflectors.get(name)
        return r.store.objects.values() if r else ()

    def _changes(self, name: str) -> list[tuple[str, Any]]:
        r = self.reflectors.get(name)
        return r.store.drain() if r else []

    def refresh(self) -> bool:
        """Translate what changed and publish if a cluster did; True when it published.

        ``on_refresh`` runs first (synchronously, so no request sees a snapshot
        whose nodes or pods the mesh does not know yet), when nodes or pods changed.
        """
        first = self._published is None
        nodes, pods = self._changes("nodes"), self._changes("pods")
        if nodes or first:
            self.node_proxies = node_proxies(self._objects("nodes"), self.config.node_proxy_port)
        if pods or first:
            self.pod_identities = pod_identities(self._objects("pods"))
        if (nodes or pods or first) and self.on_refresh is not None:
            self.on_refresh()
        slices = "endpointslices" if self.config.endpoints_api == "endpointslices" else "endpoints"
        changed = self.translator.update(self._changes("services"), self._changes(slices), pods)
        if not changed and not first:
            return False
        self.registry.publish(self.translator.clusters, self.translator.service_ips)
        self._published = True
        self.stats.inc(K8S_PUBLISHES)
        log.info("k8s_published", clusters=len(self.translator.clusters),
                 version=self.registry.current().version)  # fmt: skip
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the reflectors and the publisher until cancelled.

        ``started`` is signalled at once; readiness is ``registry.synced``.
        """
        async with trio.open_nursery() as nursery:
            for reflector in self.reflectors.values():
                nursery.start_soon(reflector.run, name=f"k8s-reflector-{reflector.resource.name}")
            task_status.started()
            while True:
                await self._dirty.wait()
                self._dirty = trio.Event()
                if self.synced:
                    self.refresh()
                await trio.lowlevel.checkpoint()
