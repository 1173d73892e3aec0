"""Envoy files behave as Envoy: real replicas on loopback, the real data path.

The article's envoy.yaml runs unchanged but for its addresses; then one
behaviour per test, each written as an Envoy file and checked by what the
client and the replicas see: no ejection without ``outlier_detection`` (and
Envoy's 10 % cap with it), no retries without ``retry_policy``, retries on
``retriable_status_codes``, routing on query parameters and regex paths,
and the local rate limit filter.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from nodeproxy.config import load_config_text
from nodeproxy.demo.greeter import serve_greeter
from tests.helpers.backends import backend, run_proxy
from tests.helpers.envoy_docs import bootstrap, cluster, load
from tests.helpers.proc import running_nodeproxy
from tests.helpers.replicas import Replica, keep_alive, replicas

ARTICLE = Path(__file__).parent.parent / "examples" / "envoy" / "envoy.yaml"


def on_loopback(upstream_port: int) -> str:
    """The article's file with only its addresses changed."""
    text = ARTICLE.read_text()
    for old, new in (
        ("address: 172.17.0.1", "address: 127.0.0.1"),
        ("port_value: 3000", f"port_value: {upstream_port}"),
        ("port_value: 80\n", "port_value: 0\n"),
        ("port_value: 8081", "port_value: 0"),
        ("address: 0.0.0.0", "address: 127.0.0.1"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    return text


async def test_the_article_file_runs_unchanged_with_envoys_semantics() -> None:
    async with backend() as upstream:
        config = load_config_text(on_loopback(upstream.port), {})
        assert config.warnings == ()
        async with run_proxy(config) as proxy, httpx.AsyncClient(base_url=proxy.url) as client:
            ok = await client.get("/hello/Magalixcorp", headers={"x-forwarded-for": "10.0.0.9"})
            assert ok.status_code == 200
            seen = {k.lower(): v for k, v in ok.json()["headers"]}
            assert seen["x-forwarded-for"] == "10.0.0.9"  # use_remote_address false: untouched
            assert "via" not in seen  # via unset: none added upstream
            assert "via" not in ok.headers  # nor downstream
            miss = await client.get("/nothere")
            assert (miss.status_code, miss.headers["x-nodeproxy-error"]) == (404, "no_route")
        async with run_proxy(config) as proxy, keep_alive(proxy.port) as c:
            upgrade = [("connection", "upgrade"), ("upgrade", "websocket")]
            status, _, _ = await c.get("x", "/hello/ws", upgrade)
            assert status == 403  # no upgrade_configs: Envoy answers 403


async def test_the_article_file_runs_as_a_process_with_the_greeter(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    port = await nursery.start(partial(serve_greeter, "127.0.0.1", 0, "article"))
    config = tmp_path / "envoy.yaml"
    config.write_text(on_loopback(port))
    async with running_nodeproxy("run", "--config", str(config), "--log-format", "json") as proxy:
        listener = proxy.listener_ports["listener_0"]
        curl = await trio.run_process(
            ["curl", "-sS", "-X", "POST", "-d", '{"dateOfBirth":"1990-01-15"}',
             f"http://127.0.0.1:{listener}/hello/Magalixcorp"],
            capture_stdout=True,
        )  # fmt: skip
        assert b"Hello, Magalixcorp!" in curl.stdout


def two(good: Replica, bad: Replica, **kw: Any) -> dict[str, Any]:
    return bootstrap(ports=(good.port, bad.port), **kw)


async def test_no_outlier_detection_no_ejection() -> None:
    """As Envoy: round robin sends ~30 of 60 requests to a failing host without it."""
    good, bad = Replica("good"), Replica("bad", status=500)
    async with replicas(good, bad):
        config = load(two(good, bad))
        async with run_proxy(config) as p, keep_alive(p.port) as c:
            statuses = [(await c.get("x"))[0] for _ in range(60)]
    assert statuses.count(500) == 30
    assert bad.requests == 30


async def test_outlier_detection_ejects_within_envoys_max_ejection_percent() -> None:
    good, bad = Replica("good"), Replica("bad", status=500)
    async with replicas(good, bad):
        capped = load(two(good, bad, first={"outlier_detection": {"consecutive_5xx": 3}}))
        async with run_proxy(capped) as p, keep_alive(p.port) as c:
            for _ in range(20):
                await c.get("x")
        assert bad.requests == 10  # 1 of 2 hosts is 50 % > Envoy's default 10 %: never ejected
        bad.requests = 0
        allowed = load(two(good, bad, first={"outlier_detection": {
            "consecutive_5xx": 3, "max_ejection_percent": 50}}))  # fmt: skip
        async with run_proxy(allowed) as p, keep_alive(p.port) as c:
            for _ in range(20):
                await c.get("x")
        assert bad.requests == 3


async def test_retries_only_with_a_retry_policy() -> None:
    good, bad = Replica("good"), Replica("bad", status=503)
    async with replicas(bad, good):
        plain = load(bootstrap(ports=(bad.port, good.port)))
        async with run_proxy(plain) as p, keep_alive(p.port) as c:
            assert (await c.get("x"))[0] == 503  # round robin starts with bad: no retry
        assert (bad.requests, good.requests) == (1, 0)
        policy = {"retry_policy": {"retry_on": "5xx", "num_retries": 1}}
        retried = load(bootstrap(ports=(bad.port, good.port), action=policy))
        async with run_proxy(retried) as p, keep_alive(p.port) as c:
            assert (await c.get("x"))[0] == 200
        assert (bad.requests, good.requests) == (2, 1)


async def test_retriable_status_codes() -> None:
    good, busy = Replica("good"), Replica("busy", status=409)
    async with replicas(busy, good):
        policy = {"retry_policy": {"retry_on": "retriable-status-codes",
                                   "retriable_status_codes": [409]}}  # fmt: skip
        config = load(bootstrap(ports=(busy.port, good.port), action=policy))
        async with run_proxy(config) as p, keep_alive(p.port) as c:
            status, headers, _ = await c.get("x")
        assert (status, headers["x-replica"]) == (200, "good")
        assert busy.requests == 1


async def test_routing_on_query_parameters_and_regex_paths() -> None:
    v1, v2, rx = Replica("v1"), Replica("v2"), Replica("rx")
    async with replicas(v1, v2, rx):
        routes = [
            {"match": {"prefix": "/", "query_parameters": [
                {"name": "v", "string_match": {"exact": "2"}}]}, "route": {"cluster": "b"}},
            {"match": {"safe_regex": {"regex": "/items/[0-9]+"}}, "route": {"cluster": "c"}},
            {"match": {"prefix": "/API", "case_sensitive": False}, "route": {"cluster": "c"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "a"}},
        ]  # fmt: skip
        config = load(bootstrap(
            ports=(v1.port,), vhost={"routes": routes},
            clusters=(cluster("b", v2.port), cluster("c", rx.port)),
        ))  # fmt: skip
        async with run_proxy(config) as p, keep_alive(p.port) as c:
            picks = {}
            for path in ("/?v=2", "/?v=21", "/?x=1&v=2", "/items/42", "/items/x", "/api/a", "/"):
                picks[path] = (await c.get("x", path))[1]["x-replica"]
    assert picks == {
        "/?v=2": "v2", "/?v=21": "v1", "/?x=1&v=2": "v2", "/items/42": "rx",
        "/items/x": "v1", "/api/a": "rx", "/": "v1",
    }  # fmt: skip


async def test_the_local_rate_limit_filter() -> None:
    r = Replica("r")
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    limit = {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3."
            "LocalRateLimit",
            "stat_prefix": "rl",
            "token_bucket": {"max_tokens": 2, "tokens_per_fill": 1, "fill_interval": "60s"},
            "filter_enabled": always,
            "filter_enforced": always,
        },
    }
    async with replicas(r):
        config = load(bootstrap(ports=(r.port,), hcm={"http_filters": [
            limit, {"name": "envoy.filters.http.router"}]}))  # fmt: skip
        async with run_proxy(config) as p, keep_alive(p.port) as c:
            statuses = [(await c.get("x"))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert r.requests == 2


async def test_run_logs_each_ignored_field_once_at_start(tmp_path: Path) -> None:
    config = tmp_path / "envoy.yaml"
    config.write_text(on_loopback(1) + "tracing: {}\nstats_flush_interval: 5s\n")
    async with running_nodeproxy("run", "--config", str(config), "--log-format", "json") as proxy:
        ignored = [line for line in proxy.lines if line["event"] == "config_field_ignored"]
        proxy.signal()
        assert await proxy.wait_exit() == 0
    assert [line["detail"].split(" (line")[0] for line in ignored] == [
        "tracing",
        "stats_flush_interval",
    ]
    assert all(line["level"] == "warning" for line in ignored)
