"""The transparent listener: where the node's rules (rules.py) redirect pod traffic.

For each connection: read the destination the pod dialled (``SO_ORIGINAL_DST``:
the redirect rewrote it to us) and the caller's pod IP (the source: redirect
keeps it), then read the first bytes for at most ``intercept.detect_timeout``
and classify them (detect.py):

- HTTP/1.x to a destination discovery knows (resolve.py: a Service's
  ClusterIP:port, or a pod backing one) -> the ordinary HTTP path
  (``ConnectionLoop``/``Pipeline``, the bytes already read handed to its
  codec), routed on the original destination, never on ``Host``: policy,
  balancing, breakers, retries and node-to-node mTLS as for a proxy client.
- Everything else (TLS, with its SNI; other protocols; nothing within the
  deadline, as a server-first protocol sends nothing) and HTTP to a
  destination discovery does not know -> the TCP path (``TcpCarrier``;
  app.py passes ``nodeproxy.tunnel.carry_tcp``): the bytes carried unchanged,
  over an mTLS tunnel when the destination is another node's pod.

A connection that was not redirected (someone dialled the port itself) has no
original destination: it is closed at once, never proxied to ourselves.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import structlog
import trio

from nodeproxy.config.discovery import KUBERNETES_VHOST
from nodeproxy.config.model import InterceptConfig, ListenerConfig
from nodeproxy.intercept.detect import MAX_PEEK, Detected, Protocol, classify
from nodeproxy.intercept.resolve import Resolver
from nodeproxy.pipeline import Pipeline
from nodeproxy.runtime import Runtime
from nodeproxy.server.connection import ConnectionLoop
from nodeproxy.server.downstream import Downstream
from nodeproxy.server.listener import Acceptor, serve_acceptor
from nodeproxy.stats.names import INTERCEPTED
from nodeproxy.stats.registry import labels
from nodeproxy.upstream.pool import Upstreams

LISTENER = "intercept"
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h: the destination before NAT (IPv4)

log = structlog.get_logger("nodeproxy.intercept")


@dataclass(frozen=True)
class Intercepted:
    """One redirected connection, as the TCP path needs it."""

    caller_ip: str  # the pod that connected
    dst_ip: str  # what it dialled
    dst_port: int
    peeked: bytes  # bytes detection read: they go first
    sni: str | None  # a TLS ClientHello's server_name


TcpCarrier = Callable[[trio.SocketStream, Intercepted], Awaitable[None]]


def original_dst(sock: trio.socket.SocketType) -> tuple[str, int]:
    """The IPv4 destination the client dialled before the redirect; OSError if none."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)  # a struct sockaddr_in
    (port,) = struct.unpack_from("!H", raw, 2)
    return socket.inet_ntoa(raw[4:8]), port


async def peek(stream: trio.SocketStream, timeout: float) -> tuple[bytes, Detected]:
    """Read until the first bytes decide (``classify``), the deadline passes, or EOF."""
    data = b""
    with trio.move_on_after(timeout):
        while (verdict := classify(data)) is None and len(data) < MAX_PEEK:
            chunk = await stream.receive_some(MAX_PEEK - len(data))
            if not chunk:
                break
            data += chunk
        else:
            if verdict is not None:
                return data, verdict
    final = classify(data, final=True)
    assert final is not None
    return data, final


def listener_config(
    config_listeners: tuple[ListenerConfig, ...], ic: InterceptConfig
) -> ListenerConfig:
    """The HTTP path's listener settings: the first listener's routes (the services and the
    Kubernetes catch-all), under the name ``intercept``."""
    if config_listeners:
        return replace(config_listeners[0], name=LISTENER, host=ic.host, port=ic.port)
    return ListenerConfig(
        name=LISTENER, host=ic.host, port=ic.port, virtual_hosts=(KUBERNETES_VHOST,)
    )


class InterceptHandler:
    """Sends each redirected connection down the HTTP or the TCP path (an ``Acceptor``'s
    ``handle``)."""

    def __init__(
        self,
        runtime: Runtime,
        loop: ConnectionLoop,
        detect_timeout: float,
        carry_tcp: TcpCarrier,
    ) -> None:
        self.runtime = runtime
        self.loop = loop
        self.detect_timeout = detect_timeout
        self.carry_tcp = carry_tcp
        self.resolver = Resolver()
        self.counted = {
            (p, path): labels(protocol=p.value, path=path)
            for p in Protocol
            for path in ("http", "tcp")
        }

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            await self._handle(stream)
        finally:
            stream.socket.close()  # the HTTP path closed it already; the TCP path may not have

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            dst_ip, dst_port = original_dst(stream.socket)
            caller_ip = str(stream.socket.getpeername()[0])
            here = stream.socket.getsockname()
        except OSError as exc:  # no conntrack entry (ENOENT), or already reset
            log.info("intercept_not_redirected", error=str(exc))
            return
        if (dst_ip, dst_port) == (here[0], here[1]):  # dialled us directly: nothing to carry
            log.info("intercept_not_redirected", caller=caller_ip, dst=f"{dst_ip}:{dst_port}")
            return
        try:
            peeked, detected = await peek(stream, self.detect_timeout)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if detected.protocol is Protocol.HTTP1:
            dest = self.resolver.resolve(self.runtime.endpoints.current(), dst_ip, dst_port)
            if dest is not None:
                self.runtime.stats.inc(INTERCEPTED, self.counted[(detected.protocol, "http")])

                def setup(down: Downstream) -> None:
                    down.prime(peeked)
                    down.route_authority, down.pin = dest.authority, dest.pin

                await self.loop.serve(stream, setup=setup)
                return
        self.runtime.stats.inc(INTERCEPTED, self.counted[(detected.protocol, "tcp")])
        conn = Intercepted(caller_ip, dst_ip, dst_port, peeked, detected.sni)
        try:  # the TCP path writes the connection's line (tcp_connection, with the SNI)
            await self.carry_tcp(stream, conn)
        except Exception:  # one broken connection must not stop the listener
            log.exception("intercept_tcp_failed", caller=caller_ip, dst=f"{dst_ip}:{dst_port}")


async def serve_intercept(
    runtime: Runtime,
    upstreams: Upstreams,
    carry_tcp: TcpCarrier,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the transparent listener until drained; ``task_status.started(bound_port)``."""
    config = runtime.config
    ic = config.intercept
    assert ic is not None
    lc = listener_config(config.listeners, ic)
    loop = ConnectionLoop(runtime, Pipeline(runtime, lc, upstreams), LISTENER)
    handler = InterceptHandler(runtime, loop, ic.detect_timeout, carry_tcp)
    acceptor = Acceptor(runtime, lc, loop, handle=handler.handle)
    await serve_acceptor(runtime, lc, acceptor, task_status)
