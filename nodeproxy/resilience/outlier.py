"""Passive outlier detection with Envoy's semantics: eject replicas that keep failing.

The data path only *reports* what happened to a try (``Result``, as in
``envoy/upstream/outlier_detection.h``, or an HTTP status); this detector
decides. As in Envoy without ``split_external_local_origin_errors``, a local
failure counts as the status the client would see (connect failure and reset
as 503, timeout as 504), so one counter sees both kinds:

- ``consecutive_5xx`` (default 5) 5xx answers in a row eject the host;
- ``consecutive_gateway_failure`` (default 5) 502/503/504 in a row eject it
  (Envoy's default enforcement for this one is 0 %; ours is on: a replica that
  keeps failing with 503 is taken out even in a native config);
- any success resets both counters.

An ejection lasts ``base_ejection_time x multiplier`` capped by
``max_ejection_time``; the multiplier grows by one per ejection and shrinks by
one per ``interval`` spent healthy, so a flapping host stays out longer each
time. No ejection may take the ejected share above ``max_ejection_percent``.
Un-ejection is lazy (checked at ``now`` on every call) instead of Envoy's
interval timer, so a host returns exactly when its time is up.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nodeproxy.discovery.snapshot import Endpoint
from nodeproxy.resilience import IllegalTransition


class Result(enum.Enum):
    """What the data path saw (Envoy's ``Outlier::Result``, plus a reset)."""

    LOCAL_ORIGIN_CONNECT_FAILED = "connect_failed"
    LOCAL_ORIGIN_TIMEOUT = "timeout"
    LOCAL_ORIGIN_RESET = "reset"
    LOCAL_ORIGIN_CONNECT_SUCCESS = "connect_success"
    EXT_ORIGIN_REQUEST_FAILED = "request_failed"  # with the status
    EXT_ORIGIN_REQUEST_SUCCESS = "request_success"


_LOCAL_AS_STATUS = {
    Result.LOCAL_ORIGIN_CONNECT_FAILED: 503,
    Result.LOCAL_ORIGIN_RESET: 503,
    Result.LOCAL_ORIGIN_TIMEOUT: 504,
}
GATEWAY_STATUSES = frozenset({502, 503, 504})


class HostState(enum.Enum):
    ACTIVE = "active"
    EJECTED = "ejected"


class _Event(enum.Enum):
    EJECT = "eject"
    UNEJECT = "uneject"


_TRANSITIONS = {
    (HostState.ACTIVE, _Event.EJECT): HostState.EJECTED,
    (HostState.EJECTED, _Event.UNEJECT): HostState.ACTIVE,
}


@dataclass(frozen=True)
class OutlierConfig:
    consecutive_5xx: int = 5  # Envoy default
    consecutive_gateway_failure: int = 5  # Envoy default
    interval: float = 10.0  # Envoy default: multiplier decay step
    base_ejection_time: float = 30.0  # Envoy default
    max_ejection_time: float = 300.0  # Envoy default
    max_ejection_percent: float = 50.0  # Envoy: 10, which never ejects in a 2..9 replica service
    # Envoy's enforcing_* as on/off (0 or 100 %): a detection that is not enforced ejects
    # nothing. Envoy's default for the gateway one is 0; both 0 is Envoy without
    # outlier_detection (an Envoy file's cluster without it gets DISABLED).
    enforcing_consecutive_5xx: float = 100.0
    enforcing_consecutive_gateway_failure: float = 100.0


DISABLED = OutlierConfig(enforcing_consecutive_5xx=0.0, enforcing_consecutive_gateway_failure=0.0)


@dataclass(frozen=True)
class Ejection:
    """Returned when a report ejected a host (for stats and the log)."""

    address: str
    reason: str  # "consecutive_5xx" | "consecutive_gateway_failure"
    until: float
    multiplier: int


class _Host:
    __slots__ = ("c5xx", "cgw", "mark", "multiplier", "state", "times", "until")

    def __init__(self, now: float) -> None:
        self.state = HostState.ACTIVE
        self.c5xx = 0
        self.cgw = 0
        self.multiplier = 0
        self.until = 0.0
        self.mark = now  # start of the current healthy stretch (multiplier decay)
        self.times = 0

    def move(self, event: _Event) -> None:
        try:
            self.state = _TRANSITIONS[(self.state, event)]
        except KeyError:
            raise IllegalTransition("outlier host", self.state, event) from None


class OutlierDetector:
    """One per cluster, owned by the pipeline; keyed by endpoint address."""

    def __init__(self, config: OutlierConfig | None = None) -> None:
        self.config = config or OutlierConfig()
        self._hosts: dict[str, _Host] = {}
        # No host is ejected at or after this time: ``healthy`` skips its scan then
        # (the common case, once per request) for the endpoints it last found all
        # known and active; an ejection makes it scan again.
        self._clear_after = -math.inf
        self._known: Sequence[Endpoint] | None = None  # last endpoints found all active
        self.ejections = 0
        self.ejections_by_reason: dict[str, int] = {}  # the metrics' reason label
        self.overflows = 0  # ejections refused by max_ejection_percent
        self.panics = 0  # healthy() calls that found everything ejected

    def __repr__(self) -> str:
        ejected = sum(h.state is HostState.EJECTED for h in self._hosts.values())
        return (
            f"<OutlierDetector [{len(self._hosts)} hosts, {ejected} ejected | "
            f"{self.ejections} ejections, {self.overflows} overflows]>"
        )

    def _host(self, address: str, now: float) -> _Host:
        host = self._hosts.get(address)
        if host is None:
            host = self._hosts[address] = _Host(now)
        self._refresh(host, now)
        return host

    def _refresh(self, host: _Host, now: float) -> None:
        if host.state is HostState.EJECTED:
            if now < host.until:
                return
            host.move(_Event.UNEJECT)
            host.mark = host.until
        if host.multiplier and now - host.mark >= self.config.interval:
            steps = int((now - host.mark) // self.config.interval)
            host.multiplier = max(0, host.multiplier - steps)
            host.mark += steps * self.config.interval

    def sync(self, endpoints: Iterable[Endpoint], now: float) -> None:
        """Adopt the cluster's full endpoint set (call on each snapshot change).

        Departed hosts are forgotten (a returning address starts clean), new
        ones start ACTIVE; the set is the denominator of ``max_ejection_percent``.
        """
        live = {ep.address for ep in endpoints}
        self._hosts = {a: h for a, h in self._hosts.items() if a in live}
        self._known = None
        for address in live:
            self._host(address, now)

    def state(self, ep: Endpoint, now: float) -> HostState:
        host = self._hosts.get(ep.address)
        if host is None:
            return HostState.ACTIVE
        self._refresh(host, now)
        return host.state

    def ejected_until(self, ep: Endpoint, now: float) -> float | None:
        host = self._hosts.get(ep.address)
        return host.until if host and self.state(ep, now) is HostState.EJECTED else None

    def healthy(self, endpoints: Sequence[Endpoint], now: float) -> Sequence[Endpoint]:
        """The endpoints not ejected; all of them if every one is (Envoy's panic mode).

        ``endpoints`` may be a subset (a canary's); hosts not seen before are
        added, none is forgotten here (that is ``sync``'s job).
        """
        if endpoints is self._known and now >= self._clear_after:
            return endpoints
        live = [ep for ep in endpoints if self._host(ep.address, now).state is HostState.ACTIVE]
        if len(live) == len(endpoints):
            self._known = endpoints  # all known hosts (a snapshot's tuple is reused)
            return endpoints
        if not live and endpoints:
            self.panics += 1
            return endpoints
        return tuple(live)

    def put_status(self, ep: Endpoint, status: int, now: float) -> Ejection | None:
        """Report an upstream HTTP status for one try."""
        host = self._host(ep.address, now)
        if status < 500:
            host.c5xx = host.cgw = 0
            return None
        host.c5xx += 1
        host.cgw = host.cgw + 1 if status in GATEWAY_STATUSES else 0
        config = self.config
        if (
            host.cgw >= config.consecutive_gateway_failure
            and config.enforcing_consecutive_gateway_failure
        ):
            return self._try_eject(ep.address, host, now, "consecutive_gateway_failure")
        if host.c5xx >= config.consecutive_5xx and config.enforcing_consecutive_5xx:
            return self._try_eject(ep.address, host, now, "consecutive_5xx")
        return None

    def put_result(
        self, ep: Endpoint, result: Result, now: float, status: int | None = None
    ) -> Ejection | None:
        """Report a ``Result``; ``status`` goes with ``EXT_ORIGIN_REQUEST_FAILED``."""
        if result is Result.LOCAL_ORIGIN_CONNECT_SUCCESS:
            return None  # only meaningful in Envoy's split mode
        if result is Result.EXT_ORIGIN_REQUEST_SUCCESS:
            return self.put_status(ep, status or 200, now)
        if result is Result.EXT_ORIGIN_REQUEST_FAILED:
            return self.put_status(ep, status or 500, now)
        return self.put_status(ep, _LOCAL_AS_STATUS[result], now)

    def _try_eject(self, address: str, host: _Host, now: float, reason: str) -> Ejection | None:
        host.c5xx = host.cgw = 0  # as Envoy: counting starts over either way
        if host.state is HostState.EJECTED:
            return None  # a late report from a try that started before the ejection
        for other in self._hosts.values():
            self._refresh(other, now)
        ejected = sum(h.state is HostState.EJECTED for h in self._hosts.values())
        if 100.0 * (ejected + 1) / len(self._hosts) > self.config.max_ejection_percent:
            self.overflows += 1
            return None
        base, cap = self.config.base_ejection_time, self.config.max_ejection_time
        if base * host.multiplier < cap + base:  # Envoy's bound on the multiplier
            host.multiplier += 1
        host.move(_Event.EJECT)
        host.until = now + min(base * host.multiplier, cap)
        self._clear_after = max(self._clear_after, host.until)
        self._known = None  # the next ``healthy`` scans (and later unejects) again
        host.times += 1
        self.ejections += 1
        self.ejections_by_reason[reason] = self.ejections_by_reason.get(reason, 0) + 1
        return Ejection(address, reason, host.until, host.multiplier)

    def ejected(self, now: float) -> int:
        """How many hosts are ejected at ``now``."""
        for host in self._hosts.values():
            self._refresh(host, now)
        return sum(h.state is HostState.EJECTED for h in self._hosts.values())

    def describe(self, ep: Endpoint, now: float) -> dict[str, object]:
        """Per-endpoint state for ``/clusters`` and ``/explain``."""
        host = self._host(ep.address, now)
        return {
            "state": host.state.value,
            "consecutive_5xx": host.c5xx,
            "consecutive_gateway_failure": host.cgw,
            "ejected_until": host.until if host.state is HostState.EJECTED else None,
            "times_ejected": host.times,
            "multiplier": host.multiplier,
        }
