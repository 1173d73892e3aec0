"""Retries learn and answer the right things: own outcomes, untried endpoints, failure in hand.

Each try reports its own outcome (a 500 is a 500 to the outlier detector, not
a reset); a retry goes to an endpoint this request has not tried yet (Envoy's
``previous_hosts`` retry host predicate) while one is left; and when the
``max_retries`` threshold or the retry budget refuses a retry the client gets
the failure in hand, never ``503 overloaded`` (Envoy counts
``upstream_rq_retry_overflow`` and returns the original answer). Outlier
ejection is configured out of reach where it would hide a refusing replica.
The sockets are real (loopback), so there is no mock clock here.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import httpx
import pytest
import trio

from nodeproxy.admin.handlers import AdminContext, handle
from nodeproxy.balancing.policies import POLICIES, untried
from nodeproxy.config import load_config_text
from nodeproxy.config.model import ClusterConfig, Config, EndpointConfig
from nodeproxy.resilience.overload import Resource
from nodeproxy.runtime import Runtime
from nodeproxy.stats.names import RETRIES_OVERFLOW
from nodeproxy.traffic.attempt import Ticket
from nodeproxy.traffic.state import ClusterTraffic
from tests.helpers.backends import free_port, run_proxy
from tests.helpers.replicas import Replica, keep_alive, replicas

HOST = "svc.default"
NO_EJECTION = "    outlier_detection: {consecutive_5xx: 1000, consecutive_gateway_failure: 1000}"


EPS = tuple(EndpointConfig(host="127.0.0.1", port=p) for p in (1, 2, 3))


@pytest.mark.parametrize(
    ("tried", "ports"),
    [
        (set(), [1, 2, 3]),
        ({"127.0.0.1:1"}, [2, 3]),
        ({"127.0.0.1:1", "127.0.0.1:3"}, [2]),
        ({"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}, [1, 2, 3]),  # all tried: any
        ({"10.0.0.9:80"}, [1, 2, 3]),
    ],
)
def test_untried(tried: set[str], ports: list[int]) -> None:
    assert [ep.port for ep in untried(EPS, tried)] == ports


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_retries_on_an_endpoint_not_tried_yet(policy: str) -> None:
    state = ClusterTraffic(ClusterConfig("svc", EPS, lb_policy=policy), random.Random(7), "")
    ticket = Ticket(state, None)
    for i in range(60):
        first = state.start(ticket, EPS, {}, float(i))
        first.close(float(i))
        second = state.start(ticket, EPS, {}, float(i), {first.endpoint.address})
        second.close(float(i))
        assert second.endpoint is not first.endpoint


def config(addresses: list[str], *, retries: str, extra: str = "") -> Config:
    """One listener, service ``svc`` over ``addresses``, one route with ``retries``."""
    endpoints = "\n".join(f'      - {{address: "{a}"}}' for a in addresses)
    return load_config_text(f"""
listeners: [{{address: "127.0.0.1:0"}}]
services:
  - name: svc
{extra}
    endpoints:
{endpoints}
    routes:
      - service: svc
        retries: {{{retries}, backoff: {{base: 1ms, max: 2ms}}}}
""")


def endpoint_view(runtime: Runtime, address: str) -> Any:
    """One endpoint's traffic state as ``GET /clusters`` shows it."""
    now = trio.current_time()
    view = json.loads(handle(AdminContext(runtime, 0.0), "GET", "/clusters", {}, now).body)
    (svc,) = view["clusters"]
    return {e["address"]: e for e in svc["endpoints"]}[address]["traffic"]


async def test_each_try_reports_its_own_status_to_the_outlier_detector() -> None:
    failing = Replica("failing", status=500)
    extra = """    outlier_detection: {consecutive_5xx: 100, consecutive_gateway_failure: 2,
                        max_ejection_percent: 100}"""
    async with replicas(failing):
        cfg = config([failing.address], retries="retry_on: 5xx, num_retries: 2", extra=extra)
        async with run_proxy(cfg) as p, keep_alive(p.port) as c:
            with trio.fail_after(10):
                status, _, _ = await c.get(HOST)
            assert status == 500  # three tries, the last answer relayed
            assert failing.requests == 3
            outlier = endpoint_view(p.runtime, failing.address)["outlier"]
            # three 500s in a row: not gateway failures (a "reset" would count as a 503)
            assert outlier == {
                "state": "active",
                "consecutive_5xx": 3,
                "consecutive_gateway_failure": 0,
                "ejected_until": None,
                "times_ejected": 0,
                "multiplier": 0,
            }


async def test_a_retry_goes_to_an_endpoint_not_tried_yet() -> None:
    # random picks: without previous_hosts half of the retries land on the refusing replica
    good = Replica("good")
    refused = f"127.0.0.1:{free_port()}"
    extra = NO_EJECTION + "\n    lb_policy: random"
    async with replicas(good):
        cfg = config([refused, good.address], retries="num_retries: 1", extra=extra)
        async with run_proxy(cfg) as p, keep_alive(p.port) as c:
            with trio.fail_after(20):
                statuses = [(await c.get(HOST))[0] for _ in range(60)]
            assert statuses == [200] * 60
            assert good.requests == 60


async def test_round_robin_retries_skip_the_refusing_replica_under_concurrency() -> None:
    # interleaved picks move the rotation on between a try and its retry
    goods = (Replica("g1"), Replica("g2"))
    refused = f"127.0.0.1:{free_port()}"
    extra = NO_EJECTION + "\n    lb_policy: round_robin\n    overload: {max_retries: 1000}"
    retries = "num_retries: 1, budget: {percent: 100, min_concurrency: 100}"
    async with replicas(*goods):
        cfg = config([refused, *(g.address for g in goods)], retries=retries, extra=extra)
        async with run_proxy(cfg) as p:
            statuses: Counter[int] = Counter()

            async def client() -> None:
                async with keep_alive(p.port) as c:
                    for _ in range(25):
                        statuses[(await c.get(HOST))[0]] += 1

            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    for _ in range(8):
                        nursery.start_soon(client)
            assert statuses == {200: 200}


async def test_refused_retries_answer_the_failure_in_hand_never_overloaded() -> None:
    # 8 concurrent clients, a replica refusing connections, max_retries 3 (Envoy's default)
    good = Replica("good")
    refused = f"127.0.0.1:{free_port()}"
    extra = NO_EJECTION + "\n    lb_policy: round_robin"
    async with replicas(good):
        cfg = config([refused, good.address], retries="num_retries: 1", extra=extra)
        async with run_proxy(cfg) as p:
            answers: Counter[tuple[int, str]] = Counter()

            async def client() -> None:
                async with httpx.AsyncClient(base_url=p.url, trust_env=False, timeout=10) as c:
                    for _ in range(25):
                        r = await c.get("/x", headers={"host": HOST})
                        answers[(r.status_code, r.headers.get("x-nodeproxy-error", ""))] += 1

            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    for _ in range(8):
                        nursery.start_soon(client)
            assert sum(answers.values()) == 200
            assert not any(cause == "overloaded" for _, cause in answers), answers
            # what is not a 200 is the refused connect itself, counted as a denied retry
            failures = sum(n for (status, _), n in answers.items() if status != 200)
            assert set(answers) <= {(200, ""), (503, "connection_failure")}, answers
            denied = p.runtime.stats.sum_counter(RETRIES_OVERFLOW, cluster="svc")
            assert denied == failures
            state = p.runtime.traffic.get("svc")
            assert state is not None
            assert state.overload.count(Resource.RETRIES) == 0
