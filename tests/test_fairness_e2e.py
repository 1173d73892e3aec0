"""Per-source fairness end to end: a flooding pod cannot starve its neighbour.

The backend's ``/wait`` holds every request until the test releases it, so the
flooder (30 concurrent requests from 127.0.0.2) keeps its slots as long as we
like while the polite client (127.0.0.3) makes ordinary requests. The cluster
allows only 8 upstream connections: without fairness the flood takes all of
them and the polite client is refused (the control); with a cap of 4 per source
the polite client's success rate stays 100 % and its latency small, the
flooder's excess waits in its own bounded queue (woken as its slots free up)
or is refused at once with 503 ``source_overloaded``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import httpx
import trio

from nodeproxy.config.model import Config, FairnessConfig
from nodeproxy.stats.names import FAIRNESS_QUEUED, FAIRNESS_REJECTED
from nodeproxy.stats.registry import labels
from tests.helpers.backends import Backend, ProxyHandle, backend, run_proxy, simple_config

FLOOD = 30


def client_from(proxy: ProxyHandle, source_ip: str) -> httpx.AsyncClient:
    """Requests to the proxy (``Host: svc``) over connections from ``source_ip``."""
    return httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(local_address=source_ip),
        base_url=proxy.url,
        headers={"host": "svc"},
        limits=httpx.Limits(max_connections=FLOOD + 1),
        timeout=10,
    )


def config_for(b: Backend, fairness: FairnessConfig | None) -> Config:
    config = simple_config(
        {"svc": [b.address]}, max_connections_per_endpoint=8, connect_timeout=0.3
    )
    return replace(config, fairness=fairness)


async def flood(proxy: ProxyHandle, results: list[httpx.Response]) -> None:
    """FLOOD concurrent slow requests from 127.0.0.2; their answers land in ``results``."""
    async with client_from(proxy, "127.0.0.2") as c, trio.open_nursery() as nursery:
        for _ in range(FLOOD):

            async def one() -> None:
                results.append(await c.get("/wait"))

            nursery.start_soon(one)


async def until(condition: Callable[[], bool]) -> None:
    """Checkpoint until ``condition()`` holds (the caller bounds it with fail_after)."""
    while not condition():  # state of other tasks and sockets, not an event we own
        await trio.lowlevel.checkpoint()


async def polite_round(proxy: ProxyHandle, n: int) -> list[tuple[int, float]]:
    """``n`` sequential requests from 127.0.0.3: (status, seconds) each."""
    out = []
    async with client_from(proxy, "127.0.0.3") as c:
        for _ in range(n):
            start = trio.current_time()
            r = await c.get("/x")
            out.append((r.status_code, trio.current_time() - start))
    return out


async def test_without_fairness_a_flood_starves_the_polite_client() -> None:
    async with backend() as b, run_proxy(config_for(b, None)) as p:
        results: list[httpx.Response] = []
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood, p, results)
                await until(lambda: len(b.requests) >= 8)  # every upstream slot is the flood's
                polite = await polite_round(p, 1)
                b.release.set()
        assert polite[0][0] == 503  # the control: the next test fails without fairness


async def test_polite_source_keeps_full_success_and_low_latency_under_a_flood() -> None:
    fairness = FairnessConfig(max_concurrent_per_source=4, max_queue_per_source=4, max_wait=5.0)
    async with backend() as b, run_proxy(config_for(b, fairness)) as p:
        results: list[httpx.Response] = []
        stats = p.runtime.stats
        flood_labels = labels(listener="outbound", source="127.0.0.2")  # the polite one never waits
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood, p, results)
                # 4 in flight, 4 queued, the other 22 already refused
                await until(lambda: len(results) >= FLOOD - 8 and len(b.requests) >= 4)
                polite = await polite_round(p, 20)
                assert len(b.requests) == 4 + 20  # the flood never had more than 4 upstream
                assert stats.counter(FAIRNESS_QUEUED, flood_labels) == 0  # the queued 4 still wait
                b.release.set()  # the flood's slots free up: its queued tickets go next
        assert [status for status, _ in polite] == [200] * 20
        assert max(seconds for _, seconds in polite) < 0.5
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200] * 8 + [503] * (FLOOD - 8)
        refused = {r.headers["x-nodeproxy-error"] for r in results if r.status_code == 503}
        assert refused == {"source_overloaded"}
        assert stats.counter(FAIRNESS_QUEUED, flood_labels) == 4
        assert stats.counter(FAIRNESS_REJECTED, flood_labels) == FLOOD - 8
        assert stats.sum_counter(FAIRNESS_QUEUED, source="127.0.0.3") == 0
        flooder, polite_pod = p.runtime.sources.get("127.0.0.2"), p.runtime.sources.get("127.0.0.3")
        assert flooder is not None  # the admin dashboard's per-source table
        assert polite_pod is not None
        assert (flooder.requests, flooder.queued, flooder.fairness_rejected) == (
            FLOOD,
            4,
            FLOOD - 8,
        )
        assert (flooder.in_flight, flooder.throttled) == (0, FLOOD - 8)
        assert (polite_pod.requests, polite_pod.queued, polite_pod.throttled) == (20, 0, 0)


async def test_a_queued_request_gives_up_after_max_wait() -> None:
    fairness = FairnessConfig(max_concurrent_per_source=1, max_queue_per_source=1, max_wait=0.2)
    async with backend() as b, run_proxy(config_for(b, fairness)) as p:
        async with client_from(p, "127.0.0.2") as c:
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    first: list[httpx.Response] = []

                    async def hold() -> None:
                        first.append(await c.get("/wait"))

                    nursery.start_soon(hold)
                    await until(lambda: len(b.requests) == 1)
                    start = trio.current_time()
                    r = await c.get("/x")
                    waited = trio.current_time() - start
                    b.release.set()
                r2 = await c.get("/x")  # the slot came back: no leak in the books
        assert r.status_code == 503
        assert r.headers["x-nodeproxy-error"] == "source_overloaded"
        assert 0.15 < waited < 2.0
        assert first[0].status_code == 200
        assert r2.status_code == 200
