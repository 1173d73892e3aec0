"""Local rate limits end to end, and the native ``retries``/``rate_limit``/``fairness`` sections.

A route's bucket answers 429 with ``Retry-After`` once its burst is spent and
the backend never sees the refused requests; a listener's per-source bucket
keeps one calling pod (127.0.0.2) from spending another's (127.0.0.3)
allowance. Rates are tiny (no refill during a test) so the counts are exact
without any clock.
"""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest
import trio

from nodeproxy.config import load_config_text
from nodeproxy.config.model import (
    BucketConfig,
    Config,
    FairnessConfig,
    RateLimitConfig,
    RetryConfig,
)
from nodeproxy.errors import ConfigError
from nodeproxy.stats.names import RATE_LIMITED
from nodeproxy.stats.registry import labels
from tests.helpers.backends import ProxyHandle, backend, run_proxy, simple_config


def client_from(proxy: ProxyHandle, source_ip: str = "127.0.0.1") -> httpx.AsyncClient:
    """Requests to the proxy (``Host: svc``) over connections from ``source_ip``."""
    transport = httpx.AsyncHTTPTransport(local_address=source_ip)
    return httpx.AsyncClient(
        transport=transport, base_url=proxy.url, headers={"host": "svc"}, timeout=10
    )


def with_route_limit(config: Config, limit: RateLimitConfig) -> Config:
    listener = config.listeners[0]
    vhosts = tuple(
        replace(vh, routes=tuple(replace(r, rate_limit=limit) for r in vh.routes))
        for vh in listener.virtual_hosts
    )
    return replace(config, listeners=(replace(listener, virtual_hosts=vhosts),))


async def test_route_limit_answers_429_with_retry_after_after_the_burst() -> None:
    async with backend() as b:
        limit = RateLimitConfig(total=BucketConfig(requests_per_second=0.5, burst=3))
        config = with_route_limit(simple_config({"svc": [b.address]}), limit)
        async with run_proxy(config) as p, client_from(p) as c:
            with trio.fail_after(10):
                statuses = [(await c.get("/x")).status_code for _ in range(3)]
                r = await c.get("/x")
            assert statuses == [200, 200, 200]
            assert r.status_code == 429
            assert r.headers["x-nodeproxy-error"] == "rate_limited"
            assert r.headers["retry-after"] == "2"  # one token at 0.5/s, rounded up
            assert r.text == "local_rate_limited\n"
            assert len(b.requests) == 3  # the refused request never left the proxy
            stats = p.runtime.stats
            assert (
                stats.counter(
                    RATE_LIMITED, labels(listener="outbound", scope="route", source="127.0.0.1")
                )
                == 1
            )


async def test_per_source_limit_separates_calling_pods() -> None:
    async with backend() as b:
        config = simple_config({"svc": [b.address]})
        per_source = RateLimitConfig(per_source=BucketConfig(requests_per_second=0.01, burst=2))
        listener = replace(config.listeners[0], rate_limit=per_source)
        config = replace(config, listeners=(listener,))
        async with (
            run_proxy(config) as p,
            client_from(p, "127.0.0.2") as flooder,
            client_from(p, "127.0.0.3") as polite,
        ):
            with trio.fail_after(10):
                first = [(await flooder.get("/x")).status_code for _ in range(4)]
                second = [(await polite.get("/x")).status_code for _ in range(2)]
                refused = await flooder.get("/x")
            assert first == [200, 200, 429, 429]
            assert second == [200, 200]  # 127.0.0.2's flood did not spend 127.0.0.3's tokens
            assert refused.status_code == 429
            assert 99 <= int(refused.headers["retry-after"]) <= 100
            assert len(b.requests) == 4
            stats = p.runtime.stats
            assert (
                stats.counter(
                    RATE_LIMITED, labels(listener="outbound", scope="listener", source="127.0.0.2")
                )
                == 3
            )


NATIVE = """
listeners:
  - address: 127.0.0.1:0
    rate_limit: {per_source: {requests_per_second: 50, burst: 100}}
fairness: {max_concurrent_per_source: 8, max_queue_per_source: 4, max_wait: 250ms}
services:
  - name: svc
    endpoints: [127.0.0.1:8080]
    routes:
      - match: {prefix: /}
        service: svc
        retries:
          retry_on: 5xx,reset
          num_retries: 2
          per_try_timeout: 1s
          backoff: {base: 10ms, max: 100ms}
          budget: {percent: 50, min_concurrency: 1}
        rate_limit: {requests_per_second: 10}
"""


def test_native_sections_load() -> None:
    config = load_config_text(NATIVE)
    listener = config.listeners[0]
    assert listener.rate_limit == RateLimitConfig(per_source=BucketConfig(50.0, 100))
    assert config.fairness == FairnessConfig(
        max_concurrent_per_source=8, max_queue_per_source=4, max_wait=0.25
    )
    rule = listener.virtual_hosts[0].routes[0]
    assert rule.retries == RetryConfig(
        retry_on=("5xx", "reset"),
        num_retries=2,
        per_try_timeout=1.0,
        backoff_base=0.01,
        backoff_max=0.1,
        budget_ratio=0.5,
        budget_min_concurrency=1,
    )
    assert rule.rate_limit == RateLimitConfig(total=BucketConfig(10.0, 10))  # burst: 1 s worth


@pytest.mark.parametrize(
    ("section", "field", "words"),
    [
        ("retries: {retry_on: [5xx, sometimes]}", "retries.retry_on[1]", "unsupported"),
        ("retries: {retry_on: '5xx,never'}", "retries.retry_on", "unsupported"),
        ("retries: {num_retries: 11}", "retries.num_retries", "<= 10"),
        ("retries: {backoff: {base: 1s, max: 10ms}}", "retries.backoff.max", ">= backoff.base"),
        ("retries: {budget: {percent: 150}}", "retries.budget.percent", "between"),
        ("retries: {tries: 3}", "retries.tries", "unknown"),
        ("rate_limit: {burst: 3}", "rate_limit", "requests_per_second"),
        ("rate_limit: {}", "rate_limit", "per_source"),
        ("rate_limit: {requests_per_second: fast}", "rate_limit.requests_per_second", "number"),
    ],
)
def test_route_section_errors_name_the_field(section: str, field: str, words: str) -> None:
    text = (
        "services:\n  - name: svc\n    endpoints: [127.0.0.1:8080]\n"
        f"    routes:\n      - service: svc\n        {section}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    assert info.value.field.endswith(field)
    assert words in info.value.message
