"""The outbound listener's mesh step: direct to a local pod, or mTLS to its node.

Runs after the balancer picked an endpoint, synchronously (no I/O):

- Every plaintext request first loses the headers only a node proxy may
  set (``x-nodeproxy-*``, ``x-forwarded-client-cert``): an app cannot name
  a destination pod, a service or a caller identity for the next hop; the
  normal routing above decides where the request goes.
- An endpoint without ``node`` is outside the mesh: reached directly, no
  policy (e.g. a database outside the cluster).
- A pod of *this* node is reached directly, in plaintext. No inbound
  listener will see that request, so the policy is checked here, always,
  with the caller's identity from its source address.
- A pod of another node: the caller needs a workload identity (its source
  address, or the configured default; otherwise 403 ``unknown_source``).
  The request goes to that node's inbound listener (``PeerEndpoint``, pooled
  per (peer, identity)) with ``x-nodeproxy-destination: <pod host:port>`` and
  ``x-nodeproxy-service: <svc.ns>``. The peer enforces the policy; with
  ``mesh.enforce_outbound`` it is also checked here, before any connection,
  with the same answer.
- Unless the destination's policy has HTTP rules (methods, paths) or
  ``mesh.http_tunnel: off``: the same pod is reached through a CONNECT
  tunnel instead (``TunnelEndpoint``, pooled per (peer, pod, identity)). The
  peer checks the caller against the TCP policy once per tunnel (which
  decides exactly as the HTTP policy would, having no HTTP rules to apply)
  and then only splices bytes: it parses no request. The request goes as
  the app sent it, plus ``x-forwarded-client-cert`` (``By=`` the peer node,
  ``URI=`` the caller), the header the peer would otherwise have added.
"""

from __future__ import annotations

from nodeproxy.errors import UnknownSource, UpstreamConnectFailure
from nodeproxy.http1.codec import request_event
from nodeproxy.http1.impl import h11
from nodeproxy.mesh.state import (
    DESTINATION_HEADER,
    SERVICE_HEADER,
    XFCC_HEADER,
    Mesh,
    is_mesh_header,
    service_of,
)
from nodeproxy.server.downstream import Exchange
from nodeproxy.tls.identity import SpiffeId
from nodeproxy.upstream.peer import PeerEndpoint, TunnelEndpoint
from nodeproxy.upstream.pool import Target

LISTENER = "outbound"


def strip_mesh_headers(request: h11.Request) -> h11.Request:
    """``request`` without headers only a node proxy may set (the same object if none)."""
    for name, _ in request.headers:
        if is_mesh_header(name):
            break
    else:
        return request
    headers = [(n, v) for n, v in request.headers if not is_mesh_header(n)]
    return request_event(request.method, request.target, headers)


def mesh_step(
    mesh: Mesh, client_ip: str, request: h11.Request, ex: Exchange, target: Target
) -> tuple[Target, h11.Request]:
    """Where ``target`` is really reached from here, and the request to send there."""
    endpoint = target.endpoint
    if endpoint.node is None:
        return target, request
    caller = ex.caller = mesh.sources.lookup(client_ip)
    local = mesh.is_local(endpoint)
    service = service_of(target.cluster)
    if local or mesh.config.enforce_outbound:
        mesh.authorize(LISTENER, caller, service, ex, endpoint.port)
    if local:
        return target, request
    if caller is None:
        raise UnknownSource(f"no workload identity for source {client_ip}")
    address = mesh.nodes.get(endpoint.node)
    if address is None:
        raise UpstreamConnectFailure(f"no inbound address for node {endpoint.node!r}")
    if mesh.config.http_tunnel == "auto" and not mesh.policy.has_http_rules(service):
        tunnel, xfcc = _tunnel(mesh, endpoint.node, address, caller, endpoint.address, service)
        headers = list(request.headers)
        headers.append((XFCC_HEADER, xfcc))
        hop = request_event(request.method, request.target, headers)
        return Target(target.cluster, tunnel, target.timeout), hop
    peer = PeerEndpoint(
        host=address[0],
        port=address[1],
        node=endpoint.node,
        identity=caller,
        trust_domain=mesh.config.trust_domain,
    )
    headers = list(request.headers)
    headers.append((DESTINATION_HEADER, endpoint.address.encode()))
    headers.append((SERVICE_HEADER, service.encode()))
    hop = request_event(request.method, request.target, headers)
    return Target(target.cluster, peer, target.timeout), hop


_TUNNELS_MAX = 4096  # (peer, caller, pod, service) entries kept; cleared whole past it


def _tunnel(
    mesh: Mesh,
    node: str,
    address: tuple[str, int],
    caller: SpiffeId,
    destination: str,
    service: str,
) -> tuple[TunnelEndpoint, bytes]:
    """The pooled tunnel's endpoint and the request's ``x-forwarded-client-cert``, made
    once per (peer, caller, pod, service) rather than per request."""
    key = (node, address, caller, destination, service)
    found = mesh.tunnels.get(key)
    if found is None:
        if len(mesh.tunnels) >= _TUNNELS_MAX:
            mesh.tunnels.clear()
        tunnel = TunnelEndpoint(
            host=address[0],
            port=address[1],
            node=node,
            identity=caller,
            trust_domain=mesh.config.trust_domain,
            destination=destination,
            service=service,
        )
        xfcc = f"By={tunnel.expected_server};URI={caller}".encode()
        found = mesh.tunnels[key] = (tunnel, xfcc)
    return found
