"""The retry loop of a route with ``retries``: try, judge, back off, pick again.

Why a shell of its own: the decisions (is this failure retryable, is it safe,
how long to back off, is there budget left) are pure code in
``resilience/retry.py`` and ``resilience/budget.py``; what remains is I/O
ordering that ``exchange.forward`` does not need when a route has no retry
policy, so routes without one keep the straight path.

One try is ``exchange.send``: connect, send what is in hand, stream any rest
of the body, wait for the response head. A try fails with a connect failure,
a reset before the head, a per-try timeout (a cancel scope inside the route
deadline, which stays armed on the connection by ``exchange``), or a status
``retry_on`` names. A failed try is repeated only when the whole request can
be sent again: a connect failure consumed nothing; otherwise the request must
have been in hand complete (a streamed body is gone once sent) and
``RetryPolicy.is_retryable`` must call it safe (idempotent method, or no body
byte sent). Each try asks ``pick`` again, so the balancer (and the mesh hop)
choose anew and a refusing replica is skipped. The route timeout covers all
tries: the response-head deadline of each try is what is left of it.

A retry takes a slot in the route's ``RetryBudget`` and holds it until the
request ends; a denied retry answers with the failure in hand. Before that it
takes one of the service's ``max_retries`` slots (Envoy's active-retries
threshold, held until the request ends); none left answers 503 ``overloaded``
as the issue asks (Envoy would return the failure in hand instead).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import h11
import trio

from nodeproxy.admin.stats import RETRIES, RETRIES_DENIED, Stats, labels
from nodeproxy.config.model import RetryConfig, RouteRule
from nodeproxy.errors import (
    Overloaded,
    PeerTLSFailure,
    ProxyError,
    UpstreamConnectFailure,
    UpstreamConnectTimeout,
    UpstreamResetBeforeHeaders,
    UpstreamResponseTimeout,
)
from nodeproxy.resilience.budget import RetryBudget
from nodeproxy.resilience.overload import OverloadGuard, Resource
from nodeproxy.resilience.retry import RetryPolicy, TryFailure
from nodeproxy.runtime import DrainState
from nodeproxy.server.downstream import Downstream, Exchange
from nodeproxy.server.exchange import Outgoing, relay, send
from nodeproxy.upstream.pool import Target, Upstreams

# One try's target and the head to send there (the balancer's pick, then the mesh hop).
Pick = Callable[[h11.Request], tuple[Target, h11.Request]]

_CONNECT_FAILURES = (UpstreamConnectFailure, UpstreamConnectTimeout, PeerTLSFailure)


def policy_of(config: RetryConfig) -> RetryPolicy:
    """The immutable policy a route's ``retries`` section describes."""
    return RetryPolicy(
        retry_on=RetryPolicy.parse_retry_on(",".join(config.retry_on)),
        num_retries=config.num_retries,
        per_try_timeout=config.per_try_timeout,
        backoff_base=config.backoff_base,
        backoff_max=config.backoff_max,
    )


class Retrier:
    """Retry state of one listener: a policy and a budget per route rule with ``retries``."""

    def __init__(self, stats: Stats, rng: random.Random | None = None) -> None:
        self.stats = stats
        self.rng = rng or random.Random()
        # keyed by the rule object itself: rules are frozen and live as long as the config
        self._routes: dict[int, tuple[RouteRule, RetryPolicy, RetryBudget]] = {}

    def __repr__(self) -> str:
        budgets = ", ".join(repr(b) for _, _, b in self._routes.values())
        return f"<Retrier [{len(self._routes)} routes | {budgets}]>"

    def _route(self, rule: RouteRule, config: RetryConfig) -> tuple[RetryPolicy, RetryBudget]:
        entry = self._routes.get(id(rule))
        if entry is None or entry[0] is not rule:
            budget = RetryBudget(config.budget_ratio, config.budget_min_concurrency)
            entry = self._routes[id(rule)] = (rule, policy_of(config), budget)
        return entry[1], entry[2]

    def budget(self, rule: RouteRule) -> RetryBudget | None:
        """The route's budget (for stats pages and tests), once it has served a request."""
        entry = self._routes.get(id(rule))
        return entry[2] if entry is not None and entry[0] is rule else None

    async def forward(
        self,
        down: Downstream,
        out: Outgoing,
        ex: Exchange,
        rule: RouteRule,
        config: RetryConfig,
        pick: Pick,
        upstreams: Upstreams,
        *,
        body_timeout: float,
        drain: DrainState,
        overload: OverloadGuard | None = None,
    ) -> bool:
        """Proxy one request with retries; True when the client connection may be reused.

        ``out`` is ``exchange.prepare``'s result; ``pick`` is called once per try.
        ``overload`` is the service's guard: a request that retries holds one
        ``max_retries`` slot until it ends; none left -> 503 ``overloaded``.
        """
        policy, budget = self._route(rule, config)
        head = out.in_hand[0]
        assert type(head) is h11.Request
        budget.request_started()
        holding = False
        retrying = False  # holds a max_retries slot of ``overload``
        try:
            deadline: float | None = None
            while True:
                target, out.in_hand[0] = pick(head)
                now = trio.current_time()
                if deadline is None:
                    deadline = now + target.timeout
                left = deadline - now
                if left <= 0:
                    raise UpstreamResponseTimeout(f"no response headers in {target.timeout}s")
                target = Target(target.cluster, target.endpoint, left)
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
                elif err is None:
                    failure = first.status_code
                    if not policy.covers(failure):
                        return await relay(down, conn, first, ex, upstreams, out.upgrade, drain)
                if not _may_retry(policy, out, ex.method, failure):
                    if err is not None:
                        raise err
                    return await relay(down, conn, first, ex, upstreams, out.upgrade, drain)
                cluster = target.cluster.name
                if overload is not None and not retrying:
                    if not overload.try_admit(Resource.RETRIES):
                        self.stats.inc(RETRIES_DENIED, labels(cluster=cluster))
                        if err is None:  # the retryable answer is dropped for the 503
                            upstreams.record_response(conn, first.status_code)
                            upstreams.release(conn, reusable=False)
                        limit = overload.limits.max_retries
                        raise Overloaded(f"max_retries ({limit}) reached") from err
                    retrying = True
                if not holding and not budget.try_acquire_retry():
                    self.stats.inc(RETRIES_DENIED, labels(cluster=cluster))
                    if err is not None:
                        raise err
                    return await relay(down, conn, first, ex, upstreams, out.upgrade, drain)
                holding = True
                if err is None:  # a retryable status: count it, drop the answer
                    upstreams.record_response(conn, first.status_code)
                    upstreams.release(conn, reusable=False)
                reason = failure.value if isinstance(failure, TryFailure) else str(failure)
                self.stats.inc(RETRIES, labels(cluster=cluster, reason=reason))
                policy = policy.increment()
                await trio.sleep(policy.backoff(self.rng))
        finally:
            if retrying and overload is not None:
                overload.release(Resource.RETRIES)
            if holding:
                budget.release_retry()
            budget.request_finished()


def _may_retry(policy: RetryPolicy, out: Outgoing, method: str, failure: TryFailure | int) -> bool:
    """Whether the request can and may be sent again after ``failure``."""
    if out.upgrade:
        return False
    if failure is TryFailure.CONNECT_FAILURE:  # nothing was sent or read from the client
        return policy.is_retryable(method, failure, body_sent=False)
    if not out.complete:  # (part of) the body was streamed: it is gone
        return False
    body_sent = any(type(e) is h11.Data and e.data for e in out.in_hand)
    return policy.is_retryable(method, failure, body_sent)
