"""Envoy-style overload thresholds per service: stop piling work onto a cluster.

Envoy's ``circuit_breakers.thresholds`` are not a breaker at all but four
counters with a ceiling each (defaults 1024 / 1024 / 1024 / 3, as here):
connections opened to the cluster, requests waiting for a connection,
requests in flight, and retries in flight. ``admit`` either counts one more or
raises ``Overloaded`` (503 ``overloaded``) at once; every successful admit
must be paired with exactly one ``release`` (``try/finally`` in the shell). A
release with nothing admitted raises ``UnbalancedRelease``: that is a bug in
the caller, and silently going negative would disable the limit.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from nodeproxy.errors import Overloaded


class Resource(enum.Enum):
    CONNECTIONS = "max_connections"
    PENDING = "max_pending_requests"
    REQUESTS = "max_requests"
    RETRIES = "max_retries"

    # Members are singletons compared by identity; they key dicts touched twice a
    # request, so the C identity hash instead of Enum's (a Python call hashing the name).
    __hash__ = object.__hash__


@dataclass(frozen=True)
class OverloadLimits:
    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3

    def limit(self, resource: Resource) -> int:
        value: int = getattr(self, resource.value)
        return value


class UnbalancedRelease(Exception):
    """``release`` without a matching ``admit``."""


class OverloadGuard:
    """The four counters of one service."""

    def __init__(self, limits: OverloadLimits | None = None) -> None:
        self.limits = limits or OverloadLimits()
        self._counts = dict.fromkeys(Resource, 0)
        self.overflows = dict.fromkeys(Resource, 0)  # Envoy's upstream_rq_pending_overflow...
        self._limit = {r: self.limits.limit(r) for r in Resource}  # read twice a request

    def __repr__(self) -> str:
        parts = " | ".join(
            f"{r.name.lower()} {self._counts[r]}/{self.limits.limit(r)}" for r in Resource
        )
        return f"<OverloadGuard [{parts}]>"

    def count(self, resource: Resource) -> int:
        return self._counts[resource]

    def try_admit(self, resource: Resource) -> bool:
        """Count one more unless at the limit; False (and an overflow counted) if at it."""
        if self._counts[resource] >= self._limit[resource]:
            self.overflows[resource] += 1
            return False
        self._counts[resource] += 1
        return True

    def admit(self, resource: Resource) -> None:
        """Like ``try_admit`` but raises ``Overloaded`` naming the threshold."""
        if not self.try_admit(resource):
            raise Overloaded(f"{resource.value} ({self._limit[resource]}) reached")

    def release(self, resource: Resource) -> None:
        if self._counts[resource] <= 0:
            raise UnbalancedRelease(f"{resource.value} released more than admitted")
        self._counts[resource] -= 1
