"""The native ``discovery:`` section -> ``DiscoveryConfig``.

Why a module of its own: it is the one section that changes where the rest of
the config's meaning comes from. Without it (or with ``discovery: {static:
{}}``) the ``services`` list is the whole truth; with ``kubernetes`` the
services come from the API and the listeners get a catch-all route that sends
``svc[.ns]`` to the discovered cluster of that name (``kubernetes_route``).
Only the shape is checked here; whether the kubeconfig or the in-cluster
service account is usable is checked when the app starts (``check-config``
must work on a laptop for a config meant for a pod).
"""

from __future__ import annotations

from typing import Literal, cast

from nodeproxy.config.model import (
    DiscoveryConfig,
    KubernetesConfig,
    RouteMatch,
    RouteRule,
    VirtualHost,
)
from nodeproxy.config.yamlsrc import Node

KUBERNETES_KEYS = (
    "endpoints_api",
    "kubeconfig",
    "context",
    "watch_timeout",
    "node_proxy_port",
    "endpoint_grace",
)
EndpointsApi = Literal["endpointslices", "endpoints"]
MIN_WATCH_TIMEOUT = 10.0  # shorter watches only add reconnects (client-go uses 5-10 min)

# The virtual host that routes every Kubernetes service name to its discovered
# cluster. It is added last to every listener, so configured services (exact
# names) and a configured "*" still win.
KUBERNETES_VHOST = VirtualHost(
    name="kubernetes",
    domains=("*",),
    routes=(RouteRule(match=RouteMatch(prefix="/"), cluster_from_authority=True, name="service"),),
)


def read_discovery(node: Node) -> DiscoveryConfig:
    """``{static: {}}`` or ``{kubernetes: {...}}`` (exactly one)."""
    f = node.fields("static", "kubernetes")
    kind, value = f.one_of("static", "kubernetes")
    if kind == "static":
        if value.node.tag != "tag:yaml.org,2002:null":
            value.fields()  # an empty mapping: static has no settings
        return DiscoveryConfig()
    if value.node.tag == "tag:yaml.org,2002:null":
        return DiscoveryConfig(kubernetes=KubernetesConfig())
    return DiscoveryConfig(kubernetes=_kubernetes(value))


def _kubernetes(node: Node) -> KubernetesConfig:
    f = node.fields(*KUBERNETES_KEYS)
    d = KubernetesConfig()
    api: str = f.opt(
        "endpoints_api", lambda n: n.choice("endpointslices", "endpoints"), str(d.endpoints_api)
    )
    timeout = f.opt("watch_timeout", Node.duration, d.watch_timeout)
    if timeout < MIN_WATCH_TIMEOUT:
        raise f.need("watch_timeout").error(f"must be at least {MIN_WATCH_TIMEOUT:g}s")
    return KubernetesConfig(
        endpoints_api=cast(EndpointsApi, api),  # choice() checked the value
        kubeconfig=f.opt("kubeconfig", Node.text, None),
        context=f.opt("context", Node.text, None),
        watch_timeout=timeout,
        node_proxy_port=f.opt("node_proxy_port", lambda n: n.integer(1, 65535), d.node_proxy_port),
        endpoint_grace=f.opt("endpoint_grace", Node.duration, d.endpoint_grace),
    )
