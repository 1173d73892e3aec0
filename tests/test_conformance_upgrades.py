"""Upgrades: only what the config allows becomes a byte tunnel.

Once an upstream answers 101 the connection is raw bytes, past routing,
per-request policy and the access log, so a shared proxy relays only the
protocols a listener (or route) lists, as Envoy's ``upgrade_configs`` does:
``websocket`` by default, 403 for any other, and ``h2c`` stripped (RFC 9113
§3.1 removed that upgrade). A tunnel gets one access line with its bytes and
duration, counters, and closes after ``stream_idle_timeout`` without a byte.
"""

from __future__ import annotations

import json
from dataclasses import replace

import trio
from structlog.testing import capture_logs

from nodeproxy.config.model import Config, Limits
from nodeproxy.stats.names import TUNNEL_BYTES, UPGRADES
from nodeproxy.stats.registry import labels
from tests.helpers.backends import (
    backend,
    raw_request,
    read_all,
    run_proxy,
    serving,
    simple_config,
)

WS = b"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
WS_THEN_CLOSE = WS.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")  # refused: no wait


def _with_upgrades(
    config: Config, listener: tuple[str, ...], route: tuple[str, ...] | None
) -> Config:
    lc = config.listeners[0]
    vhosts = tuple(
        replace(vh, routes=tuple(replace(r, upgrades=route) for r in vh.routes))
        for vh in lc.virtual_hosts
    )
    return replace(config, listeners=(replace(lc, virtual_hosts=vhosts, upgrades=listener),))


async def _until(stream: trio.SocketStream, marker: bytes) -> bytes:
    got = b""
    while marker not in got:
        data = await stream.receive_some(4096)
        assert data, got
        got += data
    return got


async def test_h2c_upgrade_is_stripped_and_the_request_served_plainly() -> None:
    data = (
        b"GET /plain HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nConnection: close\r\n\r\n"
    )
    async with backend() as b, run_proxy(simple_config({"svc": [b.address]})) as p:
        raw = await raw_request(p.port, data)
    assert raw.startswith(b"HTTP/1.1 200"), raw
    seen = {name for name, _ in json.loads(raw.partition(b"\r\n\r\n")[2])["headers"]}
    assert not seen & {"upgrade", "http2-settings"}, seen
    assert b"upgrade" not in dict(b.requests[0].headers).get(b"connection", b"").lower()


async def test_an_upgrade_the_config_does_not_list_is_403_and_never_sent() -> None:
    data = b"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: foo/1\r\n\r\n"
    async with backend() as b, run_proxy(simple_config({"svc": [b.address]})) as p:
        after = b"GET /after HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n"
        raw = await raw_request(p.port, data + after)
    assert raw.startswith(b"HTTP/1.1 403"), raw
    assert b"x-nodeproxy-error: upgrade_not_allowed" in raw
    assert [r.target for r in b.requests] == [b"/after"]  # the connection stays usable


async def test_a_route_can_refuse_websocket_the_listener_allows() -> None:
    async with backend() as b:
        config = _with_upgrades(simple_config({"svc": [b.address]}), ("websocket",), ())
        async with run_proxy(config) as p:
            raw = await raw_request(
                p.port, WS.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
            )
    assert raw.startswith(b"HTTP/1.1 403"), raw
    assert b.connections == 0


async def test_a_listener_with_no_upgrades_refuses_websocket() -> None:
    async with backend() as b:
        config = _with_upgrades(simple_config({"svc": [b.address]}), (), None)
        async with run_proxy(config) as p:
            raw = await raw_request(p.port, WS_THEN_CLOSE)
    assert raw.startswith(b"HTTP/1.1 403"), raw
    assert b.connections == 0


async def test_101_to_a_protocol_the_request_did_not_offer_is_502() -> None:
    async def h2c_switcher(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        )
        await stream.receive_some(65536)

    async with (
        serving(h2c_switcher) as port,
        run_proxy(simple_config({"svc": [("127.0.0.1", port)]})) as p,
    ):
        raw = await raw_request(p.port, WS_THEN_CLOSE)
    assert raw.startswith(b"HTTP/1.1 502"), raw
    assert b"x-nodeproxy-error: upstream_protocol_error" in raw


async def test_a_tunnel_gets_one_access_line_with_bytes_and_counters() -> None:
    async with backend() as b, run_proxy(simple_config({"svc": [b.address]})) as p:
        with capture_logs() as logs:
            stream = await trio.open_tcp_stream("127.0.0.1", p.port)
            async with stream:
                await stream.send_all(WS + b"hello")
                await _until(stream, b"echo:hello")
                await stream.send_all(b"more")
                await _until(stream, b"echo:more")
                await stream.send_eof()
                await read_all(stream)
            with trio.fail_after(5):
                while not [e for e in logs if e["event"] == "access"]:  # noqa: ASYNC110  # logged by the proxy's task
                    await trio.sleep(0.01)
        stats = p.runtime.stats
        assert stats.counter(UPGRADES, labels(listener="outbound", protocol="websocket")) == 1
        up = stats.counter(TUNNEL_BYTES, labels(listener="outbound", direction="upstream"))
        down = stats.counter(TUNNEL_BYTES, labels(listener="outbound", direction="downstream"))
    access = [e for e in logs if e["event"] == "access"]
    assert len(access) == 1
    line = access[0]
    assert (line["status"], line["upgrade"]) == (101, "websocket")
    assert line["bytes_received"] >= len(WS) + len(b"hellomore")
    assert line["bytes_sent"] >= len(b"echo:helloecho:more")
    assert up >= len(b"hellomore")
    assert down >= len(b"echo:helloecho:more")
    assert line["duration_ms"] > 0


async def test_an_idle_tunnel_closes_after_stream_idle_timeout(autojump_clock: object) -> None:
    async with backend() as b:
        config = simple_config({"svc": [b.address]}, limits=Limits(stream_idle_timeout=30.0))
        async with run_proxy(config) as p, await trio.open_tcp_stream("127.0.0.1", p.port) as s:
            await s.send_all(WS + b"hi")
            await _until(s, b"echo:hi")
            await trio.sleep(20)
            await s.send_all(b"again")  # activity resets the idle clock
            await _until(s, b"echo:again")
            start = trio.current_time()
            assert await read_all(s) == b""
            assert 29.0 <= trio.current_time() - start <= 31.0
