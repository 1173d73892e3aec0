"""Route retries end to end: real backends on loopback, a real HTTP client.

A replica that refuses connections is hidden by retries (each try picks again);
a 503 is retried only for requests that are safe to repeat; a POST whose body
was streamed is never sent twice; the retry budget caps retries; the per-try
timeout gives a stalled try up and the next try answers. Timeouts are small
real ones: these tests wait on loopback sockets (no autojump clock here).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import trio

from nodeproxy.config.model import Config, RetryConfig
from nodeproxy.stats.names import RETRIES, RETRIES_OVERFLOW
from tests.helpers.backends import backend, free_port, run_proxy, simple_config


def fast(**kw: Any) -> RetryConfig:
    """A retry policy with a 1-2 ms backoff (the tests wait on real sockets)."""
    return RetryConfig(backoff_base=0.001, backoff_max=0.002, **kw)


def with_retries(config: Config, retries: RetryConfig) -> Config:
    """``config`` with ``retries`` on every route."""
    listener = config.listeners[0]
    vhosts = tuple(
        replace(vh, routes=tuple(replace(r, retries=retries) for r in vh.routes))
        for vh in listener.virtual_hosts
    )
    return replace(config, listeners=(replace(listener, virtual_hosts=vhosts),))


def client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(proxy=url, trust_env=False)


async def test_retries_hide_a_replica_that_refuses_connections() -> None:
    async with backend() as good:
        eps = [("127.0.0.1", free_port()), good.address]
        config = with_retries(simple_config({"svc": eps}), fast(num_retries=2))
        async with run_proxy(config) as p, client(p.url) as c:
            with trio.fail_after(10):
                statuses = [(await c.get("http://svc/x")).status_code for _ in range(40)]
            assert statuses == [200] * 40
            retried = p.runtime.stats.sum_counter(RETRIES, cluster="svc", reason="connect_failure")
            assert retried >= 1  # the refusing replica was picked and skipped
            assert len(good.requests) == 40


async def test_without_retries_the_refusing_replica_shows() -> None:
    async with backend() as good:
        eps = [("127.0.0.1", free_port()), good.address]
        async with run_proxy(simple_config({"svc": eps})) as p, client(p.url) as c:
            with trio.fail_after(10):
                statuses = [(await c.get("http://svc/x")).status_code for _ in range(40)]
            assert 503 in statuses  # the control: the test above would fail without retries


async def test_a_503_is_retried_for_get_but_a_streamed_post_is_not_sent_twice() -> None:
    async with backend() as b:
        retries = fast(retry_on=("5xx",), num_retries=1)
        config = with_retries(simple_config({"svc": [b.address]}), retries)
        async with run_proxy(config) as p, client(p.url) as c:
            with trio.fail_after(10):
                r = await c.get("http://svc/status/503")
                assert r.status_code == 503
                assert len(b.requests) == 2  # tried, retried, the last answer relayed

                async def body() -> AsyncIterator[bytes]:
                    for _ in range(4):
                        yield b"x" * 70_000  # more than one read: streamed, not in hand

                r = await c.post("http://svc/status/503", content=body())
                assert r.status_code == 503
                assert len(b.requests) == 3  # once: the body is gone after the first try
                assert r.json()["body_bytes"] == 280_000


async def test_a_small_post_in_hand_is_retried_after_a_connect_failure_only() -> None:
    async with backend() as b:
        retries = fast(retry_on=("5xx",), num_retries=1)
        config = with_retries(
            simple_config({"svc": [("127.0.0.1", free_port()), b.address]}), retries
        )
        async with run_proxy(config) as p, client(p.url) as c:
            with trio.fail_after(10):
                for _ in range(6):  # every pick order: a refused try is repeated elsewhere
                    r = await c.post("http://svc/x", content=b"hello")
                    assert r.status_code == 200
                before = len(b.requests)
                r = await c.post("http://svc/status/503", content=b"hello")
                # a non-idempotent request whose body reached a backend is not repeated
                assert r.status_code == 503
                assert len(b.requests) == before + 1


async def test_the_retry_budget_limits_retries() -> None:
    config = simple_config({"svc": [("127.0.0.1", free_port())]})
    spent = fast(num_retries=3, budget_ratio=0.0, budget_min_concurrency=0)
    async with run_proxy(with_retries(config, spent)) as p, client(p.url) as c:
        with trio.fail_after(10):
            r = await c.get("http://svc/x")
        assert r.status_code == 503
        assert r.headers["x-nodeproxy-error"] == "connection_failure"
        stats = p.runtime.stats
        assert stats.sum_counter(RETRIES, cluster="svc", reason="connect_failure") == 0
        assert stats.sum_counter(RETRIES_OVERFLOW, cluster="svc", threshold="budget") == 1
    allowed = fast(num_retries=3)
    async with run_proxy(with_retries(config, allowed)) as p, client(p.url) as c:
        with trio.fail_after(10):
            r = await c.get("http://svc/x")
        assert r.status_code == 503
        stats = p.runtime.stats
        assert stats.sum_counter(RETRIES, cluster="svc", reason="connect_failure") == 3


async def test_per_try_timeout_gives_up_a_stalled_try_within_the_route_timeout() -> None:
    async with backend() as stalled, backend() as good:
        retries = fast(num_retries=3, per_try_timeout=0.1)
        config = simple_config({"svc": [stalled.address, good.address]}, rule_timeout=5.0)
        async with run_proxy(with_retries(config, retries)) as p, client(p.url) as c:
            with trio.fail_after(10):
                for _ in range(2):
                    # /stall never answers on either; the route timeout ends it all
                    start = trio.current_time()
                    r = await c.get("http://svc/stall")
                    assert r.status_code == 504
                    assert trio.current_time() - start < 2.0  # 4 tries x 0.1 s, not 5 s
            timeouts = p.runtime.stats.sum_counter(RETRIES, cluster="svc", reason="timeout")
            assert timeouts == 6
