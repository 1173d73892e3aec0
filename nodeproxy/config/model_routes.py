"""The route half of the configuration model: matches, route rules and their actions.

Split from ``model.py`` (which re-exports every name here) so that each file
stays readable: this is what a virtual host holds (rules matched on path,
headers and query, and what a rule does: send to a cluster or a weighted
split, retry, rate-limit, rewrite, answer by itself, CORS). Frozen
dataclasses, durations in float seconds, as in ``model.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

EMPTY_LABELS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class HeaderMatch:
    """One header condition; exactly one of exact/prefix/regex/present is set."""

    name: str  # lowercased
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None
    invert: bool = False


@dataclass(frozen=True)
class QueryMatch:
    """One query parameter condition (Envoy's ``query_parameters``): the first value of
    ``name`` must equal ``exact``, start with ``prefix``, fully match ``regex``, or
    (``present``) the parameter must be there at all."""

    name: str
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None


@dataclass(frozen=True)
class RouteMatch:
    """Path condition (``path`` exact, ``prefix``, or ``regex`` on the whole path; none
    means ``/``) plus headers and query parameters."""

    prefix: str | None = None
    path: str | None = None
    headers: tuple[HeaderMatch, ...] = ()
    query: tuple[QueryMatch, ...] = ()
    regex: str | None = None  # Envoy's safe_regex: the path (without query) fully matches
    case_sensitive: bool = True  # Envoy's case_sensitive: False compares prefix/path lowercased
    grpc: bool = False  # Envoy's match.grpc: content-type application/grpc or application/grpc+...


@dataclass(frozen=True)
class WeightedCluster:
    """One branch of a weighted split; ``subset`` narrows it to labelled endpoints (canary)."""

    cluster: str
    weight: int
    subset: Mapping[str, str] = field(default_factory=lambda: EMPTY_LABELS, hash=False)


@dataclass(frozen=True)
class RetryConfig:
    """A route's ``retries`` (docs/traffic.md); ``retry_on`` holds Envoy's condition names."""

    retry_on: tuple[str, ...] = ("connect-failure", "reset", "gateway-error")
    num_retries: int = 1
    per_try_timeout: float | None = None
    backoff_base: float = 0.025
    backoff_max: float = 0.250
    budget_ratio: float = 0.2  # retries in flight <= ratio x requests in flight (Envoy's 20 %)
    budget_min_concurrency: int = 3  # ... but always at least this many (Envoy's 3)
    # Envoy's retriable_status_codes: retried when retry_on has "retriable-status-codes"
    retriable_status_codes: tuple[int, ...] = ()


@dataclass(frozen=True)
class BucketConfig:
    """One token bucket: ``requests_per_second`` sustained, ``burst`` at once."""

    requests_per_second: float
    burst: int


@dataclass(frozen=True)
class RateLimitConfig:
    """A local rate limit: one bucket for everyone and/or one per source IP."""

    total: BucketConfig | None = None
    per_source: BucketConfig | None = None
    response_headers_to_add: tuple[HeaderMutation, ...] = ()  # on the 429 (Envoy's filter)


@dataclass(frozen=True)
class FairnessConfig:
    """Per-source fairness of one listener (``resilience/fairness.py``)."""

    max_concurrent_per_source: int = 128
    max_queue_per_source: int = 64
    max_wait: float = 1.0  # a queued request waits at most this long, then 503
    max_concurrent: int = 1024
    max_queue: int = 1024


@dataclass(frozen=True)
class CorsPolicy:
    """A route's CORS policy (Envoy's ``CorsPolicy``; matching in routing/cors.py).

    ``origins`` are ("exact" | "prefix" | "regex", value) conditions; the header
    values are sent as written. None / "" means not set (a virtual host's value
    then applies, field by field, as in Envoy).
    """

    origins: tuple[tuple[str, str], ...] = ()
    allow_methods: str = ""
    allow_headers: str = ""
    expose_headers: str = ""
    max_age: str = ""
    allow_credentials: bool | None = None
    enabled: bool = True
    forward_not_matching_preflights: bool = True
    per_filter: bool = False  # from typed_per_filter_config (Envoy then ignores ``cors``)


@dataclass(frozen=True)
class DirectResponse:
    """Answer from the proxy itself (Envoy's ``direct_response``)."""

    status: int
    body: str = ""


@dataclass(frozen=True)
class Redirect:
    """Answer with a redirect (Envoy's ``redirect``); None keeps the request's part."""

    scheme: str | None = None
    host: str | None = None
    port: int | None = None
    path: str | None = None
    prefix_rewrite: str | None = None
    response_code: int = 301
    strip_query: bool = False


@dataclass(frozen=True)
class HeaderMutation:
    """A header to add (``append``) or to set, replacing any value (Envoy's ``append: false``)."""

    name: str
    value: str
    append: bool = True


@dataclass(frozen=True)
class RouteRule:
    """Send matching requests to ``cluster`` or split them over ``weighted``.

    ``cluster_from_authority`` (neither ``cluster`` nor ``weighted`` set) sends
    to the cluster the authority names as a Kubernetes service (``svc[.ns]``,
    ``svc[.ns]:<port>`` with a port): the catch-all route of discovered
    services, like Envoy's ``cluster_header`` but reading the authority.
    """

    match: RouteMatch
    cluster: str | None = None
    weighted: tuple[WeightedCluster, ...] = ()
    timeout: float | None = None  # overrides the cluster's response_timeout
    name: str = ""
    cluster_from_authority: bool = False
    # Only endpoints carrying all these labels (a canary subset); a weighted entry's own wins.
    subset: Mapping[str, str] = field(default_factory=lambda: EMPTY_LABELS, hash=False)
    retries: RetryConfig | None = None  # None: no retries (besides the keep-alive replay)
    rate_limit: RateLimitConfig | None = None
    # Upgrade tokens this route lets through (Envoy's route-level upgrade_configs);
    # None: the listener's ``upgrades``.
    upgrades: tuple[str, ...] | None = None
    # Route actions (Envoy's names). A rule with direct_response or redirect has
    # cluster=None, weighted=() and cluster_from_authority=False.
    prefix_rewrite: str | None = None
    regex_rewrite: tuple[str, str] | None = None  # (pattern, substitution), Envoy regex_rewrite
    host_rewrite: str | None = None  # host_rewrite_literal
    auto_host_rewrite: bool = False
    direct_response: DirectResponse | None = None
    redirect: Redirect | None = None
    request_headers_to_add: tuple[HeaderMutation, ...] = ()
    request_headers_to_remove: tuple[str, ...] = ()
    response_headers_to_add: tuple[HeaderMutation, ...] = ()
    response_headers_to_remove: tuple[str, ...] = ()
    cors: CorsPolicy | None = None  # answered/added in pipeline.py, routing/cors.py


@dataclass(frozen=True)
class VirtualHost:
    """Routes for the authorities in ``domains``.

    A domain is an exact name (``bdgreeter.default``, ``example.com:8080``),
    a wildcard suffix (``*.example.com``), prefix (``api.*``) or ``*``.
    Native services use the canonical ``<service>.<namespace>`` form; the
    router maps every Kubernetes spelling of a name onto it.
    """

    name: str
    domains: tuple[str, ...]
    routes: tuple[RouteRule, ...]
