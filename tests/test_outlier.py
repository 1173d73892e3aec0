"""Outlier ejection (Envoy semantics) and the active health-check tracker, as tables."""

from __future__ import annotations

import pytest

from nodeproxy.config.model import EndpointConfig as Endpoint
from nodeproxy.resilience import IllegalTransition
from nodeproxy.resilience.health import HealthCheckConfig, HealthState, HealthTracker
from nodeproxy.resilience.outlier import (
    HostState,
    OutlierConfig,
    OutlierDetector,
    Result,
)

EPS = tuple(Endpoint("10.0.0.1", 8000 + i) for i in range(4))
A = EPS[0]


def detector(**kw: float) -> OutlierDetector:
    d = OutlierDetector(OutlierConfig(**kw))  # type: ignore[arg-type]  # float-only test knobs
    d.sync(EPS, 0.0)
    return d


@pytest.mark.parametrize(
    ("statuses", "ejected", "reason"),
    [
        ([500] * 4, False, None),
        ([500] * 5, True, "consecutive_5xx"),
        ([503] * 5, True, "consecutive_gateway_failure"),
        ([500, 500, 500, 500, 200, 500], False, None),  # a success resets the count
        ([502, 503, 504, 500, 502], True, "consecutive_5xx"),  # the 500 broke the gateway run
        ([404] * 10, False, None),
        ([429] * 10, False, None),
    ],
)
def test_consecutive_statuses(statuses: list[int], ejected: bool, reason: str | None) -> None:
    d = detector()
    events = [d.put_status(A, s, 1.0) for s in statuses]
    assert (d.state(A, 1.0) is HostState.EJECTED) is ejected
    fired = [e for e in events if e is not None]
    assert [e.reason for e in fired] == ([reason] if reason else [])


@pytest.mark.parametrize(
    ("result", "ejects"),
    [
        (Result.LOCAL_ORIGIN_CONNECT_FAILED, True),
        (Result.LOCAL_ORIGIN_TIMEOUT, True),
        (Result.LOCAL_ORIGIN_RESET, True),
        (Result.LOCAL_ORIGIN_CONNECT_SUCCESS, False),
        (Result.EXT_ORIGIN_REQUEST_SUCCESS, False),
    ],
)
def test_local_origin_results_count_as_gateway_failures(result: Result, ejects: bool) -> None:
    d = detector()
    events = [d.put_result(A, result, 1.0) for _ in range(5)]
    assert (events[-1] is not None) is ejects
    if ejects:
        assert events[-1] is not None
        assert events[-1].reason == "consecutive_gateway_failure"


def test_ext_origin_failure_carries_its_status() -> None:
    d = detector()
    for _ in range(5):
        d.put_result(A, Result.EXT_ORIGIN_REQUEST_FAILED, 1.0, status=500)
    assert d.state(A, 1.0) is HostState.EJECTED


def fail(d: OutlierDetector, now: float) -> None:
    for _ in range(5):
        d.put_status(A, 500, now)


def test_ejection_time_multiplies_and_caps() -> None:
    d = detector(base_ejection_time=30.0, max_ejection_time=100.0, interval=10.0)
    now, durations = 0.0, []
    for _ in range(6):
        fail(d, now)
        until = d.ejected_until(A, now)
        assert until is not None
        durations.append(until - now)
        assert d.state(A, until - 0.001) is HostState.EJECTED
        assert d.state(A, until) is HostState.ACTIVE  # back exactly on time
        now = until
    assert durations == [30.0, 60.0, 90.0, 100.0, 100.0, 100.0]


def test_multiplier_decays_while_healthy() -> None:
    d = detector(base_ejection_time=30.0, max_ejection_time=300.0, interval=10.0)
    fail(d, 0.0)
    fail(d, 30.0)  # second ejection: 60 s, until 90
    assert d.describe(A, 90.0)["multiplier"] == 2
    assert d.describe(A, 100.0)["multiplier"] == 1  # one interval healthy
    assert d.describe(A, 125.0)["multiplier"] == 0
    fail(d, 125.0)
    assert d.ejected_until(A, 125.0) == 155.0  # back to the base time


@pytest.mark.parametrize(
    ("hosts", "max_percent", "ejectable"),
    [
        (4, 50.0, 2),
        (4, 10.0, 0),  # Envoy's default never ejects in a small cluster
        (4, 25.0, 1),
        (4, 100.0, 4),
        (1, 50.0, 0),
        (10, 10.0, 1),
    ],
)
def test_max_ejection_percent(hosts: int, max_percent: float, ejectable: int) -> None:
    eps = tuple(Endpoint("10.0.0.2", 9000 + i) for i in range(hosts))
    d = OutlierDetector(OutlierConfig(max_ejection_percent=max_percent))
    d.sync(eps, 0.0)
    for ep in eps:
        for _ in range(5):
            d.put_status(ep, 503, 1.0)
    assert sum(d.state(ep, 1.0) is HostState.EJECTED for ep in eps) == ejectable
    assert d.overflows == hosts - ejectable
    assert d.ejections == ejectable


def test_healthy_filters_and_panics_rather_than_dropping() -> None:
    d = OutlierDetector(OutlierConfig(max_ejection_percent=100.0))
    assert d.healthy(EPS, 0.0) is EPS
    fail(d, 0.0)
    assert d.healthy(EPS, 1.0) == EPS[1:]
    for ep in EPS[1:]:
        for _ in range(5):
            d.put_status(ep, 500, 1.0)
    assert d.healthy(EPS, 2.0) is EPS  # all ejected: route to all (panic), never to none
    assert d.panics == 1
    assert d.healthy(EPS, 31.0) is EPS  # all back after the base ejection time
    assert "4 hosts, 0 ejected" in repr(d)


def test_late_reports_for_an_ejected_host_do_not_extend_it() -> None:
    d = detector()
    fail(d, 0.0)
    fail(d, 1.0)
    assert d.ejected_until(A, 1.0) == 30.0
    assert d.ejections == 1


def test_sync_forgets_departed_hosts() -> None:
    d = detector()
    fail(d, 0.0)
    d.sync(EPS[1:], 1.0)
    assert d.state(A, 1.0) is HostState.ACTIVE  # a returning address starts clean
    assert "3 hosts" in repr(d)


def test_health_tracker_hysteresis_and_schedule() -> None:
    cfg = HealthCheckConfig(interval=10.0, unhealthy_threshold=3, healthy_threshold=2)
    t = HealthTracker(cfg)
    assert t.due(EPS[:2], 0.0) == list(EPS[:2])
    assert t.due(EPS[:2], 5.0) == []
    assert t.next_due() == 10.0
    assert t.due(EPS[:2], 10.0) == list(EPS[:2])
    answers = [False, False, True, False, False, False, True, True]
    states = [t.record(A, ok, 1.0) for ok in answers]
    assert states == [
        None,
        None,
        None,
        None,
        None,
        HealthState.UNHEALTHY,
        None,
        HealthState.HEALTHY,
    ]
    t.record(A, False, 2.0)
    t.record(A, False, 2.0)
    t.record(A, False, 2.0)
    assert t.healthy(EPS) == EPS[1:]
    assert "1 unhealthy" in repr(t)


def test_illegal_health_transition_is_typed() -> None:
    t = HealthTracker()
    with pytest.raises(IllegalTransition):
        t._move(t._track(A, 0.0), "pass")


def test_healthy_on_a_subset_forgets_nothing() -> None:
    d = detector()
    fail(d, 0.0)
    assert d.healthy(EPS[1:2], 1.0) == EPS[1:2]  # a canary subset without A
    assert d.healthy(EPS, 2.0) == EPS[1:]  # A is still ejected
    assert "4 hosts, 1 ejected" in repr(d)
