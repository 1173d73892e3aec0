"""The destination node's side of a tunnel: ``CONNECT pod-ip:port`` on the inbound port.

The mTLS handshake already proved who calls (the client certificate is the
calling workload's, ``server/inbound.py``); the connection loop parsed the
``CONNECT`` head with h11 (the inbound codec allows it). Then, in order:

    target        ``pod-ip:port`` (authority form; 400 ``missing_destination`` if not)
    local pod?    a pod of THIS node in the current snapshot, else 421
                  ``not_local_destination``: the inbound port is no open relay
    policy        TCP rules for (caller, service, pod port), for the Service the
                  source named in ``x-nodeproxy-service``, else allowed when one of
                  the Services that pod port backs allows it (the bytes reach the
                  same socket either way); 403 ``denied`` with the rule in the log
    connect       plain TCP to the pod (503 ``connection_failure`` / ``connect_timeout``)
    200           then raw bytes both ways (``splice.py``): what the client sent
                  after the head before our answer (h11's ``trailing_data``) goes
                  first; half-close passes through; idle past
                  ``limits.tcp_idle_timeout`` closes; a tunnel the source
                  marked ``x-nodeproxy-tunnel: http`` (one pooled HTTP/1.1
                  connection) also closes between exchanges once a drain starts

Every refusal is the connection loop's ordinary error answer (status,
``x-nodeproxy-error``), and the tunnel is one access line (method CONNECT,
status 200, bytes both ways) when it ends. The pod sees a TCP connection
from this node; who called is in the access line, not in the bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from nodeproxy.config.model import ClusterConfig
from nodeproxy.discovery.snapshot import Endpoint
from nodeproxy.errors import BadRequest, NotLocalDestination
from nodeproxy.http1.impl import h11
from nodeproxy.mesh.state import DEFAULT_RULE, SERVICE_HEADER, Mesh, service_of
from nodeproxy.policy.model import Denied
from nodeproxy.runtime import DrainState
from nodeproxy.server.downstream import Downstream, Exchange
from nodeproxy.stats.names import TUNNEL_BYTES
from nodeproxy.stats.registry import labels
from nodeproxy.tls.identity import SpiffeId
from nodeproxy.tunnel.carry import close_stream, connect_tcp
from nodeproxy.tunnel.resolve import pick_service
from nodeproxy.tunnel.splice import Stream, splice
from nodeproxy.tunnel.wire import TUNNEL_HEADER, authority, parse_authority

LISTENER = "inbound"
_Local = Mapping[str, tuple[tuple[ClusterConfig, Endpoint], ...]]


def carries_http(request: h11.Request) -> bool:
    """The source says the tunnel carries one HTTP/1.1 connection of its pool."""
    return any(n == TUNNEL_HEADER and v == b"http" for n, v in request.headers)


def connect_target(
    local: _Local, request: h11.Request
) -> tuple[ClusterConfig, Endpoint, tuple[str, ...]]:
    """(cluster, pod endpoint, services to authorize) for a CONNECT, or raise."""
    host, port = parse_authority(request.target)
    destination = authority(host, port)
    candidates = local.get(destination, ())
    if not candidates:
        raise NotLocalDestination(f"{destination} is not a pod of this node")
    named = None
    for name, value in request.headers:
        if name == SERVICE_HEADER:
            named = value.decode("latin-1").strip().lower()
    if named is not None:
        for cluster, endpoint in candidates:
            if service_of(cluster) == named:
                return cluster, endpoint, (named,)
        raise NotLocalDestination(f"{destination} is not a pod of service {named}")
    cluster, endpoint = candidates[0]
    return cluster, endpoint, tuple(sorted({service_of(c) for c, _ in candidates}))


def authorize(mesh: Mesh, caller: SpiffeId | None, services: tuple[str, ...], port: int) -> str:
    """The Service the tunnel is judged as (``resolve.pick_service``), allowed, or raise."""
    service = pick_service(mesh.policy, caller, services, port)
    mesh.authorize_tcp(LISTENER, caller, service, port)
    return service


async def serve_connect(
    down: Downstream,
    request: h11.Request,
    ex: Exchange,
    *,
    local: _Local,
    mesh: Mesh,
    caller: SpiffeId | None,
    drain: DrainState,
) -> bool:
    """Authorize, connect to the pod, answer 200, splice; False (the connection ends)."""
    ex.authority = ex.path = request.target.decode("latin-1")
    cluster, endpoint, services = connect_target(local, request)
    ex.cluster, ex.upstream = cluster.name, endpoint.address
    try:
        service = authorize(mesh, caller, services, endpoint.port)
    except Denied as exc:
        ex.policy_rule = exc.rule or DEFAULT_RULE
        raise
    ex.policy_rule = mesh.policy.decide_tcp(caller, service, endpoint.port).rule or DEFAULT_RULE
    codec = down.codec
    event = codec.next_event()  # a CONNECT has no body: its end is already parsed
    if type(event) is not h11.EndOfMessage:
        raise BadRequest("a CONNECT request carries no body")
    pod = await connect_tcp(endpoint.host, endpoint.port, cluster.connect_timeout)
    try:
        ok = h11.Response(status_code=200, headers=[], reason=b"Connection Established")
        ex.status = 200
        ex.response_started = True
        await down.send(codec.send(ok))
        pending = codec.trailing_data()
        tls = cast(Stream, down.stream)  # a TLSStream: half_close is TLS's close_notify
        result = await splice(
            tls,
            pod,
            a_pending=pending,
            idle=down.limits.tcp_idle_timeout,
            chunk=down.chunk,
            drain=drain.started if carries_http(request) else None,
        )
    finally:
        await close_stream(pod)
    down.bytes_in += result.a_to_b
    down.bytes_out += result.b_to_a
    stats = mesh.stats
    stats.inc(TUNNEL_BYTES, labels(listener=LISTENER, direction="upstream"), result.a_to_b)
    stats.inc(TUNNEL_BYTES, labels(listener=LISTENER, direction="downstream"), result.b_to_a)
    if result.idle_timeout:
        ex.cause = "tcp_idle_timeout"
    return False
