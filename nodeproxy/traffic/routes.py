"""Route-level state of the whole process: a route's rate-limit buckets and retry budget.

Why per process: every listener of a native config serves the same route
rules, so state kept per listener would multiply a route's limits by the
number of listeners (a ``burst: 1`` let one request through on *each* port)
and split its retry budget the same way. Envoy keys both by the route (its
local rate limit filter and ``retry_budget`` live with the route and cluster,
not the listener). ``Runtime`` builds one ``Routes`` lazily and every
``Pipeline`` asks it; a listener's own ``rate_limit`` stays with the listener
(``server/admission.py``).

A ``RouteState`` is created on a rule's first request and keyed by the rule
object itself (rules are frozen and live as long as the config that made
them, so the table is bounded by the config). Everything here is synchronous
and takes ``now``; request tasks mutate it with no ``await`` in between.
"""

from __future__ import annotations

from nodeproxy.config.model import RateLimitConfig, RetryConfig, RouteRule
from nodeproxy.errors import RateLimited
from nodeproxy.resilience.budget import RetryBudget
from nodeproxy.resilience.ratelimit import KeyedBuckets, TokenBucket
from nodeproxy.resilience.retry import RetryPolicy
from nodeproxy.routing.header_edits import HeaderEdits


def policy_of(config: RetryConfig) -> RetryPolicy:
    """The immutable policy a route's ``retries`` section describes."""
    return RetryPolicy(
        retry_on=RetryPolicy.parse_retry_on(",".join(config.retry_on)),
        num_retries=config.num_retries,
        per_try_timeout=config.per_try_timeout,
        backoff_base=config.backoff_base,
        backoff_max=config.backoff_max,
        retriable_status_codes=frozenset(config.retriable_status_codes),
    )


class Limiter:
    """The buckets of one ``rate_limit`` section: one shared, and/or one per source."""

    __slots__ = ("headers", "per_source", "total")

    def __init__(self, config: RateLimitConfig, now: float) -> None:
        total = config.total
        self.total = None
        if total is not None:
            self.total = TokenBucket(total.burst, total.requests_per_second, now)
        per = config.per_source
        self.per_source = None if per is None else KeyedBuckets(per.burst, per.requests_per_second)
        self.headers = HeaderEdits.build(config.response_headers_to_add, ())

    def __repr__(self) -> str:
        return f"<Limiter total={self.total!r} per_source={self.per_source!r}>"

    def check(self, source: str, now: float) -> None:
        """Take a token from each bucket; raises ``RateLimited`` when one is empty."""
        if self.per_source is not None:
            ok, wait = self.per_source.try_acquire(source, now)
            if not ok:
                raise RateLimited(
                    f"source {source}: retry in {wait:.3f}s", retry_after=wait, headers=self.headers
                )
        if self.total is not None:
            ok, wait = self.total.try_acquire(now)
            if not ok:
                raise RateLimited(f"retry in {wait:.3f}s", retry_after=wait, headers=self.headers)


class RouteState:
    """One route rule's limiter (if it has ``rate_limit``) and retry policy and budget
    (if it has ``retries``)."""

    __slots__ = ("budget", "limiter", "policy", "rule")

    def __init__(self, rule: RouteRule, now: float) -> None:
        self.rule = rule
        self.limiter = None if rule.rate_limit is None else Limiter(rule.rate_limit, now)
        retries = rule.retries
        self.policy = None if retries is None else policy_of(retries)
        self.budget = (
            None
            if retries is None
            else RetryBudget(retries.budget_ratio, retries.budget_min_concurrency)
        )

    def __repr__(self) -> str:
        name = self.rule.name or self.rule.cluster or "route"
        return f"<RouteState {name} [{self.limiter!r} | {self.budget!r}]>"


class Routes:
    """Every route rule's ``RouteState`` that served a request, shared by all listeners."""

    def __init__(self) -> None:
        # id(rule) -> state; the state holds the rule, so the id cannot be reused meanwhile
        self._states: dict[int, RouteState] = {}

    def __repr__(self) -> str:
        return f"<Routes [{len(self._states)} routes]>"

    def __len__(self) -> int:
        return len(self._states)

    def state(self, rule: RouteRule, now: float) -> RouteState:
        """The state of ``rule``, created on first use."""
        state = self._states.get(id(rule))
        if state is None or state.rule is not rule:
            state = self._states[id(rule)] = RouteState(rule, now)
        return state

    def get(self, rule: RouteRule) -> RouteState | None:
        """The state of ``rule`` if a request created it (for admin pages and tests)."""
        state = self._states.get(id(rule))
        return state if state is not None and state.rule is rule else None

    def check_rate(self, rule: RouteRule, source: str, now: float) -> None:
        """The route's ``rate_limit``, if any; raises ``RateLimited`` (429)."""
        if rule.rate_limit is not None:
            limiter = self.state(rule, now).limiter
            assert limiter is not None
            limiter.check(source, now)
