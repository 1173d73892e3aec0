"""Where an intercepted TCP connection goes, and how (pure: no trio, no sockets).

A connection arrives with its original destination ``dst_ip:dst_port``:

- a **Service ClusterIP** (discovery's ``service_ips``, or a configured
  ``cluster_ip``) -> the cluster's balancer picks a backend (the caller does
  that, it owns the traffic state), then as for a pod, judged as that Service;
- a **pod** known to discovery (``PodIndex``: ``ip:port`` -> the clusters whose
  endpoint it is) -> ``DIRECT`` when the pod is on this node (policy checked
  here), ``TUNNEL`` through its node's inbound port otherwise;
- anything else (a host outside the mesh, an endpoint without ``node``) ->
  ``PASSTHROUGH``: connected as addressed, no identity, no policy, what the
  pod would have got without the mesh.

``route`` is the decision, from plain data; ``carry.py`` does the I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from nodeproxy.config.model import ClusterConfig
from nodeproxy.discovery.snapshot import Endpoint, EndpointSnapshot
from nodeproxy.mesh.state import service_of
from nodeproxy.policy.model import Policy
from nodeproxy.tls.identity import SpiffeId
from nodeproxy.tunnel.wire import authority

Vip = tuple[str, int]  # (ClusterIP, Service port)


class Path(enum.Enum):
    DIRECT = "direct"  # a pod of this node: policy here, plain TCP to it
    TUNNEL = "tunnel"  # a pod of another node: mTLS CONNECT to its node's inbound port
    PASSTHROUGH = "passthrough"  # outside the mesh: as addressed, no policy


@dataclass(frozen=True, slots=True)
class Route:
    """One connection's way: the endpoint and the services it stands for (policy)."""

    path: Path
    endpoint: Endpoint
    services: tuple[str, ...] = ()  # svc.ns names, for the TCP policy
    cluster: ClusterConfig | None = None  # its connect timeout; None outside the mesh

    @property
    def destination(self) -> str:
        return self.endpoint.address


class PodIndex:
    """``ip:port`` -> (cluster, endpoint) of every endpoint in one snapshot."""

    def __init__(self, snapshot: EndpointSnapshot, clusters: Mapping[str, ClusterConfig]) -> None:
        self.version = snapshot.version
        found: dict[str, list[tuple[ClusterConfig, Endpoint]]] = {}
        for name, endpoints in snapshot.clusters.items():
            cluster = clusters.get(name)
            if cluster is None:
                continue
            for ep in endpoints:
                found.setdefault(ep.address, []).append((cluster, ep))
        self._by_address = {k: tuple(v) for k, v in found.items()}

    def __repr__(self) -> str:
        return f"<PodIndex version {self.version} [{len(self._by_address)} addresses]>"

    def lookup(self, address: str) -> tuple[tuple[ClusterConfig, Endpoint], ...]:
        return self._by_address.get(address, ())


def services_of(found: tuple[tuple[ClusterConfig, Endpoint], ...]) -> tuple[str, ...]:
    """The distinct svc.ns names, sorted (a pod port may back several Services)."""
    return tuple(sorted({service_of(cluster) for cluster, _ in found}))


def pick_service(
    policy: Policy, caller: SpiffeId | None, services: tuple[str, ...], port: int
) -> str:
    """Which of the Services a pod port backs a connection is judged as.

    A connection addressed to the pod itself may be for any of them, and the
    bytes reach the same socket whichever it is: it is allowed when the
    policy allows the caller one of them (that one is checked, counted and
    named to the destination node), else judged as the first.
    """
    for service in services:
        if policy.decide_tcp(caller, service, port).allowed:
            return service
    return services[0]


def route_endpoint(
    endpoint: Endpoint, services: tuple[str, ...], node_name: str, cluster: ClusterConfig | None
) -> Route:
    """A chosen endpoint: same node, another node, or outside the mesh."""
    if endpoint.node is None:
        return Route(Path.PASSTHROUGH, endpoint, services, cluster)
    if endpoint.node == node_name:
        return Route(Path.DIRECT, endpoint, services, cluster)
    return Route(Path.TUNNEL, endpoint, services, cluster)


def route_pod(index: PodIndex, dst_ip: str, dst_port: int, node_name: str) -> Route:
    """A connection addressed to a pod (or to anything that is not a ClusterIP)."""
    found = index.lookup(authority(dst_ip, dst_port))
    if not found:
        return Route(Path.PASSTHROUGH, Endpoint(dst_ip, dst_port))
    cluster, endpoint = found[0]
    # Prefer the record that says where the pod runs (a configured copy may not).
    for c, ep in found:
        if ep.node is not None:
            cluster, endpoint = c, ep
            break
    return route_endpoint(endpoint, services_of(found), node_name, cluster)
