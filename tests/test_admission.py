"""The fairness gate's trio side: waiters parked per ticket, woken in turn, cancellation-safe.

Driven by trio's ``autojump_clock``: ``max_wait`` runs out instantly and
exactly, and the scheduler's books are checked after every way a waiter can
leave (served, timed out, cancelled while queued, cancelled just after being
granted its slot).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from nodeproxy.config.model import FairnessConfig
from nodeproxy.errors import SourceOverloaded
from nodeproxy.server.admission import FairGate


def gate(per_source: int = 1, queue: int = 4, max_wait: float = 10.0) -> FairGate:
    return FairGate(
        FairnessConfig(
            max_concurrent_per_source=per_source, max_queue_per_source=queue, max_wait=max_wait
        )
    )


async def test_release_wakes_the_next_ticket_and_timeouts_withdraw(
    autojump_clock: trio.testing.MockClock,
) -> None:
    g = gate(max_wait=1.0)
    served: list[str] = []
    done = trio.Event()

    async def request(name: str) -> None:
        await g.enter("pod")
        served.append(name)
        try:
            await done.wait()
        finally:
            g.leave("pod")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(request, "a")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(request, "b")
        await trio.testing.wait_all_tasks_blocked()
        assert g.scheduler.queued("pod") == 1
        done.set()
    assert served == ["a", "b"]
    assert g.scheduler.total_active == 0
    assert g.scheduler.total_queued == 0

    async with trio.open_nursery() as nursery:
        hold = trio.Event()

        async def holder() -> None:
            await g.enter("pod")
            try:
                await hold.wait()
            finally:
                g.leave("pod")

        nursery.start_soon(holder)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        with pytest.raises(SourceOverloaded):
            await g.enter("pod")
        assert trio.current_time() - start == pytest.approx(1.0)
        assert g.scheduler.total_queued == 0
        hold.set()
    assert g.scheduler.total_active == 0


async def test_a_waiter_cancelled_after_being_granted_passes_its_slot_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    g = gate()
    served: list[str] = []
    await g.enter("pod")  # this test holds the only slot
    scopes: dict[str, trio.CancelScope] = {}

    async def request(name: str) -> None:
        with trio.CancelScope() as scopes[name]:
            await g.enter("pod")
            try:
                served.append(name)
                await trio.sleep(1)
            finally:
                g.leave("pod")

    async with trio.open_nursery() as nursery:
        for name in ("b", "c", "d"):
            nursery.start_soon(request, name)
            await trio.testing.wait_all_tasks_blocked()
        scopes["c"].cancel()  # withdrawn while queued
        await trio.testing.wait_all_tasks_blocked()
        assert g.scheduler.queued("pod") == 2
        g.leave("pod")  # the slot goes to b ...
        scopes["b"].cancel()  # ... which is cancelled before it runs: d must get it
    assert served in (["d"], ["b", "d"])
    assert g.scheduler.total_active == 0
    assert g.scheduler.total_queued == 0
