"""What discovery keeps of a Kubernetes object: the few fields translation reads.

Why: a real Node is 10-20 KiB of JSON (image lists, conditions, managedFields)
of which discovery needs one address; a Service or an EndpointSlice carries
managedFields, ownerReferences and last-applied annotations nobody here reads.
Kept whole, the caches grow with the API's object sizes times the cluster
(200+ MiB at 6000 Services and 1000 Nodes, on every node at once). So each
object is projected the moment it is decoded -- every item of a list page,
every watch event -- into a small frozen record, and the decoded dict is
dropped at once (client-go's informer transforms, ``SetTransform``). Memory then
follows what is routed.

The projection also does what translation would otherwise redo on every
refresh: only TCP ports, only endpoints that are ready and not terminating,
one address per endpoint. Strings that repeat across objects (namespaces, node
names, zones, port names) are interned, so each is held once. Pure functions;
anything malformed is skipped field by field, never raised.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from nodeproxy.config.model import EMPTY_LABELS

Obj = dict[str, Any]
Ports = tuple[tuple[str, int], ...]  # (name, number) of each TCP port, in spec order

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_intern = sys.intern


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    namespace: str
    name: str
    ports: Ports  # empty for ExternalName Services (they get no cluster)
    cluster_ips: tuple[str, ...] = ()  # spec.clusterIPs (none for headless): interception


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    """One ready, not terminating endpoint (the others are never kept)."""

    address: str
    node: str | None
    zone: str | None
    pod: tuple[str, str] | None  # (namespace, name) of the Pod behind it


@dataclass(frozen=True, slots=True)
class SliceRecord:
    """An EndpointSlice, or one subset of a v1 Endpoints object."""

    namespace: str
    service: str  # the Service it belongs to ('' when the label is missing)
    ports: Ports
    endpoints: tuple[EndpointRecord, ...]


@dataclass(frozen=True, slots=True)
class EndpointsRecord:
    """A v1 Endpoints object: its subsets, each with its own ports and addresses."""

    subsets: tuple[SliceRecord, ...]


@dataclass(frozen=True, slots=True)
class PodRecord:
    namespace: str
    name: str
    labels: Mapping[str, str]
    service_account: str
    ips: tuple[str, ...]  # empty for host-network and finished pods (no identity of their own)


@dataclass(frozen=True, slots=True)
class NodeRecord:
    name: str
    address: str | None  # InternalIP, else ExternalIP


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str:
    return _intern(value) if isinstance(value, str) else ""


def _ports(items: Any) -> Ports:
    out = []
    for p in _list(items):
        p = _dict(p)
        number = p.get("port")
        if isinstance(number, int) and p.get("protocol", "TCP") == "TCP":
            out.append((_str(p.get("name")), number))
    return tuple(out)


def _target(ref: Any) -> tuple[str, str] | None:
    ref = _dict(ref)
    if ref.get("kind", "Pod") != "Pod" or not isinstance(ref.get("name"), str):
        return None
    return (_str(ref.get("namespace")), str(ref["name"]))


def service(obj: Obj) -> ServiceRecord:
    meta, spec = _dict(obj.get("metadata")), _dict(obj.get("spec"))
    ports = () if spec.get("type") == "ExternalName" else _ports(spec.get("ports"))
    listed = _list(spec.get("clusterIPs")) or [spec.get("clusterIP")]
    ips = tuple(str(ip) for ip in listed if isinstance(ip, str) and ip and ip != "None")
    return ServiceRecord(_str(meta.get("namespace")), str(meta.get("name", "")), ports, ips)


def endpoint_slice(obj: Obj) -> SliceRecord:
    meta = _dict(obj.get("metadata"))
    endpoints = []
    for ep in _list(obj.get("endpoints")):
        ep = _dict(ep)
        addresses = _list(ep.get("addresses"))
        cond = _dict(ep.get("conditions"))
        if not addresses or cond.get("ready") is False or cond.get("terminating") is True:
            continue  # absent "ready" means ready (API docs); terminating gets no new traffic
        endpoints.append(
            EndpointRecord(
                address=str(addresses[0]),  # the API: all addresses are fungible
                node=_str(ep.get("nodeName")) or None,
                zone=_str(ep.get("zone")) or None,
                pod=_target(ep.get("targetRef")),
            )
        )
    service_name = _dict(meta.get("labels")).get(SERVICE_NAME_LABEL)
    return SliceRecord(
        _str(meta.get("namespace")), _str(service_name), _ports(obj.get("ports")), tuple(endpoints)
    )


def endpoints_v1(obj: Obj) -> EndpointsRecord:
    meta = _dict(obj.get("metadata"))
    ns, name = _str(meta.get("namespace")), _str(meta.get("name"))
    subsets = []
    for subset in _list(obj.get("subsets")):
        subset = _dict(subset)
        addresses = [a for a in map(_dict, _list(subset.get("addresses"))) if a.get("ip")]
        eps = tuple(  # notReadyAddresses are never kept
            EndpointRecord(
                str(a["ip"]), _str(a.get("nodeName")) or None, None, _target(a.get("targetRef"))
            )
            for a in addresses
        )
        subsets.append(SliceRecord(ns, name, _ports(subset.get("ports")), eps))
    return EndpointsRecord(tuple(subsets))


def pod(obj: Obj) -> PodRecord:
    meta, spec, status = (_dict(obj.get(k)) for k in ("metadata", "spec", "status"))
    labels = {_str(k): _str(v) for k, v in _dict(meta.get("labels")).items()}
    ips: tuple[str, ...] = ()
    if not spec.get("hostNetwork") and status.get("phase") not in ("Succeeded", "Failed"):
        listed = [_dict(p).get("ip") for p in _list(status.get("podIPs"))]
        ips = tuple(str(ip) for ip in (listed or [status.get("podIP")]) if ip)
    return PodRecord(
        namespace=_str(meta.get("namespace")),
        name=str(meta.get("name", "")),
        labels=MappingProxyType(labels) if labels else EMPTY_LABELS,
        service_account=_str(spec.get("serviceAccountName")) or "default",
        ips=ips,
    )


def node(obj: Obj) -> NodeRecord:
    meta, status = _dict(obj.get("metadata")), _dict(obj.get("status"))
    by_type: dict[str, str] = {}
    for a in map(_dict, _list(status.get("addresses"))):
        by_type.setdefault(str(a.get("type")), str(a.get("address")))
    address = by_type.get("InternalIP") or by_type.get("ExternalIP")
    return NodeRecord(_str(meta.get("name")), address)


PROJECTIONS: dict[str, Callable[[Obj], object]] = {
    "services": service,
    "endpointslices": endpoint_slice,
    "endpoints": endpoints_v1,
    "pods": pod,
    "nodes": node,
}
