"""The source side of a tunnel: mTLS to a peer node's inbound port, then CONNECT.

``open_tunnel`` connects to the node that runs the destination pod, does the
TLS handshake presenting the *calling workload's* certificate, checks the
server is exactly that node (``upstream/peer.py``), sends ``CONNECT
pod-ip:port`` and waits for the answer (``wire.ConnectHandshake``), all
within ``timeout``. It returns the stream, now a byte pipe to the pod, and
whatever the pod sent right after the ``200``. Every failure is a typed
``ProxyError`` (503 for connect/TLS, the peer's own refusal otherwise).

Used for intercepted TCP (``carry.py``: one tunnel per connection) and for
HTTP through a tunnel (``upstream/pool.py``: one tunnel per pooled HTTP/1.1
connection to one pod, keyed by caller identity and pod).
"""

from __future__ import annotations

import trio

from nodeproxy.errors import PeerTLSFailure, UpstreamConnectFailure, UpstreamConnectTimeout
from nodeproxy.mesh.state import Mesh
from nodeproxy.stats.registry import Stats
from nodeproxy.tls.identity import SpiffeId
from nodeproxy.tls.stream import TLSStream
from nodeproxy.tunnel.wire import MAX_HEAD, ConnectHandshake
from nodeproxy.upstream.peer import PeerEndpoint, open_peer_stream


def peer_for(mesh: Mesh, node: str, caller: SpiffeId) -> PeerEndpoint:
    """The inbound listener of ``node``, reached as ``caller`` (503 if unknown)."""
    address = mesh.nodes.get(node)
    if address is None:
        raise UpstreamConnectFailure(f"no inbound address for node {node!r}")
    return PeerEndpoint(
        host=address[0],
        port=address[1],
        node=node,
        identity=caller,
        trust_domain=mesh.config.trust_domain,
    )


async def handshake(
    tls: TLSStream, destination: str, service: str | None, timeout: float, *, http: bool = False
) -> bytes:
    """CONNECT over a handshaken peer stream; the bytes that followed the 200."""
    shake = ConnectHandshake(destination)
    with trio.move_on_after(timeout):
        try:
            await tls.send_all(shake.request(service, http=http))
            while True:
                data = await tls.receive_some(MAX_HEAD)
                result = shake.receive(bytes(data))
                if result is not None:
                    return result
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise UpstreamConnectFailure(f"{destination}: tunnel broke: {exc!r}") from exc
    raise UpstreamConnectTimeout(f"{destination}: no answer to CONNECT in {timeout}s")


async def open_tunnel(
    mesh: Mesh,
    stats: Stats,
    peer: PeerEndpoint,
    destination: str,
    service: str | None,
    timeout: float,
) -> tuple[TLSStream, bytes]:
    """(the tunnel to ``destination`` through ``peer``, the pod's first bytes)."""
    assert peer.identity is not None
    ctx = mesh.certs.client_context(peer.identity)
    if ctx is None:
        raise PeerTLSFailure(f"this node holds no certificate for {peer.identity}")
    tcp: trio.SocketStream | None = None
    try:
        with trio.move_on_after(timeout):
            tcp = await trio.open_tcp_stream(peer.host, peer.port)
    except OSError as exc:
        raise UpstreamConnectFailure(f"{peer.address}: {exc}") from exc
    if tcp is None:
        raise UpstreamConnectTimeout(f"{peer.address}: no answer in {timeout}s")
    tls = await open_peer_stream(tcp, ctx, peer, timeout, stats)
    try:
        first = await handshake(tls, destination, service, timeout)
    except BaseException:
        await trio.aclose_forcefully(tls.tls.transport_stream)
        raise
    return tls, first
