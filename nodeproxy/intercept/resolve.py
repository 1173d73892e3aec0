"""Where an intercepted connection was going: its original destination -> a cluster.

Pure, reads one ``EndpointSnapshot``. The destination the pod dialled, not
its ``Host`` header, decides (a client may send any Host, or none):

- a Service ClusterIP and port -> that Service port's cluster
  (``svc[.ns]:<port>``); the HTTP path balances over its endpoints.
- a pod IP and port that back a Service port -> that Service's cluster,
  pinned to that pod: the client chose the pod, so only it is picked (policy,
  identity and mTLS are the Service's).
- anything else (a pod that backs no Service on that port, a ClusterIP
  discovery does not know): None, and the connection takes the TCP path to
  the address as dialled.

The pod-IP index is built once per snapshot version (the snapshot's clusters
hold every endpoint; a node's pods call the same few again and again).
"""

from __future__ import annotations

from dataclasses import dataclass

from nodeproxy.discovery.snapshot import EndpointSnapshot


@dataclass(frozen=True)
class Destination:
    cluster: str  # the Service port's cluster, as discovery names it
    authority: str  # what the HTTP path routes on: the cluster name is also an authority
    pin: str | None = None  # "ip:port": only this endpoint (a pod dialled directly)


class Resolver:
    """ClusterIP:port or pod IP:port -> ``Destination``, over the current snapshot."""

    def __init__(self) -> None:
        self._version = -1
        self._pods: dict[tuple[str, int], str] = {}

    def __repr__(self) -> str:
        return f"<Resolver [version {self._version}, {len(self._pods)} pod ports]>"

    def resolve(self, snapshot: EndpointSnapshot, ip: str, port: int) -> Destination | None:
        cluster = snapshot.service_ips.get((ip, port))
        if cluster is not None:
            return Destination(cluster, cluster)
        if snapshot.version != self._version:
            self._pods = _pod_index(snapshot)
            self._version = snapshot.version
        cluster = self._pods.get((ip, port))
        if cluster is None:
            return None
        return Destination(cluster, cluster, pin=f"{ip}:{port}")


def _pod_index(snapshot: EndpointSnapshot) -> dict[tuple[str, int], str]:
    """(endpoint ip, port) -> a cluster holding it; port-specific names (``svc:8080``)
    win over the plain alias of the same endpoints, then the first in name order."""
    index: dict[tuple[str, int], str] = {}
    for name in sorted(snapshot.clusters, key=lambda n: (":" not in n, n)):
        for ep in snapshot.clusters[name]:
            index.setdefault((ep.host, ep.port), name)
    return index
