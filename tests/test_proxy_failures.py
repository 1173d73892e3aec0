"""Every failure answer a client can see, and bad input that must never reach a backend.

Timeouts here are real but small (0.2-0.3 s): these tests wait on real loopback
sockets, where trio's autojump clock would jump past I/O that is merely slow.
Each assertion waits on an answer, never on a sleep.
"""

from __future__ import annotations

import h11
import httpx
import pytest
import trio

from nodeproxy.config.model import Limits
from nodeproxy.errors import (
    NoHealthyUpstream,
    UpstreamConnectFailure,
    UpstreamConnectTimeout,
    UpstreamResetBeforeHeaders,
    UpstreamResponseTimeout,
)
from nodeproxy.stats.names import PROXY_ERRORS, UPSTREAM_CONNECT_FAILURES
from nodeproxy.stats.registry import labels
from tests.helpers.backends import (
    backend,
    free_port,
    raw_request,
    read_all,
    read_response,
    run_proxy,
    saturated_port,
    simple_config,
)


async def get(proxy_url: str, url: str) -> httpx.Response:
    async with httpx.AsyncClient(proxy=proxy_url, trust_env=False) as client:
        return await client.get(url)


@pytest.fixture
def idle_clock() -> trio.testing.MockClock:
    """Virtual time that jumps to the next deadline once every task has waited 10 ms of
    real time: the sockets are real, but no timing here depends on the machine's load."""
    return trio.testing.MockClock(autojump_threshold=0.01)


async def test_connection_refused_is_503_at_once_with_envoy_body() -> None:
    config = simple_config({"svc": [("127.0.0.1", free_port())]})
    async with run_proxy(config) as p:
        start = trio.current_time()
        r = await get(p.url, "http://svc/x")
        assert trio.current_time() - start < 0.5
        assert r.status_code == 503
        assert r.headers["x-nodeproxy-error"] == "connection_failure"
        assert r.content == UpstreamConnectFailure().response_body()
        assert r.text.startswith(
            "upstream connect error or disconnect/reset before headers. "
            "reset reason: connection failure"
        )
        stats = p.runtime.stats
        assert stats.sum_counter(UPSTREAM_CONNECT_FAILURES, cluster="svc") == 1
        assert stats.counter(PROXY_ERRORS, labels(cause="connection_failure")) == 1


async def test_connect_timeout_is_503() -> None:
    with saturated_port() as port:
        config = simple_config({"svc": [("127.0.0.1", port)]}, connect_timeout=0.2)
        async with run_proxy(config) as p:
            r = await get(p.url, "http://svc/x")
    assert r.status_code == 503
    assert r.headers["x-nodeproxy-error"] == "connect_timeout"
    assert r.content == UpstreamConnectTimeout().response_body()


async def test_no_endpoints_is_503_no_healthy_upstream() -> None:
    async with run_proxy(simple_config({"svc": []})) as p:
        r = await get(p.url, "http://svc/x")
    assert r.status_code == 503
    assert r.headers["x-nodeproxy-error"] == "no_healthy_upstream"
    assert r.content == NoHealthyUpstream().response_body()


async def test_response_timeout_is_504() -> None:
    async with (
        backend() as b,
        run_proxy(simple_config({"svc": [b.address]}, rule_timeout=0.2)) as p,
    ):
        r = await get(p.url, "http://svc/stall")
    assert r.status_code == 504
    assert r.headers["x-nodeproxy-error"] == "upstream_timeout"
    assert r.content == UpstreamResponseTimeout().response_body()


async def test_response_timeout_keeps_the_client_connection_for_the_next_request() -> None:
    async with backend() as b:
        config = simple_config({"svc": [b.address]}, rule_timeout=0.2)
        async with run_proxy(config) as p:
            stream = await trio.open_tcp_stream("127.0.0.1", p.port)
            async with stream:
                with trio.fail_after(5):
                    await stream.send_all(b"GET /stall HTTP/1.1\r\nHost: svc\r\n\r\n")
                    first = (await read_response(stream))[0]
                    await stream.send_all(b"GET /ok HTTP/1.1\r\nHost: svc\r\n\r\n")
                    second = (await read_response(stream))[0]
    assert isinstance(first, h11.Response)
    assert first.status_code == 504
    assert (b"x-nodeproxy-error", b"upstream_timeout") in first.headers
    assert (b"connection", b"close") not in first.headers
    assert isinstance(second, h11.Response)
    assert second.status_code == 200


async def test_idle_timeout_only_applies_between_requests(idle_clock: object) -> None:
    limits = Limits(downstream_idle_timeout=0.3)
    async with backend() as b, run_proxy(simple_config({"svc": [b.address]}, limits=limits)) as p:
        stream = await trio.open_tcp_stream("127.0.0.1", p.port)
        async with stream:
            with trio.fail_after(5):
                await stream.send_all(b"GET /ok HTTP/1.1\r\nHost: svc\r\n\r\n")
                await read_response(stream)  # from now on the idle timeout applies
                # A body slower in total (not per read) than the idle timeout...
                await stream.send_all(
                    b"POST /up HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\n"
                )
                for byte in (b"a", b"b", b"c"):
                    await trio.sleep(0.15)
                    await stream.send_all(byte)
                upload = (await read_response(stream))[0]
                # ...and an answer slower than it are not cut.
                await stream.send_all(b"GET /wait HTTP/1.1\r\nHost: svc\r\n\r\n")
                await b.arrived.wait()
                await trio.sleep(0.4)
                b.release.set()
                slow = (await read_response(stream))[0]
                assert await read_all(stream) == b""  # then idle: closed without a word
    for response in (upload, slow):
        assert isinstance(response, h11.Response)
        assert response.status_code == 200


async def test_response_timeout_stops_at_the_head_not_a_slowly_read_body(
    idle_clock: object,
) -> None:
    size = 32 << 20  # more than the socket buffers hold: the proxy waits on our reading
    async with (
        backend() as b,
        run_proxy(simple_config({"svc": [b.address]}, rule_timeout=0.2)) as p,
    ):
        stream = await trio.open_tcp_stream("127.0.0.1", p.port)
        async with stream:
            with trio.fail_after(10):
                target = f"/download?size={size}".encode()
                await stream.send_all(b"GET " + target + b" HTTP/1.1\r\nHost: svc\r\n\r\n")
                first = await stream.receive_some(65536)
                await trio.sleep(0.4)  # twice the response timeout, reading nothing
                got = len(first) - (first.index(b"\r\n\r\n") + 4)
                while got < size and (data := await stream.receive_some(1 << 20)):
                    got += len(data)
    assert first.startswith(b"HTTP/1.1 200")
    assert got == size


async def test_upstream_eof_or_reset_before_headers_is_502() -> None:
    async with backend() as b, run_proxy(simple_config({"svc": [b.address]})) as p:
        for path in ("/close", "/reset"):
            r = await get(p.url, f"http://svc{path}")
            assert r.status_code == 502, path
            assert r.headers["x-nodeproxy-error"] == "upstream_reset"
            assert r.content == UpstreamResetBeforeHeaders().response_body()
        assert b.connections == 2  # new connections are never replayed


async def test_reset_after_headers_closes_the_downstream_connection() -> None:
    async with backend() as b, run_proxy(simple_config({"svc": [b.address]})) as p:
        raw = await raw_request(p.port, b"GET /partial HTTP/1.1\r\nHost: svc\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-length: 1000" in head.lower()
    assert body == b"x" * 10  # then EOF: the client can tell the body was cut


async def test_dead_reused_connection_is_replayed_once() -> None:
    """The keep-alive race: the upstream closed an idle connection we then picked."""
    async with (
        backend() as b,
        run_proxy(simple_config({"svc": [b.address]})) as p,
        httpx.AsyncClient(proxy=p.url, trust_env=False) as client,
    ):
        first = await client.get("http://svc/then-close")
        second = await client.get("http://svc/after")
    assert first.status_code == 200
    assert second.status_code == 200
    assert second.json()["target"] == "/after"
    assert b.connections == 2


async def test_malformed_requests_are_400_and_never_forwarded() -> None:
    bad = [
        b"GET / HTTP/1.1\r\nHost: svc\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.0\r\n\r\n",  # no Host and origin-form: nothing to route on
        b"GET https://svc/ HTTP/1.1\r\nHost: svc\r\n\r\n",
        b"CONNECT svc:443 HTTP/1.1\r\nHost: svc:443\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS to a plain port
    ]
    async with backend() as b, run_proxy(simple_config({"svc": [b.address]})) as p:
        for data in bad:
            raw = await raw_request(p.port, data)
            assert raw.startswith(b"HTTP/1.1 400"), data
            cause = b"bad_framing" if b"Transfer-Encoding" in data else b"bad_request"
            assert b"x-nodeproxy-error: " + cause in raw
    assert b.connections == 0


async def test_oversized_headers_are_431() -> None:
    async with backend() as b, run_proxy(simple_config({"svc": [b.address]})) as p:
        limit = p.runtime.config.limits.max_request_header_bytes
        for size in (limit + 100, 200 * 1024):
            data = b"GET / HTTP/1.1\r\nHost: svc\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
            raw = await raw_request(p.port, data)
            assert raw.startswith(b"HTTP/1.1 431"), size
            assert b"x-nodeproxy-error: headers_too_large" in raw
    assert b.connections == 0


async def test_slow_request_head_gets_408_then_close() -> None:
    config = simple_config({"svc": [("127.0.0.1", 1)]}, limits=Limits(header_read_timeout=0.2))
    async with run_proxy(config) as p:
        stream = await trio.open_tcp_stream("127.0.0.1", p.port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: svc\r\n")  # ...and never finishes
            with trio.fail_after(5):
                raw = await read_all(stream)
    assert raw.startswith(b"HTTP/1.1 408")
    assert b"x-nodeproxy-error: request_header_timeout" in raw


async def test_silent_connection_is_closed_without_answer() -> None:
    config = simple_config({"svc": [("127.0.0.1", 1)]}, limits=Limits(header_read_timeout=0.2))
    async with run_proxy(config) as p:
        stream = await trio.open_tcp_stream("127.0.0.1", p.port)
        async with stream:
            with trio.fail_after(5):
                assert await read_all(stream) == b""


async def test_full_pool_waits_then_fails_overloaded() -> None:
    async with backend() as b:
        config = simple_config(
            {"svc": [b.address]}, connect_timeout=0.2, max_connections_per_endpoint=1
        )
        async with run_proxy(config) as p, trio.open_nursery() as nursery:
            first: list[httpx.Response] = []

            async def hold_the_only_connection() -> None:
                first.append(await get(p.url, "http://svc/wait"))

            nursery.start_soon(hold_the_only_connection)
            await b.arrived.wait()
            r = await get(p.url, "http://svc/second")
            assert r.status_code == 503
            assert r.headers["x-nodeproxy-error"] == "overloaded"
            b.release.set()
        assert first[0].status_code == 200
        assert b.connections == 1


async def test_reaper_closes_idle_upstream_connections() -> None:
    async with backend() as b, run_proxy(simple_config({"svc": [b.address]})) as p:
        assert (await get(p.url, "http://svc/")).status_code == 200
        assert p.upstreams.reap(trio.current_time()) == 0  # fresh: kept
        assert p.upstreams.reap(trio.current_time() + 61) == 1  # past the 60 s idle timeout
        assert "0 active, 0 idle" in repr(p.upstreams)
        assert (await get(p.url, "http://svc/")).status_code == 200
        assert b.connections == 2
