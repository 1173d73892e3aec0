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
``node_proxies`` maps node names to their proxy address (InternalIP:4143) and
``pod_identities`` maps a local pod IP to its namespace and service account
(issue 3 uses both for node-to-node mTLS and caller identity).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from nodeproxy.config.model import EMPTY_LABELS
from nodeproxy.discovery.kubernetes.store import Obj
from nodeproxy.discovery.snapshot import Endpoint

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ZONE_LABEL = "topology.kubernetes.io/zone"
NODE_PROXY_PORT = 4143


@dataclass(frozen=True)
class PodIdentity:
    name: str
    namespace: str
    service_account: str


def cluster_name(service: str, namespace: str, default_namespace: str = "default") -> str:
    """``svc`` in the default namespace, ``svc.ns`` elsewhere (as the native loader)."""
    return service if namespace == default_namespace else f"{service}.{namespace}"


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _ports(service: Obj) -> list[tuple[str, int]]:
    """(name, port) of each TCP service port, in spec order."""
    out: list[tuple[str, int]] = []
    for p in (service.get("spec") or {}).get("ports") or ():
        if p.get("protocol", "TCP") == "TCP" and isinstance(p.get("port"), int):
            out.append((str(p.get("name") or ""), p["port"]))
    return out


def _pods_by_name(pods: Iterable[Obj]) -> dict[tuple[str, str], Obj]:
    return {(_meta(p).get("namespace", ""), _meta(p).get("name", "")): p for p in pods}


def _labels(ref: Any, zone: Any, pods: Mapping[tuple[str, str], Obj]) -> Mapping[str, str]:
    out: dict[str, str] = {}
    if isinstance(ref, dict) and ref.get("kind", "Pod") == "Pod":
        pod = pods.get((str(ref.get("namespace", "")), str(ref.get("name", ""))))
        if pod is not None:
            out.update({str(k): str(v) for k, v in (_meta(pod).get("labels") or {}).items()})
    if isinstance(zone, str) and zone:
        out[ZONE_LABEL] = zone
    return MappingProxyType(out) if out else EMPTY_LABELS


def _assemble(
    services: Iterable[Obj],
    by_service: Mapping[tuple[str, str], dict[str, list[Endpoint]]],
    default_namespace: str,
) -> dict[str, tuple[Endpoint, ...]]:
    """Clusters for every Service, from endpoints grouped by (ns, svc) and port name."""
    clusters: dict[str, tuple[Endpoint, ...]] = {}
    for svc in services:
        if (svc.get("spec") or {}).get("type") == "ExternalName":
            continue
        name, ns = str(_meta(svc).get("name", "")), str(_meta(svc).get("namespace", ""))
        ports = _ports(svc)
        if not ports:
            continue
        found = by_service.get((ns, name), {})
        base = cluster_name(name, ns, default_namespace)
        primary = next((p for p in ports if p[1] == 80), ports[0])
        for port_name, port in ports:
            unique = {(e.host, e.port): e for e in reversed(found.get(port_name, []))}
            eps = tuple(sorted(unique.values(), key=lambda e: (e.host, e.port)))
            clusters[f"{base}:{port}"] = eps
            if (port_name, port) == primary:
                clusters[base] = eps
    return clusters


def _ready(conditions: Any) -> bool:
    c = conditions if isinstance(conditions, dict) else {}
    return c.get("ready") is not False and c.get("terminating") is not True


def clusters_from_slices(
    services: Iterable[Obj],
    slices: Iterable[Obj],
    pods: Iterable[Obj] = (),
    default_namespace: str = "default",
) -> dict[str, tuple[Endpoint, ...]]:
    """Clusters from EndpointSlices (``discovery.k8s.io/v1``)."""
    pod_index = _pods_by_name(pods)
    by_service: dict[tuple[str, str], dict[str, list[Endpoint]]] = {}
    for sl in slices:
        meta = _meta(sl)
        svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not svc:
            continue
        ports = by_service.setdefault((str(meta.get("namespace", "")), str(svc)), {})
        for port in sl.get("ports") or ():
            number = port.get("port")
            if not isinstance(number, int) or port.get("protocol", "TCP") != "TCP":
                continue
            bucket = ports.setdefault(str(port.get("name") or ""), [])
            for ep in sl.get("endpoints") or ():
                addresses = ep.get("addresses") or ()
                if not addresses or not _ready(ep.get("conditions")):
                    continue
                bucket.append(
                    Endpoint(
                        host=str(addresses[0]),  # the API: all addresses are fungible
                        port=number,
                        labels=_labels(ep.get("targetRef"), ep.get("zone"), pod_index),
                        node=ep.get("nodeName") or None,
                    )
                )
    return _assemble(services, by_service, default_namespace)


def clusters_from_endpoints(
    services: Iterable[Obj],
    endpoints: Iterable[Obj],
    pods: Iterable[Obj] = (),
    default_namespace: str = "default",
) -> dict[str, tuple[Endpoint, ...]]:
    """Clusters from v1 Endpoints (``subsets[].addresses``; ``notReadyAddresses`` skipped)."""
    pod_index = _pods_by_name(pods)
    by_service: dict[tuple[str, str], dict[str, list[Endpoint]]] = {}
    for obj in endpoints:
        meta = _meta(obj)
        ports = by_service.setdefault((str(meta.get("namespace", "")), str(meta["name"])), {})
        for subset in obj.get("subsets") or ():
            for port in subset.get("ports") or ():
                number = port.get("port")
                if not isinstance(number, int) or port.get("protocol", "TCP") != "TCP":
                    continue
                bucket = ports.setdefault(str(port.get("name") or ""), [])
                for addr in subset.get("addresses") or ():
                    bucket.append(
                        Endpoint(
                            host=str(addr["ip"]),
                            port=number,
                            labels=_labels(addr.get("targetRef"), None, pod_index),
                            node=addr.get("nodeName") or None,
                        )
                    )
    return _assemble(services, by_service, default_namespace)


def node_proxies(nodes: Iterable[Obj], port: int = NODE_PROXY_PORT) -> dict[str, str]:
    """Node name -> ``InternalIP:port`` of the proxy on it (ExternalIP if no InternalIP)."""
    out: dict[str, str] = {}
    for node in nodes:
        addrs = (node.get("status") or {}).get("addresses") or ()
        by_type: dict[str, str] = {}
        for a in addrs:
            by_type.setdefault(str(a.get("type")), str(a.get("address")))
        ip = by_type.get("InternalIP") or by_type.get("ExternalIP")
        if ip:
            out[str(_meta(node).get("name"))] = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    return out


def pod_identities(pods: Iterable[Obj]) -> dict[str, PodIdentity]:
    """Pod IP -> who the pod is, for running pods (host-network pods share the node IP: skipped)."""
    out: dict[str, PodIdentity] = {}
    for pod in pods:
        spec, status, meta = pod.get("spec") or {}, pod.get("status") or {}, _meta(pod)
        if spec.get("hostNetwork") or status.get("phase") in ("Succeeded", "Failed"):
            continue
        ident = PodIdentity(
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace", "")),
            service_account=str(spec.get("serviceAccountName") or "default"),
        )
        ips = [p.get("ip") for p in status.get("podIPs") or ()] or [status.get("podIP")]
        for ip in ips:
            if ip:
                out[str(ip)] = ident
    return out
