"""End to end through the proxy on loopback: forms, keep-alive, HTTP/1.0, HEAD, 1xx, upgrade."""

from __future__ import annotations

import json
import os
from typing import Any

import h11
import httpx
import trio
from structlog.testing import capture_logs

from nodeproxy.stats.names import UPSTREAM_CONNECTIONS_OPENED
from tests.helpers.backends import (
    backend,
    raw_request,
    read_all,
    read_response,
    run_proxy,
    simple_config,
)

CLEAN_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # no *_proxy variables for curl


async def curl(*args: str) -> tuple[int, str, str]:
    proc = await trio.run_process(
        ["curl", "-sS", *args], capture_stdout=True, capture_stderr=True, check=False, env=CLEAN_ENV
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def seen_headers(body: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in body["headers"]}


async def test_keep_alive_reuses_one_upstream_connection() -> None:
    async with backend() as b, run_proxy(simple_config({"bdgreeter": [b.address]})) as p:
        async with httpx.AsyncClient(proxy=p.url, trust_env=False) as client:
            for i in range(20):
                r = await client.get(f"http://bdgreeter/hello/{i}")
                assert r.status_code == 200
                assert r.json()["target"] == f"/hello/{i}"
        assert b.connections == 1
        assert p.runtime.stats.sum_counter(UPSTREAM_CONNECTIONS_OPENED, cluster="bdgreeter") == 1


async def test_absolute_form_with_curl_proxy_flag() -> None:
    async with backend() as b, run_proxy(simple_config({"bdgreeter": [b.address]})) as p:
        code, out, err = await curl("-x", p.url, "http://bdgreeter/hello/Magalixcorp?x=1")
        assert code == 0, err
        body = json.loads(out)
        assert body["target"] == "/hello/Magalixcorp?x=1"
        assert seen_headers(body)["host"] == "bdgreeter"
        assert "proxy-connection" not in seen_headers(body)


async def test_host_header_form_and_forwarding_headers() -> None:
    async with backend() as b, run_proxy(simple_config({"bdgreeter": [b.address]})) as p:
        code, out, err = await curl(
            "-H",
            "Host: bdgreeter.default.svc.cluster.local",
            "-H",
            "X-Forwarded-For: 10.1.1.1",
            "-H",
            "Connection: keep-alive, X-Hop",
            "-H",
            "X-Hop: secret",
            "-H",
            "Keep-Alive: timeout=5",
            "-D",
            "/dev/stderr",
            f"{p.url}/hello",
        )
        assert code == 0, err
        headers = seen_headers(json.loads(out))
        assert headers["host"] == "bdgreeter.default.svc.cluster.local"
        assert headers["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
        assert headers["x-forwarded-proto"] == "http"
        assert headers["via"] == "1.1 nodeproxy"
        assert len(headers["x-request-id"]) == 32
        for hop in ("connection", "x-hop", "keep-alive"):
            assert hop not in headers
        assert "via: 1.1 nodeproxy" in err.lower()  # response Via, from -D


async def test_http10_client_gets_answer_and_close() -> None:
    async with backend() as b, run_proxy(simple_config({"bdgreeter": [b.address]})) as p:
        raw = await raw_request(p.port, b"GET /old HTTP/1.0\r\nHost: bdgreeter\r\n\r\n")
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"connection: close" in head.lower()
        assert json.loads(body)["target"] == "/old"


async def test_head_then_get_on_the_same_connection() -> None:
    async with backend() as b, run_proxy(simple_config({"bdgreeter": [b.address]})) as p:
        async with httpx.AsyncClient(base_url=p.url, trust_env=False) as client:
            r = await client.head("/x", headers={"host": "bdgreeter"})
            assert r.status_code == 200
            assert int(r.headers["content-length"]) > 0
            assert r.content == b""
            r = await client.get("/y", headers={"host": "bdgreeter"})
            assert r.json()["method"] == "GET"
        assert b.connections == 1


async def test_unknown_service_is_404_with_cause() -> None:
    async with backend() as b, run_proxy(simple_config({"bdgreeter": [b.address]})) as p:
        async with httpx.AsyncClient(proxy=p.url, trust_env=False) as client:
            r = await client.get("http://nosuch/x")
        assert r.status_code == 404
        assert r.headers["x-nodeproxy-error"] == "unknown_service"
        assert b.connections == 0


async def test_chunked_download_relays_trailers() -> None:
    async with backend() as b, run_proxy(simple_config({"bdgreeter": [b.address]})) as p:
        stream = await trio.open_tcp_stream("127.0.0.1", p.port)
        async with stream:
            await stream.send_all(
                b"GET /download?size=300000&chunked=1&trailers=1 HTTP/1.1\r\n"
                b"Host: bdgreeter\r\nTE: trailers\r\n\r\n"
            )
            events = await read_response(stream)
        response, *data, eom = events
        assert isinstance(response, h11.Response)
        assert (b"transfer-encoding", b"chunked") in list(response.headers)
        assert sum(len(d.data) for d in data if isinstance(d, h11.Data)) == 300000
        assert isinstance(eom, h11.EndOfMessage)
        assert list(eom.headers) == [(b"x-checksum", b"done")]


async def test_expect_100_continue_relayed_from_upstream() -> None:
    async with backend() as b, run_proxy(simple_config({"bdgreeter": [b.address]})) as p:
        code, out, err = await curl(
            "-v", "--expect100-timeout", "30", "-H", "Host: bdgreeter", "-H",
            "Expect: 100-continue", "--data-binary", "x" * 5000, f"{p.url}/continue",
        )  # fmt: skip
        assert code == 0, err
        assert "HTTP/1.1 100" in err
        assert json.loads(out)["body_bytes"] == 5000


async def test_expect_100_continue_when_upstream_stays_silent() -> None:
    """The upstream never sends 100: the proxy does, so curl does not wait its 30 s."""
    async with backend() as b, run_proxy(simple_config({"bdgreeter": [b.address]})) as p:
        start = trio.current_time()
        code, out, err = await curl(
            "-v", "--expect100-timeout", "30", "-H", "Host: bdgreeter", "-H",
            "Expect: 100-continue", "--data-binary", "y" * 5000, f"{p.url}/silent",
        )  # fmt: skip
        assert code == 0, err
        assert json.loads(out)["body_bytes"] == 5000
        assert trio.current_time() - start < 10


async def test_websocket_upgrade_relays_raw_bytes_both_ways() -> None:
    async with backend() as b, run_proxy(simple_config({"bdgreeter": [b.address]})) as p:
        stream = await trio.open_tcp_stream("127.0.0.1", p.port)
        with trio.fail_after(10):
            await stream.send_all(
                b"GET /ws HTTP/1.1\r\nHost: bdgreeter\r\nConnection: Upgrade\r\n"
                b"Upgrade: websocket\r\n\r\nhello"
            )
            got = b""
            while b"echo:hello" not in got:
                got += await stream.receive_some(4096)
            assert got.startswith(b"HTTP/1.1 101")
            assert b"upgrade: websocket" in got.lower()
            await stream.send_all(b"more")
            got = b""
            while b"echo:more" not in got:
                got += await stream.receive_some(4096)
            await stream.send_eof()
            assert await read_all(stream) == b""
            await stream.aclose()
        assert b.connections == 1


async def test_access_log_event_per_request() -> None:
    async with backend() as b, run_proxy(simple_config({"bdgreeter": [b.address]})) as p:
        with capture_logs() as logs:
            async with httpx.AsyncClient(proxy=p.url, trust_env=False) as client:
                await client.post("http://bdgreeter/log", content=b"12345")
                await client.get("http://nosuch/")
    access = [e for e in logs if e["event"] == "access"]
    assert len(access) == 2
    ok, missing = access
    assert ok["status"] == 200
    assert ok["method"] == "POST"
    assert ok["authority"] == "bdgreeter"
    assert ok["path"] == "/log"
    assert ok["cluster"] == "bdgreeter"
    assert ok["upstream"] == f"127.0.0.1:{b.port}"
    assert ok["bytes_received"] > 5
    assert ok["bytes_sent"] > 0
    assert ok["cause"] is None
    assert len(ok["request_id"]) == 32
    assert ok["source"].startswith("127.0.0.1:")
    assert missing["status"] == 404
    assert missing["cause"] == "unknown_service"
    assert missing["upstream"] is None
