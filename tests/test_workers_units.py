"""The pure parts of the workers: ``auto``, the restart budget, latest-wins, the merge."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeproxy.config.model import EndpointConfig
from nodeproxy.resilience.breaker import BreakerState, CircuitBreaker
from nodeproxy.resilience.health import HealthState, HealthTracker
from nodeproxy.stats.names import BUILD_INFO, REQUEST_DURATION_MS, REQUESTS
from nodeproxy.stats.registry import Stats, labels
from nodeproxy.workers import wire
from nodeproxy.workers.count import cgroup_quota, cpus_allowed, quota_v1, quota_v2
from nodeproxy.workers.fleet import RestartBudget, backoff
from nodeproxy.workers.merge import Retired, merged


@pytest.mark.parametrize(
    ("affinity", "quota", "expected"),
    [
        (2, None, 2), (8, 2.0, 2), (8, 1.5, 2), (8, 0.5, 1), (2, 4.0, 2), (1, None, 1),
        (512, None, 256),
    ],
)  # fmt: skip
def test_auto_is_affinity_capped_by_the_quota(
    affinity: int, quota: float | None, expected: int
) -> None:
    assert cpus_allowed(affinity, quota) == expected


def test_cgroup_quota_files() -> None:
    assert quota_v2("max 100000") is None
    assert quota_v2("150000 100000") == 1.5
    assert quota_v2("garbage") is None
    assert quota_v1("-1", "100000") is None
    assert quota_v1("200000", "100000") == 2.0


def test_cgroup_v2_of_this_process_wins_over_the_root(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cgroup").write_text("0::/kubepods/pod1\n")
    (tmp_path / "cg" / "kubepods" / "pod1").mkdir(parents=True)
    (tmp_path / "cg" / "cpu.max").write_text("max 100000\n")
    (tmp_path / "cg" / "kubepods" / "pod1" / "cpu.max").write_text("250000 100000\n")
    assert cgroup_quota(tmp_path / "cg", tmp_path / "proc") == 2.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota(v1, tmp_path / "nowhere") == 1.0


def test_restart_budget_is_a_sliding_window() -> None:
    budget = RestartBudget(max_restarts=2, window=10.0)
    assert budget.allow(0.0)
    assert budget.allow(1.0)
    assert not budget.allow(2.0)  # a third inside 10 s: give up
    assert budget.allow(10.5)  # the first one has left the window
    assert [backoff(n) for n in (1, 2, 3, 10)] == [0.2, 0.4, 0.8, 5.0]


async def test_outbox_keeps_the_latest_snapshot_not_a_queue() -> None:
    box = wire.Outbox()
    for version in range(1, 100):
        box.put(wire.Endpoints(version, {}))
    box.put(wire.Health(frozenset({("svc", "10.0.0.1:80")})))
    box.put(wire.BreakerOpen("svc"))
    box.put(wire.BreakerOpen("svc"))
    pending = box.take()
    assert [type(m).__name__ for m in pending] == ["Endpoints", "Health", "BreakerOpen"]
    assert isinstance(pending[0], wire.Endpoints)
    assert pending[0].version == 99
    assert box.take() == []


def _reply(requests: float, seconds: tuple[float, ...]) -> wire.StatsReply:
    stats = Stats()
    stats.inc(REQUESTS, labels(cluster="svc"), requests)
    for s in seconds:
        stats.observe(REQUEST_DURATION_MS, labels(cluster="svc"), s)
    stats.gauge_set(BUILD_INFO, labels(version="x"), 1)
    stats.gauge_set("nodeproxy_downstream_connections_active", (), 2)
    return wire.StatsReply(0, stats.counters, stats.gauges, stats.histograms, 0, 1.0)


def test_merge_sums_counters_and_histograms_and_keeps_the_dead() -> None:
    own, retired = Stats(), Retired()
    a, b = _reply(5, (1.0, 200.0)), _reply(7, (3.0,))
    out = merged(own, retired, [a, b])
    assert out.counter(REQUESTS, labels(cluster="svc")) == 12
    hist = out.histogram(REQUEST_DURATION_MS, labels(cluster="svc"))
    assert hist is not None
    assert hist.count == 3
    assert out.gauge(BUILD_INFO, labels(version="x")) == 1  # the same fact, not 2
    assert out.gauge("nodeproxy_downstream_connections_active") == 4
    retired.add(a)  # worker a died; its replacement starts from zero
    after = merged(own, retired, [_reply(0, ()), b])
    assert after.counter(REQUESTS, labels(cluster="svc")) == 12  # not back to 7
    assert after.gauge("nodeproxy_downstream_connections_active") == 4  # live ones only: 2 + 2
    again = after.histogram(REQUEST_DURATION_MS, labels(cluster="svc"))
    assert again is not None
    assert again.count == 3


def test_breaker_force_open_and_on_trip() -> None:
    told: list[str] = []
    breaker = CircuitBreaker(failure_threshold=3, open_interval=5.0)
    breaker.on_trip = lambda: told.append("trip")
    for _ in range(3):
        breaker.record(breaker.acquire(0.0), 0.0, success=False)
    assert told == ["trip"]
    sibling = CircuitBreaker(failure_threshold=3, open_interval=5.0)
    sibling.on_trip = lambda: told.append("echo")
    sibling.force_open(1.0)
    assert sibling.state(1.0) is BreakerState.OPEN
    assert sibling.state(6.0) is BreakerState.HALF_OPEN  # its own interval, from when forced
    sibling.force_open(6.0)  # half-open keeps its probe
    assert sibling.state(6.0) is BreakerState.HALF_OPEN
    assert told == ["trip"]  # a forced open is never echoed back


def test_health_assign_mirrors_the_supervisor() -> None:
    eps = (EndpointConfig("10.0.0.1", 80), EndpointConfig("10.0.0.2", 80))
    tracker = HealthTracker()
    tracker.assign(eps, frozenset({"10.0.0.2:80"}), 0.0)
    assert [tracker.state(ep) for ep in eps] == [HealthState.HEALTHY, HealthState.UNHEALTHY]
    assert tracker.unhealthy() == frozenset({"10.0.0.2:80"})
    tracker.assign(eps, frozenset(), 1.0)
    assert tracker.unhealthy() == frozenset()


def test_an_endpoint_snapshot_survives_the_wire() -> None:
    from types import MappingProxyType

    eps = (
        EndpointConfig("10.0.0.1", 80, MappingProxyType({"version": "v2"}), "node-a", 2.0),
        EndpointConfig("10.0.0.2", 80),
    )
    vips = {("10.96.0.10", 80): "svc"}
    sent = wire.Endpoints.of(
        7, MappingProxyType({"svc": eps}), {"node-a": "10.1.0.1:15008"}, {}, vips
    )
    import pickle

    got = pickle.loads(pickle.dumps(sent))
    assert got.version == 7
    assert got.endpoints() == {"svc": eps}
    assert got.node_proxies == {"node-a": "10.1.0.1:15008"}
    assert got.service_ips == vips  # a worker resolves intercepted ClusterIPs too
    from nodeproxy.discovery.snapshot import EndpointRegistry

    registry = EndpointRegistry()
    registry.install(got.version, got.endpoints(), got.service_ips)
    assert dict(registry.current().service_ips) == vips


@pytest.mark.parametrize(
    ("first", "second", "merged_request"),
    [
        ((True, True), (False, False), (True, True)),  # a /stats scrape keeps the dashboard's
        ((True, True), (True, True), (True, True)),
        ((True, True), (True, False), (True, False)),  # /clusters needs every cluster
        ((True, False), (True, True), (True, False)),
        ((False, False), (True, True), (True, True)),
    ],
)
def test_outbox_merges_stats_requests_so_one_answer_serves_both(
    first: tuple[bool, bool], second: tuple[bool, bool], merged_request: tuple[bool, bool]
) -> None:
    box = wire.Outbox()
    box.put(wire.StatsRequest(1, *first))
    box.put(wire.StatsRequest(2, *second))
    (request,) = box.take()
    assert isinstance(request, wire.StatsRequest)
    assert (request.seq, request.clusters, request.active_only) == (2, *merged_request)
