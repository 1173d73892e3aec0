"""Traffic intelligence end to end: real replicas on loopback, the real data path.

Each test writes the native config a user would (``lb_policy``,
``outlier_detection``, ``circuit_breaker``, route ``subset``s) and looks only
at what a client and the replicas see, plus the admin pages. Latency tests
run on the real clock (bounded: a few hundred requests); ejection and breaker
intervals are configured short (a fraction of a second) instead of mocking
the clock, since the sockets are real.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import trio

from nodeproxy.admin.handlers import AdminContext, AdminResponse, handle
from nodeproxy.config import load_config_text
from nodeproxy.resilience.overload import Resource
from nodeproxy.runtime import Runtime
from nodeproxy.stats.names import RETRIES_OVERFLOW
from nodeproxy.stats.registry import labels
from tests.helpers.backends import run_proxy
from tests.helpers.replicas import Replica, keep_alive, replicas

HOST = "svc.default"


def service(*eps: Replica, extra: str = "", routes: str = "") -> str:
    """A native config: one listener, service ``svc`` over ``eps`` (labelled by name)."""
    lines = "\n".join(
        f'      - {{address: "{r.address}", labels: {{version: {r.name}}}}}' for r in eps
    )
    return f"""
listeners: [{{address: "127.0.0.1:0"}}]
services:
  - name: svc
{extra}
    endpoints:
{lines}
{routes}
"""


@pytest.fixture
def idle_clock() -> trio.testing.MockClock:
    """Virtual time that jumps to the next deadline once every task has waited 10 ms of
    real time: the sockets are real, but no timing here depends on the machine's load."""
    return trio.testing.MockClock(autojump_threshold=0.01)


async def test_p2c_ewma_sends_a_slow_replica_a_small_share(idle_clock: object) -> None:
    fast, slow = Replica("fast", delay=0.001), Replica("slow", delay=0.050)
    async with replicas(fast, slow), run_proxy(load_config_text(service(fast, slow))) as p:

        async def client() -> None:
            async with keep_alive(p.port) as c:
                for _ in range(40):
                    status, _, _ = await c.get(HOST)
                    assert status == 200

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(client)
    total = fast.requests + slow.requests
    assert total == 320
    assert fast.requests / total >= 0.8, (fast.requests, slow.requests)


async def test_a_failing_replica_is_ejected_and_comes_back(idle_clock: object) -> None:
    good, bad = Replica("good"), Replica("bad", status=500)
    extra = """    lb_policy: round_robin
    outlier_detection: {consecutive_5xx: 3, base_ejection_time: 0.3s, interval: 10s}"""
    async with (
        replicas(good, bad),
        run_proxy(load_config_text(service(good, bad, extra=extra))) as p,
        keep_alive(p.port) as c,
    ):
        statuses = [(await c.get(HOST))[0] for _ in range(6)]
        assert statuses.count(500) == 3  # round robin: every other one, then ejected
        assert bad.requests == 3
        for _ in range(20):
            assert (await c.get(HOST))[0] == 200
        assert bad.requests == 3  # ejected: nothing reached it
        state = p.runtime.traffic.get("svc")
        assert state is not None
        assert state.outlier.ejections == 1
        view = json.loads(admin(p.runtime, "/clusters").body)
        (svc,) = view["clusters"]
        eps = {e["address"]: e for e in svc["endpoints"]}
        assert eps[bad.address]["state"] == "ejected"
        assert eps[bad.address]["traffic"]["outlier"]["times_ejected"] == 1
        assert eps[good.address]["state"] == "active"
        assert eps[good.address]["traffic"]["active_requests"] == 0
        assert eps[good.address]["traffic"]["ewma_ms"] > 0
        text = admin(p.runtime, "/clusters?format=text").body.decode()
        assert f"svc::{bad.address}::health_flags::/failed_outlier_check" in text
        bad.status = 200
        with trio.fail_after(5):  # the ejection lasts 0.3 s, then the replica is back
            while bad.requests == 3:
                assert (await c.get(HOST))[0] == 200
                await trio.sleep(0.01)
        assert (await c.get(HOST))[0] == 200


async def test_the_breaker_opens_after_3_failures_and_probes_once() -> None:
    backend = Replica("only", status=500)
    extra = """    lb_policy: round_robin
    circuit_breaker: {failure_threshold: 3, open_interval: 0.3s}"""
    async with (
        replicas(backend),
        run_proxy(load_config_text(service(backend, extra=extra))) as p,
        keep_alive(p.port) as c,
    ):
        for _ in range(3):
            assert (await c.get(HOST))[0] == 500
        seen = (backend.connections, backend.requests)
        for _ in range(5):
            status, headers, _ = await c.get(HOST)
            assert (status, headers["x-nodeproxy-error"]) == (503, "circuit_open")
        assert (backend.connections, backend.requests) == seen  # not touched while open
        open_metrics = admin(p.runtime, "/stats/prometheus").body.decode()
        assert 'nodeproxy_circuit_breaker_open{cluster="svc"} 1' in open_metrics
        backend.status = 200
        with trio.fail_after(5):
            while (status := (await c.get(HOST))[0]) == 503:
                assert (backend.connections, backend.requests) == seen
                await trio.sleep(0.01)
        assert status == 200  # the half-open probe succeeded: closed again
        assert backend.requests == seen[1] + 1
        for _ in range(5):
            assert (await c.get(HOST))[0] == 200
        clusters = json.loads(admin(p.runtime, "/clusters").body)
        (svc,) = [c for c in clusters["clusters"] if c["name"] == "svc"]
        assert svc["traffic"]["breaker"]["state"] == "closed"
        assert svc["traffic"]["breaker"]["trips"] == 1
        metrics = admin(p.runtime, "/stats/prometheus").body.decode()
        assert 'nodeproxy_circuit_breaker_open{cluster="svc"} 0' in metrics


CANARY_ROUTES = """    routes:
      - match: {headers: [{name: x-canary, exact: "yes"}]}
        service: svc
        subset: {version: v2}
      - weighted:
          - {service: svc, subset: {version: v1}, weight: 90}
          - {service: svc, subset: {version: v2}, weight: 10}"""


async def test_a_header_sends_traffic_only_to_v2_and_a_split_lands_90_10() -> None:
    v1, v2 = Replica("v1"), Replica("v2")
    async with (
        replicas(v1, v2),
        run_proxy(load_config_text(service(v1, v2, routes=CANARY_ROUTES)), seed=14) as p,
    ):
        async with keep_alive(p.port) as c:
            for _ in range(50):
                status, _, body = await c.get(HOST, headers=[("x-canary", "yes")])
                assert (status, body) == (200, b"v2")
        assert (v1.requests, v2.requests) == (0, 50)

        async def client() -> None:
            async with keep_alive(p.port) as c:
                for _ in range(500):
                    assert (await c.get(HOST))[0] == 200

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(client)
        share = (v2.requests - 50) / 2000
        assert v1.requests + v2.requests == 2050
        assert 0.09 <= share <= 0.11, share  # seeded: the same draws every run
        state = p.runtime.traffic.get("svc")
        assert state is not None
        assert state.subset_requests == {"version=v1": v1.requests, "version=v2": v2.requests}
        metrics = admin(p.runtime, "/stats/prometheus").body.decode()
        for version, replica in (("v1", v1), ("v2", v2)):
            sample = f'nodeproxy_subset_requests_total{{cluster="svc",subset="version={version}"}}'
            assert f"{sample} {replica.requests}" in metrics

        before = (v1.requests, v2.requests)
        report = json.loads(
            admin(p.runtime, f"/explain?authority={HOST}&path=/x&header=x-canary:yes").body
        )
        assert report["route"]["cluster"] == "svc"
        assert report["route"]["subset"] == {"version": "v2"}
        rows = {r["address"]: r for r in report["candidates"]}
        assert (rows[v2.address]["eligible"], rows[v1.address]["eligible"]) == (True, False)
        assert rows[v2.address]["outlier"]["state"] == "active"
        assert rows[v2.address]["ewma_ms"] > 0
        assert report["breaker"] is None  # no circuit_breaker configured
        assert report["decision"] == "p2c_ewma over 1 eligible endpoint(s) of svc subset version=v2"
        assert report["policy"] is None  # no mesh
        two = f"/explain?authority={HOST}&path=/x&header=x-canary:yes&header=x-other:1"
        both = json.loads(admin(p.runtime, two).body)  # every header= counts, not the last
        assert both["route"]["subset"] == {"version": "v2"}
        assert both["request"]["headers"] == [["x-canary", "yes"], ["x-other", "1"]]
        unknown = json.loads(admin(p.runtime, "/explain?authority=nosuch.default").body)
        assert unknown["error"]["cause"] == "unknown_service"
        assert (v1.requests, v2.requests) == before  # nothing was sent


def admin(runtime: Runtime, target: str) -> AdminResponse:
    """One admin answer, straight from the handler table (the admin server only frames it)."""
    return handle(AdminContext(runtime, 0.0), "GET", target, {}, trio.current_time())


async def wait_for_health(runtime: Runtime, replica: Replica, state: str) -> None:
    """Poll ``/clusters`` (bounded by the caller's deadline) until ``replica`` is in ``state``."""
    while True:
        view = json.loads(admin(runtime, "/clusters").body)
        (svc,) = view["clusters"]
        eps = {e["address"]: e for e in svc["endpoints"]}
        traffic = eps[replica.address]["traffic"]
        if traffic is not None and traffic["health"] == state:
            return
        await trio.sleep(0.01)


async def test_a_replica_failing_its_health_check_gets_no_traffic_until_it_passes() -> None:
    good, bad = Replica("good"), Replica("bad")
    bad.health_status = 503
    extra = """    lb_policy: round_robin
    health_check: {path: /healthz, interval: 0.05s, timeout: 1s,
                   unhealthy_threshold: 3, healthy_threshold: 2}"""
    async with (
        replicas(good, bad),
        run_proxy(load_config_text(service(good, bad, extra=extra))) as p,
        keep_alive(p.port) as c,
    ):
        with trio.fail_after(10):
            await wait_for_health(p.runtime, bad, "unhealthy")
        assert bad.probes >= 3  # unhealthy_threshold failures in a row
        assert good.probes >= 3
        seen = bad.requests
        for _ in range(10):
            status, _, body = await c.get(HOST)
            assert (status, body) == (200, b"good")
        assert bad.requests == seen  # excluded while unhealthy
        view = json.loads(admin(p.runtime, "/clusters").body)
        eps = {e["address"]: e for e in view["clusters"][0]["endpoints"]}
        assert (eps[bad.address]["state"], eps[good.address]["state"]) == ("unhealthy", "active")
        assert view["clusters"][0]["traffic"]["health_check"]["path"] == "/healthz"
        text = admin(p.runtime, "/clusters?format=text").body.decode()
        assert f"svc::{bad.address}::health_flags::/failed_active_hc" in text
        assert f"svc::{good.address}::health_flags::healthy" in text

        bad.health_status = 200
        probes = bad.probes
        with trio.fail_after(10):
            await wait_for_health(p.runtime, bad, "healthy")
        assert bad.probes >= probes + 2  # healthy_threshold passes in a row
        answers = [(await c.get(HOST))[2] for _ in range(10)]
        assert answers.count(b"bad") == 5  # round robin over both again
        assert good.connections <= 2  # probes are not counted as (pooled) connections
        assert bad.connections <= 2


async def test_when_every_replica_fails_its_health_check_traffic_still_flows() -> None:
    a, b = Replica("a"), Replica("b")
    a.health_status = b.health_status = 500
    extra = """    health_check: {interval: 0.05s, unhealthy_threshold: 1}"""
    async with (
        replicas(a, b),
        run_proxy(load_config_text(service(a, b, extra=extra))) as p,
        keep_alive(p.port) as c,
    ):
        with trio.fail_after(10):
            await wait_for_health(p.runtime, a, "unhealthy")
            await wait_for_health(p.runtime, b, "unhealthy")
        for _ in range(4):
            assert (await c.get(HOST))[0] == 200  # panic mode: all of them rather than none
        state = p.runtime.traffic.get("svc")
        assert state is not None
        assert state.health_panics == 4


RETRY_ROUTES = """    routes:
      - service: svc
        retries: {retry_on: 5xx, num_retries: 2, backoff: {base: 1ms, max: 1ms}}"""


async def test_max_retries_reached_answers_the_failure_in_hand_without_retrying() -> None:
    backend = Replica("only", status=500)
    extra = "    overload: {max_retries: 0}"
    async with (
        replicas(backend),
        run_proxy(load_config_text(service(backend, extra=extra, routes=RETRY_ROUTES))) as p,
        keep_alive(p.port) as c,
    ):
        status, headers, body = await c.get(HOST)
        # Envoy's retry overflow: the try's own answer, not a 503 overloaded
        assert (status, body) == (500, b"only")
        assert "x-nodeproxy-error" not in headers
        assert backend.requests == 1  # the retry was refused, not sent
        assert (
            p.runtime.stats.counter(
                RETRIES_OVERFLOW, labels(route="svc", cluster="svc", threshold="max_retries")
            )
            == 1
        )
        backend.status = 200
        assert (await c.get(HOST))[0] == 200
        state = p.runtime.traffic.get("svc")
        assert state is not None
        assert state.overload.count(Resource.RETRIES) == 0
        assert state.overload.overflows[Resource.RETRIES] == 1


async def test_max_retries_1_lets_a_retry_through() -> None:
    backend = Replica("only", status=500)
    extra = "    overload: {max_retries: 1}"
    async with (
        replicas(backend),
        run_proxy(load_config_text(service(backend, extra=extra, routes=RETRY_ROUTES))) as p,
        keep_alive(p.port) as c,
    ):
        assert (await c.get(HOST))[0] == 500  # 1 try + 2 retries, all 500
        assert backend.requests == 3
        state = p.runtime.traffic.get("svc")
        assert state is not None
        with trio.fail_after(5):  # the slot is freed as the request ends, after the answer
            await _wait_until(lambda: state.overload.count(Resource.RETRIES) == 0)
        assert state.overload.overflows[Resource.RETRIES] == 0


async def _wait_until(check: Callable[[], bool]) -> None:
    """Poll ``check`` (bounded by the caller's deadline): the sockets are real."""
    while True:
        if check():
            return
        await trio.sleep(0.005)


async def test_max_pending_requests_and_max_connections_answer_503_overloaded() -> None:
    slow = Replica("slow", delay=0.5)
    extra = """    max_connections_per_endpoint: 1
    connect_timeout: 5s
    overload: {max_pending_requests: 1}"""
    async with (
        replicas(slow),
        run_proxy(load_config_text(service(slow, extra=extra))) as p,
        trio.open_nursery() as nursery,
    ):
        answers: list[int] = []

        async def one() -> None:
            async with keep_alive(p.port) as c:
                answers.append((await c.get(HOST))[0])

        with trio.fail_after(10):
            nursery.start_soon(one)  # takes the only pool slot
            await _wait_until(lambda: slow.requests == 1)
            state = p.runtime.traffic.get("svc")
            assert state is not None
            assert state.overload.count(Resource.CONNECTIONS) == 1
            nursery.start_soon(one)  # waits for the slot: the one pending request
            await _wait_until(lambda: state.overload.count(Resource.PENDING) == 1)
            async with keep_alive(p.port) as c:
                status, headers, _ = await c.get(HOST)
            assert (status, headers["x-nodeproxy-error"]) == (503, "overloaded")
            await _wait_until(lambda: len(answers) == 2)
        assert answers == [200, 200]
        assert state.overload.count(Resource.PENDING) == 0
        assert state.overload.overflows[Resource.PENDING] == 1
        assert state.overload.count(Resource.CONNECTIONS) == 1  # idle in the pool, still open
        p.upstreams.close_idle()
        assert state.overload.count(Resource.CONNECTIONS) == 0


async def test_max_connections_bounds_the_sockets_open_to_a_service() -> None:
    a, b = Replica("a", delay=0.5), Replica("b")
    extra = """    lb_policy: round_robin
    overload: {max_connections: 1}"""
    async with (
        replicas(a, b),
        run_proxy(load_config_text(service(a, b, extra=extra))) as p,
        trio.open_nursery() as nursery,
    ):
        answers: list[int] = []

        async def one() -> None:
            async with keep_alive(p.port) as c:
                answers.append((await c.get(HOST))[0])

        with trio.fail_after(10):
            nursery.start_soon(one)  # round robin: a (slow) holds the one connection
            await _wait_until(lambda: a.requests == 1)
            async with keep_alive(p.port) as c:
                status, headers, _ = await c.get(HOST)  # b would need a second socket
            assert (status, headers["x-nodeproxy-error"]) == (503, "overloaded")
            assert b.connections == 0
            await _wait_until(lambda: len(answers) == 1)
        assert answers == [200]
