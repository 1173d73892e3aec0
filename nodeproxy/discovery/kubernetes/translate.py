"""From the watched Kubernetes objects to what the proxy routes on (pure functions).

Clusters are named the way the native config names services, so a route to
``bdgreeter`` finds them: ``svc`` in the default namespace, ``svc.ns``
elsewhere. A Service with several ports yields one cluster per port,
``<name>:<service port>`` (``bdgreeter:8080``), and the plain name is the
cluster for port 80 if the Service has one, else its first port -- the port a
``http://bdgreeter/`` request means.

Endpoints come from EndpointSlices (the default; a Service may have several,
found by their ``kubernetes.io/service-name`` label) or from the older
Endpoints objects. The slice port *name* matches the Service port name and
its *number* is already the target port, so ``targetPort`` never needs to be
resolved here. Only endpoints whose ``conditions.ready`` is true (absent means
true, as the API documents) and that are not ``terminating`` get traffic: a
terminating pod finishes the requests it has, and receives no new ones.

Each endpoint carries ``node`` (its ``nodeName``) and labels: the pod's labels
when the pod runs on this node (only those are watched), plus the zone.

Everything here reads the slim records of ``project.py``, never raw objects.
``Translator`` remembers each Service's clusters with the records they came
from and rebuilds only the Services whose records changed (compared by
identity: a record is replaced, never mutated), so a refresh after one event
costs a walk over the records, not a rebuild of every cluster, and unchanged
endpoints stay the same objects from one snapshot to the next.
``node_proxies`` maps node names to their proxy address (InternalIP:4143) and
``pod_identities`` maps a local pod IP to its namespace and service account
(issue 3 uses both for node-to-node mTLS and caller identity).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from nodeproxy.config.model import EMPTY_LABELS
from nodeproxy.discovery.kubernetes.project import (
    EndpointRecord,
    EndpointsRecord,
    NodeRecord,
    PodRecord,
    ServiceRecord,
    SliceRecord,
)
from nodeproxy.discovery.snapshot import Endpoint

ZONE_LABEL = "topology.kubernetes.io/zone"
NODE_PROXY_PORT = 4143

Clusters = dict[str, tuple[Endpoint, ...]]
Entries = tuple[tuple[str, tuple[Endpoint, ...]], ...]  # one Service's clusters


@dataclass(frozen=True)
class PodIdentity:
    name: str
    namespace: str
    service_account: str


def cluster_name(service: str, namespace: str, default_namespace: str = "default") -> str:
    """``svc`` in the default namespace, ``svc.ns`` elsewhere (as the native loader)."""
    return service if namespace == default_namespace else f"{service}.{namespace}"


def _same(a: Sequence[object], b: Sequence[object]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


class Translator:
    """Services + slices + local pods -> clusters, rebuilding only what changed.

    Owned by the discovery task (its only caller); holds one entry per Service.
    """

    def __init__(self, default_namespace: str = "default") -> None:
        self.default_namespace = default_namespace
        self._cache: dict[
            tuple[str, str],
            tuple[ServiceRecord, tuple[SliceRecord, ...], tuple[PodRecord | None, ...], Entries],
        ] = {}
        self._zones: dict[str, Mapping[str, str]] = {}  # zone -> its one-label mapping
        self.rebuilt = 0  # Services rebuilt by the last call (tests and the bench read it)

    def __repr__(self) -> str:
        return f"<Translator [{len(self._cache)} services cached, {self.rebuilt} rebuilt last]>"

    def clusters(
        self,
        services: Iterable[ServiceRecord],
        slices: Iterable[SliceRecord],
        pods: Iterable[PodRecord] = (),
    ) -> Clusters:
        pod_index = {(p.namespace, p.name): p for p in pods}
        by_service: dict[tuple[str, str], list[SliceRecord]] = {}
        for sl in slices:
            if sl.service:
                by_service.setdefault((sl.namespace, sl.service), []).append(sl)
        out: Clusters = {}
        cache = {}
        self.rebuilt = 0
        for svc in services:
            if not svc.ports:
                continue
            key = (svc.namespace, svc.name)
            found = tuple(by_service.get(key, ()))
            local = tuple(pod_index.get(ep.pod) for sl in found for ep in sl.endpoints if ep.pod)
            hit = self._cache.get(key)
            if hit is not None and hit[0] is svc and _same(hit[1], found) and _same(hit[2], local):
                entries = hit[3]
            else:
                entries = self._build(svc, found, pod_index)
                self.rebuilt += 1
            cache[key] = (svc, found, local, entries)
            out.update(entries)
        self._cache = cache
        return out

    def _build(
        self,
        svc: ServiceRecord,
        slices: Sequence[SliceRecord],
        pods: Mapping[tuple[str, str], PodRecord],
    ) -> Entries:
        buckets: dict[str, list[Endpoint]] = {}
        for sl in slices:
            for port_name, number in sl.ports:
                bucket = buckets.setdefault(port_name, [])
                for ep in sl.endpoints:
                    bucket.append(Endpoint(ep.address, number, self._labels(ep, pods), ep.node))
        base = cluster_name(svc.name, svc.namespace, self.default_namespace)
        primary = next((p for p in svc.ports if p[1] == 80), svc.ports[0])
        entries: list[tuple[str, tuple[Endpoint, ...]]] = []
        for port_name, port in svc.ports:
            unique = {(e.host, e.port): e for e in reversed(buckets.get(port_name, []))}
            eps = tuple(sorted(unique.values(), key=lambda e: (e.host, e.port)))
            entries.append((f"{base}:{port}", eps))
            if (port_name, port) == primary:
                entries.append((base, eps))
        return tuple(entries)

    def _labels(
        self, ep: EndpointRecord, pods: Mapping[tuple[str, str], PodRecord]
    ) -> Mapping[str, str]:
        pod = pods.get(ep.pod) if ep.pod else None
        if pod is None or not pod.labels:
            if not ep.zone:
                return EMPTY_LABELS
            zone = self._zones.get(ep.zone)
            if zone is None:  # one mapping per zone, shared by all its endpoints
                zone = self._zones[ep.zone] = MappingProxyType({ZONE_LABEL: ep.zone})
            return zone
        out = dict(pod.labels)
        if ep.zone:
            out[ZONE_LABEL] = ep.zone
        return MappingProxyType(out)


def clusters_from_slices(
    services: Iterable[ServiceRecord],
    slices: Iterable[SliceRecord],
    pods: Iterable[PodRecord] = (),
    default_namespace: str = "default",
) -> Clusters:
    """Clusters from EndpointSlices (``discovery.k8s.io/v1``), in one go."""
    return Translator(default_namespace).clusters(services, slices, pods)


def clusters_from_endpoints(
    services: Iterable[ServiceRecord],
    endpoints: Iterable[EndpointsRecord],
    pods: Iterable[PodRecord] = (),
    default_namespace: str = "default",
) -> Clusters:
    """Clusters from v1 Endpoints (each subset is a slice of its own)."""
    slices = [s for e in endpoints for s in e.subsets]
    return Translator(default_namespace).clusters(services, slices, pods)


def node_proxies(nodes: Iterable[NodeRecord], port: int = NODE_PROXY_PORT) -> dict[str, str]:
    """Node name -> ``InternalIP:port`` of the proxy on it (ExternalIP if no InternalIP)."""
    return {
        n.name: f"[{n.address}]:{port}" if ":" in n.address else f"{n.address}:{port}"
        for n in nodes
        if n.address
    }


def pod_identities(pods: Iterable[PodRecord]) -> dict[str, PodIdentity]:
    """Pod IP -> who the pod is, for running pods (host-network pods share the node IP: skipped)."""
    out: dict[str, PodIdentity] = {}
    for pod in pods:
        if pod.ips:
            ident = PodIdentity(pod.name, pod.namespace, pod.service_account)
            for ip in pod.ips:
                out[ip] = ident
    return out
