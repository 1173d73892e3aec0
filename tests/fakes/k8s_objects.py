"""Builders for the Kubernetes objects the tests put into the fake API server.

Shapes follow the real API (core/v1 Service, Pod, Node; discovery.k8s.io/v1
EndpointSlice; core/v1 Endpoints), trimmed to the fields discovery reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Obj = dict[str, Any]


def service(name: str, ports: Sequence[tuple[str, int, int]], ns: str = "default") -> Obj:
    """``ports``: (name, port, targetPort)."""
    return {
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "type": "ClusterIP",
            "ports": [
                {"name": n, "port": p, "targetPort": t, "protocol": "TCP"} for n, p, t in ports
            ],
        },
    }


def endpoint(
    ip: str,
    node: str = "node-1",
    ready: bool | None = True,
    terminating: bool = False,
    pod: str | None = None,
    ns: str = "default",
    zone: str | None = None,
) -> Obj:
    conditions: Obj = {"terminating": terminating, "serving": ready is not False}
    if ready is not None:
        conditions["ready"] = ready
    ep: Obj = {"addresses": [ip], "conditions": conditions, "nodeName": node}
    if pod:
        ep["targetRef"] = {"kind": "Pod", "name": pod, "namespace": ns}
    if zone:
        ep["zone"] = zone
    return ep


def endpoint_slice(
    name: str,
    service_name: str,
    endpoints: Sequence[Obj],
    ports: Sequence[tuple[str, int]] = (("http", 8080),),
    ns: str = "default",
) -> Obj:
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {
                "kubernetes.io/service-name": service_name,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "endpoints": list(endpoints),
        "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports],
    }


def endpoints_v1(
    name: str,
    ready: Sequence[tuple[str, str]],
    not_ready: Sequence[tuple[str, str]] = (),
    ports: Sequence[tuple[str, int]] = (("http", 8080),),
    ns: str = "default",
) -> Obj:
    """``ready``/``not_ready``: (ip, node)."""
    return {
        "metadata": {"name": name, "namespace": ns},
        "subsets": [
            {
                "addresses": [{"ip": ip, "nodeName": n} for ip, n in ready],
                "notReadyAddresses": [{"ip": ip, "nodeName": n} for ip, n in not_ready],
                "ports": [{"name": pn, "port": p, "protocol": "TCP"} for pn, p in ports],
            }
        ],
    }


def pod(
    name: str,
    ip: str,
    node: str = "node-1",
    ns: str = "default",
    service_account: str = "default",
    labels: dict[str, str] | None = None,
) -> Obj:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {"nodeName": node, "serviceAccountName": service_account, "containers": []},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def node(name: str, internal_ip: str) -> Obj:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "addresses": [
                {"type": "Hostname", "address": name},
                {"type": "InternalIP", "address": internal_ip},
            ]
        },
    }
