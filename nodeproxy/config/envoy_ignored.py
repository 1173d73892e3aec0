"""Envoy fields that change nothing nodeproxy does: accepted, with one warning each.

Why a table: each entry is a decision (this field only feeds stats, tracing,
Envoy's threading or an HTTP/2 feature nodeproxy cannot be asked for), and
the reason is what the operator reads in ``check-config``'s warning and in
docs/configuration.md (a test keeps the two in step). A field that would
change what nodeproxy does is not here: it is mapped onto nodeproxy's own
setting or refused by name.
"""

from __future__ import annotations

NO_WARNING = "(no warning) "  # a label Envoy requires or every file has: accepted silently
_STATS = "statistics naming only; nodeproxy labels its metrics by listener and cluster"
_LABEL = NO_WARNING + "a name or statistics prefix; nodeproxy labels by listener and cluster"
_TRACING = "tracing: nodeproxy sends no spans (trace headers pass through unchanged)"
_METADATA = "metadata only matters to filters and subsets nodeproxy does not run"
_H2 = "HTTP/2 settings: nodeproxy speaks HTTP/1.1 on both sides"
_THREADS = "Envoy's worker threads and socket tuning; nodeproxy is one event loop"
_BUFFER = "buffer sizing: nodeproxy streams bodies in limits.stream_chunk_bytes pieces"
_DNS = "nodeproxy resolves a hostname endpoint when it connects, with the system resolver"
_REQUEST_ID = "x-request-id: nodeproxy keeps the client's and adds one when there is none"
_NO_FILTER = "only used by an HTTP filter that is not configured (so Envoy ignores it too)"

BOOTSTRAP = {
    "stats_sinks": _STATS,
    "stats_config": _STATS,
    "stats_flush_interval": _STATS,
    "stats_server_version_override": _STATS,
    "stats_flush_on_admin": _STATS,
    "enable_dispatcher_stats": _STATS,
    "tracing": _TRACING,
    "watchdog": _THREADS,
    "watchdogs": _THREADS,
    "flags_path": "hot-restart flag files: nodeproxy has no hot restart",
    "cluster_manager": "outlier event log and local cluster name: nodeproxy logs ejections itself",
    "hds_config": "health discovery service (xDS): nodeproxy checks health itself",
    "default_regex_engine": "Google RE2 is the only engine; nodeproxy uses Python's re",
    "use_tcp_for_dns_lookups": _DNS,
    "dns_resolution_config": _DNS,
    "typed_dns_resolver_config": _DNS,
}
NODE = {
    "cluster": NO_WARNING + "a label for the control plane; nodeproxy has none",
    "metadata": _METADATA,
    "locality": "a label for the control plane; nodeproxy has none",
    "user_agent_name": "reported to a control plane only",
}
ADMIN = {
    "access_log_path": NO_WARNING + "admin requests are logged on nodeproxy's log stream",
    "access_log": "admin requests are logged on nodeproxy's own log stream",
    "profile_path": "CPU profiles: nodeproxy's admin has no profiler",
}
LISTENER = {
    "stat_prefix": _LABEL,
    "traffic_direction": "a label (INBOUND/OUTBOUND) for stats and tracing",
    "per_connection_buffer_limit_bytes": _BUFFER,
    "metadata": _METADATA,
    "reuse_port": _THREADS,
    "enable_reuse_port": _THREADS,
    "connection_balance_config": _THREADS,
    "tcp_fast_open_queue_length": _THREADS,
    "tcp_backlog_size": _THREADS,
    "drain_type": "hot restart and LDS drains; nodeproxy drains on SIGTERM",
    "listener_filters_timeout": "listener filters are not run (see listener_filters)",
    "continue_on_listener_filters_timeout": "listener filters are not run",
    "access_log": "listener access logs cover connections no filter chain took; "
    "nodeproxy's one chain takes them all",
}
FILTER_CHAIN = {
    "name": _LABEL,
    "metadata": _METADATA,
}
HCM = {
    "stat_prefix": _LABEL,
    "tracing": _TRACING,
    "preserve_external_request_id": _REQUEST_ID,
    "always_set_request_id_in_response": _REQUEST_ID,
    "http2_protocol_options": _H2,
    "http3_protocol_options": _H2,
    "server_name": "the Server header: nodeproxy relays the upstream's",
    "server_header_transformation": "the Server header: nodeproxy relays the upstream's",
    "add_user_agent": "x-envoy-downstream-service-* headers: nodeproxy adds no x-envoy-*",
    "drain_timeout": "HTTP/2 GOAWAY drain timing; limits.drain_timeout drains nodeproxy",
    "delayed_close_timeout": "a socket-close tuning; nodeproxy closes after its last write",
    "internal_address_config": "which x-envoy-* headers an internal client may send; "
    "nodeproxy reads none",
    "forward_client_cert_details": "x-forwarded-client-cert: no TLS on Envoy listeners here",
    "set_current_client_cert_details": "x-forwarded-client-cert: no TLS on Envoy listeners here",
    "represent_ipv4_remote_address_as_ipv4_mapped_ipv6": "an address format for stats",
    "proxy_100_continue": "Expect: 100-continue: the client gets its 100 Continue either way",
}
ROUTE_CONFIG = {
    "name": _LABEL,
    "validate_clusters": "nodeproxy always checks route targets when it loads the file",
    "max_direct_response_body_size_bytes": "direct_response bodies are inline strings here",
}
VIRTUAL_HOST = {
    "virtual_clusters": _STATS,
    "rate_limits": _NO_FILTER + " (envoy.filters.http.ratelimit)",
    "cors": _NO_FILTER + " (envoy.filters.http.cors)",
    "per_request_buffer_limit_bytes": _BUFFER,
    "metadata": _METADATA,
}
ROUTE = {
    "name": _LABEL,
    "decorator": _TRACING,
    "tracing": _TRACING,
    "metadata": _METADATA,
    "per_request_buffer_limit_bytes": _BUFFER,
    "stat_prefix": _STATS,
}
ROUTE_ACTION = {
    "cluster_not_found_response_code": "nodeproxy refuses an unknown cluster at load time",
    "rate_limits": _NO_FILTER + " (envoy.filters.http.ratelimit)",
    "include_vh_rate_limits": _NO_FILTER + " (envoy.filters.http.ratelimit)",
    "cors": _NO_FILTER + " (envoy.filters.http.cors)",
    "hash_policy": "only read by the RING_HASH and MAGLEV balancers, which are not used",
    "metadata_match": "subsets need the cluster's lb_subset_config, which is not supported "
    "(Envoy ignores metadata_match without it too)",
}
ROUTER_FILTER = {
    "dynamic_stats": _STATS,
    "start_child_span": _TRACING,
    "upstream_log": "per-try upstream logs: nodeproxy writes one access line per request",
    "suppress_envoy_headers": "nodeproxy adds no x-envoy-* headers",
}
CLUSTER = {
    "alt_stat_name": _STATS,
    "metadata": _METADATA,
    "track_cluster_stats": _STATS,
    "track_timeout_budgets": _STATS,
    "per_connection_buffer_limit_bytes": _BUFFER,
    "http2_protocol_options": _H2 + "; a backend that only speaks HTTP/2 will not answer",
    "http_protocol_options": "HTTP/1.1 codec options (header case, absolute URLs)",
    "upstream_connection_options": "TCP keepalive on upstream sockets",
    "dns_refresh_rate": _DNS,
    "dns_failure_refresh_rate": _DNS,
    "respect_dns_ttl": _DNS,
    "dns_resolvers": _DNS,
    "dns_resolution_config": _DNS,
    "typed_dns_resolver_config": _DNS,
    "use_tcp_for_dns_lookups": _DNS,
    "wait_for_warm_on_init": "static clusters are warm at start",
    "cleanup_interval": "only for ORIGINAL_DST clusters",
    "close_connections_on_host_health_failure": "pooled connections to an unhealthy "
    "endpoint are simply not used",
    "ignore_health_on_host_removal": "static clusters never remove hosts",
    "preconnect_policy": "nodeproxy connects on demand",
    "max_requests_per_connection": "upstream connections are reused until idle_timeout",
    "protocol_selection": "the downstream protocol is always HTTP/1.1",
    "upstream_http_protocol_options": "SNI and SAN checks of upstream TLS, which is not used",
}
HEALTH_CHECK = {
    "interval_jitter": "probe spreading; nodeproxy probes at the interval",
    "interval_jitter_percent": "probe spreading; nodeproxy probes at the interval",
    "initial_jitter": "probe spreading; nodeproxy probes at the interval",
    "no_traffic_interval": "nodeproxy probes at the interval whether traffic flows or not",
    "event_log_path": "nodeproxy logs health changes on its own log stream",
    "always_log_health_check_failures": "nodeproxy logs health changes on its own log stream",
    "reuse_connection": "each probe uses a new connection",
    "healthy_edge_interval": "nodeproxy probes at the interval",
    "unhealthy_edge_interval": "nodeproxy probes at the interval",
}
ENDPOINTS = {
    "locality": "locality labels: zone-aware balancing is not configured",
    "metadata": _METADATA,
}
CIRCUIT_BREAKERS = {
    "track_remaining": _STATS,
    "max_connection_pools": "nodeproxy keeps one pool per endpoint",
}

TABLES = {
    "bootstrap": BOOTSTRAP,
    "node": NODE,
    "admin": ADMIN,
    "listeners[]": LISTENER,
    "filter_chains[]": FILTER_CHAIN,
    "http_connection_manager": HCM,
    "route_config": ROUTE_CONFIG,
    "virtual_hosts[]": VIRTUAL_HOST,
    "routes[]": ROUTE,
    "routes[].route": ROUTE_ACTION,
    "router filter": ROUTER_FILTER,
    "clusters[]": CLUSTER,
    "health_checks[]": HEALTH_CHECK,
    "lb_endpoints[] / endpoints[]": ENDPOINTS,
    "circuit_breakers": CIRCUIT_BREAKERS,
}
