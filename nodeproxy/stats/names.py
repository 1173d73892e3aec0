"""Metric names and their HELP texts: the vocabulary of ``/stats/prometheus``.

The data path, the admin pages and docs/admin.md name metrics through these
constants, so they cannot drift apart. The comment beside each name lists its
labels.
"""

from __future__ import annotations

# -- metric names (Prometheus conventions) ------------------------------------
REQUESTS = "nodeproxy_requests_total"  # {listener, cluster, code_class}
PROXY_ERRORS = "nodeproxy_errors_total"  # {cause}
UPSTREAM_CONNECT_FAILURES = "nodeproxy_upstream_connect_failures_total"  # {cluster, endpoint}
UPSTREAM_REQUESTS = "nodeproxy_upstream_requests_total"  # {cluster, endpoint, code_class}
UPSTREAM_CONNECTIONS_OPENED = "nodeproxy_upstream_connections_opened_total"  # {cluster, endpoint}
DOWNSTREAM_CONNECTIONS_ACTIVE = "nodeproxy_downstream_connections_active"  # {listener}
DOWNSTREAM_CONNECTIONS_TOTAL = "nodeproxy_downstream_connections_total"  # {listener}
DOWNSTREAM_CONNECTIONS_REJECTED = (
    "nodeproxy_downstream_connections_rejected_total"  # {listener, reason}
)
DOWNSTREAM_CONNECTIONS_EVICTED = "nodeproxy_downstream_connections_evicted_total"  # {listener}
POOL_CONNECTIONS = "nodeproxy_upstream_pool_connections"  # {cluster, endpoint, state=idle|active}
REQUEST_DURATION = "nodeproxy_request_duration_seconds"  # histogram {cluster}
BYTES_RECEIVED = "nodeproxy_downstream_bytes_received_total"  # {listener}
BYTES_SENT = "nodeproxy_downstream_bytes_sent_total"  # {listener}
RETRIES = "nodeproxy_retries_total"  # {cluster, reason}: tries made again
RETRIES_DENIED = "nodeproxy_retries_denied_total"  # {cluster}: refused by the retry budget
RATE_LIMITED = "nodeproxy_rate_limited_total"  # {listener, scope=listener|route, key=total|source}
FAIRNESS_QUEUED = "nodeproxy_fairness_queued_total"  # {listener}: waited for a per-source slot
FAIRNESS_REJECTED = "nodeproxy_fairness_rejected_total"  # {listener, reason}
UPGRADES = "nodeproxy_upgrades_total"  # {listener, protocol}: tunnels opened (101 relayed)
TUNNEL_BYTES = "nodeproxy_tunnel_bytes_total"  # {listener, direction=upstream|downstream}
INTERCEPTED = "nodeproxy_intercepted_connections_total"  # {protocol=http1|tls|tcp, path=http|tcp}
BUILD_INFO = "nodeproxy_build_info"  # {version, codec, codec_version}: always 1
SIGNER_UP = "nodeproxy_certificate_signer_up"  # mesh.signer only
SIGNER_REQUESTS = "nodeproxy_certificate_signer_requests_total"  # {result=ok|refused|error}
EARLIEST_EXPIRY = "nodeproxy_certificate_earliest_expiry_timestamp_seconds"

HELP: dict[str, str] = {
    REQUESTS: "Downstream requests answered, by cluster and status class.",
    PROXY_ERRORS: "Requests answered by the proxy itself, by cause (x-nodeproxy-error).",
    UPSTREAM_CONNECT_FAILURES: "Upstream connection attempts that failed or timed out.",
    UPSTREAM_REQUESTS: "Requests sent upstream, by endpoint and status class.",
    UPSTREAM_CONNECTIONS_OPENED: "Upstream connections opened.",
    DOWNSTREAM_CONNECTIONS_ACTIVE: "Open downstream connections.",
    DOWNSTREAM_CONNECTIONS_TOTAL: "Downstream connections accepted.",
    DOWNSTREAM_CONNECTIONS_REJECTED: "Downstream connections refused: total or per-source cap.",
    DOWNSTREAM_CONNECTIONS_EVICTED: "Idle keep-alive connections closed to make room at the cap.",
    POOL_CONNECTIONS: "Upstream pool connections by state.",
    REQUEST_DURATION: "Time from request headers received to response completed.",
    BYTES_RECEIVED: "Bytes read from downstream clients.",
    BYTES_SENT: "Bytes written to downstream clients.",
    RETRIES: "Upstream tries repeated by a route's retry policy, by reason.",
    RETRIES_DENIED: "Retries not made: the retry budget or max_retries said no.",
    RATE_LIMITED: "Requests answered 429 by a local rate limit.",
    FAIRNESS_QUEUED: "Requests that waited for their source's concurrency slot.",
    FAIRNESS_REJECTED: "Requests refused 503 by per-source fairness (queue full or wait too long).",
    UPGRADES: "Upgraded connections (101 relayed, bytes spliced), by protocol.",
    TUNNEL_BYTES: "Bytes carried by upgraded connections, by direction.",
    INTERCEPTED: "Connections the transparent listener took, by detected protocol and path.",
    SIGNER_UP: "1 when the last certificate request to the signer got an answer, 0 when not.",
    SIGNER_REQUESTS: "Certificate renewal attempts against the signer, by result.",
    EARLIEST_EXPIRY: "Unix time when the first of this node's certificates expires.",
    BUILD_INFO: "The running release and HTTP/1.1 codec (h11 or h11-mypyc); the value is 1.",
}
