"""The destination node's CONNECT handler, with raw TLS clients (tunnel/inbound.py).

A client with a workload certificate talks to node-b's inbound mTLS port
directly, byte by byte, as a source node would.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from nodeproxy.tls.ca import issue_workload_cert, utc_now
from nodeproxy.tls.context import client_context
from nodeproxy.tls.identity import SpiffeId
from nodeproxy.tls.stream import TLSStream
from tests.helpers.mesh import REPORTING, WEB
from tests.helpers.tcp_mesh import TcpMesh, tcp_mesh

NODE_B = SpiffeId.node("node-b")


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[TcpMesh]:
    async with tcp_mesh(tmp_path) as m:
        yield m


def ctx_for(mesh: TcpMesh, who: SpiffeId) -> ssl.SSLContext:
    cert, key = issue_workload_cert(mesh.ca, who, now=utc_now())
    return client_context(cert, key, mesh.ca.cert_pem)


async def open_tls(mesh: TcpMesh, who: SpiffeId = WEB) -> TLSStream:
    tcp = await trio.open_tcp_stream("127.0.0.1", mesh.b.listener_ports["inbound"])
    tls = trio.SSLStream(tcp, ctx_for(mesh, who))
    await tls.do_handshake()
    return TLSStream(tls, NODE_B)


async def read_to_eof(stream: TLSStream) -> bytes:
    out = bytearray()
    with trio.fail_after(10):
        try:
            while data := await stream.receive_some(65536):
                out += data
        except trio.BrokenResourceError:
            pass
    return bytes(out)


def connect(target: str, extra: str = "") -> bytes:
    return f"CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n{extra}\r\n".encode()


async def test_bytes_pipelined_after_connect_are_carried_and_half_close_passes(
    mesh: TcpMesh,
) -> None:
    tls = await open_tls(mesh)
    # head and the first tunnel bytes in one write, before any answer
    await tls.send_all(connect(f"127.0.0.1:{mesh.remote.port}") + b"early bytes|")
    await tls.send_all(b"later")
    await tls.half_close()  # close_notify: end of our direction only
    reply = await read_to_eof(tls)
    await tls.aclose()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == b"early bytes|laterbye 17\n"
    assert mesh.remote.received == [b"early bytes|later"]


@pytest.mark.parametrize(
    ("target", "status", "cause"),
    [
        ("local", 421, "not_local_destination"),  # a pod of node-a: no relay through node-b
        ("admin", 421, "not_local_destination"),  # the proxy's own admin port
        ("8.8.8.8:53", 421, "not_local_destination"),
        ("127.0.0.1", 400, "missing_destination"),  # no port
        ("[::1:80", 400, "missing_destination"),
    ],
)
async def test_connect_to_anything_but_a_local_pod_is_refused(
    mesh: TcpMesh, target: str, status: int, cause: str
) -> None:
    named = {
        "local": f"127.0.0.1:{mesh.local.port}",
        "admin": f"127.0.0.1:{mesh.b.admin_port}",
    }
    tls = await open_tls(mesh)
    await tls.send_all(connect(named.get(target, target)))
    reply = await read_to_eof(tls)
    await tls.aclose()
    assert reply.startswith(f"HTTP/1.1 {status} ".encode()), reply[:200]
    assert f"x-nodeproxy-error: {cause}".encode() in reply
    assert mesh.local.connections == mesh.remote.connections == 0


async def test_a_caller_the_policy_does_not_allow_gets_403(mesh: TcpMesh) -> None:
    tls = await open_tls(mesh, REPORTING)
    await tls.send_all(connect(f"127.0.0.1:{mesh.remote.port}") + b"sneaky")
    reply = await read_to_eof(tls)
    await tls.aclose()
    assert reply.startswith(b"HTTP/1.1 403 ")
    assert b"x-nodeproxy-error: denied" in reply
    assert mesh.remote.connections == 0


async def test_a_pod_the_caller_may_not_reach_gets_403(mesh: TcpMesh) -> None:
    tls = await open_tls(mesh)
    await tls.send_all(connect(f"127.0.0.1:{mesh.secret.port}"))
    reply = await read_to_eof(tls)
    await tls.aclose()
    assert reply.startswith(b"HTTP/1.1 403 ")
    assert mesh.secret.connections == 0


async def test_the_pod_closing_first_ends_the_tunnel_downstream(mesh: TcpMesh) -> None:
    tls = await open_tls(mesh)
    await tls.send_all(connect(f"127.0.0.1:{mesh.remote.port}"))
    await tls.half_close()  # the echo pod says bye and closes
    reply = await read_to_eof(tls)
    await tls.aclose()
    assert reply.endswith(b"\r\n\r\nbye 0\n")


async def test_connect_on_the_plaintext_outbound_port_is_still_refused(mesh: TcpMesh) -> None:
    tcp = await trio.open_tcp_stream("127.0.0.1", mesh.a.listener_ports["outbound"])
    await tcp.send_all(connect(f"127.0.0.1:{mesh.remote.port}"))
    with trio.fail_after(10):
        reply = await tcp.receive_some(4096)
    await tcp.aclose()
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert mesh.remote.connections == 0
