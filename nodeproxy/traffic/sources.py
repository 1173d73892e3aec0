"""Who calls through this node: per calling source (pod IP), requests in flight and refused.

Why a table of its own: a per-node proxy is shared by every pod on the node,
and the operator's first question when one of them misbehaves is "which pod
is flooding, and is the proxy holding it back?". Fairness and the rate limits
(``resilience/fairness.py``, ``resilience/ratelimit.py``) keep their own state
per listener and per route, keyed for their decisions; this table keeps what
the admin dashboard shows, over every listener: requests in flight now
(counted from the request head to its accounting, so a request waiting in a
fairness queue is in flight), requests answered, 5xx answers, and the ones
refused by a rate limit (429 ``rate_limited``) or by fairness (503
``source_overloaded``), and the ones that waited in a fairness queue.

Bounded: at most ``max_sources`` rows; the least recently seen source with
nothing in flight is forgotten first (a pod that left the node). Sources with
requests in flight are never dropped while an idle one is left; past the cap
with all of them busy, the oldest busy one goes and its late ``end`` is
ignored. One ``Sources`` per process (``Runtime.sources``), mutated by request
tasks in synchronous code only (no lock needed under trio).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

DEFAULT_MAX_SOURCES = 1024
# One row as a worker sends it to its supervisor: (source, in_flight, requests, errors,
# rate_limited, fairness_rejected, queued, seconds since last seen); ages, since the two
# processes' clocks differ.
WireRow = tuple[str, int, int, int, int, int, int, float]


@dataclass(slots=True)
class SourceCounts:
    """One calling source's counters (``last_seen``: the trio clock)."""

    in_flight: int = 0
    requests: int = 0
    errors: int = 0  # answered 5xx
    rate_limited: int = 0  # answered 429 by a local rate limit
    fairness_rejected: int = 0  # answered 503 by per-source fairness
    queued: int = 0  # waited in a fairness queue for a slot (then served)
    last_seen: float = 0.0

    @property
    def throttled(self) -> int:
        return self.rate_limited + self.fairness_rejected


class Sources:
    """Per-source counters of the whole process; see the module docstring."""

    def __init__(self, max_sources: int = DEFAULT_MAX_SOURCES) -> None:
        if max_sources < 1:
            raise ValueError("max_sources must be >= 1")
        self.max_sources = max_sources
        self._rows: OrderedDict[str, SourceCounts] = OrderedDict()
        self.forgotten = 0

    def __repr__(self) -> str:
        busy = sum(1 for c in self._rows.values() if c.in_flight)
        return f"<Sources [{len(self._rows)}/{self.max_sources} sources, {busy} busy]>"

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, source: str) -> SourceCounts | None:
        return self._rows.get(source)

    def start(self, source: str, now: float) -> SourceCounts:
        """A request head from ``source`` was read: counted in flight until the caller
        calls ``end`` with the row returned (answered, or abandoned)."""
        row = self._rows.get(source)
        if row is None:
            row = self._row(source)
        else:
            self._rows.move_to_end(source)
        row.in_flight += 1
        row.last_seen = now
        return row

    @staticmethod
    def end(row: SourceCounts) -> None:
        """The request ``start`` returned ``row`` for is no longer in flight (a row
        forgotten meanwhile is simply dropped with its count)."""
        row.in_flight -= 1

    def waited(self, source: str) -> None:
        """A request of ``source`` got its fairness slot after waiting in the queue."""
        row = self._rows.get(source)
        if row is not None:
            row.queued += 1

    def answered(self, source: str, status: int, cause: str | None, now: float) -> None:
        """A request of ``source`` was accounted with ``status`` (and the proxy's ``cause``)."""
        row = self._rows.get(source)  # start() made it the most recent already
        if row is None:
            row = self._row(source)
        row.requests += 1
        row.last_seen = now
        if status >= 500:
            row.errors += 1
            if cause == "source_overloaded":
                row.fairness_rejected += 1
        elif cause == "rate_limited":
            row.rate_limited += 1

    def _row(self, source: str) -> SourceCounts:
        """``source``'s row, made the most recent (created, and the table kept bounded)."""
        row = self._rows.get(source)
        if row is not None:
            self._rows.move_to_end(source)
            return row
        if len(self._rows) >= self.max_sources:
            rows = self._rows
            victim = next((s for s, c in rows.items() if c.in_flight == 0), next(iter(rows)))
            del rows[victim]
            self.forgotten += 1
        row = self._rows[source] = SourceCounts()
        return row

    def wire_rows(self, now: float) -> list[WireRow]:
        """Every row for the supervisor (``workers/merge.py`` sums them)."""
        return [
            (
                s,
                c.in_flight,
                c.requests,
                c.errors,
                c.rate_limited,
                c.fairness_rejected,
                c.queued,
                now - c.last_seen,
            )
            for s, c in self._rows.items()
        ]

    def items(self) -> list[tuple[str, SourceCounts]]:
        """Every row, a copy (safe to read across awaits), least recently seen first."""
        return [(s, replace(c)) for s, c in self._rows.items()]
