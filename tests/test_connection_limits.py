"""Connection slots: one source cannot take them all, and idle keep-alives make room.

The failure this guards against: 500 idle keep-alive connections from one
pod filled ``max_downstream_connections`` and every other pod was refused
for the whole idle timeout. Clients here bind distinct loopback sources (127.0.0.2 is pod
A, 127.0.0.3 is pod B) and talk raw HTTP/1.1, so which connection was
served, refused or closed is seen on the wire. Every wait is on an event or
a socket (no timer is involved), hence no autojump clock; ``fail_after``
only bounds a hang.
"""

from __future__ import annotations

from pathlib import Path

import h11
import pytest
import trio

import tests.helpers.mesh as mesh_helpers
from nodeproxy.config import ConfigError, load_config_text
from nodeproxy.config.model import Limits
from nodeproxy.server.connection_limits import ConnectionSlots
from nodeproxy.stats.names import (
    DOWNSTREAM_CONNECTIONS_ACTIVE,
    DOWNSTREAM_CONNECTIONS_EVICTED,
    DOWNSTREAM_CONNECTIONS_REJECTED,
)
from nodeproxy.stats.registry import Stats, labels
from tests.helpers.backends import backend, read_all, read_response, run_proxy, simple_config
from tests.helpers.mesh import two_node_mesh
from tests.test_mesh_inbound import mint_ctx

A, B = "127.0.0.2", "127.0.0.3"


class Clients:
    """Client connections from chosen sources; all closed when the block ends."""

    def __init__(self) -> None:
        self.streams: list[trio.SocketStream] = []

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.streams:
            s.socket.close()

    async def connect(self, source: str, port: int) -> trio.SocketStream:
        """A TCP connection to 127.0.0.1:``port`` from ``source``."""
        sock = trio.socket.socket()
        self.streams.append(trio.SocketStream(sock))
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", port))
        return self.streams[-1]


async def status_of(stream: trio.SocketStream, path: str = "/") -> int | None:
    """Send one keep-alive GET and read its answer; None when the proxy closed instead."""
    try:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: svc\r\n\r\n".encode())
        events = await read_response(stream)
    except (trio.BrokenResourceError, h11.RemoteProtocolError):
        return None
    head = events[0]
    assert isinstance(head, h11.Response), events
    assert isinstance(events[-1], h11.EndOfMessage), events
    return head.status_code


async def wait_for(out: list[int | None], stream: trio.SocketStream, path: str) -> None:
    out.append(await status_of(stream, path))


def rejected(stats: Stats, reason: str, listener: str = "outbound") -> float:
    return stats.counter(DOWNSTREAM_CONNECTIONS_REJECTED, labels(listener=listener, reason=reason))


async def test_one_source_cannot_take_every_connection_slot() -> None:
    limits = Limits(max_downstream_connections=20, max_connections_per_source=10)
    async with backend() as b, run_proxy(simple_config({"svc": [b.address]}, limits=limits)) as p:
        with Clients() as c, trio.fail_after(10):
            pod_a = [await c.connect(A, p.port) for _ in range(20)]
            assert [await status_of(s) for s in pod_a] == [200] * 10 + [None] * 10
            pod_b = await c.connect(B, p.port)
            assert await status_of(pod_b) == 200
            # A's ten were left alone: there was room for B without closing any.
            assert [await status_of(s) for s in pod_a[:10]] == [200] * 10
    stats = p.runtime.stats
    assert rejected(stats, "per_source") == 10
    assert rejected(stats, "max_connections") == 0
    assert stats.counter(DOWNSTREAM_CONNECTIONS_EVICTED, labels(listener="outbound")) == 0


async def test_at_the_cap_the_oldest_idle_keep_alive_makes_room() -> None:
    limits = Limits(max_downstream_connections=20, max_connections_per_source=0)
    in_flight: list[int | None] = []
    async with backend() as b, run_proxy(simple_config({"svc": [b.address]}, limits=limits)) as p:
        with Clients() as c, trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                busy = await c.connect(A, p.port)  # the oldest connection, never idle

                async def wait_for_backend() -> None:
                    in_flight.append(await status_of(busy, "/wait"))

                nursery.start_soon(wait_for_backend)
                await b.arrived.wait()
                idle = [await c.connect(A, p.port) for _ in range(19)]
                assert [await status_of(s) for s in idle] == [200] * 19  # 20 of 20 slots
                newcomer = await c.connect(B, p.port)
                assert await status_of(newcomer) == 200
                assert await read_all(idle[0]) == b""  # the oldest idle one was closed
                assert [await status_of(s) for s in idle[1:]] == [200] * 18
                assert in_flight == []  # A's request in flight was not touched...
                b.release.set()
    assert in_flight == [200]  # ...and completed
    stats = p.runtime.stats
    assert stats.counter(DOWNSTREAM_CONNECTIONS_EVICTED, labels(listener="outbound")) == 1
    assert rejected(stats, "max_connections") == 0


async def test_at_the_cap_with_nothing_idle_a_new_connection_is_refused() -> None:
    limits = Limits(max_downstream_connections=2)
    statuses: list[int | None] = []
    async with backend() as b, run_proxy(simple_config({"svc": [b.address]}, limits=limits)) as p:
        with Clients() as c, trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for _ in range(2):
                    stream = await c.connect(A, p.port)
                    nursery.start_soon(wait_for, statuses, stream, "/wait")
                while len(b.requests) < 2:  # both requests reached the backend
                    await trio.lowlevel.checkpoint()
                assert await status_of(await c.connect(B, p.port)) is None
                b.release.set()
    assert statuses == [200, 200]
    assert rejected(p.runtime.stats, "max_connections") == 1


async def test_drain_closes_a_connection_that_never_sent_a_request() -> None:
    limits = Limits(header_read_timeout=60)
    async with run_proxy(simple_config({"svc": [("127.0.0.1", 1)]}, limits=limits)) as p:
        with Clients() as c, trio.fail_after(10):
            silent = await c.connect(A, p.port)
            active = labels(listener="outbound")
            while p.runtime.stats.gauge(DOWNSTREAM_CONNECTIONS_ACTIVE, active) == 0:  # accepted
                await trio.lowlevel.checkpoint()
            p.runtime.drain.start("test")
            assert await read_all(silent) == b""  # now, not after header_read_timeout
            await p.done.wait()


async def test_inbound_mtls_listener_has_no_per_source_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Peer node proxies pool many connections from one address: not capped per source."""
    config = mesh_helpers.CONFIG + "limits: {{max_connections_per_source: 2}}\n"
    monkeypatch.setattr(mesh_helpers, "CONFIG", config)
    async with two_node_mesh(tmp_path) as mesh:
        ctx = mint_ctx(mesh.ca)
        request = (
            f"GET /login HTTP/1.1\r\nHost: auth-api.shop\r\n"
            f"x-nodeproxy-destination: 127.0.0.1:{mesh.auth.port}\r\n\r\n"
        ).encode()
        with Clients() as c, trio.fail_after(10):
            for _ in range(4):  # kept open: four connections from 127.0.0.1 at once
                tls = trio.SSLStream(await c.connect("127.0.0.1", mesh.b.inbound), ctx)
                await tls.do_handshake()
                await tls.send_all(request)
                assert (await tls.receive_some(65536)).startswith(b"HTTP/1.1 200 ")
            # The same cap does apply to node-b's plain listener.
            for _ in range(3):
                await c.connect(A, mesh.b.outbound)
            while rejected(mesh.b.handle.runtime.stats, "per_source") == 0:
                await trio.lowlevel.checkpoint()
        assert rejected(mesh.b.handle.runtime.stats, "per_source", "inbound") == 0


def test_slots_table() -> None:
    slots: ConnectionSlots[int] = ConnectionSlots(cap=3, per_source=2)
    assert slots.refusal("a") is None
    slots.take(1, "a")
    slots.take(2, "a")
    assert slots.refusal("a") == "per_source"
    assert slots.refusal("b") is None
    slots.take(3, "b")
    assert slots.refusal("b") == "max_connections"
    assert slots.refusal("a") == "per_source"  # the per-source cap is checked first
    slots.release(1)
    slots.release(1)  # a second release of the same connection changes nothing
    assert repr(slots) == "<ConnectionSlots [2/3 connections, 2 sources, per source 2]>"
    assert slots.refusal("a") is None
    slots.release(2)
    slots.release(3)
    assert repr(slots) == "<ConnectionSlots [0/3 connections, 0 sources, per source 2]>"
    unlimited: ConnectionSlots[int] = ConnectionSlots(cap=1, per_source=0)
    unlimited.take(1, "a")
    assert unlimited.refusal("a") == "max_connections"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 256),
        ("limits: {max_connections_per_source: 0}\n", 0),
        ("limits: {max_connections_per_source: 32}\n", 32),
    ],
)
def test_max_connections_per_source_config(text: str, expected: int) -> None:
    config = load_config_text("services: []\n" + text, env={})
    assert config.limits.max_connections_per_source == expected


def test_max_connections_per_source_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match=r"limits\.max_connections_per_source.*must be >= 0"):
        load_config_text("services: []\nlimits: {max_connections_per_source: -1}\n", env={})
