"""Metric names and their HELP texts: the vocabulary of ``/stats/prometheus``.

The data path, the admin pages and docs/admin.md name metrics through these
constants, so they cannot drift apart (tests/test_metrics.py checks that
every family a real scrape shows is documented there with the labels it
carries). The comment beside each name lists its labels. Where Envoy or
Linkerd count the same thing, the name says it in their words (Envoy's
``upstream_rq_retry_overflow`` is ``nodeproxy_retries_overflow_total``) and
docs/admin.md gives the equivalent.
"""

from __future__ import annotations

# -- requests ------------------------------------------------------------------
# {listener, route, cluster, response_code, code_class}
REQUESTS = "nodeproxy_requests_total"
REQUEST_DURATION_MS = "nodeproxy_request_duration_ms"  # histogram {route, cluster}
# {listener, cluster, caller_namespace, caller_service_account, code_class}
CALLER_REQUESTS = "nodeproxy_caller_requests_total"
PROXY_ERRORS = "nodeproxy_errors_total"  # {cause}
# -- upstream connections and answers -----------------------------------------
UPSTREAM_REQUESTS = "nodeproxy_upstream_requests_total"  # {cluster, endpoint, code_class}
UPSTREAM_CONNECT_FAILURES = "nodeproxy_upstream_connect_failures_total"  # {cluster, endpoint}
UPSTREAM_CONNECTIONS_OPENED = "nodeproxy_upstream_connections_opened_total"  # {cluster, endpoint}
UPSTREAM_CONNECTIONS_CLOSED = "nodeproxy_upstream_connections_closed_total"  # {cluster, endpoint}
POOL_CONNECTIONS = "nodeproxy_upstream_pool_connections"  # {cluster, endpoint, state=idle|active}
# -- resilience: retries, outlier detection, breaker, thresholds, health checks ---
RETRIES = "nodeproxy_retries_total"  # {route, cluster, reason}
RETRIES_SUCCEEDED = "nodeproxy_retries_succeeded_total"  # {route, cluster}
RETRIES_OVERFLOW = "nodeproxy_retries_overflow_total"  # {route, cluster, threshold}
OUTLIER_EJECTIONS_ACTIVE = "nodeproxy_outlier_ejections_active"  # {cluster}
OUTLIER_EJECTIONS = "nodeproxy_outlier_ejections_total"  # {cluster, reason}
OUTLIER_EJECTIONS_OVERFLOW = "nodeproxy_outlier_ejections_overflow_total"  # {cluster}
BREAKER_OPEN = "nodeproxy_circuit_breaker_open"  # {cluster}
BREAKER_OPENINGS = "nodeproxy_circuit_breaker_openings_total"  # {cluster}
BREAKER_REJECTED = "nodeproxy_circuit_breaker_rejected_total"  # {cluster}
OVERLOAD_ACTIVE = "nodeproxy_overload_active"  # {cluster, threshold}
OVERLOAD_LIMIT = "nodeproxy_overload_limit"  # {cluster, threshold}
OVERLOAD_OVERFLOW = "nodeproxy_overload_overflow_total"  # {cluster, threshold}
HEALTH_CHECKS = "nodeproxy_health_checks_total"  # {cluster, result}
HEALTH_CHECK_UNHEALTHY = "nodeproxy_health_check_unhealthy_endpoints"  # {cluster}
SUBSET_REQUESTS = "nodeproxy_subset_requests_total"  # {cluster, subset}
# -- downstream ----------------------------------------------------------------
DOWNSTREAM_CONNECTIONS_ACTIVE = "nodeproxy_downstream_connections_active"  # {listener}
DOWNSTREAM_CONNECTIONS_TOTAL = "nodeproxy_downstream_connections_total"  # {listener}
# {listener, reason=max_connections|per_source}
DOWNSTREAM_CONNECTIONS_REJECTED = "nodeproxy_downstream_connections_rejected_total"
DOWNSTREAM_CONNECTIONS_EVICTED = "nodeproxy_downstream_connections_evicted_total"  # {listener}
BYTES_RECEIVED = "nodeproxy_downstream_bytes_received_total"  # {listener}
BYTES_SENT = "nodeproxy_downstream_bytes_sent_total"  # {listener}
RATE_LIMITED = "nodeproxy_rate_limited_total"  # {listener, scope=listener|route, source}
FAIRNESS_QUEUED = "nodeproxy_fairness_queued_total"  # {listener, source}
FAIRNESS_REJECTED = "nodeproxy_fairness_rejected_total"  # {listener, source}
FAIRNESS_WAITING = "nodeproxy_fairness_waiting"  # {listener}
UPGRADES = "nodeproxy_upgrades_total"  # {listener, protocol}: tunnels opened (101 relayed)
TUNNEL_BYTES = "nodeproxy_tunnel_bytes_total"  # {listener, direction=upstream|downstream}
INTERCEPTED = "nodeproxy_intercepted_connections_total"  # {protocol=http1|tls|tcp, path=http|tcp}
TCP_CONNECTIONS = "nodeproxy_tcp_connections_total"  # {path=direct|tunnel|passthrough, outcome}
# -- mesh: TLS and policy --------------------------------------------------------
TLS_HANDSHAKES = "nodeproxy_tls_handshakes_total"  # {listener}
TLS_HANDSHAKE_FAILURES = "nodeproxy_tls_handshake_failures_total"  # {listener, reason}
POLICY_ALLOWED = "nodeproxy_policy_allowed_total"  # {listener, rule}
POLICY_DENIED = "nodeproxy_policy_denied_total"  # {listener, rule}
BUILD_INFO = "nodeproxy_build_info"  # {version, codec, codec_version, data_path}: always 1
SIGNER_UP = "nodeproxy_certificate_signer_up"  # mesh.signer only
SIGNER_REQUESTS = "nodeproxy_certificate_signer_requests_total"  # {result=ok|refused|error}
EARLIEST_EXPIRY = "nodeproxy_certificate_earliest_expiry_timestamp_seconds"

HELP: dict[str, str] = {
    REQUESTS: (
        "Downstream requests answered, by route, cluster, exact status (response_code) "
        "and class (code_class); Envoy's upstream_rq / upstream_rq_xx."
    ),
    REQUEST_DURATION_MS: (
        "Milliseconds from request headers received to response completed, by route and "
        "cluster; Envoy's upstream_rq_time, Linkerd's response_latency_ms."
    ),
    CALLER_REQUESTS: (
        "Requests by the calling workload (namespace, service account) when the proxy knows "
        "it (mesh: the mTLS peer inbound, the source pod outbound); at most 256 callers, "
        "the rest count as other."
    ),
    PROXY_ERRORS: "Requests answered by the proxy itself, by cause (x-nodeproxy-error).",
    UPSTREAM_REQUESTS: "Requests sent upstream, by endpoint and status class.",
    UPSTREAM_CONNECT_FAILURES: (
        "Upstream connection attempts that failed or timed out; Envoy's upstream_cx_connect_fail."
    ),
    UPSTREAM_CONNECTIONS_OPENED: "Upstream connections opened; Envoy's upstream_cx_total.",
    UPSTREAM_CONNECTIONS_CLOSED: (
        "Upstream connections closed by the proxy (not reusable, idle timeout, drain); "
        "Envoy's upstream_cx_destroy."
    ),
    POOL_CONNECTIONS: (
        "Upstream pool connections by state: active (lent to a request) or idle (kept alive); "
        "Envoy's upstream_cx_active."
    ),
    RETRIES: (
        "Upstream tries repeated by a route's retry policy, by the failure that caused it "
        "(connect_failure, reset, timeout or the status); Envoy's upstream_rq_retry."
    ),
    RETRIES_SUCCEEDED: (
        "Requests that were retried and then got an answer the policy accepts; "
        "Envoy's upstream_rq_retry_success."
    ),
    RETRIES_OVERFLOW: (
        "Retries not made because a threshold said no (max_retries or the route's budget); "
        "the client got the failure in hand. Envoy's upstream_rq_retry_overflow."
    ),
    OUTLIER_EJECTIONS_ACTIVE: (
        "Endpoints ejected by outlier detection right now; "
        "Envoy's outlier_detection.ejections_active."
    ),
    OUTLIER_EJECTIONS: (
        "Endpoints ejected by outlier detection, by reason (consecutive_5xx, "
        "consecutive_gateway_failure); Envoy's outlier_detection.ejections_enforced_*."
    ),
    OUTLIER_EJECTIONS_OVERFLOW: (
        "Ejections not made because max_ejection_percent was reached; "
        "Envoy's outlier_detection.ejections_overflow."
    ),
    BREAKER_OPEN: "1 while a service's circuit breaker is open or half-open, else 0.",
    BREAKER_OPENINGS: "Times a service's circuit breaker opened (tripped or a probe failed).",
    BREAKER_REJECTED: "Requests refused 503 circuit_open while the breaker was open.",
    OVERLOAD_ACTIVE: (
        "What each overload threshold counts now (connections, pending requests, requests, "
        "retries in flight); Envoy's circuit_breakers remaining_* is the limit minus this."
    ),
    OVERLOAD_LIMIT: "Each overload threshold's configured limit.",
    OVERLOAD_OVERFLOW: (
        "Requests refused 503 overloaded (or retries not made) at an overload threshold: "
        "Envoy's upstream_cx_overflow, upstream_rq_pending_overflow, upstream_rq_overflow, "
        "upstream_rq_retry_overflow."
    ),
    HEALTH_CHECKS: (
        "Active health-check probes by result: success, failure (answered, but not 2xx/3xx or "
        "the wrong service), network_failure, timeout; Envoy's health_check.*."
    ),
    HEALTH_CHECK_UNHEALTHY: "Endpoints failing their active health checks right now.",
    SUBSET_REQUESTS: "Requests sent to each canary label subset (route subsets and splits).",
    DOWNSTREAM_CONNECTIONS_ACTIVE: "Open downstream connections.",
    DOWNSTREAM_CONNECTIONS_TOTAL: "Downstream connections accepted.",
    DOWNSTREAM_CONNECTIONS_REJECTED: "Downstream connections refused: total or per-source cap.",
    DOWNSTREAM_CONNECTIONS_EVICTED: "Idle keep-alive connections closed to make room at the cap.",
    BYTES_RECEIVED: "Bytes read from downstream clients.",
    BYTES_SENT: "Bytes written to downstream clients.",
    RATE_LIMITED: (
        "Requests answered 429 by a local rate limit, by scope (listener or route) and source "
        "(the client IP; at most 256 per listener, the rest count as other)."
    ),
    FAIRNESS_QUEUED: (
        "Requests that waited for their source's concurrency slot, by source "
        "(at most 256 per listener, the rest count as other)."
    ),
    FAIRNESS_REJECTED: (
        "Requests refused 503 by per-source fairness (queue full or waited too long), by source."
    ),
    FAIRNESS_WAITING: "Requests waiting for their source's concurrency slot right now.",
    UPGRADES: "Upgraded connections (101 relayed, bytes spliced), by protocol.",
    TUNNEL_BYTES: (
        "Bytes carried by upgraded connections and TCP tunnels, by listener (tcp: carried "
        "connections; inbound: CONNECT tunnels) and direction."
    ),
    INTERCEPTED: "Connections the transparent listener took, by detected protocol and path.",
    TCP_CONNECTIONS: (
        "TCP connections carried through the mesh (docs/tunnel.md), by path (direct to a pod "
        "of this node, tunnel to another node, passthrough outside the mesh) and outcome "
        "(ok, reset, idle_timeout, or the refusal's cause: denied, unknown_source...)."
    ),
    TLS_HANDSHAKES: "mTLS handshakes completed (inbound: callers; outbound: peer nodes).",
    TLS_HANDSHAKE_FAILURES: "mTLS handshakes that failed, by reason; Envoy's ssl.connection_error.",
    POLICY_ALLOWED: "Requests the mesh authorization policy allowed, by the rule that decided.",
    POLICY_DENIED: "Requests the mesh authorization policy denied 403, by the rule that decided.",
    SIGNER_UP: "1 when the last certificate request to the signer got an answer, 0 when not.",
    SIGNER_REQUESTS: "Certificate renewal attempts against the signer, by result.",
    EARLIEST_EXPIRY: "Unix time when the first of this node's certificates expires.",
    BUILD_INFO: "The running release, HTTP/1.1 codec (h11 or h11-mypyc) and data path build"
    " (compiled or interpreted); the value is 1.",
}

# Label values from outside the config (client IPs, callers) are capped per family
# and listener: the first ``SOURCE_CAP`` distinct ones get a series of their own,
# later ones share ``other`` (``registry.Bounded``).
SOURCE_CAP = 256
