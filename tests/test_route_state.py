"""Route-level state is the process's, not a listener's: one bucket and one budget per route.

Every listener of a native config serves the same routes, so a route's
``rate_limit`` and its retry budget must be shared by all of them: a burst of
1 admits one request in the whole proxy, whichever port it came in on. A
listener's own ``rate_limit`` stays per listener. Two listeners are served
from one ``Runtime`` as ``app.py`` does; rates are tiny so no token refills
during a test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import trio

from nodeproxy.config import load_config_text
from nodeproxy.config.model import Config
from nodeproxy.discovery.snapshot import static_snapshot
from nodeproxy.pipeline import Pipeline
from nodeproxy.runtime import Runtime
from nodeproxy.server.listener import serve_listener
from nodeproxy.stats.names import RETRIES_OVERFLOW
from nodeproxy.upstream.pool import Upstreams
from tests.helpers.backends import backend, free_port


@dataclass
class TwoListeners:
    runtime: Runtime
    ports: list[int]


@asynccontextmanager
async def run_listeners(config: Config) -> AsyncIterator[TwoListeners]:
    """Every listener of ``config`` on one runtime and one pool, as the app runs them."""
    runtime = Runtime(config)
    runtime.endpoints.publish(static_snapshot(config))
    upstreams = Upstreams(runtime)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(upstreams.run)
        ports = [
            await nursery.start(serve_listener, runtime, lc, Pipeline(runtime, lc, upstreams))
            for lc in config.listeners
        ]
        yield TwoListeners(runtime, ports)
        nursery.cancel_scope.cancel()
    upstreams.close_idle()


def two_listener_config(
    address: str, route_extra: str, listener_extra: str = "", more_endpoints: tuple[str, ...] = ()
) -> Config:
    """Listeners ``a`` and ``b``, one round-robin service ``svc`` with one route."""
    endpoints = ", ".join(f'{{address: "{a}"}}' for a in [address, *more_endpoints])
    return load_config_text(f"""
listeners:
  - {{name: a, address: "127.0.0.1:0"{listener_extra}}}
  - {{name: b, address: "127.0.0.1:0"{listener_extra}}}
services:
  - name: svc
    lb_policy: round_robin
    endpoints: [{endpoints}]
    routes:
      - service: svc
{route_extra}
""")


async def get(port: int, path: str = "/x") -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as c:
        return await c.get(f"http://127.0.0.1:{port}{path}", headers={"host": "svc"})


async def test_a_route_burst_of_one_is_one_request_whatever_the_listener() -> None:
    async with backend() as b:
        extra = "        rate_limit: {requests_per_second: 0.001, burst: 1}"
        config = two_listener_config(f"127.0.0.1:{b.port}", extra)
        async with run_listeners(config) as p:
            a_port, b_port = p.ports
            with trio.fail_after(10):
                first = await get(a_port)
                second = await get(b_port)
                third = await get(a_port)
            assert first.status_code == 200
            assert second.status_code == 429  # the route's only token went to listener a
            assert second.headers["x-nodeproxy-error"] == "rate_limited"
            assert third.status_code == 429
            assert len(b.requests) == 1


async def test_a_listener_limit_stays_per_listener() -> None:
    async with backend() as b:
        listener_limit = ", rate_limit: {requests_per_second: 0.001, burst: 1}"
        config = two_listener_config(f"127.0.0.1:{b.port}", "", listener_limit)
        async with run_listeners(config) as p:
            a_port, b_port = p.ports
            with trio.fail_after(10):
                statuses = [(await get(port)).status_code for port in (a_port, b_port, a_port)]
            assert statuses == [200, 200, 429]  # each listener has its own bucket


async def test_a_route_retry_budget_is_shared_by_listeners() -> None:
    # budget: one retry in flight for the route; the first request's retry holds it
    async with backend() as good:
        refused = free_port()
        extra = (
            "        retries: {num_retries: 1, backoff: {base: 1ms, max: 1ms},"
            " budget: {percent: 0, min_concurrency: 1}}"
        )
        config = two_listener_config(
            f"127.0.0.1:{refused}", extra, more_endpoints=(f"127.0.0.1:{good.port}",)
        )
        async with run_listeners(config) as p, trio.open_nursery() as nursery:
            a_port, b_port = p.ports
            answers: list[httpx.Response] = []

            async def waiting() -> None:
                answers.append(await get(a_port, "/wait"))

            with trio.fail_after(10):
                nursery.start_soon(waiting)  # refused, then retried onto /wait: holds the slot
                await good.arrived.wait()
                second = await get(b_port, "/wait")  # refused; no retry left in the budget
                good.release.set()
            assert second.status_code == 503
            assert second.headers["x-nodeproxy-error"] == "connection_failure"
            assert len(good.requests) == 1
            stats = p.runtime.stats
            assert stats.sum_counter(RETRIES_OVERFLOW, cluster="svc", threshold="budget") == 1
        assert [r.status_code for r in answers] == [200]
