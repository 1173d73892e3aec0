"""The TCP path of intercepted connections when no tunnel carries them: same node only.

Used until ``nodeproxy.tunnel`` provides ``carry_tcp`` (node-to-node mTLS
CONNECT tunnels with TCP policy). Here a connection is carried only to a pod
of this node: the destination (a ClusterIP resolved to an endpoint through
discovery, or a pod IP as dialled) must be local, the mesh policy must allow
the caller (its pod identity) to reach the Service, and the bytes are then
spliced in plaintext on the node, as the HTTP path does for a local pod.
Anything else is closed: never carried across nodes in the clear.
"""

from __future__ import annotations

from contextlib import suppress

import structlog
import trio

from nodeproxy.discovery.snapshot import Endpoint
from nodeproxy.intercept.listener import LISTENER, Intercepted
from nodeproxy.intercept.resolve import Resolver
from nodeproxy.mesh.state import service_of
from nodeproxy.policy.model import Denied
from nodeproxy.runtime import Runtime
from nodeproxy.server.downstream import Exchange

log = structlog.get_logger("nodeproxy.intercept")
CHUNK = 64 * 1024


class LocalSplice:
    """A ``TcpCarrier``: direct splice to a pod of this node, after policy."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime  # its mesh (runtime.mesh) decides locality and policy
        self.resolver = Resolver()

    def __repr__(self) -> str:
        return f"<LocalSplice {self.resolver!r}>"

    def target(self, conn: Intercepted) -> tuple[str, int] | None:
        """Where to connect on this node, or None (not local, or refused by policy)."""
        snapshot, mesh = self.runtime.endpoints.current(), self.runtime.mesh
        dest = self.resolver.resolve(snapshot, conn.dst_ip, conn.dst_port)
        if dest is None:
            return None
        endpoints = snapshot.endpoints(dest.cluster)
        picked: Endpoint | None = None
        for ep in endpoints:
            if (dest.pin is None or ep.address == dest.pin) and (
                mesh is None or ep.node is None or mesh.is_local(ep)
            ):
                picked = ep
                break
        if picked is None:
            return None
        if mesh is not None:
            cluster = self.runtime.config.clusters.get(dest.cluster)
            if cluster is None:
                return None
            ex = Exchange(listener=LISTENER, source=conn.caller_ip, started=0.0, method="CONNECT")
            try:
                mesh.authorize(
                    LISTENER, mesh.sources.lookup(conn.caller_ip), service_of(cluster), ex
                )
            except Denied:
                return None
        return picked.host, picked.port

    async def __call__(self, stream: trio.SocketStream, conn: Intercepted) -> None:
        where = self.target(conn)
        if where is None:
            log.info("intercept_tcp_refused", caller=conn.caller_ip,
                     dst=f"{conn.dst_ip}:{conn.dst_port}", sni=conn.sni)  # fmt: skip
            return
        try:
            with trio.fail_after(self.runtime.config.limits.header_read_timeout):
                upstream = await trio.open_tcp_stream(*where)
        except (OSError, trio.TooSlowError) as exc:
            log.info("intercept_tcp_connect_failed", dst=f"{where[0]}:{where[1]}", error=str(exc))
            return
        async with upstream, trio.open_nursery() as nursery:
            nursery.start_soon(_pipe, stream, upstream, conn.peeked, nursery)
            nursery.start_soon(_pipe, upstream, stream, b"", nursery)


async def _pipe(
    src: trio.SocketStream, dst: trio.SocketStream, pending: bytes, nursery: trio.Nursery
) -> None:
    """Copy src -> dst, half-closing dst at EOF; a broken socket ends both directions."""
    try:
        data = pending
        while True:
            if data:
                await dst.send_all(data)
            data = await src.receive_some(CHUNK)
            if not data:
                break
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await dst.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        nursery.cancel_scope.cancel()
