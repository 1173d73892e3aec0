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
``Translator`` is fed *changes* (a store key and its record now, or None when
it is gone; the stores log which keys changed) and keeps the clusters up to
date in place: a change to a slice rebuilds only its Service, a change to a
local pod only the Services whose endpoints it backs. A refresh after one
event costs that Service, not a walk over 6000 of them, and unchanged
endpoints stay the same objects from one snapshot to the next.
``node_proxies`` maps node names to their proxy address (InternalIP:4143) and
``pod_identities`` maps a local pod IP to its namespace and service account
(the mesh uses both: node-to-node mTLS and the caller's identity).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

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


Change = tuple[str, Any]  # (store key "ns/name", its record now or None)
PodRef = tuple[str, str]


def _parts(record: Any) -> tuple[SliceRecord, ...]:
    """The slices a slice-store record holds: an EndpointSlice, or v1 Endpoints' subsets."""
    if isinstance(record, SliceRecord):
        return (record,)
    return record.subsets if isinstance(record, EndpointsRecord) else ()


class Translator:
    """Services + slices + local pods -> ``clusters``, updated in place from changes.

    Owned by the discovery task (its only caller). Keys are the stores' keys;
    a Service's key ``ns/name`` is also how its slices find it.
    """

    def __init__(self, default_namespace: str = "default") -> None:
        self.default_namespace = default_namespace
        self.clusters: Clusters = {}  # the current result (publish copies it)
        # (ClusterIP, Service port) -> that port's cluster: where an intercepted
        # connection was going (intercept/resolve.py); published with the clusters.
        self.service_ips: dict[tuple[str, int], str] = {}
        self._vips: dict[str, tuple[tuple[str, int], ...]] = {}  # service -> its keys above
        self._services: dict[str, ServiceRecord] = {}
        self._slices: dict[str, dict[str, tuple[SliceRecord, ...]]] = {}  # service -> slices
        self._owner: dict[str, str] = {}  # slice key -> its service
        self._pods: dict[PodRef, PodRecord] = {}
        self._users: dict[PodRef, set[str]] = {}  # pod -> services whose endpoints it backs
        self._built: dict[str, tuple[Entries, tuple[PodRef, ...]]] = {}
        self._zones: dict[str, Mapping[str, str]] = {}  # zone -> its one-label mapping
        self.rebuilt = 0  # Services rebuilt by the last update (tests and the bench read it)

    def __repr__(self) -> str:
        return (
            f"<Translator [{len(self._services)} services, {len(self.clusters)} clusters, "
            f"{self.rebuilt} rebuilt last]>"
        )

    def update(
        self, services: Iterable[Change], slices: Iterable[Change], pods: Iterable[Change] = ()
    ) -> bool:
        """Apply the changes; True when a cluster's endpoints changed."""
        dirty: set[str] = set()
        for key, svc in services:
            if isinstance(svc, ServiceRecord) and svc.ports:
                self._services[key] = svc
            else:
                self._services.pop(key, None)
            dirty.add(key)
        for key, record in slices:
            old = self._owner.pop(key, None)
            if old is not None:
                group = self._slices[old]
                del group[key]
                if not group:
                    del self._slices[old]
                dirty.add(old)
            parts = _parts(record)
            if parts and parts[0].service:
                owner = f"{parts[0].namespace}/{parts[0].service}"
                self._owner[key] = owner
                self._slices.setdefault(owner, {})[key] = parts
                dirty.add(owner)
        for key, pod in pods:
            ns, _, name = key.partition("/")
            if isinstance(pod, PodRecord):
                self._pods[(ns, name)] = pod
            else:
                self._pods.pop((ns, name), None)
            dirty.update(self._users.get((ns, name), ()))
        changed = False
        for key in dirty:
            changed |= self._rebuild(key)
        self.rebuilt = len(dirty)
        return changed

    def _rebuild(self, key: str) -> bool:
        vips_changed = self._rebuild_vips(key)
        return self._rebuild_clusters(key) or vips_changed

    def _rebuild_vips(self, key: str) -> bool:
        old = self._vips.pop(key, ())
        for vip in old:
            self.service_ips.pop(vip, None)
        svc = self._services.get(key)
        if svc is None:
            return bool(old)
        base = cluster_name(svc.name, svc.namespace, self.default_namespace)
        new = tuple((ip, port) for ip in svc.cluster_ips for _, port in svc.ports)
        for ip, port in new:
            self.service_ips[(ip, port)] = f"{base}:{port}"
        if new:
            self._vips[key] = new
        return new != old

    def _rebuild_clusters(self, key: str) -> bool:
        old, refs = self._built.pop(key, ((), ()))
        for name, _ in old:
            del self.clusters[name]
        for ref in refs:
            users = self._users[ref]
            users.discard(key)
            if not users:
                del self._users[ref]
        svc = self._services.get(key)
        if svc is None:
            return bool(old)
        slices = [p for parts in self._slices.get(key, {}).values() for p in parts]
        entries = self._build(svc, slices)
        refs = tuple({ep.pod for sl in slices for ep in sl.endpoints if ep.pod})
        for ref in refs:
            self._users.setdefault(ref, set()).add(key)
        self.clusters.update(entries)
        self._built[key] = (entries, refs)
        return entries != old

    def _build(self, svc: ServiceRecord, slices: Sequence[SliceRecord]) -> Entries:
        buckets: dict[str, list[Endpoint]] = {}
        for sl in slices:
            for port_name, number in sl.ports:
                bucket = buckets.setdefault(port_name, [])
                for ep in sl.endpoints:
                    bucket.append(Endpoint(ep.address, number, self._labels(ep), ep.node))
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

    def _labels(self, ep: EndpointRecord) -> Mapping[str, str]:
        pod = self._pods.get(ep.pod) if ep.pod else None
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


def clusters_from(
    services: Iterable[ServiceRecord],
    slices: Iterable[SliceRecord | EndpointsRecord],
    pods: Iterable[PodRecord] = (),
    default_namespace: str = "default",
) -> Clusters:
    """Clusters from EndpointSlices (``discovery.k8s.io/v1``) or v1 Endpoints (each
    subset a slice of its own), in one go: what a ``Translator`` holds after one update."""
    t = Translator(default_namespace)
    t.update(
        ((f"{s.namespace}/{s.name}", s) for s in services),
        ((f"#{i}", sl) for i, sl in enumerate(slices)),
        ((f"{p.namespace}/{p.name}", p) for p in pods),
    )
    return dict(t.clusters)


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
