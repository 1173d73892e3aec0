"""Pools and per-endpoint metric series of endpoints that left discovery are forgotten.

The sweep's rules as a table (pure), then the real app against the fake API
server on trio's mock clock: a pod that left for good loses its pool and its
Prometheus series after ``endpoint_grace``; one that flaps keeps both.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from nodeproxy.config.model import EndpointConfig
from nodeproxy.discovery.snapshot import EndpointRegistry
from nodeproxy.upstream.prune import Presence, Sweep
from tests.fakes.apiserver import FakeApiServer, fake_apiserver
from tests.fakes.k8s_objects import endpoint, endpoint_slice, node
from tests.test_k8s_wiring import POD_A, POD_B, app, backends, greeter_objects, kubeconfig


@pytest.mark.parametrize(
    ("sweeps", "dropped"),
    [
        # (now, present, busy) per sweep of one entry; which sweeps drop it
        ([(0, False, False), (30, False, False), (60, False, False)], [60]),
        ([(0, False, False), (30, True, False), (60, False, False), (90, False, False)], []),
        ([(0, False, False), (60, False, True), (90, False, False)], [90]),  # lent out: waits
        ([(0, True, False), (100, True, False)], []),
    ],
)
def test_sweep_drops_after_the_grace_and_forgets_a_flap(
    sweeps: list[tuple[float, bool, bool]], dropped: list[float]
) -> None:
    sweep: Sweep[Hashable] = Sweep(grace=60)
    out = []
    for now, present, busy in sweeps:
        key: Hashable = ("c", "10.0.0.1:80")
        if sweep.due(now, [(key, present, busy)]):
            out.append(now)
    assert out == dropped


def test_presence_against_one_snapshot() -> None:
    registry = EndpointRegistry()
    registry.publish({"a": (EndpointConfig("10.0.0.1", 80, node="n1"),), "b": ()})
    present = Presence(registry.current())
    assert present.has("a", "10.0.0.1:80")
    assert not present.has("a", "10.0.0.2:80")
    assert not present.has("gone", "10.0.0.1:80")
    assert present.has_node("n1")
    assert not present.has_node("n2")


@pytest.fixture
def clock() -> trio.testing.MockClock:
    # Each listener's sweeper wakes every 50 ms, so no jump is ever longer than that: a
    # short threshold only makes the virtual minutes pass sooner.
    return trio.testing.MockClock(autojump_threshold=0.002)


def series_of(metrics: str, address: str) -> list[str]:
    return [line for line in metrics.splitlines() if f'endpoint="{address}"' in line]


def only(api: FakeApiServer, ip: str, port: int) -> None:
    api.modify("endpointslices", endpoint_slice("bdgreeter-x", "bdgreeter", [
        endpoint(ip, node="node-1", pod="bd-a")], ports=[("http", port)]))  # fmt: skip


async def test_endpoints_that_left_lose_pool_and_series_flapping_ones_keep_them(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with fake_apiserver() as api, backends(POD_A, POD_B) as (a, b):
        greeter_objects(api, a.port, ("node-1", "node-1"))
        api.add("nodes", node("node-1", "127.0.0.1"))
        only(api, POD_A, a.port)
        text = f"""
node_name: node-1
listeners: [{{address: "127.0.0.1:0"}}]
admin: {{address: "127.0.0.1:0"}}
discovery:
  kubernetes: {{kubeconfig: {kubeconfig(tmp_path / "kc", api)}, endpoint_grace: 20s}}
"""
        # Connection: close -- an open keep-alive connection's 50 ms sweeper would wake the
        # mock clock twenty times a virtual second
        close = {"connection": "close"}
        greeter = {"host": "bdgreeter", **close}
        async with app(text) as handle, httpx.AsyncClient(headers=close) as client:
            eps = handle.runtime.endpoints
            url = f"http://127.0.0.1:{handle.listener_ports['outbound']}/hello"
            prom = f"http://127.0.0.1:{handle.admin_port}/stats/prometheus"
            with trio.fail_after(10):
                while not eps.synced:  # noqa: ASYNC110 -- another task publishes
                    await trio.sleep(0.1)
            assert (await client.get(url, headers=greeter)).status_code == 200
            addr_a = f"{POD_A}:{a.port}"
            assert series_of((await client.get(prom)).text, addr_a)

            # a flap: gone for 16 s (a sweep every 15 s sees it), back before the grace ends
            only(api, POD_B, a.port)
            await trio.sleep(16)
            assert [e.host for e in eps.current().endpoints("bdgreeter")] == [POD_B]
            only(api, POD_A, a.port)
            await trio.sleep(40)
            assert series_of((await client.get(prom)).text, addr_a)

            # gone for good: after the grace, at the latest one sweep later, they go
            only(api, POD_B, a.port)
            await trio.sleep(15)
            assert series_of((await client.get(prom)).text, addr_a)  # still in its grace
            await trio.sleep(35)
            metrics = (await client.get(prom)).text
            assert series_of(metrics, addr_a) == []
            assert (await client.get(url, headers=greeter)).status_code == 200
            assert series_of((await client.get(prom)).text, f"{POD_B}:{a.port}")
            assert len(b.requests) == 1  # same port on another loopback address
