"""Balancers as pure decisions: tables, and simulations driven by an explicit clock."""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping

import pytest

from nodeproxy.balancing.feedback import (
    DoubleCompletion,
    FeedbackBalancer,
    LoadTable,
    Outcome,
)
from nodeproxy.balancing.least_request import LeastRequest
from nodeproxy.balancing.locality import LocalityAware
from nodeproxy.balancing.p2c_ewma import P2CEwma
from nodeproxy.balancing.policies import POLICIES, make_balancer, subset
from nodeproxy.balancing.weighted import (
    WEIGHT_LABEL,
    WeightedRandom,
    WeightedRoundRobin,
    two_choices,
    weight_of,
)
from nodeproxy.config.model import EndpointConfig as Endpoint


def ep(port: int, node: str | None = None, weight: str | None = None, **labels: str) -> Endpoint:
    lab: dict[str, str] = dict(labels)
    if weight is not None:
        lab[WEIGHT_LABEL] = weight
    return Endpoint("10.0.0.1", port, labels=lab, node=node)


Behaviour = Callable[[Endpoint, float], tuple[float, Outcome]]


def simulate(
    balancer: FeedbackBalancer,
    endpoints: tuple[Endpoint, ...],
    behaviour: Behaviour,
    n: int = 1000,
    gap: float = 0.005,
) -> Counter[int]:
    """``n`` arrivals ``gap`` seconds apart; each try ends after the latency it gets."""
    pending: list[tuple[float, int, object, Outcome]] = []
    served: Counter[int] = Counter()
    for k in range(n):
        now = k * gap
        while pending and pending[0][0] <= now:
            done_at, _, token, outcome = heapq.heappop(pending)
            balancer.on_complete(token, done_at, outcome)  # type: ignore[arg-type]
        chosen = balancer.pick(endpoints, now)
        assert chosen is not None
        served[chosen.port] += 1
        token = balancer.on_start(chosen, now)
        latency, outcome = behaviour(chosen, now)
        heapq.heappush(pending, (now + latency, k, token, outcome))
    return served


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SUCCESS),
        (204, Outcome.SUCCESS),
        (404, Outcome.SUCCESS),
        (429, Outcome.THROTTLED),
        (500, Outcome.FAILURE),
        (503, Outcome.FAILURE),
        (504, Outcome.FAILURE),
    ],
)
def test_outcome_from_status(status: int, outcome: Outcome) -> None:
    assert Outcome.from_status(status) is outcome


@pytest.mark.parametrize(
    ("weight", "expected"),
    [(None, 1.0), ("3", 3.0), ("0.5", 0.5), ("0", 1.0), ("-2", 1.0), ("x", 1.0), ("nan", 1.0)],
)
def test_weight_of(weight: str | None, expected: float) -> None:
    assert weight_of(ep(1, weight=weight)) == expected


def test_two_choices_distinct_and_uniform() -> None:
    rng = random.Random(1)
    seen: Counter[tuple[int, int]] = Counter()
    for _ in range(6000):
        i, j = two_choices(3, rng)
        assert i != j
        seen[(i, j)] += 1
    assert len(seen) == 6
    assert all(800 < c < 1200 for c in seen.values())


def test_peak_ewma_jumps_up_blends_down_and_decays() -> None:
    loads = LoadTable(default_rtt=0.030, decay=10.0)
    a = ep(1)
    assert loads.ewma(a, 0.0) == pytest.approx(0.030)  # no sample: Linkerd's default
    t = loads.start(a, 0.0)
    loads.complete(t, 0.5, Outcome.SUCCESS)  # 500 ms: a peak replaces the estimate
    assert loads.ewma(a, 0.5) == pytest.approx(0.5)
    assert loads.ewma(a, 10.5) == pytest.approx(0.5 / math.e)  # one tau later
    t = loads.start(a, 10.5)
    loads.complete(t, 10.501, Outcome.SUCCESS)  # 1 ms sample, lower: blended in
    assert 0.001 < loads.ewma(a, 10.501) < 0.5 / 2.7


def test_failures_and_429s_are_charged_the_penalty() -> None:
    loads = LoadTable(failure_penalty=1.0)
    a, b = ep(1), ep(2)
    loads.complete(loads.start(a, 0.0), 0.001, Outcome.FAILURE)
    loads.complete(loads.start(b, 0.0), 0.001, Outcome.THROTTLED)
    assert loads.ewma(a, 0.001) == pytest.approx(1.0)
    assert loads.ewma(b, 0.001) == pytest.approx(1.0)
    c = ep(3)
    tok = loads.start(c, 0.0)
    loads.complete(tok, 5.0, Outcome.CANCELLED)  # no sample from an abandoned try
    assert loads.ewma(c, 5.0) == pytest.approx(0.030 * math.exp(-0.5))  # default, decayed
    assert loads.active(c) == 0


def test_double_completion_is_an_error() -> None:
    loads = LoadTable()
    tok = loads.start(ep(1), 0.0)
    loads.complete(tok, 0.1, Outcome.SUCCESS)
    with pytest.raises(DoubleCompletion):
        loads.complete(tok, 0.2, Outcome.SUCCESS)


def test_p2c_ewma_slow_replica_gets_a_small_share() -> None:
    fast, slow = ep(1), ep(2)
    b = P2CEwma(random.Random(7))
    served = simulate(
        b, (fast, slow), lambda e, _: (0.001 if e is fast else 0.050, Outcome.SUCCESS)
    )
    assert served[1] >= 800, served
    assert sum(served.values()) == 1000
    assert "P2CEwma" in repr(b)
    assert "decay 10 s" in repr(b)


def test_p2c_ewma_sequential_client_reaches_every_equal_replica() -> None:
    # One request at a time (nothing ever in flight at a pick) to two equal replicas: an
    # endpoint that never answered decays from default_rtt like a used one, so it becomes
    # the cheaper choice and gets tried instead of the first replica keeping everything.
    a, b = ep(1), ep(2)
    balancer = P2CEwma(random.Random(11))
    served = simulate(balancer, (a, b), lambda e, _: (0.002, Outcome.SUCCESS), n=400, gap=0.01)
    assert min(served.values()) >= 100, served


@pytest.mark.parametrize("bad_outcome", [Outcome.FAILURE, Outcome.THROTTLED])
def test_p2c_ewma_fast_failing_replica_does_not_attract_traffic(bad_outcome: Outcome) -> None:
    good, bad = ep(1), ep(2)
    b = P2CEwma(random.Random(3))

    def behaviour(e: Endpoint, _: float) -> tuple[float, Outcome]:
        return (0.020, Outcome.SUCCESS) if e is good else (0.0005, bad_outcome)

    served = simulate(b, (good, bad), behaviour)
    assert served[1] >= 900, served


def test_p2c_ewma_weights_scale_cost() -> None:
    heavy, light = ep(1, weight="4"), ep(2)
    b = P2CEwma(random.Random(5))
    served = simulate(b, (heavy, light), lambda e, _: (0.010, Outcome.SUCCESS), gap=0.002)
    assert served[1] > served[2]


def test_least_request_never_picks_the_busiest() -> None:
    eps = (ep(1), ep(2), ep(3))
    b = LeastRequest(random.Random(2))
    for _ in range(5):
        b.on_start(eps[0], 0.0)
    picks = Counter(b.pick(eps, 0.0) for _ in range(300))
    assert eps[0] not in picks
    assert picks[eps[1]] > 100
    assert picks[eps[2]] > 100


def test_least_request_balances_in_flight() -> None:
    eps = (ep(1), ep(2))
    b = LeastRequest(random.Random(2))
    tokens = []
    for _ in range(10):
        chosen = b.pick(eps, 0.0)
        assert chosen is not None
        tokens.append(b.on_start(chosen, 0.0))
    assert (b.loads.active(eps[0]), b.loads.active(eps[1])) == (5, 5)
    for t in tokens:
        b.on_complete(t, 1.0, Outcome.SUCCESS)
    assert b.loads.active(eps[0]) == 0


def test_weighted_round_robin_is_smooth() -> None:
    a, b_, c = ep(1, weight="5"), ep(2), ep(3)
    wrr = WeightedRoundRobin()
    seq = [wrr.pick((a, b_, c), 0.0) for _ in range(14)]
    assert [e.port for e in seq if e] == [1, 1, 2, 1, 3, 1, 1] * 2


def test_weighted_random_split_within_two_points() -> None:
    v1, v2 = ep(1, weight="90"), ep(2, weight="10")
    wr = WeightedRandom(random.Random(42))
    n = 5000
    picks = Counter(e.port for e in (wr.pick((v1, v2), 0.0) for _ in range(n)) if e)
    assert abs(picks[2] / n - 0.10) < 0.02, picks


def test_locality_prefers_local_then_spills_when_absent_or_saturated() -> None:
    local, other1, other2 = ep(1, node="n1"), ep(2, node="n2"), ep(3, node="n2")
    b = LocalityAware(LeastRequest(random.Random(1)), "n1", saturation=2)
    eps = (local, other1, other2)
    assert all(b.pick(eps, 0.0) is local for _ in range(50))
    # the local endpoint ejected (the pipeline passes only admitted ones): spill, never drop
    assert b.pick((other1, other2), 0.0) in (other1, other2)
    b.on_start(local, 0.0)
    assert b.pick(eps, 0.0) is local  # 1 active < saturation 2
    b.on_start(local, 0.0)
    spilled = {b.pick(eps, 0.0) for _ in range(50)}
    assert spilled <= {other1, other2}
    assert spilled
    assert b.spills == 50
    assert "node 'n1'" in repr(b)
    assert "50 spills" in repr(b)


def test_locality_without_local_node_or_local_endpoints_uses_all() -> None:
    eps = (ep(1, node="n2"), ep(2, node="n3"))
    assert set(LocalityAware(LeastRequest(random.Random(1)), "").candidates(eps)) == set(eps)
    assert set(LocalityAware(LeastRequest(random.Random(1)), "n1").candidates(eps)) == set(eps)


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_picks_from_the_list_and_counts_load(policy: str) -> None:
    b = make_balancer(policy, random.Random(0), local_node="n1")
    eps = (ep(1, node="n2"), ep(2, node="n3"))
    assert b.pick((), 0.0) is None
    chosen = b.pick(eps, 0.0)
    assert chosen in eps
    tok = b.on_start(chosen, 0.0)
    assert b.loads.active(chosen) == 1
    b.on_complete(tok, 0.01, Outcome.SUCCESS)
    assert b.loads.active(chosen) == 0


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown lb_policy 'fastest'"):
        make_balancer("fastest", random.Random(0))


def test_load_table_stays_bounded_across_snapshots() -> None:
    b = P2CEwma(random.Random(0))
    for gen in range(50):
        now = gen * 60.0  # each snapshot lives a minute (> 5 decay times)
        eps = (ep(1000 + 2 * gen), ep(1001 + 2 * gen))
        for e in eps:
            b.on_complete(b.on_start(e, now), now + 0.01, Outcome.SUCCESS)
        b.pick(eps, now + 1.0)
    assert len(b.loads) <= 2 * 2 + 8 + 2


def test_picking_from_a_canary_subset_keeps_the_other_subsets_estimates() -> None:
    b = P2CEwma(random.Random(0))
    v1 = tuple(ep(2000 + i) for i in range(12))
    v2 = (ep(3000),)
    for e in v1:
        b.on_complete(b.on_start(e, 0.0), 0.2, Outcome.SUCCESS)
    for k in range(45):
        b.pick(v2, 1.0 + k)  # 45 s of v2-only picks: v1 was recently used, so it is kept
    assert len(b.loads) == 12
    assert b.loads.ewma(v1[0], 1.0) > 0.15


@pytest.mark.parametrize(
    ("labels", "ports"),
    [
        ({}, [1, 2, 3]),
        ({"version": "v1"}, [1, 3]),
        ({"version": "v2"}, [2]),
        ({"version": "v1", "zone": "a"}, [3]),
        ({"version": "v3"}, []),
    ],
)
def test_subset(labels: Mapping[str, str], ports: list[int]) -> None:
    eps = (ep(1, version="v1"), ep(2, version="v2"), ep(3, version="v1", zone="a"))
    assert [e.port for e in subset(eps, labels)] == ports
