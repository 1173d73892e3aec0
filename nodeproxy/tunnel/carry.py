"""Carrying one intercepted TCP connection: resolve, authorize, connect, splice.

``Tunnels`` is per process (``app.py`` builds it and sets ``runtime.tunnels``);
``carry_tcp`` (see the package docstring) is the one call a listener makes
per connection. The steps:

1. resolve the original destination (``resolve.py``): a Service ClusterIP
   picks a backend with the cluster's balancer; a pod is looked up in the
   current endpoint snapshot; anything else passes through;
2. who calls: the workload at ``caller_ip`` (``mesh.sources``, the same
   table the HTTP path uses);
3. a pod of this node: the TCP policy is checked here (no other node will
   see the connection), then a plain TCP connection to the pod; a pod of
   another node: an mTLS tunnel to that node as the caller (``client.py``),
   which checks the policy itself (also here with ``mesh.enforce_outbound``);
4. splice (``splice.py``), the peeked bytes first.

A refused or failed connection is closed with a reset (``SO_LINGER`` 0): raw
TCP has no way to carry a cause, so the cause goes to the log line
(``tcp_connection``, one per connection, with the access log) and to
``nodeproxy_tcp_connections_total{path, outcome}``.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from contextlib import suppress
from typing import TYPE_CHECKING

import structlog
import trio

from nodeproxy.config.model import EMPTY_LABELS, ClusterConfig
from nodeproxy.errors import (
    NoHealthyUpstream,
    ProxyError,
    UnknownSource,
    UpstreamConnectFailure,
    UpstreamConnectTimeout,
)
from nodeproxy.mesh.state import Mesh
from nodeproxy.stats.names import TCP_CONNECTIONS, TUNNEL_BYTES
from nodeproxy.stats.registry import labels
from nodeproxy.tls.identity import SpiffeId
from nodeproxy.tunnel.client import open_tunnel, peer_for
from nodeproxy.tunnel.resolve import (
    Path,
    PodIndex,
    Route,
    Vip,
    pick_service,
    route_endpoint,
    route_pod,
    services_of,
)
from nodeproxy.tunnel.splice import Spliced, Stream, splice

if TYPE_CHECKING:
    from nodeproxy.runtime import Runtime

LISTENER = "tcp"  # the policy counters' and log lines' listener label
PASSTHROUGH_CONNECT_TIMEOUT = 5.0  # a host outside the mesh: no cluster to say otherwise

log = structlog.get_logger("nodeproxy.tcp")


def vips_from_config(clusters: Mapping[str, ClusterConfig]) -> dict[Vip, str]:
    """(ClusterIP, port) -> cluster name, from the configured services' ``cluster_ip``."""
    return {vip: cluster.name for cluster in clusters.values() for vip in cluster.vips}


class Tunnels:
    """The per-process state of TCP carrying: the mesh, the pod index, the VIP table."""

    def __init__(self, runtime: Runtime, mesh: Mesh | None) -> None:
        self.runtime = runtime
        self.mesh = mesh
        self.node_name = runtime.config.node_name
        self.vips: dict[Vip, str] = vips_from_config(runtime.config.clusters)
        self._index: PodIndex | None = None
        self.idle = runtime.config.limits.tcp_idle_timeout
        self.chunk = runtime.config.limits.stream_chunk_bytes
        self.log_lines = runtime.config.log.access_log

    def __repr__(self) -> str:
        return f"<Tunnels {self.node_name} [{len(self.vips)} VIPs | {self._index!r}]>"

    def index(self) -> PodIndex:
        snapshot = self.runtime.endpoints.current()
        if self._index is None or self._index.version != snapshot.version:
            self._index = PodIndex(snapshot, self.runtime.config.clusters)
        return self._index

    def route(self, dst_ip: str, dst_port: int) -> Route:
        """Where a connection to ``dst_ip:dst_port`` goes (a ClusterIP: one backend).

        ClusterIPs: discovery's (``snapshot.service_ips``), then the configured
        services' ``cluster_ip``."""
        snapshot = self.runtime.endpoints.current()
        name = snapshot.service_ips.get((dst_ip, dst_port)) or self.vips.get((dst_ip, dst_port))
        if name is None:
            return route_pod(self.index(), dst_ip, dst_port, self.node_name)
        cluster = self.runtime.config.clusters.get(name)
        if cluster is None:
            raise NoHealthyUpstream(f"service {name!r} of {dst_ip}:{dst_port} is not known")
        now = trio.current_time()
        state = self.runtime.traffic.cluster(cluster, now)
        ticket = state.admit(now)
        try:
            endpoints = snapshot.endpoints(cluster.name)
            attempt = state.start(ticket, endpoints, EMPTY_LABELS, now)
            attempt.close(now)
        finally:
            ticket.close(now)
        services = services_of(((cluster, attempt.endpoint),))  # the Service dialled
        return route_endpoint(attempt.endpoint, services, self.node_name, cluster)

    def authorize(self, route: Route, caller: SpiffeId | None) -> str:
        """The Service the connection is judged as, allowed (``Denied`` otherwise)."""
        assert self.mesh is not None
        port = route.endpoint.port
        service = pick_service(self.mesh.policy, caller, route.services, port)
        self.mesh.authorize_tcp(LISTENER, caller, service, port)
        return service

    async def carry(
        self,
        downstream: Stream,
        *,
        peeked: bytes,
        caller_ip: str,
        dst_ip: str,
        dst_port: int,
        sni: str | None,
    ) -> None:
        started = trio.current_time()
        fields: dict[str, object] = {"source": caller_ip, "dst": f"{dst_ip}:{dst_port}"}
        if sni:
            fields["sni"] = sni
        path, outcome, result = "-", "ok", Spliced()
        try:
            route = self.route(dst_ip, dst_port)
            path = route.path.value
            fields.update(upstream=route.destination, services=",".join(route.services))
            up, first = await self._open(route, caller_ip, fields)
            try:
                result = await splice(
                    downstream, up, a_pending=peeked, b_pending=first, idle=self.idle,
                    chunk=self.chunk,
                )  # fmt: skip
            finally:
                await close_stream(up)
            if result.idle_timeout:
                outcome = "idle_timeout"
            elif result.broken:
                outcome = "reset"
        except ProxyError as err:
            outcome = err.cause
            fields["error"] = str(err)
            _reset(downstream)
        finally:
            await close_stream(downstream)
            self._account(path, outcome, result, started, fields)

    async def _open(
        self, route: Route, caller_ip: str, fields: dict[str, object]
    ) -> tuple[Stream, bytes]:
        """The upstream stream for ``route`` and the bytes it already sent."""
        timeout = route.cluster.connect_timeout if route.cluster else PASSTHROUGH_CONNECT_TIMEOUT
        mesh = self.mesh
        if route.path is Path.PASSTHROUGH or mesh is None:
            return await connect_tcp(route.endpoint.host, route.endpoint.port, timeout), b""
        caller = mesh.sources.lookup(caller_ip)
        fields["caller"] = str(caller) if caller else None
        service = pick_service(mesh.policy, caller, route.services, route.endpoint.port)
        if route.path is Path.DIRECT or mesh.config.enforce_outbound:
            service = self.authorize(route, caller)
        if route.path is Path.DIRECT:
            return await connect_tcp(route.endpoint.host, route.endpoint.port, timeout), b""
        if caller is None:
            raise UnknownSource(f"no workload identity for source {caller_ip}")
        assert route.endpoint.node is not None
        peer = peer_for(mesh, route.endpoint.node, caller)
        fields["peer"] = peer.address
        tls, first = await open_tunnel(
            mesh, self.runtime.stats, peer, route.destination, service, timeout
        )
        return tls, first

    def _account(
        self,
        path: str,
        outcome: str,
        result: Spliced,
        started: float,
        fields: dict[str, object],
    ) -> None:
        stats = self.runtime.stats
        stats.inc(TCP_CONNECTIONS, labels(path=path, outcome=outcome))
        if result.a_to_b:
            stats.inc(TUNNEL_BYTES, labels(listener=LISTENER, direction="upstream"), result.a_to_b)
        if result.b_to_a:
            stats.inc(
                TUNNEL_BYTES, labels(listener=LISTENER, direction="downstream"), result.b_to_a
            )
        if self.log_lines or outcome != "ok":
            log.info(
                "tcp_connection",
                path=path,
                outcome=outcome,
                bytes_sent=result.a_to_b,
                bytes_received=result.b_to_a,
                duration_ms=round((trio.current_time() - started) * 1000, 3),
                **fields,
            )


async def connect_tcp(host: str, port: int, timeout: float) -> trio.SocketStream:
    stream: trio.SocketStream | None = None
    try:
        with trio.move_on_after(timeout):
            stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise UpstreamConnectFailure(f"{host}:{port}: {exc}") from exc
    if stream is None:
        raise UpstreamConnectTimeout(f"{host}:{port}: no answer in {timeout}s")
    return stream


async def close_stream(stream: Stream) -> None:
    errors = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
    with suppress(*errors), trio.CancelScope() as scope:
        scope.cancel()  # trio.aclose_forcefully, for any stream shape
        await stream.aclose()


def _reset(stream: Stream) -> None:
    """Make the coming close a reset: the client learns at once it was refused."""
    sock = getattr(stream, "socket", None)
    if sock is not None:
        with suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
