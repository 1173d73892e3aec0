"""Per-source fairness: one flooding pod must not starve its neighbours on the node.

A per-node proxy is shared by every pod on the node, so it must share itself
fairly. ``FairScheduler`` bounds concurrency twice: at most
``max_active_per_source`` requests in flight per source (calling pod or
identity) and ``max_active`` in total. A request that cannot start waits in
its source's FIFO queue (at most ``max_queued_per_source``; at most
``max_queued_total`` over all sources), and freed slots go round robin over
the sources that have someone waiting, not first come first served: a source
with one waiting request is served after at most one request of each other
source, however many the others have queued. (Deficit round robin with equal
unit costs is exactly this.)

When the total queue is full, a newcomer from a source with a shorter queue
pushes out the newest ticket of the longest queue (as fq_codel drops from the
fattest flow), so a few floods cannot fill the queue against everyone else;
the pushed-out ticket is returned so the shell can answer its waiter.

Pure bookkeeping: the shell parks a ``Queued`` caller on an event keyed by
the ticket, calls ``release`` when a request ends and wakes the returned
ticket (which already owns its slot: if its waiter is gone, the shell calls
``release`` for it), and ``cancel``s a ticket whose waiter gave up.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Ticket:
    id: int
    source: str


@dataclass(frozen=True)
class Admitted:
    source: str


@dataclass(frozen=True)
class Queued:
    ticket: Ticket
    evicted: Ticket | None = None  # pushed out to make room: answer its waiter (overloaded)


@dataclass(frozen=True)
class Rejected:
    source: str
    reason: str  # "source_queue_full" | "queue_full"


Decision = Admitted | Queued | Rejected


class FairScheduler:
    """Admission with per-source caps and round-robin queueing between sources."""

    def __init__(
        self,
        max_active: int = 1024,
        max_active_per_source: int = 128,
        max_queued_per_source: int = 64,
        max_queued_total: int = 1024,
    ) -> None:
        self.max_active = max_active
        self.max_active_per_source = max_active_per_source
        self.max_queued_per_source = max_queued_per_source
        self.max_queued_total = max_queued_total
        self._active: dict[str, int] = {}
        self._queues: dict[str, deque[Ticket]] = {}
        self._ring: deque[str] = deque()  # sources with waiters, in service order
        self._ids = itertools.count(1)
        self.total_active = 0
        self.total_queued = 0
        self.rejected = 0

    def __repr__(self) -> str:
        return (
            f"<FairScheduler [{self.total_active}/{self.max_active} active, "
            f"{self.total_queued}/{self.max_queued_total} queued | "
            f"{len(self._active)} sources | {self.rejected} rejected]>"
        )

    def active(self, source: str) -> int:
        return self._active.get(source, 0)

    def queued(self, source: str) -> int:
        q = self._queues.get(source)
        return len(q) if q else 0

    def _start(self, source: str) -> None:
        self._active[source] = self._active.get(source, 0) + 1
        self.total_active += 1

    def admit(self, source: str, now: float) -> Decision:
        """Start now, wait in line, or be refused."""
        if self.total_active < self.max_active and self.active(source) < self.max_active_per_source:
            self._start(source)
            return Admitted(source)
        mine = self.queued(source)
        if mine >= self.max_queued_per_source:
            self.rejected += 1
            return Rejected(source, "source_queue_full")
        evicted = None
        if self.total_queued >= self.max_queued_total:
            fattest = max(self._ring, key=self.queued, default=None)
            if fattest is None or self.queued(fattest) <= mine + 1:
                self.rejected += 1
                return Rejected(source, "queue_full")
            evicted = self._queues[fattest].pop()
            self._dequeued(fattest)
        ticket = Ticket(next(self._ids), source)
        q = self._queues.get(source)
        if q is None:
            q = self._queues[source] = deque()
        if not q:
            self._ring.append(source)
        q.append(ticket)
        self.total_queued += 1
        return Queued(ticket, evicted)

    def _dequeued(self, source: str) -> None:
        self.total_queued -= 1
        if not self._queues[source]:
            del self._queues[source]
            self._ring.remove(source)

    def release(self, source: str, now: float) -> Ticket | None:
        """One request of ``source`` ended; returns the ticket that takes the slot, if any."""
        n = self._active.get(source, 0)
        if n <= 0:
            raise ValueError(f"release for {source!r} with nothing active")
        if n == 1:
            del self._active[source]
        else:
            self._active[source] = n - 1
        self.total_active -= 1
        for _ in range(len(self._ring)):
            candidate = self._ring[0]
            self._ring.rotate(-1)  # served or not, it goes to the back
            if self.active(candidate) < self.max_active_per_source:
                ticket = self._queues[candidate].popleft()
                self._dequeued(candidate)
                self._start(candidate)
                return ticket
        return None

    def cancel(self, ticket: Ticket) -> bool:
        """Withdraw a waiting ticket (its caller timed out); False if no longer queued."""
        q = self._queues.get(ticket.source)
        if not q or ticket not in q:
            return False
        q.remove(ticket)
        self._dequeued(ticket.source)
        return True
