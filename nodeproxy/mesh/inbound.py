"""The inbound listener's request path: who calls, which local pod, allowed?

    mTLS handshake     server/inbound.py: the caller's SPIFFE ID (Downstream.caller)
      -> destination   x-nodeproxy-destination must name a pod of THIS node
      -> service       the cluster that pod belongs to (x-nodeproxy-service
                       picks one when a pod serves several); never the
                       caller's word alone
      -> policy        caller, service, method, path -> allow or 403 denied
      -> forward       plaintext to the pod, through the shared upstream pool

or, for ``CONNECT pod-ip:port`` (a tunnel: intercepted TCP, or HTTP the
source node sends through a tunnel), tunnel/inbound.py: local pod, TCP
policy, 200, then raw bytes both ways.

The inbound port is no open relay: a destination that is not a pod of this
node (another node's pod, a host outside the mesh, the proxy's own admin
port) is refused with 421 ``not_local_destination``, before the policy and
without a connection. The pod receives the request without the mesh headers
and with ``x-forwarded-client-cert: By=<this node>;URI=<caller>`` (set here,
never passed through), so it can log or check who called.
"""

from __future__ import annotations

from collections.abc import Mapping

from nodeproxy.config.model import ClusterConfig, ListenerConfig
from nodeproxy.discovery.snapshot import Endpoint
from nodeproxy.errors import MissingDestination, NotLocalDestination
from nodeproxy.http1.codec import request_event
from nodeproxy.http1.headers import request_authority
from nodeproxy.http1.impl import h11
from nodeproxy.mesh.state import (
    DESTINATION_HEADER,
    SERVICE_HEADER,
    XFCC_HEADER,
    Mesh,
    is_mesh_header,
    service_of,
)
from nodeproxy.runtime import Runtime
from nodeproxy.server.admission import Admission
from nodeproxy.server.downstream import Downstream, Exchange
from nodeproxy.server.exchange import forward
from nodeproxy.tunnel.inbound import serve_connect
from nodeproxy.upstream.pool import Target, Upstreams

LISTENER = "inbound"

_Local = Mapping[str, tuple[tuple[ClusterConfig, Endpoint], ...]]


def local_destinations(
    clusters: Mapping[str, ClusterConfig],
    endpoints: Mapping[str, tuple[Endpoint, ...]],
    node_name: str,
) -> dict[str, tuple[tuple[ClusterConfig, Endpoint], ...]]:
    """``host:port`` -> every (cluster, endpoint) of a pod on ``node_name``."""
    out: dict[str, list[tuple[ClusterConfig, Endpoint]]] = {}
    for name, eps in endpoints.items():
        cluster = clusters.get(name)
        if cluster is None:
            continue
        for ep in eps:
            if ep.node == node_name:
                out.setdefault(ep.address, []).append((cluster, ep))
    return {k: tuple(v) for k, v in out.items()}


def pick_destination(
    local: _Local, destination: str, service: str | None
) -> tuple[ClusterConfig, Endpoint, str]:
    """The (cluster, endpoint, svc.ns) a request to ``destination`` is for, or raise."""
    candidates = local.get(destination, ())
    if not candidates:
        raise NotLocalDestination(f"{destination} is not a pod of this node")
    if service is None:
        if len({service_of(c) for c, _ in candidates}) != 1:
            raise MissingDestination(f"{destination} serves several services: name one")
        cluster, endpoint = candidates[0]
        return cluster, endpoint, service_of(cluster)
    for cluster, endpoint in candidates:
        if service_of(cluster) == service:
            return cluster, endpoint, service
    raise NotLocalDestination(f"{destination} is not a pod of service {service}")


class InboundHandler:
    """destination -> policy -> forward: the mTLS inbound listener's ``Handler``
    (``server/handler.py``)."""

    accepts_connect = True  # CONNECT pod-ip:port tunnels (tunnel/inbound.py)

    def __init__(self, runtime: Runtime, upstreams: Upstreams) -> None:
        config, mesh = runtime.config, runtime.mesh
        assert mesh is not None, "the inbound listener serves only with a mesh"
        self.runtime = runtime
        self.upstreams = upstreams
        self.listener = ListenerConfig(
            name=LISTENER, host=mesh.config.inbound_host, port=mesh.config.inbound_port
        )
        # per-source fairness, where a source is a calling node (docs/configuration.md)
        self.admission = Admission(self.listener, config.fairness, runtime.stats, runtime.routes)
        self._body_timeout = config.limits.downstream_idle_timeout
        self._version = -1
        self._local: _Local = {}
        self._xfcc_by = f"By={mesh.node_id}".encode()

    @property
    def mesh(self) -> Mesh:
        """The runtime's mesh (its one owner)."""
        mesh = self.runtime.mesh
        assert mesh is not None
        return mesh

    def __repr__(self) -> str:
        return f"<InboundHandler {self.mesh.node_name} [{len(self._local)} local pods]>"

    def bound(self, port: int) -> None:
        """Nothing here depends on the port."""

    def local(self) -> _Local:
        """The local pods, recomputed only when discovery published a new snapshot."""
        snapshot = self.runtime.endpoints.current()
        if snapshot.version != self._version:
            self._local = local_destinations(
                self.runtime.config.clusters, snapshot.clusters, self.mesh.node_name
            )
            self._version = snapshot.version
        return self._local

    async def handle(self, down: Downstream, request: h11.Request, ex: Exchange) -> bool:
        caller = down.caller
        if request.method == b"CONNECT":
            return await serve_connect(
                down,
                request,
                ex,
                local=self.local(),
                mesh=self.mesh,
                caller=caller,
                drain=self.runtime.drain,
            )
        host, path = request_authority(request.target, request.headers)
        ex.authority, ex.path = host.decode("latin-1"), path.decode("latin-1")
        destination = service = None
        headers: list[tuple[bytes, bytes]] = []
        for name, value in request.headers:
            if name == DESTINATION_HEADER:
                destination = value.decode("latin-1").strip().lower()
            elif name == SERVICE_HEADER:
                service = value.decode("latin-1").strip().lower()
            elif not is_mesh_header(name):
                headers.append((name, value))
        if not destination:
            raise MissingDestination("x-nodeproxy-destination is required on the inbound port")
        cluster, endpoint, service = pick_destination(self.local(), destination, service)
        ex.cluster, ex.upstream = cluster.name, endpoint.address
        self.mesh.authorize(LISTENER, caller, service, ex, endpoint.port)
        headers.append((XFCC_HEADER, self._xfcc_by + f";URI={caller}".encode()))
        request = request_event(request.method, request.target, headers)
        return await forward(
            down,
            request,
            ex,
            Target(cluster, endpoint, cluster.response_timeout),
            self.upstreams,
            host=host,
            path=path,
            body_timeout=self._body_timeout,
            drain=self.runtime.drain,
        )
