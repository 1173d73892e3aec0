"""The retry loop of a route with ``retries``: try, report, judge, back off, pick again.

Why a shell of its own: the decisions (is this failure retryable, is it safe,
how long to back off, is there budget left) are pure code in
``resilience/retry.py`` and ``resilience/budget.py``; what remains is I/O
ordering that the straight send/relay does not need when a route has no retry
policy, so routes without one keep the straight path.

One try is ``exchange.send``: connect, send what is in hand, stream any rest
of the body, wait for the response head. A try fails with a connect failure,
a reset before the head, a per-try timeout (a cancel scope inside the route
deadline, which stays armed on the connection by ``exchange``), or a status
``retry_on`` names. Every try reports its own outcome on its ``Attempt`` as
soon as it is known (the status, or the connect failure / reset / timeout),
so the balancer, the outlier detector and the breaker learn what really
happened, retried or not. A failed try is repeated only when the whole
request can be sent again: a connect failure consumed nothing; otherwise the
request must have been in hand complete (a streamed body is gone once sent)
and ``RetryPolicy.is_retryable`` must call it safe (an idempotent method,
RFC 9110 §9.2.2). Each try asks ``pick`` again, and the pipeline's pick
prefers endpoints this request has not tried yet (Envoy's ``previous_hosts``
retry host predicate). The route timeout covers all tries: the response-head
deadline of each try is what is left of it.

A retry first takes one of the service's ``max_retries`` slots (Envoy's
active-retries threshold), then a slot in the route's ``RetryBudget`` (the
process-wide one, ``runtime.routes``); both are held until the request ends.
When either says no, the retry is not made and the client gets the failure in
hand: the last try's answer, or its error mapped as usual (503
``connection_failure``...), as Envoy does on ``upstream_rq_retry_overflow``;
the refusal is counted in ``nodeproxy_retries_overflow_total{threshold}`` (and a
``max_retries`` refusal in the guard's ``overflows``). A request that was
retried and then got an answer its policy accepts counts in
``nodeproxy_retries_succeeded_total`` (Envoy's ``upstream_rq_retry_success``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import trio

from nodeproxy.errors import (
    PeerTLSFailure,
    ProxyError,
    UpstreamConnectFailure,
    UpstreamConnectTimeout,
    UpstreamResetBeforeHeaders,
    UpstreamResponseTimeout,
)
from nodeproxy.http1.impl import h11
from nodeproxy.resilience.overload import OverloadGuard, Resource
from nodeproxy.resilience.retry import RetryPolicy, TryFailure
from nodeproxy.runtime import DrainState
from nodeproxy.server.downstream import Downstream, Exchange
from nodeproxy.server.exchange import Outgoing, relay, send
from nodeproxy.stats.names import RETRIES, RETRIES_OVERFLOW, RETRIES_SUCCEEDED
from nodeproxy.stats.registry import Stats, labels
from nodeproxy.traffic.attempt import Attempt
from nodeproxy.traffic.routes import RouteState
from nodeproxy.upstream.pool import Target, Upstreams

# One try's target, the head to send there (the balancer's pick, then the mesh hop), and
# the ``Attempt`` its outcome is reported on.
Pick = Callable[[h11.Request], tuple[Target, h11.Request, Attempt]]

_CONNECT_FAILURES = (UpstreamConnectFailure, UpstreamConnectTimeout, PeerTLSFailure)


class Retrier:
    """The retry loop of one listener: stats and the back-off rng; the route state
    (policy, budget) is the process's and comes with each call."""

    def __init__(self, stats: Stats, rng: random.Random | None = None) -> None:
        self.stats = stats
        self.rng = rng or random.Random()

    def __repr__(self) -> str:
        return "<Retrier>"

    async def forward(
        self,
        down: Downstream,
        out: Outgoing,
        ex: Exchange,
        route: RouteState,
        pick: Pick,
        upstreams: Upstreams,
        *,
        body_timeout: float,
        drain: DrainState,
        overload: OverloadGuard | None = None,
    ) -> bool:
        """Proxy one request with retries; True when the client connection may be reused.

        ``out`` is ``exchange.prepare``'s result; ``pick`` is called once per try
        and each try's outcome is reported on the ``Attempt`` it returns.
        ``route`` carries the rule's policy and budget; ``overload`` is the
        service's guard (its ``max_retries`` slot is held from a request's first
        retry until it ends). A refused retry answers with the failure in hand.
        """
        policy, budget = route.policy, route.budget
        assert policy is not None, "a route without retries"
        assert budget is not None
        head = out.in_hand[0]
        assert type(head) is h11.Request
        budget.request_started()
        holding = False  # holds a slot of the route's budget
        retried = False  # a retry was made (a later accepted answer is a retry success)
        retrying = False  # holds a max_retries slot of ``overload``
        try:
            deadline = timeout = math.inf
            while True:
                target, out.in_hand[0], attempt = pick(head)
                now = trio.current_time()
                if deadline == math.inf:
                    timeout = target.timeout
                    deadline = now + timeout
                target = Target(target.cluster, target.endpoint, max(0.0, deadline - now))
                try_deadline = policy.try_deadline(now, None) or math.inf
                err: ProxyError | None = None
                failure: TryFailure | int
                with trio.CancelScope(deadline=try_deadline) as scope:
                    try:
                        conn, first = await send(upstreams, target, down, out, body_timeout)
                    except _CONNECT_FAILURES as exc:
                        err, failure = exc, TryFailure.CONNECT_FAILURE
                    except UpstreamResetBeforeHeaders as exc:
                        err, failure = exc, TryFailure.RESET
                if scope.cancelled_caught:
                    err = UpstreamResponseTimeout(f"try timed out after {policy.per_try_timeout}s")
                    failure = TryFailure.TIMEOUT
                if err is not None:
                    attempt.report_error(err, trio.current_time())
                else:
                    failure = first.status_code
                    attempt.report_status(failure, trio.current_time())
                    if not policy.covers(failure):
                        if retried:
                            self._count(RETRIES_SUCCEEDED, ex, target.cluster.name)
                        return await relay(down, conn, first, ex, upstreams, out.upgrade, drain)
                if not _may_retry(policy, out, ex.method, failure):
                    if err is not None:
                        raise err
                    return await relay(down, conn, first, ex, upstreams, out.upgrade, drain)
                denied = ""  # the threshold that said no
                if overload is not None and not retrying:
                    retrying = overload.try_admit(Resource.RETRIES)  # False: an overflow
                    denied = "" if retrying else Resource.RETRIES.value
                if not denied and not holding:
                    holding = budget.try_acquire_retry()
                    denied = "" if holding else "budget"
                cluster = target.cluster.name
                if denied:  # the failure in hand is the answer (Envoy's retry overflow)
                    self._count(RETRIES_OVERFLOW, ex, cluster, threshold=denied)
                    if err is not None:
                        raise err
                    return await relay(down, conn, first, ex, upstreams, out.upgrade, drain)
                if err is None:  # a retryable status: drop the answer and its connection
                    upstreams.record_response(conn, first.status_code)
                    upstreams.release(conn, reusable=False)
                reason = failure.value if isinstance(failure, TryFailure) else str(failure)
                self._count(RETRIES, ex, cluster, reason=reason)
                retried = True
                policy = policy.increment()
                await trio.sleep(policy.backoff(self.rng))
                if trio.current_time() >= deadline:  # spent backing off: no endpoint to blame
                    raise UpstreamResponseTimeout(f"no response headers in {timeout}s")
        finally:
            if retrying and overload is not None:
                overload.release(Resource.RETRIES)
            if holding:
                budget.release_retry()
            budget.request_finished()

    def _count(self, name: str, ex: Exchange, cluster: str, **more: str) -> None:
        """One more of ``name`` for the request's route and cluster (retries are rare:
        the labels are built on the spot)."""
        self.stats.inc(name, labels(route=ex.route, cluster=cluster, **more))


def _may_retry(policy: RetryPolicy, out: Outgoing, method: str, failure: TryFailure | int) -> bool:
    """Whether the request can and may be sent again after ``failure``."""
    if out.upgrade:
        return False
    if failure is TryFailure.CONNECT_FAILURE:  # nothing was sent or read from the client
        return policy.is_retryable(method, failure)
    if not out.complete:  # (part of) the body was streamed: it is gone
        return False
    return policy.is_retryable(method, failure)
