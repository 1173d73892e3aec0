"""The inbound mTLS listener: handshake, caller identity, then the plain HTTP loop.

Each accepted connection first completes a TLS handshake with the node's
current server context (``MeshCertificates.server_context()``, read once:
a rotation later does not touch this connection). The client must present a
certificate chaining to the mesh CA (TLS 1.2+, see ``tls/context.py``) whose
single URI SAN is a SPIFFE ID of this trust domain. The verified ID is put in
the connection's ``Downstream`` (``caller``, and ``peer_identity`` on every
access-log line of the connection); then the connection is served by the
ordinary ``ConnectionLoop`` with the listener's handler (the mesh inbound
listener's: ``mesh/inbound.py``'s ``InboundHandler``).

A failed handshake (plaintext, no certificate, another CA, expired, not yet
valid, no or foreign SPIFFE ID, too slow) ends the connection at once with
``trio.aclose_forcefully`` (trio does not flush our alert, and a peer
waiting for bytes that never come must not hold a slot), is logged
(``tls_handshake_failed`` with the reason and the source) and counted:
``nodeproxy_tls_handshake_failures_total{listener="inbound", reason}``.
Nothing reaches a pod without a handshake and an identity.

Connection slots: ``limits.max_downstream_connections`` and the eviction of
the oldest idle keep-alive at it apply here as on every listener, but not
``limits.max_connections_per_source``. The sources here are peer node
proxies: each carries every pod of its node and legitimately pools many
connections to us from one address, so a per-IP cap sized for one pod would
throttle a whole node. A stranger without a mesh certificate holds a slot
only for the handshake timeout.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import cast

import structlog
import trio

from nodeproxy.config.model import ListenerConfig
from nodeproxy.runtime import Runtime
from nodeproxy.server.connection import ConnectionLoop
from nodeproxy.server.handler import Handler
from nodeproxy.server.listener import Acceptor, serve_acceptor
from nodeproxy.tls.context import PeerIdentityError, peer_identity
from nodeproxy.tls.stream import TLSStream
from nodeproxy.upstream.peer import count_failure, count_handshake, handshake_failure_reason

log = structlog.get_logger("nodeproxy.tls")


class MtlsHandshake:
    """Serves an accepted connection of the mTLS port: handshake, check the caller's
    SPIFFE ID, then the connection loop (an ``Acceptor``'s ``handle``)."""

    def __init__(
        self,
        runtime: Runtime,
        listener: ListenerConfig,
        loop: ConnectionLoop,
        server_context: Callable[[], ssl.SSLContext],
        trust_domain: str,
    ) -> None:
        self.runtime = runtime
        self.loop = loop
        self.listener = listener.name
        self.server_context = server_context  # asked per connection: rotation takes effect
        self.trust_domain = trust_domain
        self.handshake_timeout = runtime.config.limits.header_read_timeout

    async def handle(self, stream: trio.SocketStream) -> None:
        tls = await self.handshake(stream)
        if tls is None:
            return
        with structlog.contextvars.bound_contextvars(peer_identity=str(tls.identity)):
            # TLSStream has SocketStream's surface (socket, send_all, receive_some...).
            await self.loop.serve(cast(trio.SocketStream, tls), tls.identity)

    async def handshake(self, tcp: trio.SocketStream) -> TLSStream | None:
        """The verified mTLS stream, or None after counting and logging the failure."""
        tls = trio.SSLStream(tcp, self.server_context(), server_side=True)
        reason, detail = "timeout", f"no handshake in {self.handshake_timeout}s"
        with trio.move_on_after(self.handshake_timeout):
            try:
                await tls.do_handshake()
                identity = peer_identity(tls, trust_domain=self.trust_domain)
                count_handshake(self.runtime.stats, self.listener)
                return TLSStream(tls, identity)
            except trio.BrokenResourceError as exc:
                reason, detail = handshake_failure_reason(exc.__cause__), repr(exc.__cause__)
            except PeerIdentityError as exc:
                reason, detail = "peer_identity", str(exc)
        try:
            source = "{}:{}".format(*tcp.socket.getpeername()[:2])
        except OSError:
            source = "?"
        await trio.aclose_forcefully(tcp)
        count_failure(self.runtime.stats, self.listener, reason)
        log.warning(
            "tls_handshake_failed",
            listener=self.listener,
            source=source,
            reason=reason,
            detail=detail,
        )
        return None


async def serve_inbound(
    runtime: Runtime,
    listener: ListenerConfig,
    handler: Handler,
    *,
    server_context: Callable[[], ssl.SSLContext],
    trust_domain: str,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an mTLS listener (callers with a SPIFFE ID of ``trust_domain`` only) with
    ``handler`` until drain completes; started(bound_port)."""
    loop = ConnectionLoop(runtime, handler, listener.name)
    mtls = MtlsHandshake(runtime, listener, loop, server_context, trust_domain)
    # No per-source cap: a source is a whole node's proxy (module docstring).
    acceptor = Acceptor(runtime, listener, loop, handle=mtls.handle, per_source_cap=False)
    await serve_acceptor(runtime, listener, acceptor, task_status)
