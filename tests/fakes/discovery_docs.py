"""The API discovery documents kubectl reads before it lists anything (legacy, JSON).

kubectl asks for aggregated discovery first; a server that answers plain
``application/json`` gets the legacy documents read instead, which is what
these are: ``/api``, ``/apis``, ``/api/v1``, ``/apis/discovery.k8s.io[/v1]``, ``/version``.
"""

from __future__ import annotations

from typing import Any

from tests.fakes.cluster_state import KINDS

SHORT_NAMES = {"services": ["svc"], "endpoints": ["ep"], "pods": ["po"], "nodes": ["no"]}
VERBS = ["get", "list", "watch"]


def _resources(group: str) -> list[dict[str, Any]]:
    return [
        {
            "name": k.resource,
            "singularName": k.kind.lower(),
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": VERBS,
            "shortNames": SHORT_NAMES.get(k.resource, []),
        }
        for k in KINDS.values()
        if k.group == group
    ]


def document(path: str, port: int) -> dict[str, Any] | None:
    """The discovery document at ``path``, or None when the path is not one."""
    path = "/" + path.strip("/")
    v1 = {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}
    group = {"name": "discovery.k8s.io", "versions": [v1], "preferredVersion": v1}
    docs: dict[str, dict[str, Any]] = {
        "/version": {"major": "1", "minor": "30", "gitVersion": "v1.30.0-fake"},
        "/api": {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{port}"}
            ],
        },
        "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]},
        "/apis/discovery.k8s.io": {"kind": "APIGroup", "apiVersion": "v1", **group},
        "/api/v1": {
            "kind": "APIResourceList",
            "groupVersion": "v1",
            "resources": _resources(""),
        },
        "/apis/discovery.k8s.io/v1": {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": "discovery.k8s.io/v1",
            "resources": _resources("discovery.k8s.io"),
        },
    }
    return docs.get(path)
