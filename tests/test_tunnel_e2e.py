"""TCP through the mesh, end to end on loopback with real mTLS (nodeproxy.tunnel).

A test listener stands in for interception (``helpers/tcp_mesh.py``): each
connection to it is handed to ``carry_tcp`` with a chosen original
destination. Callers are real sockets bound to the pod addresses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import structlog
import trio

from nodeproxy.stats.names import POLICY_DENIED, TCP_CONNECTIONS
from nodeproxy.tunnel import carry_tcp
from tests.helpers.mesh import REPORTING_IP, WEB_IP
from tests.helpers.tcp_mesh import VIP, Echo, TcpMesh, exchange, tcp_mesh


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[TcpMesh]:
    async with tcp_mesh(tmp_path) as m:
        yield m


async def eventually(check: Callable[[], bool]) -> None:
    """The proxy accounts a connection after the client saw its end: wait for it."""
    with trio.fail_after(10):
        while not check():  # a counter, not an event: poll at checkpoints
            await trio.lowlevel.checkpoint()


def tcp(mesh: TcpMesh, path: str, outcome: str) -> float:
    return mesh.a.runtime.stats.sum_counter(TCP_CONNECTIONS, path=path, outcome=outcome)


async def test_same_node_pod_is_reached_directly_with_half_close(mesh: TcpMesh) -> None:
    port = await mesh.intercepted(mesh.a, ("127.0.0.1", mesh.local.port))
    assert await exchange(port, WEB_IP, b"PING\r\n") == b"PING\r\nbye 6\n"
    await eventually(lambda: tcp(mesh, "direct", "ok") == 1)
    assert mesh.b.runtime.stats.sum_counter("nodeproxy_tunnel_bytes_total") == 0


async def test_other_node_pod_goes_through_the_tunnel(mesh: TcpMesh) -> None:
    port = await mesh.intercepted(mesh.a, ("127.0.0.1", mesh.remote.port))
    payload = bytes(range(256)) * 1000
    reply = await exchange(port, WEB_IP, payload)
    assert reply == payload + f"bye {len(payload)}\n".encode()
    await eventually(lambda: tcp(mesh, "tunnel", "ok") == 1)
    b = mesh.b.runtime.stats
    await eventually(lambda: b.sum_counter("nodeproxy_tunnel_bytes_total", listener="inbound") > 0)
    assert b.sum_counter("nodeproxy_tunnel_bytes_total", direction="upstream") == len(payload)
    assert b.sum_counter("nodeproxy_requests_total", listener="inbound") == 1  # one CONNECT


async def test_a_cluster_ip_is_balanced_to_a_backend(mesh: TcpMesh) -> None:
    port = await mesh.intercepted(mesh.a, VIP)
    assert await exchange(port, WEB_IP, b"hello") == b"hellobye 5\n"
    assert mesh.remote.received == [b"hello"]
    await eventually(lambda: tcp(mesh, "tunnel", "ok") == 1)


async def test_same_node_denied_by_policy_is_reset_before_any_byte(mesh: TcpMesh) -> None:
    port = await mesh.intercepted(mesh.a, ("127.0.0.1", mesh.local.port))
    with structlog.testing.capture_logs() as logs:
        assert await exchange(port, REPORTING_IP, b"PING\r\n") == b""
        await eventually(lambda: tcp(mesh, "direct", "denied") == 1)
    assert mesh.local.connections == 0
    denied = [e for e in logs if e["event"] == "policy_denied"]
    assert denied[0]["listener"] == "tcp"
    assert denied[0]["caller"] == "spiffe://cluster.local/ns/shop/sa/reporting"


async def test_other_node_denied_by_the_destination_node(mesh: TcpMesh) -> None:
    port = await mesh.intercepted(mesh.a, ("127.0.0.1", mesh.remote.port))
    assert await exchange(port, REPORTING_IP, b"PING\r\n") == b""
    await eventually(lambda: tcp(mesh, "tunnel", "denied") == 1)
    assert mesh.remote.connections == 0
    b = mesh.b.runtime.stats
    assert b.sum_counter(POLICY_DENIED, listener="inbound", rule="(default)") == 1


async def test_a_caller_without_identity_is_refused_cross_node(mesh: TcpMesh) -> None:
    port = await mesh.intercepted(mesh.a, ("127.0.0.1", mesh.remote.port))
    assert await exchange(port, "127.0.0.1", b"PING\r\n") == b""
    await eventually(lambda: tcp(mesh, "tunnel", "unknown_source") == 1)
    assert mesh.remote.connections == 0


async def test_an_address_outside_the_mesh_is_passed_through(mesh: TcpMesh) -> None:
    outside = Echo()  # no service has this address: as the pod would reach it without us
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, outside.handle, 0)
        outside.port = listeners[0].socket.getsockname()[1]
        port = await mesh.intercepted(mesh.a, ("127.0.0.1", outside.port))
        assert await exchange(port, REPORTING_IP, b"out") == b"outbye 3\n"
        nursery.cancel_scope.cancel()
    await eventually(lambda: tcp(mesh, "passthrough", "ok") == 1)


async def test_a_mesh_pod_of_another_node_is_never_passed_through(mesh: TcpMesh) -> None:
    port = await mesh.intercepted(mesh.a, ("127.0.0.1", mesh.secret.port))
    assert await exchange(port, WEB_IP, b"x") == b""
    await eventually(lambda: tcp(mesh, "tunnel", "denied") == 1)
    assert mesh.secret.connections == 0


async def test_peeked_bytes_go_first(mesh: TcpMesh) -> None:
    async def carry(stream: trio.SocketStream) -> None:
        first = await stream.receive_some(3)  # what a protocol detector would have read
        await carry_tcp(
            mesh.a.runtime, stream, peeked=bytes(first), caller_ip=WEB_IP,
            dst_ip="127.0.0.1", dst_port=mesh.remote.port, sni="echo.example",
        )  # fmt: skip

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, carry, 0)
        port = listeners[0].socket.getsockname()[1]
        assert await exchange(port, WEB_IP, b"abcdef") == b"abcdefbye 6\n"
        nursery.cancel_scope.cancel()


async def test_a_silent_tunnel_is_closed_after_tcp_idle_timeout(tmp_path: Path) -> None:
    async with tcp_mesh(tmp_path, idle="0.5s") as m:
        port = await m.intercepted(m.a, ("127.0.0.1", m.remote.port))
        sock = trio.socket.socket()
        await sock.bind((WEB_IP, 0))
        await sock.connect(("127.0.0.1", port))
        stream = trio.SocketStream(sock)
        await stream.send_all(b"hi")
        with trio.fail_after(10):
            got = b""
            while got != b"hi":
                got += await stream.receive_some(100)
            try:  # then silence both ways: the proxies close it (FIN or reset)
                rest = await stream.receive_some(100)
            except trio.BrokenResourceError:
                rest = b""
        assert rest == b""
        await stream.aclose()
        await eventually(lambda: tcp(m, "tunnel", "idle_timeout") == 1)


async def test_a_peer_node_that_does_not_answer_resets_the_connection(mesh: TcpMesh) -> None:
    from types import MappingProxyType

    from tests.helpers.backends import free_port

    node_a = mesh.a.runtime.mesh
    assert node_a is not None
    node_a.nodes = MappingProxyType({"node-b": ("127.0.0.1", free_port())})  # nobody there
    port = await mesh.intercepted(mesh.a, ("127.0.0.1", mesh.remote.port))
    assert await exchange(port, WEB_IP, b"x") == b""
    await eventually(lambda: tcp(mesh, "tunnel", "connection_failure") == 1)
    assert mesh.remote.connections == 0


async def test_enforce_outbound_refuses_on_the_source_node(tmp_path: Path) -> None:
    async with tcp_mesh(tmp_path) as m:
        node_a = m.a.runtime.mesh
        assert node_a is not None
        node_a.config = dataclasses.replace(node_a.config, enforce_outbound=True)
        port = await m.intercepted(m.a, ("127.0.0.1", m.remote.port))
        assert await exchange(port, REPORTING_IP, b"x") == b""
        await eventually(lambda: tcp(m, "tunnel", "denied") == 1)
        b = m.b.runtime.stats
        assert b.sum_counter("nodeproxy_downstream_connections_total", listener="inbound") == 0
        assert await exchange(port, WEB_IP, b"ok") == b"okbye 2\n"  # allowed: still carried
