"""Who holds a listener's connection slots: a total cap and a cap per source.

Why a module of its own: the decision "may this new connection have a slot?"
is pure bookkeeping, so it is plain synchronous code (no trio) that the
accept loop asks and a unit test can drive as a table. Two limits apply:

- ``limits.max_connections_per_source``: one client IP (on a node proxy, one
  pod) may hold at most this many of the listener's connections, so a pod
  opening hundreds of keep-alives cannot lock the others out. 0: no cap.
- ``limits.max_downstream_connections``: the listener's total. At it the
  accept loop first closes the oldest idle keep-alive connection
  (``ConnectionLoop.close_oldest_idle``) and gives its slot to the newcomer;
  only with nothing idle is the new connection refused.

The per-source cap is checked first: a source over its own cap is refused
without closing anybody else's connection for it. Slots are keyed by the
connection (any hashable, the listener uses the socket), and ``release`` is
idempotent: an evicted connection's slot is handed over at once by the accept
loop, and its task's own release when it ends is then a no-op. Sources with
no connection left are forgotten, so memory follows the open connections.
"""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

K = TypeVar("K")

Refusal = Literal["per_source", "max_connections"]


class ConnectionSlots(Generic[K]):
    """Connection slots of one listener, counted in total and per source."""

    __slots__ = ("by_source", "cap", "held", "per_source")

    def __init__(self, cap: int, per_source: int) -> None:
        self.cap = cap
        self.per_source = per_source  # 0: no per-source cap
        self.held: dict[K, str] = {}  # connection -> its source
        self.by_source: dict[str, int] = {}

    def __repr__(self) -> str:
        return (
            f"<ConnectionSlots [{len(self.held)}/{self.cap} connections, "
            f"{len(self.by_source)} sources, per source {self.per_source or 'unlimited'}]>"
        )

    @property
    def active(self) -> int:
        return len(self.held)

    def refusal(self, source: str) -> Refusal | None:
        """Why a new connection from ``source`` cannot have a slot now; None if it can."""
        if self.per_source and self.by_source.get(source, 0) >= self.per_source:
            return "per_source"
        if len(self.held) >= self.cap:
            return "max_connections"
        return None

    def take(self, conn: K, source: str) -> None:
        """Give ``conn`` a slot (after ``refusal`` said None)."""
        self.held[conn] = source
        self.by_source[source] = self.by_source.get(source, 0) + 1

    def release(self, conn: K) -> None:
        """Free ``conn``'s slot; a no-op when it holds none (already released)."""
        source = self.held.pop(conn, None)
        if source is None:
            return
        left = self.by_source[source] - 1
        if left:
            self.by_source[source] = left
        else:
            del self.by_source[source]
