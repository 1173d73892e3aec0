"""A two-node mesh on loopback with TCP echo "pods", for nodeproxy.tunnel.

Two real proxies (``run_app``, real mTLS from a CA made in a temp dir):
node-a runs ``echo-local`` (and the callers), node-b runs ``echo-remote``
(ClusterIP ``10.96.0.10:6379``) and ``secret``. Callers are told apart by
source address as in ``helpers/mesh.py``: 127.0.0.2 is ``shop/webserver``,
127.0.0.3 ``shop/reporting``. Policy: webserver may open TCP connections to
``echo-local`` and ``echo-remote``; everything else is denied by default.

Interception (nftables + SO_ORIGINAL_DST) is another module's job; here a
test listener stands in for it: ``intercepted(node, dst)`` is a port whose
every connection is handed to ``carry_tcp`` as if it had been addressed to
``dst``.

Each echo pod sends back every byte it reads, and after the client's EOF one
last line, ``bye <n>`` (n = bytes it got), then closes: a client that
half-closes and still gets ``bye`` proves half-close went through.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from nodeproxy.app import AppHandle
from nodeproxy.tls.ca import CertificateAuthority, init_ca
from nodeproxy.tunnel import carry_tcp
from tests.helpers.mesh import REPORTING_IP, WEB_IP, start_node

VIP = ("10.96.0.10", 6379)

CONFIG = """
node_name: {node}
listeners: [{{address: "127.0.0.1:0"}}]
admin: {{address: "127.0.0.1:0"}}
limits: {{tcp_idle_timeout: {idle}}}
services:
  - name: echo-local
    namespace: shop
    endpoints: [{{address: "127.0.0.1:{local}", node: node-a}}]
  - name: echo-remote
    namespace: shop
    cluster_ip: "{vip}"
    endpoints: [{{address: "127.0.0.1:{remote}", node: node-b}}]
  - name: secret
    namespace: shop
    endpoints: [{{address: "127.0.0.1:{secret}", node: node-b}}]
mesh:
  ca_dir: {ca_dir}
  inbound: "127.0.0.1:0"
  nodes:
    node-a: "127.0.0.1:{a_inbound}"
    node-b: "127.0.0.1:{b_inbound}"
  workloads:
    - {{source: {web_ip}, namespace: shop, service_account: webserver, node: node-a}}
    - {{source: {reporting_ip}, namespace: shop, service_account: reporting, node: node-a}}
  policy:
    default_action: deny
    rules:
      - name: webserver-tcp
        action: allow
        from: ["spiffe://cluster.local/ns/shop/sa/webserver"]
        to: ["echo-local.shop", "echo-remote.shop"]
"""


@dataclass
class Echo:
    """A TCP echo pod: echoes, then ``bye <n>`` after the client's EOF."""

    port: int = 0
    connections: int = 0
    received: list[bytes] = field(default_factory=list)

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        got = bytearray()
        try:
            while data := await stream.receive_some(65536):
                got += data
                await stream.send_all(data)
            await stream.send_all(f"bye {len(got)}\n".encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.received.append(bytes(got))
            await stream.aclose()


@dataclass
class TcpMesh:
    ca: CertificateAuthority
    a: AppHandle
    b: AppHandle
    local: Echo
    remote: Echo
    secret: Echo
    nursery: trio.Nursery

    async def intercepted(self, handle: AppHandle, dst: tuple[str, int]) -> int:
        """A port on 127.0.0.1 whose connections ``carry_tcp`` takes as addressed to ``dst``."""

        async def carry(stream: trio.SocketStream) -> None:
            caller_ip = stream.socket.getpeername()[0]
            await carry_tcp(
                handle.runtime,
                stream,
                peeked=b"",
                caller_ip=caller_ip,
                dst_ip=dst[0],
                dst_port=dst[1],
                sni=None,
            )

        listeners = await self.nursery.start(partial(trio.serve_tcp, carry, 0, host="127.0.0.1"))
        return int(listeners[0].socket.getsockname()[1])


async def _serve(nursery: trio.Nursery, echo: Echo) -> None:
    listeners = await nursery.start(partial(trio.serve_tcp, echo.handle, 0, host="127.0.0.1"))
    echo.port = listeners[0].socket.getsockname()[1]


@asynccontextmanager
async def tcp_mesh(tmp_path: Path, *, idle: str = "300s") -> AsyncIterator[TcpMesh]:
    ca_dir = tmp_path / "mesh-ca"
    ca = init_ca(ca_dir)
    local, remote, secret = Echo(), Echo(), Echo()
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        for echo in (local, remote, secret):
            await _serve(nursery, echo)
        fields = dict(
            local=local.port,
            remote=remote.port,
            secret=secret.port,
            vip=f"{VIP[0]}:{VIP[1]}",
            ca_dir=ca_dir,
            web_ip=WEB_IP,
            reporting_ip=REPORTING_IP,
            idle=idle,
        )
        b = await start_node(
            nursery, CONFIG.format(node="node-b", a_inbound=1, b_inbound=1, **fields)
        )
        b_inbound = b.listener_ports["inbound"]
        a = await start_node(
            nursery, CONFIG.format(node="node-a", a_inbound=1, b_inbound=b_inbound, **fields)
        )
        try:
            yield TcpMesh(ca, a, b, local, remote, secret, nursery)
        finally:
            for handle in (a, b):
                handle.runtime.drain.start("test over")
            nursery.cancel_scope.cancel()


async def exchange(port: int, source_ip: str, payload: bytes, *, half_close: bool = True) -> bytes:
    """Connect from ``source_ip``, send ``payload``, half-close, read to EOF (b"" if reset)."""
    sock = trio.socket.socket()
    await sock.bind((source_ip, 0))
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    out = bytearray()
    with trio.fail_after(10):
        try:
            await stream.send_all(payload)
            if half_close:
                await stream.send_eof()
            while data := await stream.receive_some(65536):
                out += data
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()
    return bytes(out)
