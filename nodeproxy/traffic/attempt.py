"""How the data path reports what happened to one request: the single outcome point.

The pipeline holds two objects per request, each closed exactly once in a
``finally``:

- a ``Ticket`` (per request, per service): the circuit breaker's permit and
  the overload guard's ``max_requests`` slot. Closing it tells the breaker
  the request's verdict (success, failure, or none if it was abandoned) and
  frees the slot.
- an ``Attempt`` (per try, per endpoint): the balancer's in-flight token.
  It takes at most one report, either the upstream's status when the
  response head arrives (``report_status``) or the error that ended the try
  (``report_error``); that report feeds the balancer's latency and failure
  estimate, the outlier detector, and the ticket's verdict. Closing an
  attempt that got no report completes it as ``CANCELLED`` (no sample).
  A request with retries holds one attempt per try, and each reports its
  own outcome (a 500 as a 500, a refused connect as a connect failure, a
  per-try timeout as a timeout), whether it was retried or not; the last
  report sets the ticket's verdict.

Everything here is synchronous and takes ``now``; the mapping from the data
path's typed errors to Envoy's outlier ``Result`` lives here, once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nodeproxy.balancing.feedback import InFlight, Outcome
from nodeproxy.discovery.snapshot import Endpoint
from nodeproxy.errors import (
    PeerTLSFailure,
    UpstreamConnectFailure,
    UpstreamConnectTimeout,
    UpstreamProtocolError,
    UpstreamResetBeforeHeaders,
    UpstreamResponseTimeout,
)
from nodeproxy.resilience.breaker import Permit
from nodeproxy.resilience.outlier import Ejection, Result
from nodeproxy.resilience.overload import Resource

if TYPE_CHECKING:
    from nodeproxy.traffic.state import ClusterTraffic

# The errors that say something about the endpoint, as the outlier detector's words.
_RESULTS: tuple[tuple[type[Exception], Result], ...] = (
    (UpstreamConnectFailure, Result.LOCAL_ORIGIN_CONNECT_FAILED),
    (UpstreamConnectTimeout, Result.LOCAL_ORIGIN_CONNECT_FAILED),
    (PeerTLSFailure, Result.LOCAL_ORIGIN_CONNECT_FAILED),
    (UpstreamResetBeforeHeaders, Result.LOCAL_ORIGIN_RESET),
    (UpstreamProtocolError, Result.LOCAL_ORIGIN_RESET),
    (UpstreamResponseTimeout, Result.LOCAL_ORIGIN_TIMEOUT),
)


def result_of(error: BaseException) -> Result | None:
    """The outlier ``Result`` an error stands for; None when it is not the endpoint's doing.

    Pool saturation (``Overloaded``), a policy denial, a client that went away
    or stalled its body say nothing about the endpoint's health.
    """
    for kind, result in _RESULTS:
        if isinstance(error, kind):
            return result
    return None


class Ticket:
    """One request's admission to a service: breaker permit + overload slot."""

    __slots__ = ("closed", "permit", "state", "verdict")

    def __init__(self, state: ClusterTraffic, permit: Permit | None) -> None:
        self.state = state
        self.permit = permit
        self.verdict: bool | None = None  # the last try's success, None: no verdict
        self.closed = False

    def __repr__(self) -> str:
        return f"<Ticket {self.state.name} [verdict {self.verdict}]>"

    def close(self, now: float) -> None:
        """Report the verdict to the breaker and free the overload slot (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.state.overload.release(Resource.REQUESTS)
        breaker, permit = self.state.breaker, self.permit
        if breaker is None or permit is None:
            return
        if self.verdict is None:
            breaker.release(permit, now)
        else:
            breaker.record(permit, now, self.verdict)


class Attempt:
    """One try at one endpoint: reported at most once, closed exactly once."""

    __slots__ = ("endpoint", "reported", "state", "ticket", "token")

    def __init__(self, ticket: Ticket, endpoint: Endpoint, token: InFlight) -> None:
        self.ticket = ticket
        self.state = ticket.state
        self.endpoint = endpoint
        self.token = token
        self.reported = False

    def __repr__(self) -> str:
        return f"<Attempt {self.endpoint.address} [{'reported' if self.reported else 'open'}]>"

    def report_status(self, status: int, now: float) -> Ejection | None:
        """The response head arrived with ``status`` (latency measured up to now)."""
        if self.reported:
            return None
        self.reported = True
        outcome = Outcome.from_status(status)
        self.state.balancer.on_complete(self.token, now, outcome)
        self.ticket.verdict = status < 500
        return self.state.outlier.put_status(self.endpoint, status, now)

    def report_error(self, error: BaseException, now: float) -> Ejection | None:
        """The try ended with ``error`` before a response head; ignored unless it is
        the endpoint's doing (then a failure for the balancer, detector and breaker)."""
        result = result_of(error)
        if self.reported or result is None:
            return None
        self.reported = True
        self.state.balancer.on_complete(self.token, now, Outcome.FAILURE)
        self.ticket.verdict = False
        return self.state.outlier.put_result(self.endpoint, result, now)

    def close(self, now: float) -> None:
        """Complete the balancer's token as CANCELLED if nothing was reported."""
        if not self.reported:
            self.reported = True
            self.state.balancer.on_complete(self.token, now, Outcome.CANCELLED)
