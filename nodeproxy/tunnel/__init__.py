"""TCP through the mesh: same node -> direct with TCP policy; other node -> mTLS tunnel.

The one call for a listener that accepted an intercepted connection::

    from nodeproxy.tunnel import carry_tcp

    await carry_tcp(
        runtime,                 # nodeproxy.runtime.Runtime (app.py sets runtime.tunnels)
        downstream,              # the accepted trio stream (trio.SocketStream)
        peeked=b"...",           # bytes already read during protocol detection: sent first
        caller_ip="10.0.0.12",   # the calling pod's address: its workload identity
        dst_ip="10.96.0.10",     # the original destination (SO_ORIGINAL_DST): a pod IP
        dst_port=5432,           #   or a Service ClusterIP (then the balancer picks a pod)
        sni=None,                # the TLS ClientHello's server name, if detected (logged)
    )

It returns when the connection is over and has closed ``downstream`` (always,
also on refusal or error: it never raises for a per-connection failure;
cancellation propagates). Where the bytes go:

- a pod of **this node** (or a ClusterIP whose pick is one): the TCP policy
  (caller identity -> service and pod port, first match, the policy's default
  otherwise; docs/security.md) is checked here, then a plain TCP connection
  to the pod, spliced with half-close and ``limits.tcp_idle_timeout`` (1 h);
- a pod of **another node**: an mTLS connection to that node's inbound port
  presenting the caller's workload certificate, ``CONNECT pod-ip:port
  HTTP/1.1`` (h11), then raw bytes; that node checks identity and policy and
  splices to the pod (``inbound.py``); a caller with no identity is refused;
- anything else (not a known pod or ClusterIP, or an endpoint outside the
  mesh): connected as addressed, no policy.

A refusal (policy, unknown source, connect failure) resets the downstream
connection; the cause is logged (``tcp_connection``) and counted
(``nodeproxy_tcp_connections_total{path, outcome}``).

Modules: ``resolve`` (pure: where a connection goes), ``wire`` (sans-I/O
CONNECT request/answer), ``client`` (mTLS + CONNECT to a peer), ``splice``
(bytes both ways, half-close), ``carry`` (the per-connection shell),
``inbound`` (the destination node's CONNECT handler). HTTP requests to
another node's pod use the same tunnels when the destination's policy has
no HTTP rules (``mesh/outbound.py``, ``upstream/peer.py``'s ``TunnelEndpoint``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nodeproxy.tunnel.carry import Tunnels
from nodeproxy.tunnel.splice import Stream

if TYPE_CHECKING:
    from nodeproxy.runtime import Runtime

__all__ = ["Tunnels", "carry_tcp"]


async def carry_tcp(
    runtime: Runtime | Tunnels,
    downstream: Stream,
    *,
    peeked: bytes,
    caller_ip: str,
    dst_ip: str,
    dst_port: int,
    sni: str | None,
) -> None:
    """Carry one intercepted TCP connection to its destination (see the module docstring)."""
    # A runtime the app did not start has no ``tunnels``: carry without a mesh.
    tunnels = (
        runtime if isinstance(runtime, Tunnels) else (runtime.tunnels or Tunnels(runtime, None))
    )
    await tunnels.carry(
        downstream, peeked=peeked, caller_ip=caller_ip, dst_ip=dst_ip, dst_port=dst_port, sni=sni
    )
