"""Keep-alive pool bookkeeping for one upstream endpoint, without any I/O.

Deciding which connection a request gets, whether a new one may be opened,
and which idle ones have expired is plain synchronous code that takes
``now``; the trio shell (``pool.py``) does the connecting and closing the
decisions call for. That keeps the rules testable as tables and makes the
counts exact: ``active`` counts connections lent out *and* connections being
opened (a reserved slot), so ``active + idle`` never exceeds ``capacity``.

Reuse is LIFO (the most recently returned connection first): the warmest
connection is the least likely to have been closed by the upstream, and the
cold ones at the bottom age out through ``expire``.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

C = TypeVar("C")


class PoolFull(Exception):
    """No idle connection and no free slot: the caller must wait or give up."""


class EndpointPool(Generic[C]):
    """Owns the idle list and the slot count for one endpoint.

    Protocol: ``checkout`` returns an idle connection, or None after reserving
    a slot for a new one (the caller then connects and, on failure, calls
    ``discard``). Every lent connection comes back through ``checkin``
    (reusable) or ``discard`` (closed by the caller).
    """

    __slots__ = ("_idle", "active", "capacity", "idle_timeout")

    def __init__(self, capacity: int, idle_timeout: float) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.idle_timeout = idle_timeout
        self.active = 0
        self._idle: deque[tuple[C, float]] = deque()  # (connection, idle since)

    def __repr__(self) -> str:
        return (
            f"<EndpointPool [{self.active} active, {len(self._idle)} idle, "
            f"capacity {self.capacity}]>"
        )

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def has_room(self) -> bool:
        return bool(self._idle) or self.active + len(self._idle) < self.capacity

    def checkout(self, now: float) -> tuple[C | None, list[C]]:
        """(an idle connection or None = "open a new one", expired ones to close).

        Raises ``PoolFull`` when every slot is lent out.
        """
        expired = self.expire(now)
        if self._idle:
            conn, _ = self._idle.pop()
            self.active += 1
            return conn, expired
        if self.active >= self.capacity:
            raise PoolFull(repr(self))
        self.active += 1
        return None, expired

    def checkin(self, conn: C, now: float) -> None:
        """Return a healthy connection for reuse."""
        self.active -= 1
        self._idle.append((conn, now))

    def discard(self) -> None:
        """A lent (or reserved) slot is gone: the caller closed it or never opened it."""
        self.active -= 1

    def expire(self, now: float) -> list[C]:
        """Remove and return idle connections unused for ``idle_timeout``."""
        expired: list[C] = []
        deadline = now - self.idle_timeout
        while self._idle and self._idle[0][1] <= deadline:
            expired.append(self._idle.popleft()[0])
        return expired

    def take_all_idle(self) -> list[C]:
        """Remove and return every idle connection (shutdown, drain)."""
        conns = [c for c, _ in self._idle]
        self._idle.clear()
        return conns
