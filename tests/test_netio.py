"""The data path's socket I/O (nodeproxy/netio.py) on real loopback TCP connections.

It bypasses trio's SocketStream for plain TCP, so these tests hold it to what
trio's streams promised the rest of the data path: every byte in order across
partial writes, a cancelled scope stops an operation even when the kernel
has data ready, a closed or reset socket raises the exceptions the data path
already handles, and a TLS stream still goes through trio.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trustme

from nodeproxy.netio import receive_some, send_all


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """A connected (client, server) pair of TCP streams on 127.0.0.1."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    async with client, server:
        yield client, server


async def test_a_large_write_arrives_whole_and_in_order_across_partial_writes() -> None:
    payload = os.urandom(8 << 20)  # far more than the socket buffers: partial writes
    async with tcp_pair() as (client, server):
        client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        received = bytearray()

        async def read_slowly() -> None:
            while len(received) < len(payload):
                chunk = await receive_some(server, 7919)
                assert chunk, "EOF before the whole payload"
                received.extend(chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_slowly)
            await send_all(client, payload)
        assert received == payload


async def test_a_read_waits_for_data_then_returns_it_and_eof_is_empty() -> None:
    async with tcp_pair() as (client, server):
        got: list[bytes] = []

        async def reader() -> None:
            got.append(await receive_some(server, 1024))  # nothing there yet: parks
            got.append(await receive_some(server, 1024))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            await send_all(client, b"hello")
            await trio.testing.wait_all_tasks_blocked()
            await client.send_eof()
        assert got == [b"hello", b""]


async def test_a_cancelled_scope_stops_the_operation_even_with_data_ready() -> None:
    async with tcp_pair() as (client, server):
        await client.send_all(b"ready")
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            scope.cancel()  # a connection whose deadline fired (the sweeper cancels it)
            await receive_some(server, 1024)
            pytest.fail("the read ignored its cancelled scope")
        with trio.CancelScope() as scope:
            scope.cancel()
            await send_all(server, b"late")
            pytest.fail("the write ignored its cancelled scope")
        assert await receive_some(server, 1024) == b"ready"  # the bytes were not consumed


async def test_a_closed_socket_raises_closed_resource_error() -> None:
    async with tcp_pair() as (_client, server):
        server.socket.close()
        with pytest.raises(trio.ClosedResourceError):
            await receive_some(server, 1024)
        with pytest.raises(trio.ClosedResourceError):
            await send_all(server, b"x")


async def test_writing_after_send_eof_is_refused() -> None:
    async with tcp_pair() as (_client, server):
        await server.send_eof()
        with pytest.raises(trio.ClosedResourceError):
            await send_all(server, b"x")


async def test_a_reset_by_the_peer_raises_broken_resource_error() -> None:
    async with tcp_pair() as (client, server):
        # SO_LINGER 0: close sends RST, as a crashed pod's kernel would.
        client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.socket.close()
        await trio.lowlevel.checkpoint()  # the RST is on loopback: no real wait
        with pytest.raises(trio.BrokenResourceError):
            await receive_some(server, 1024)
        with pytest.raises(trio.BrokenResourceError):
            await _write_until_refused(server)


async def _write_until_refused(stream: trio.SocketStream) -> None:
    for _ in range(100):  # the first write after a reset may still be accepted
        await send_all(stream, b"x" * 65536)


async def test_a_socket_closed_while_waiting_wakes_the_reader() -> None:
    async with tcp_pair() as (_client, server):
        errors: list[BaseException] = []

        async def reader() -> None:
            try:
                await receive_some(server, 1024)
            except trio.ClosedResourceError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            await server.aclose()  # another task closes the connection (drain, eviction)
        assert len(errors) == 1


async def test_tls_streams_keep_trio_s_path() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with tcp_pair() as (client, server):
        tls_client = trio.SSLStream(client, client_ctx, server_hostname="localhost")
        tls_server = trio.SSLStream(server, server_ctx, server_side=True)
        got: list[bytes] = []

        async def serve() -> None:
            got.append(await receive_some(tls_server, 1024))  # type: ignore[arg-type]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            await send_all(tls_client, b"over tls")  # type: ignore[arg-type]
        assert got == [b"over tls"]


async def test_the_socket_trio_wraps_is_the_one_netio_calls() -> None:
    """netio calls recv/send on the standard-library socket inside trio's (``_sock``, a
    private name of the pinned trio): if an upgrade renames it, this fails, not traffic."""
    async with tcp_pair() as (client, server):
        raw = server.socket._sock  # type: ignore[attr-defined]
        assert isinstance(raw, socket.socket)
        assert raw.fileno() == server.socket.fileno()
        await send_all(client, b"ping")
        assert await receive_some(server, 64) == b"ping"


async def test_a_descriptor_number_reused_after_close_is_never_written() -> None:
    """A stream whose socket was closed must not write into whatever socket the kernel
    gave the same number next (another pod's connection, on a node proxy)."""
    async with tcp_pair() as (_client, server), tcp_pair() as (other_client, other_server):
        number = server.socket.fileno()
        server.socket.close()
        # make the freed number belong to another connection's socket
        os.dup2(other_server.socket.fileno(), number)
        try:
            with pytest.raises(trio.ClosedResourceError):
                await send_all(server, b"not yours")
            await send_all(other_server, b"end")  # ordered after anything written before
            seen = b""
            while len(seen) < 3:
                seen += await receive_some(other_client, 64)
            assert seen == b"end"  # no "not yours" ahead of it
        finally:
            os.close(number)
