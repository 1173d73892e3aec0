"""What a balancer learns from the requests it placed: the outcome feedback API.

Latency-aware and load-aware balancers need to know, per endpoint, how many
requests are in flight and how long answers take. The pipeline is the only
caller and reports in exactly two places, with no ``await`` in between the
pick and the start::

    ep = balancer.pick(candidates, now)
    inflight = balancer.on_start(ep, now)       # right after the pick
    ...                                          # the try runs (I/O)
    balancer.on_complete(inflight, now, outcome) # response headers, error, or cancel

Every started try must be completed exactly once (use ``try/finally`` and
``Outcome.CANCELLED`` when the try is abandoned), else the active count leaks.
Completing twice raises ``DoubleCompletion``. State is keyed by the endpoint's
``address`` so it survives a snapshot swap that re-creates the objects, and the
table forgets endpoints that have been gone and idle for a while (``prune``),
so it stays bounded by the endpoints seen recently.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import Protocol

from nodeproxy.discovery.snapshot import Endpoint

DEFAULT_RTT = 0.030  # Linkerd's default RTT for an endpoint without samples
DEFAULT_DECAY = 10.0  # Linkerd's peak-EWMA decay window (seconds)
DEFAULT_FAILURE_PENALTY = 1.0  # seconds of latency charged for a failure or a 429


class Outcome(enum.Enum):
    """How one try ended, as far as the balancer cares."""

    SUCCESS = "success"  # a response below 500 (other than 429)
    FAILURE = "failure"  # 5xx, connect failure, reset, timeout
    THROTTLED = "throttled"  # 429: the replica asked us to go away
    CANCELLED = "cancelled"  # abandoned (client gone, route timeout): no latency sample

    @classmethod
    def from_status(cls, status: int) -> Outcome:
        """Classify an upstream HTTP status."""
        if status == 429:
            return cls.THROTTLED
        return cls.FAILURE if status >= 500 else cls.SUCCESS


class DoubleCompletion(Exception):
    """``on_complete`` was called twice for the same in-flight token."""


class InFlight:
    """The token ``on_start`` returns; hand it back to ``on_complete``.

    A plain class, made once per request: mypyc compiles its ``__init__`` (a
    dataclass's is generated at import and runs interpreted).
    """

    __slots__ = ("done", "endpoint", "started")

    def __init__(self, endpoint: Endpoint, started: float) -> None:
        self.endpoint = endpoint
        self.started = started
        self.done = False

    def __repr__(self) -> str:
        return f"InFlight(endpoint={self.endpoint!r}, started={self.started!r})"


class EndpointLoad:
    """Active requests and a peak-EWMA latency estimate for one endpoint.

    Peak EWMA (Finagle, tower, Linkerd): a sample above the estimate replaces
    it at once (react to a slowdown immediately); a lower one is blended in
    with weight ``1 - exp(-elapsed / decay)``; reading the cost decays the
    estimate toward zero so an idle endpoint is eventually tried again.
    """

    __slots__ = ("active", "ewma", "failures", "updated")

    def __init__(self, now: float, default_rtt: float) -> None:
        self.active = 0
        self.failures = 0  # consecutive failures/429s seen by the balancer
        self.ewma = default_rtt
        self.updated = now

    def __repr__(self) -> str:
        return f"<EndpointLoad [active {self.active} | ewma {self.ewma * 1000:.1f} ms]>"

    def decayed(self, now: float, decay: float) -> float:
        """The estimate as of ``now``, decayed toward zero since the last update."""
        elapsed = max(0.0, now - self.updated)
        return self.ewma * math.exp(-elapsed / decay)

    def observe(self, now: float, rtt: float, decay: float) -> None:
        """Fold one latency sample in (peak-sensitive)."""
        w = math.exp(-max(0.0, now - self.updated) / decay)  # ``decayed``'s factor, once
        current = self.ewma * w
        if rtt > current:
            self.ewma = rtt
        else:
            self.ewma = current + rtt * (1.0 - w)
        self.updated = now


class LoadTable:
    """Per-endpoint ``EndpointLoad``, owned by one balancer (one per cluster)."""

    def __init__(
        self,
        default_rtt: float = DEFAULT_RTT,
        decay: float = DEFAULT_DECAY,
        failure_penalty: float = DEFAULT_FAILURE_PENALTY,
    ) -> None:
        self.default_rtt = default_rtt
        self.decay = decay
        self.failure_penalty = failure_penalty
        self._loads: dict[str, EndpointLoad] = {}
        self._next_prune = float("-inf")

    def __repr__(self) -> str:
        active = sum(x.active for x in self._loads.values())
        return f"<LoadTable [{len(self._loads)} endpoints | {active} active]>"

    def __len__(self) -> int:
        return len(self._loads)

    def get(self, ep: Endpoint, now: float) -> EndpointLoad:
        load = self._loads.get(ep.address)
        if load is None:
            load = self._loads[ep.address] = EndpointLoad(now, self.default_rtt)
        return load

    def active(self, ep: Endpoint) -> int:
        load = self._loads.get(ep.address)
        return load.active if load is not None else 0

    def ewma(self, ep: Endpoint, now: float) -> float:
        # An endpoint starts at default_rtt when first seen and decays from then, as in
        # tower's PeakEwma: one that never got a request becomes cheap and is tried, so a
        # sequential client is not pinned to whichever equal replica answered first.
        return self.get(ep, now).decayed(now, self.decay)

    def start(self, ep: Endpoint, now: float) -> InFlight:
        self.get(ep, now).active += 1
        return InFlight(ep, now)

    def complete(
        self, token: InFlight, now: float, outcome: Outcome, latency: float | None = None
    ) -> None:
        if token.done:
            raise DoubleCompletion(f"{token.endpoint.address} completed twice")
        token.done = True
        load = self.get(token.endpoint, now)
        load.active = max(0, load.active - 1)
        if outcome is Outcome.CANCELLED:
            return
        rtt = latency if latency is not None else max(0.0, now - token.started)
        if outcome is Outcome.SUCCESS:
            load.failures = 0
        else:
            load.failures += 1
            rtt = max(rtt, self.failure_penalty)  # a fast failure must not look fast
        load.observe(now, rtt, self.decay)

    def prune(self, live: Sequence[Endpoint], now: float) -> None:
        """Forget endpoints absent from ``live``, idle, and silent for 5 decay times.

        Called from ``pick``; scans at most once per ``decay`` and only once the
        table outgrew ``live``. Age matters because ``live`` may be a canary
        subset: the other subset's estimates must survive. After five decay
        times an estimate carries under 1 % of its last sample anyway.
        """
        if len(self._loads) <= 2 * len(live) + 8 or now < self._next_prune:
            return
        self._next_prune = now + self.decay
        keep = {ep.address for ep in live}
        horizon = now - 5 * self.decay
        for addr in [
            a
            for a, x in self._loads.items()
            if a not in keep and x.active == 0 and x.updated < horizon
        ]:
            del self._loads[addr]


class FeedbackBalancer(Protocol):
    """A ``Balancer`` that also takes outcome feedback (see the module docstring)."""

    @property
    def loads(self) -> LoadTable:
        """Per-endpoint active counts and latency estimates (for ``/clusters``)."""
        ...

    def pick(self, endpoints: Sequence[Endpoint], now: float) -> Endpoint | None: ...

    def on_start(self, ep: Endpoint, now: float) -> InFlight: ...

    def on_complete(
        self, token: InFlight, now: float, outcome: Outcome, latency: float | None = None
    ) -> None: ...


class Tracking:
    """Base of the balancers: the feedback API backed by a ``LoadTable`` at
    ``self.loads``; ``pick`` prunes the table, then asks the subclass to ``choose``."""

    loads: LoadTable

    def pick(self, endpoints: Sequence[Endpoint], now: float) -> Endpoint | None:
        """The endpoint for the next try; None when ``endpoints`` is empty."""
        if not endpoints:
            return None
        self.loads.prune(endpoints, now)
        return self.choose(endpoints, now)

    def choose(self, endpoints: Sequence[Endpoint], now: float) -> Endpoint:
        """The policy itself, over a non-empty ``endpoints``."""
        raise NotImplementedError

    def on_start(self, ep: Endpoint, now: float) -> InFlight:
        """Count a try as active on ``ep``; call right after ``pick``."""
        return self.loads.start(ep, now)

    def on_complete(
        self, token: InFlight, now: float, outcome: Outcome, latency: float | None = None
    ) -> None:
        """Report how the try ended; ``latency`` defaults to ``now - started``."""
        self.loads.complete(token, now, outcome, latency)
