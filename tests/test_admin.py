"""The admin API: pure handlers first, then the real listener with httpx and raw sockets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import httpx
import pytest
import structlog
import trio

from nodeproxy.admin import server as admin_server
from nodeproxy.admin.dump import REDACTED, config_dump, is_sensitive, to_jsonable
from nodeproxy.admin.handlers import ROUTES, AdminContext, AdminResponse, handle
from nodeproxy.admin.server import AdminServer, serve_admin
from nodeproxy.config.model import (
    AdminConfig,
    ClusterConfig,
    Config,
    EndpointConfig,
    HeaderMatch,
    ListenerConfig,
    RouteMatch,
    RouteRule,
    VirtualHost,
)
from nodeproxy.discovery.snapshot import static_snapshot
from nodeproxy.runtime import Runtime
from nodeproxy.stats import names as s
from nodeproxy.stats.prometheus import CONTENT_TYPE
from nodeproxy.stats.registry import labels
from tests.test_stats import parse_exposition

EP1 = EndpointConfig("127.0.0.1", 3000, MappingProxyType({"version": "v1"}), node="node-a")
EP2 = EndpointConfig("127.0.0.1", 3001, MappingProxyType({"version": "v2"}))


def make_config() -> Config:
    cluster = ClusterConfig(name="bdgreeter", endpoints=(EP1, EP2), connect_timeout=0.25)
    routes = (
        RouteRule(
            match=RouteMatch(headers=(HeaderMatch(name="authorization", exact="Bearer s3cr3t"),)),
            cluster="bdgreeter",
        ),
        RouteRule(match=RouteMatch(prefix="/"), cluster="bdgreeter"),
    )
    vhost = VirtualHost(name="bdgreeter", domains=("bdgreeter.default",), routes=routes)
    return Config(
        listeners=(ListenerConfig(name="outbound", port=0, virtual_hosts=(vhost,)),),
        clusters=MappingProxyType({"bdgreeter": cluster}),
        admin=AdminConfig(host="127.0.0.1", port=0),
    )


def make_runtime(*, ready: bool = True) -> Runtime:
    rt = Runtime(make_config())
    rt.endpoints.publish(static_snapshot(rt.config))
    rt.listeners_ready = ready
    return rt


def call(
    rt: Runtime, method: str, target: str, headers: dict[str, str] | None = None
) -> AdminResponse:
    return handle(AdminContext(rt, started_at=0.0), method, target, headers or {}, 42.0)


def header(resp: AdminResponse, name: str) -> str:
    return dict(resp.headers)[name]


# -- pure handlers -------------------------------------------------------------


def test_ready_says_why_it_is_not_ready() -> None:
    rt = Runtime(make_config())
    assert (call(rt, "GET", "/ready").status, call(rt, "GET", "/ready").text) == (
        503,
        "starting: listeners not ready\n",
    )
    rt.listeners_ready = True
    assert call(rt, "GET", "/ready").text == "starting: endpoints not synced\n"
    rt.endpoints.publish(static_snapshot(rt.config))
    ok = call(rt, "GET", "/ready")
    assert (ok.status, ok.text) == (200, "LIVE\n")
    rt.drain.start("SIGTERM")
    drained = call(rt, "GET", "/ready")
    assert (drained.status, drained.text) == (503, "draining: SIGTERM\n")
    assert call(rt, "GET", "/healthz").status == 200


def test_drain_is_post_only_and_refuses_cross_origin() -> None:
    rt = make_runtime()
    get = call(rt, "GET", "/drain")
    assert get.status == 405
    assert header(get, "allow") == "POST"
    assert not rt.drain.draining
    cross = call(rt, "POST", "/drain", {"origin": "http://evil.example"})
    assert cross.status == 403
    site = call(rt, "POST", "/drain", {"sec-fetch-site": "cross-site"})
    assert site.status == 403
    assert not rt.drain.draining
    resp = call(rt, "POST", "/drain")
    assert resp.status == 202
    assert "draining" in resp.text
    assert rt.drain.reason == "admin /drain"


def test_unknown_path_wrong_method_head_and_trailing_slash() -> None:
    rt = make_runtime()
    assert call(rt, "GET", "/nope").status == 404
    wrong = call(rt, "DELETE", "/stats")
    assert wrong.status == 405
    assert header(wrong, "allow") == "GET, HEAD"
    assert call(rt, "POST", "/ready").status == 405
    get, head = call(rt, "GET", "/ready"), call(rt, "HEAD", "/ready")
    assert head.body == b""
    assert header(head, "content-length") == header(get, "content-length") == "5"
    assert call(rt, "GET", "/ready/?verbose=1").status == 200


def test_index_lists_every_endpoint() -> None:
    page = call(make_runtime(), "GET", "/")
    assert header(page, "content-type").startswith("text/html")
    for path in ROUTES:
        assert f">{path}<" in page.text or f"{path}</code>" in page.text
    # The page is static (it always links /ready): readiness is drawn from
    # /dashboard.json, which must tell the two states apart.
    starting, serving = make_runtime(ready=False), make_runtime()
    for rt, shown in (
        (starting, (False, "starting: listeners not ready")),
        (serving, (True, "ready")),
    ):
        node = json.loads(call(rt, "GET", "/dashboard.json").body)["node"]
        assert (node["ready"], node["state"]) == shown


def test_prometheus_page_has_runtime_and_process_gauges() -> None:
    rt = make_runtime()
    rt.stats.inc(s.REQUESTS, labels(cluster="bdgreeter", code_class="2xx", listener="outbound"))
    rt.stats.observe(s.REQUEST_DURATION_MS, labels(cluster="bdgreeter"), 4.0)
    resp = call(rt, "GET", "/stats/prometheus")
    assert header(resp, "content-type") == CONTENT_TYPE
    types, samples = parse_exposition(resp.text)
    values = {(n, tuple(sorted(lbl.items()))): v for n, lbl, v in samples}
    assert values[("nodeproxy_ready", ())] == 1
    assert values[("nodeproxy_draining", ())] == 0
    assert values[("nodeproxy_uptime_seconds", ())] == 42
    assert values[("nodeproxy_cluster_endpoints", (("cluster", "bdgreeter"),))] == 2
    assert values[("nodeproxy_process_resident_memory_bytes", ())] > 1_000_000
    assert types["nodeproxy_process_cpu_seconds_total"] == "counter"
    assert types[s.REQUEST_DURATION_MS] == "histogram"
    alias = call(rt, "GET", "/stats?format=prometheus")
    assert header(alias, "content-type") == CONTENT_TYPE
    assert (
        alias.text.split("# HELP nodeproxy_process")[0]
        == resp.text.split("# HELP nodeproxy_process")[0]
    )


def test_stats_json() -> None:
    rt = make_runtime()
    rt.stats.inc(s.PROXY_ERRORS, labels(cause="connection_failure"), 3)
    rt.stats.observe(s.REQUEST_DURATION_MS, labels(cluster="bdgreeter"), 4.0)
    data = json.loads(call(rt, "GET", "/stats").body)
    assert data["counters"][s.PROXY_ERRORS] == [
        {"labels": {"cause": "connection_failure"}, "value": 3}
    ]
    (hist,) = data["histograms"][s.REQUEST_DURATION_MS]
    assert hist["count"] == 1
    assert 2.5 < hist["p50"] <= 5.0
    assert data["gauges"]["nodeproxy_ready"] == [{"labels": {}, "value": 1.0}]


def record_traffic(rt: Runtime) -> None:
    ce = {"cluster": "bdgreeter", "endpoint": EP1.address}
    rt.stats.inc(s.UPSTREAM_REQUESTS, labels(**ce, code_class="2xx"), 7)
    rt.stats.inc(s.UPSTREAM_REQUESTS, labels(**ce, code_class="5xx"), 1)
    rt.stats.inc(s.UPSTREAM_CONNECT_FAILURES, labels(cluster="bdgreeter", endpoint=EP2.address))
    rt.stats.inc(s.UPSTREAM_CONNECTIONS_OPENED, labels(**ce), 2)
    rt.stats.gauge_set(s.POOL_CONNECTIONS, labels(**ce, state="idle"), 1)
    rt.stats.gauge_set(s.POOL_CONNECTIONS, labels(**ce, state="active"), 1)
    rt.stats.inc(s.REQUESTS, labels(cluster="bdgreeter", code_class="2xx", listener="outbound"), 7)


def test_clusters_json_joins_config_snapshot_and_stats() -> None:
    rt = make_runtime()
    record_traffic(rt)
    data = json.loads(call(rt, "GET", "/clusters").body)
    assert data["snapshot_version"] == 1
    (cluster,) = data["clusters"]
    assert cluster["name"] == "bdgreeter"
    assert cluster["settings"]["connect_timeout"] == 0.25
    assert cluster["settings"]["lb_policy"] == "p2c_ewma"
    assert cluster["stats"] == {"rq_total": 7, "rq_2xx": 7}
    ep1, ep2 = cluster["endpoints"]
    assert ep1["address"] == "127.0.0.1:3000"
    assert ep1["labels"] == {"version": "v1"}
    assert ep1["node"] == "node-a"
    assert ep1["state"] == "active"
    assert ep1["stats"] == {
        "rq_total": 8,
        "rq_2xx": 7,
        "rq_5xx": 1,
        "cx_connect_fail": 0,
        "cx_total": 2,
        "cx_active": 1,
        "cx_idle": 1,
    }
    assert ep2["stats"]["cx_connect_fail"] == 1
    assert ep2["stats"]["rq_total"] == 0


def test_clusters_text_is_envoy_like() -> None:
    rt = make_runtime()
    record_traffic(rt)
    lines = call(rt, "GET", "/clusters?format=text").text.splitlines()
    assert "bdgreeter::127.0.0.1:3000::rq_total::8" in lines
    assert "bdgreeter::127.0.0.1:3000::rq_5xx::1" in lines
    assert "bdgreeter::127.0.0.1:3001::cx_connect_fail::1" in lines
    assert "bdgreeter::127.0.0.1:3000::label::version=v1" in lines
    assert "bdgreeter::connect_timeout::0.25" in lines
    assert all(line.count("::") >= 2 for line in lines)
    assert call(rt, "GET", "/clusters?format=xml").status == 400


def test_clusters_lists_discovered_clusters_not_in_config() -> None:
    rt = make_runtime()
    rt.endpoints.publish({**static_snapshot(rt.config), "extra": (EP2,)})
    names = [c["name"] for c in json.loads(call(rt, "GET", "/clusters").body)["clusters"]]
    assert names == ["bdgreeter", "extra"]


def test_config_dump_is_the_effective_config_with_secrets_redacted() -> None:
    dump = json.loads(call(make_runtime(), "GET", "/config_dump").body)
    assert dump["clusters"]["bdgreeter"]["connect_timeout"] == 0.25
    assert dump["clusters"]["bdgreeter"]["endpoints"][0]["labels"] == {"version": "v1"}
    assert dump["admin"] == {
        "host": "127.0.0.1",
        "port": 0,
        "allowed_hosts": [],
        "probe_host": "127.0.0.1",
        "probe_port": None,
    }
    rule = dump["listeners"][0]["virtual_hosts"][0]["routes"][0]
    (hdr,) = rule["match"]["headers"]
    assert hdr["name"] == "authorization"
    assert hdr["exact"] == REDACTED
    assert hdr["prefix"] is None
    assert "s3cr3t" not in json.dumps(dump)


@pytest.mark.parametrize(
    ("name", "sensitive"),
    [
        ("api_key", True),
        ("private_key", True),
        ("clientSecret", True),
        ("x-auth-token", True),
        ("Password", True),
        ("authorization", True),
        ("cookie", True),
        ("keepalive_timeout", False),
        ("monkey", False),
        ("tokenizer", False),
        ("connect_timeout", False),
        ("version", False),
    ],
)
def test_sensitive_names(name: str, sensitive: bool) -> None:
    assert is_sensitive(name) is sensitive


@dataclass(frozen=True)
class FakeTLS:
    cert_file: str
    private_key: str
    password: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def test_redaction_rule_on_fields_keys_and_nested_objects() -> None:
    tls = FakeTLS(
        cert_file="/etc/cert.pem",
        private_key="-----BEGIN KEY-----",
        extra={"apiToken": "t", "region": "eu", "secrets": {"a": "b"}, "inf": float("inf")},
    )
    out = to_jsonable({"token-cluster": tls, "labels": MappingProxyType({"password": "x"})})
    assert out == {
        "token-cluster": {  # a name keyed to a config object is kept
            "cert_file": "/etc/cert.pem",
            "private_key": REDACTED,
            "password": None,  # nothing set: nothing to hide, still shows it is unset
            "extra": {"apiToken": REDACTED, "region": "eu", "secrets": REDACTED, "inf": "+Inf"},
        },
        "labels": {"password": REDACTED},
    }
    assert config_dump(make_config())["source_format"] == "native"


# -- the real listener ---------------------------------------------------------


@pytest.fixture
async def admin(nursery: trio.Nursery) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    rt = make_runtime(ready=False)
    port = await nursery.start(serve_admin, rt)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
        yield rt, client


async def test_ready_flips_on_listeners_and_on_post_drain(
    admin: tuple[Runtime, httpx.AsyncClient],
) -> None:
    rt, client = admin
    r = await client.get("/ready")
    assert (r.status_code, r.text) == (503, "starting: listeners not ready\n")
    rt.listeners_ready = True
    r = await client.get("/ready")
    assert (r.status_code, r.text) == (200, "LIVE\n")
    assert (await client.get("/drain")).status_code == 405
    r = await client.post("/drain")
    assert (r.status_code, rt.drain.draining) == (202, True)
    r = await client.get("/ready")
    assert (r.status_code, r.text) == (503, "draining: admin /drain\n")
    assert (await client.get("/healthz")).status_code == 200


async def test_stats_and_clusters_over_http_follow_updates(
    admin: tuple[Runtime, httpx.AsyncClient],
) -> None:
    rt, client = admin
    r = await client.get("/stats/prometheus")
    assert r.headers["content-type"] == CONTENT_TYPE
    parse_exposition(r.text)
    assert "nodeproxy_ready 0\n" in r.text
    before = (await client.get("/clusters")).json()
    assert before["clusters"][0]["endpoints"][0]["stats"]["rq_total"] == 0
    record_traffic(rt)
    after = (await client.get("/clusters")).json()
    assert after["clusters"][0]["endpoints"][0]["stats"]["rq_total"] == 8
    text = (await client.get("/clusters", params={"format": "text"})).text
    assert "bdgreeter::127.0.0.1:3000::rq_2xx::7\n" in text
    r = await client.get("/stats/prometheus")
    assert 'nodeproxy_upstream_requests_total{cluster="bdgreeter",code_class="2xx"' in r.text
    assert (await client.get("/config_dump")).json()["clusters"]["bdgreeter"]["name"] == "bdgreeter"
    assert (await client.get("/missing")).status_code == 404
    assert (await client.put("/stats")).status_code == 405
    assert (await client.head("/")).status_code == 200


async def raw_exchange(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        chunks = []
        while chunk := await stream.receive_some(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_oversized_header_and_body_and_garbage(nursery: trio.Nursery) -> None:
    rt = make_runtime()
    port = await nursery.start(serve_admin, rt)
    big = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    assert (await raw_exchange(port, big)).startswith(b"HTTP/1.1 431 ")
    body = b"x" * (admin_server.MAX_BODY_BYTES + 1)
    post = b"POST /drain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(body)
    assert (await raw_exchange(port, post + body)).startswith(b"HTTP/1.1 413 ")
    chunked = b"POST /drain HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    assert (await raw_exchange(port, chunked)).startswith(b"HTTP/1.1 413 ")
    assert not rt.drain.draining
    assert (await raw_exchange(port, b"NOT HTTP AT ALL\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    keepalive = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 2
    last = b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    out = await raw_exchange(port, keepalive + last)
    assert out.count(b"HTTP/1.1 200 OK") == 3
    assert out.endswith(b"LIVE\n")


async def test_slow_headers_are_cut_off(nursery: trio.Nursery, autojump_clock: Any) -> None:
    port = await nursery.start(serve_admin, make_runtime())
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        start = trio.current_time()
        await stream.send_all(b"GET / HTTP/1.1\r\nHo")
        assert await stream.receive_some(1024) == b""
        assert trio.current_time() - start >= admin_server.HEADER_TIMEOUT


async def test_connection_cap(nursery: trio.Nursery) -> None:
    server = AdminServer(AdminContext(make_runtime(), started_at=0.0))
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, server.handle_connection, listeners)
    held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(server_cap())]
    for _ in range(1000):
        if server.active == server_cap():
            break
        await trio.lowlevel.checkpoint()
    assert server.active == server_cap()
    refused = await raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert refused.startswith(b"HTTP/1.1 503 ")
    assert server.rejected == 1
    assert "64/64 connections, 1 rejected" in repr(server)
    await held.pop().aclose()
    for _ in range(1000):
        if server.active < server_cap():
            break
        await trio.lowlevel.checkpoint()
    ok = await raw_exchange(
        port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    assert ok.startswith(b"HTTP/1.1 200 ")
    for stream in held:
        await stream.aclose()


def server_cap() -> int:
    return admin_server.MAX_CONNECTIONS


async def test_expect_continue_then_drain(nursery: trio.Nursery) -> None:
    rt = make_runtime()
    port = await nursery.start(serve_admin, rt)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            b"POST /drain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        assert (await stream.receive_some(1024)).startswith(b"HTTP/1.1 100 Continue\r\n")
        assert not rt.drain.draining
        await stream.send_all(b"hello")
        assert (await stream.receive_some(1024)).startswith(b"HTTP/1.1 202 ")
    assert rt.drain.draining


async def test_a_failing_handler_answers_500_and_the_server_lives_on(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(ctx: AdminContext, req: Any) -> AdminResponse:
        raise RuntimeError("bug")

    monkeypatch.setitem(ROUTES, "/healthz", replace(ROUTES["/healthz"], handler=broken))
    port = await nursery.start(serve_admin, make_runtime())
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
        with structlog.testing.capture_logs() as logs:
            assert (await client.get("/healthz")).status_code == 500
        assert logs[0]["event"] == "admin_handler_failed"
        assert (await client.get("/ready")).status_code == 200
