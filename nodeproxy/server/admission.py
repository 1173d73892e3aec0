"""Admission of one listener's requests: local rate limits and per-source fairness.

Why a shell of its own: the decisions are pure (``resilience/ratelimit.py``
token buckets, ``resilience/fairness.py``'s ``FairScheduler``); what is left
is the trio part: parking a queued request on a ``trio.Event`` per ticket,
waking the ticket ``release`` hands the freed slot to, a bounded wait, and
keeping the scheduler's books right when a waiter leaves for any reason
(timeout, client gone, drain: a slot granted to a waiter that is no longer
there is passed on at once). One ``Admission`` per listener, owned by its
handler (the pipeline, the inbound handler); every mutation is synchronous,
so no lock is needed.

Order per request: the listener's rate limits (before routing; a refused
request costs no backend anything), then fairness (a slot for the source,
held until the response is relayed), then after routing the route's limits
(``check_route``). The listener's buckets are this listener's; a route's
buckets belong to the process (``runtime.routes``, ``traffic/routes.py``),
since every listener serves the same routes. The source is the client's IP:
on a node proxy that is the calling pod. Refusals and waits are counted per
source (``source`` label), the first ``SOURCE_CAP`` sources of the listener
by name, later ones as ``other``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from nodeproxy.config.model import FairnessConfig, ListenerConfig, RouteRule
from nodeproxy.errors import RateLimited, SourceOverloaded
from nodeproxy.http1.impl import h11
from nodeproxy.resilience.fairness import Admitted, FairScheduler, Rejected, Ticket
from nodeproxy.server.downstream import Downstream, Exchange
from nodeproxy.stats.names import (
    FAIRNESS_QUEUED,
    FAIRNESS_REJECTED,
    FAIRNESS_WAITING,
    RATE_LIMITED,
    SOURCE_CAP,
)
from nodeproxy.stats.registry import Bounded, Stats, labels
from nodeproxy.traffic.routes import Limiter, Routes
from nodeproxy.traffic.sources import Sources

Handler = Callable[[Downstream, h11.Request, Exchange], Awaitable[bool]]


class FairGate:
    """The trio side of a ``FairScheduler``: queued requests wait on an event each."""

    def __init__(self, config: FairnessConfig) -> None:
        self.scheduler = FairScheduler(
            max_active=config.max_concurrent,
            max_active_per_source=config.max_concurrent_per_source,
            max_queued_per_source=config.max_queue_per_source,
            max_queued_total=config.max_queue,
        )
        self.max_wait = config.max_wait
        self._waiters: dict[int, trio.Event] = {}
        self._evicted: set[int] = set()

    def __repr__(self) -> str:
        return f"<FairGate {self.scheduler!r} [{len(self._waiters)} waiting]>"

    async def enter(self, source: str) -> bool:
        """Wait for a slot for ``source``; True if it had to queue. Raises ``SourceOverloaded``."""
        decision = self.scheduler.admit(source, trio.current_time())
        if isinstance(decision, Admitted):
            return False
        if isinstance(decision, Rejected):
            raise SourceOverloaded(f"{source}: {decision.reason}")
        if decision.evicted is not None:
            self._evict(decision.evicted)
        ticket = decision.ticket
        event = self._waiters[ticket.id] = trio.Event()
        try:
            with trio.move_on_after(self.max_wait):
                await event.wait()
        except BaseException:
            self._abandon(ticket)
            raise
        if ticket.id in self._evicted or not event.is_set():
            self._abandon(ticket)
            raise SourceOverloaded(f"{source}: no slot within {self.max_wait}s")
        del self._waiters[ticket.id]
        return True

    @property
    def waiting(self) -> int:
        """Requests parked for a slot now."""
        return len(self._waiters)

    def leave(self, source: str) -> None:
        """A request of ``source`` ended: hand its slot to the next waiter still there."""
        ticket = self.scheduler.release(source, trio.current_time())
        while ticket is not None:
            event = self._waiters.get(ticket.id)
            if event is not None and not event.is_set():
                event.set()
                return
            ticket = self.scheduler.release(ticket.source, trio.current_time())

    def _evict(self, ticket: Ticket) -> None:
        self._evicted.add(ticket.id)
        event = self._waiters.get(ticket.id)
        if event is not None:
            event.set()

    def _abandon(self, ticket: Ticket) -> None:
        """The waiter of ``ticket`` is leaving without using a slot."""
        self._waiters.pop(ticket.id, None)
        if ticket.id in self._evicted:
            self._evicted.discard(ticket.id)
        elif not self.scheduler.cancel(ticket):  # already granted the slot: pass it on
            self.leave(ticket.source)


class Admission:
    """Rate limits and fairness of one listener (see the module docstring)."""

    def __init__(
        self,
        listener: ListenerConfig,
        fairness: FairnessConfig | None,
        stats: Stats,
        routes: Routes,
        sources: Sources | None = None,
    ) -> None:
        now = trio.current_time()
        self.stats = stats
        self.listener = listener.name
        self.limiter = None if listener.rate_limit is None else Limiter(listener.rate_limit, now)
        self.gate = None if fairness is None else FairGate(fairness)
        self.routes = routes  # the process's (``runtime.routes``), shared by every listener
        self.sources = sources  # the process's per-source table: who waited for a slot
        self.source_labels = Bounded(SOURCE_CAP)  # the ``source`` label's values
        if self.gate is not None:
            stats.add_collector(self._publish)

    def __repr__(self) -> str:
        return f"<Admission {self.listener} {self.limiter!r} {self.gate!r}>"

    @property
    def enabled(self) -> bool:
        """Whether requests need ``serve`` (a listener limit or fairness is configured)."""
        return self.limiter is not None or self.gate is not None

    async def serve(
        self, handle: Handler, down: Downstream, request: h11.Request, ex: Exchange
    ) -> bool:
        """Admit the request, run ``handle``, free the source's slot."""
        source = down.client_ip
        if self.limiter is not None:
            self._limit(self.limiter, source, "listener")
        if self.gate is None:
            return await handle(down, request, ex)
        try:
            if await self.gate.enter(source):
                self._count(FAIRNESS_QUEUED, source)
                if self.sources is not None:
                    self.sources.waited(source)
        except SourceOverloaded:
            self._count(FAIRNESS_REJECTED, source)
            raise
        try:
            return await handle(down, request, ex)
        finally:
            self.gate.leave(source)

    def check_route(self, rule: RouteRule, source: str) -> None:
        """The route's ``rate_limit``, if any, from the process-wide bucket; raises
        ``RateLimited`` (counted under this listener, where the request came in)."""
        if rule.rate_limit is None:
            return
        try:
            self.routes.check_rate(rule, source, trio.current_time())
        except RateLimited:
            self._count(RATE_LIMITED, source, scope="route")
            raise

    def _limit(self, limiter: Limiter, source: str, scope: str) -> None:
        try:
            limiter.check(source, trio.current_time())
        except RateLimited:
            self._count(RATE_LIMITED, source, scope=scope)
            raise

    def _publish(self, stats: Stats) -> None:
        """The requests waiting now, for a reader of the gauges (``Stats.collect``)."""
        assert self.gate is not None
        stats.gauge_set(FAIRNESS_WAITING, labels(listener=self.listener), self.gate.waiting)

    def _count(self, name: str, source: str, **more: str) -> None:
        """One more of ``name`` for ``source`` (refusals and waits only: off the fast path)."""
        lbls = labels(listener=self.listener, source=self.source_labels(source), **more)
        self.stats.inc(name, lbls)
