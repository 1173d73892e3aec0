"""Round robin: each endpoint in turn, stable across snapshot changes."""

from __future__ import annotations

from collections.abc import Sequence

from nodeproxy.discovery.snapshot import Endpoint


class RoundRobin:
    def __init__(self) -> None:
        self._next = 0

    def __repr__(self) -> str:
        return f"<RoundRobin [next {self._next}]>"

    def pick(self, endpoints: Sequence[Endpoint], now: float) -> Endpoint | None:
        if not endpoints:
            return None
        ep = endpoints[self._next % len(endpoints)]
        self._next = (self._next + 1) % (1 << 30)
        return ep
