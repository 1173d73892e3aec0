"""Per-source fairness: admission tables and a flood-versus-polite simulation."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from nodeproxy.resilience.fairness import (
    Admitted,
    FairScheduler,
    Queued,
    Rejected,
    Ticket,
)


def kinds(decisions: Sequence[object]) -> list[str]:
    return [type(d).__name__[0] for d in decisions]  # A / Q / R


def test_per_source_cap_queue_and_reject() -> None:
    s = FairScheduler(max_active=10, max_active_per_source=2, max_queued_per_source=2)
    got = [s.admit("flood", 0.0) for _ in range(6)]
    assert kinds(got) == ["A", "A", "Q", "Q", "R", "R"]
    assert got[-1] == Rejected("flood", "source_queue_full")
    assert s.admit("polite", 0.0) == Admitted("polite")  # the flood's cap leaves room
    assert (s.active("flood"), s.queued("flood"), s.total_active) == (2, 2, 3)
    assert "3/10 active, 2/1024 queued | 2 sources | 2 rejected" in repr(s)


def test_freed_slots_go_round_robin_between_sources() -> None:
    s = FairScheduler(max_active=2, max_active_per_source=2, max_queued_per_source=10)
    s.admit("a", 0.0)
    s.admit("a", 0.0)
    for _ in range(5):
        s.admit("a", 0.0)
    s.admit("b", 1.0)
    s.admit("c", 2.0)
    running, woken = ["a", "a"], []
    for _ in range(6):
        t = s.release(running.pop(0), 3.0)
        assert t is not None
        running.append(t.source)
        woken.append(t.source)
    assert woken[:3] == ["a", "b", "c"]  # b and c wait one turn, not behind a's five
    assert woken[3:] == ["a", "a", "a"]


def test_release_wakes_the_released_sources_own_waiter() -> None:
    s = FairScheduler(max_active=10, max_active_per_source=1)
    s.admit("a", 0.0)
    q = s.admit("a", 0.5)
    assert isinstance(q, Queued)
    t = s.release("a", 1.0)
    assert t == Ticket(q.ticket.id, "a")
    assert s.active("a") == 1  # the woken ticket owns the slot
    assert s.release("a", 2.0) is None
    assert s.total_active == 0
    with pytest.raises(ValueError, match="nothing active"):
        s.release("a", 3.0)


def test_full_queue_pushes_out_the_fattest_source() -> None:
    s = FairScheduler(
        max_active=1, max_active_per_source=1, max_queued_per_source=4, max_queued_total=4
    )
    s.admit("flood", 0.0)
    queued = [s.admit("flood", 0.0) for _ in range(4)]
    assert kinds(queued) == ["Q"] * 4
    d = s.admit("polite", 1.0)
    assert isinstance(d, Queued)
    assert d.evicted is not None
    assert d.evicted.source == "flood"
    assert isinstance(queued[-1], Queued)
    assert d.evicted == queued[-1].ticket  # the newest flood ticket went
    assert (s.queued("flood"), s.queued("polite"), s.total_queued) == (3, 1, 4)
    assert isinstance(queued[-2], Queued)
    assert s.admit("other", 1.0) == Queued(Ticket(6, "other"), queued[-2].ticket)
    s2 = FairScheduler(max_active=1, max_active_per_source=1, max_queued_total=1)
    s2.admit("a", 0.0)
    s2.admit("a", 0.0)
    assert s2.admit("b", 0.0) == Rejected("b", "queue_full")  # no fatter queue to push


def test_cancel_withdraws_a_waiter() -> None:
    s = FairScheduler(max_active=1)
    s.admit("a", 0.0)
    q = s.admit("b", 0.0)
    assert isinstance(q, Queued)
    assert s.cancel(q.ticket)
    assert not s.cancel(q.ticket)
    assert s.release("a", 1.0) is None
    assert s.total_queued == 0


def simulate(
    flooders: int, max_active: int, per_source: int, seconds: float = 3.0
) -> tuple[list[float], int, int]:
    """1 ms steps; each request takes 20 ms. Flooders send 5 per ms, polite one every 50 ms.

    Returns the polite requests' waits, polite rejections, and the flooders' peak concurrency.
    """
    s = FairScheduler(
        max_active=max_active,
        max_active_per_source=per_source,
        max_queued_per_source=32,
        max_queued_total=64,
    )
    service = 0.020
    running: list[tuple[float, str]] = []  # (finish time, source)
    arrivals: dict[int, float] = {}
    waits: list[float] = []
    polite_rejected = peak = 0
    for step in range(int(seconds * 1000)):
        now = step / 1000
        for finish, src in [r for r in running if r[0] <= now]:
            running.remove((finish, src))
            woken = s.release(src, now)
            if woken is not None:
                running.append((now + service, woken.source))
                if woken.source == "polite":
                    waits.append(now - arrivals.pop(woken.id))
        for f in range(flooders):
            for _ in range(5):
                d = s.admit(f"flood{f}", now)
                if isinstance(d, Admitted):
                    running.append((now + service, d.source))
        if step % 50 == 0:
            d = s.admit("polite", now)
            if isinstance(d, Admitted):
                running.append((now + service, "polite"))
                waits.append(0.0)
            elif isinstance(d, Queued):
                arrivals[d.ticket.id] = now
            else:
                polite_rejected += 1
        peak = max(peak, max((s.active(f"flood{f}") for f in range(flooders)), default=0))
        assert s.total_active <= max_active
    return waits, polite_rejected, peak


def test_one_flooder_is_capped_and_the_polite_source_never_waits() -> None:
    waits, rejected, peak = simulate(flooders=1, max_active=16, per_source=8)
    assert len(waits) == 60
    assert rejected == 0
    assert max(waits) == 0.0
    assert peak == 8


def test_many_flooders_fill_the_proxy_yet_the_polite_wait_stays_bounded() -> None:
    waits, rejected, peak = simulate(flooders=4, max_active=16, per_source=8)
    assert rejected == 0
    assert len(waits) >= 59  # the last one may still be in line when the run ends
    assert max(waits) <= 0.020 + 0.0015  # a service time (+ a 1 ms step): within one round
    assert peak <= 8
