"""Envoy bootstraps: the seed lab's file (v2 and v3 names) and what we refuse, by name."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from nodeproxy.config import load_config, load_config_text
from nodeproxy.config.model import (
    AdminConfig,
    ClusterConfig,
    EndpointConfig,
    HeaderMatch,
    ListenerConfig,
    RouteMatch,
    RouteRule,
    VirtualHost,
    WeightedCluster,
)
from nodeproxy.errors import ConfigError
from nodeproxy.resilience.outlier import DISABLED

DATA = Path(__file__).parent / "data"
SEED_V2 = (DATA / "seed-envoy.yaml").read_text()
SEED_V3 = (DATA / "seed-envoy-v3.yaml").read_text()

SEED_LISTENER = ListenerConfig(
    name="listener_0",
    host="0.0.0.0",
    port=80,
    virtual_hosts=(
        VirtualHost(
            name="local_service",
            domains=("*",),
            routes=(RouteRule(RouteMatch(prefix="/hello"), cluster="local_service"),),
        ),
    ),
    upgrades=(),  # Envoy relays no upgrade the connection manager's upgrade_configs omits
    # Envoy's connection manager defaults: no x-forwarded-for append, no Via, port is in the name
    use_remote_address=False,
    via=None,
    host_port_match="exact",
    trust_forwarded_proto=False,  # Envoy's x-forwarded-proto rule (kept: no use_remote_address)
)
SEED_CLUSTER = ClusterConfig(
    name="local_service",
    endpoints=(EndpointConfig("172.17.0.1", 3000),),
    connect_timeout=0.25,
    lb_policy="round_robin",  # Envoy's default, kept by the Envoy front end
    outlier=DISABLED,  # Envoy ejects nothing without outlier_detection
    idle_timeout=3600.0,  # Envoy's upstream idle timeout
    max_connections_per_endpoint=1024,  # Envoy caps the cluster (max_connections), not a host
)


@pytest.mark.parametrize("path", ["seed-envoy.yaml", "seed-envoy-v3.yaml"])
def test_seed_envoy_file_loads(path: str) -> None:
    config = load_config(str(DATA / path), env={})
    assert config.source_format == "envoy"
    assert config.listeners == (SEED_LISTENER,)
    assert dict(config.clusters) == {"local_service": SEED_CLUSTER}
    assert config.admin == AdminConfig("0.0.0.0", 8081)


def test_seed_with_only_addresses_changed() -> None:
    text = (
        SEED_V2.replace("172.17.0.1", "127.0.0.1")
        .replace("port_value: 3000", "port_value: 43000")
        .replace("port_value: 80\n", "port_value: 0\n")
        .replace("port_value: 8081", "port_value: 0")
    )
    config = load_config_text(text, {})
    assert (config.listeners[0].host, config.listeners[0].port) == ("0.0.0.0", 0)
    assert config.clusters["local_service"].endpoints == (EndpointConfig("127.0.0.1", 43000),)
    assert config.admin.port == 0


def test_strict_dns_keeps_the_hostname() -> None:
    config = load_config_text(SEED_V3.replace("172.17.0.1", "greeter.local"), {})
    assert config.clusters["local_service"].endpoints == (EndpointConfig("greeter.local", 3000),)


HCM_V3 = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
V3_ROUTES = """
static_resources:
  listeners:
  - address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/HCM_V3
          route_config:
            virtual_hosts:
            - name: api
              domains: ["api.example.com", "*.example.com", "api.*"]
              routes:
              - match:
                  path: /exact
                  headers:
                  - {name: x-a, exact_match: "1"}
                  - {name: x-b, prefix_match: pre}
                  - {name: x-c, safe_regex_match: {google_re2: {}, regex: "v[0-9]+"}}
                  - {name: x-d, present_match: true, invert_match: true}
                  - {name: X-E, string_match: {exact: e}}
                  - {name: x-f, string_match: {prefix: f}}
                  - {name: x-g, string_match: {safe_regex: {regex: "g+"}}}
                route: {cluster: a, timeout: 0s}
              - match: {prefix: /}
                route:
                  timeout: {seconds: 2, nanos: 500000000}
                  weighted_clusters:
                    total_weight: 100
                    clusters: [{name: a, weight: 75}, {name: b, weight: 25}]
  clusters:
  - name: a
    type: STATIC
    load_assignment:
      cluster_name: a
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: "::1", port_value: 8001}}}
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8002}}}
  - name: b
    connect_timeout: {seconds: 3}
    type: LOGICAL_DNS
    dns_lookup_family: V4_ONLY
    hosts: [{socket_address: {address: b.internal, port_value: 80}}]
""".replace("HCM_V3", HCM_V3)


def test_v3_routes_headers_and_weights() -> None:
    config = load_config_text(V3_ROUTES, {})
    (listener,) = config.listeners
    assert (listener.name, listener.host, listener.port) == ("listener_0", "127.0.0.1", 10000)
    (vh,) = listener.virtual_hosts
    assert vh.domains == ("api.example.com", "*.example.com", "api.*")
    exact, split = vh.routes
    assert exact == RouteRule(
        RouteMatch(
            path="/exact",
            headers=(
                HeaderMatch("x-a", exact="1"),
                HeaderMatch("x-b", prefix="pre"),
                HeaderMatch("x-c", regex="v[0-9]+"),
                HeaderMatch("x-d", present=True, invert=True),
                HeaderMatch("x-e", exact="e"),
                HeaderMatch("x-f", prefix="f"),
                HeaderMatch("x-g", regex="g+"),
            ),
        ),
        cluster="a",
        timeout=math.inf,  # Envoy: 0s disables the route timeout
    )
    assert split == RouteRule(
        RouteMatch(prefix="/"),
        weighted=(WeightedCluster("a", 75), WeightedCluster("b", 25)),
        timeout=2.5,
    )
    assert config.clusters["a"].endpoints == (
        EndpointConfig("::1", 8001),
        EndpointConfig("127.0.0.1", 8002),
    )
    assert config.clusters["a"].connect_timeout == 5.0  # Envoy's default
    assert config.clusters["b"].connect_timeout == 3.0
    assert config.clusters["b"].endpoints == (EndpointConfig("b.internal", 80),)


def test_admin_only_bootstrap_is_envoy() -> None:
    config = load_config_text(
        "admin:\n  address:\n    socket_address: {address: 127.0.0.1, port_value: 0}\n", {}
    )
    assert config.source_format == "envoy"
    assert config.listeners == ()


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# (edit of the v2 seed: old -> new, the field named, words in the message, text on that line)
HCM = "static_resources.listeners[0].filter_chains[0].filters[0].config"
ROUTE = HCM + ".route_config.virtual_hosts[0].routes[0]"
REJECTED = [
    ("lb_policy: ROUND_ROBIN", "lb_policy: RING_HASH",
     "static_resources.clusters[0].lb_policy", "unsupported value 'RING_HASH'", "RING_HASH"),
    ("type: STRICT_DNS", "type: EDS", "static_resources.clusters[0].type", "'EDS'", "type: EDS"),
    ("    lb_policy: ROUND_ROBIN\n",
     "    lb_policy: ROUND_ROBIN\n    round_robin_lb_config: {choice_count: 2}\n",
     "static_resources.clusters[0].round_robin_lb_config.choice_count", "unsupported field",
     "choice_count"),
    ("    lb_policy: ROUND_ROBIN\n",
     "    lb_policy: ROUND_ROBIN\n    circuit_breakers: {thresholds: [{max_requests: 0}]}\n",
     "static_resources.clusters[0].circuit_breakers.thresholds[0].max_requests", "must be >= 1",
     "circuit_breakers"),
    ("          - name: envoy.router", "          - name: envoy.filters.http.lua\n"
     "          - name: envoy.router", HCM + ".http_filters[0].name",
     "unsupported HTTP filter 'envoy.filters.http.lua'", "lua"),
    ("      - name: envoy.http_connection_manager", "      - name: envoy.tcp_proxy",
     "static_resources.listeners[0].filter_chains[0].filters[0].name",
     "unsupported network filter 'envoy.tcp_proxy'", "tcp_proxy"),
    ("          codec_type: AUTO", "          codec_type: HTTP2", HCM + ".codec_type", "'HTTP2'",
     "HTTP2"),
    ("          codec_type: AUTO", "          codec_type: AUTO\n          access_log:\n"
     "          - {name: envoy.file_access_log, config: {path: /var/log/envoy.log}}",
     HCM + ".access_log[0].config", "nodeproxy writes its access line to its log stream",
     "access_log"),
    ("          codec_type: AUTO", "          codec_type: AUTO\n          normalize_path: true",
     HCM + ".normalize_path", "only false", "normalize_path"),
    ("          codec_type: AUTO", "          codec_type: AUTO\n          rds: {}",
     HCM + ".rds", "rds (xDS) is not supported", "rds"),
    ("          codec_type: AUTO", "          codec_type: AUTO\n          local_reply_config: {}",
     HCM + ".local_reply_config", "unsupported field", "local_reply_config"),
    ("    filter_chains:", "    socket_options: []\n    filter_chains:",
     "static_resources.listeners[0].socket_options", "unsupported field", "socket_options"),
    ("    - filters:", "    - filter_chain_match: {server_names: [a]}\n      filters:",
     "static_resources.listeners[0].filter_chains[0].filter_chain_match",
     "filter_chain_match is not supported", "filter_chain_match"),
    ("                  cluster: local_service",
     "                  cluster: local_service\n                  host_rewrite_header: x-host",
     ROUTE + ".route.host_rewrite_header", "unsupported field", "host_rewrite_header"),
    ("                  cluster: local_service", "                  cluster: nope",
     ROUTE + ".route.cluster", "unknown cluster 'nope'", "cluster: nope"),
    ("                  cluster: local_service",
     "                  cluster: local_service\n                  request_mirror_policies: []",
     ROUTE + ".route.request_mirror_policies", "unsupported field", "request_mirror_policies"),
    ('                  prefix: "/hello"', '                  connect_matcher: {}',
     ROUTE + ".match.connect_matcher", "unsupported field", "connect_matcher"),
    ('                  prefix: "/hello"', '                  path: "hello"',
     ROUTE + ".match.path", "must start with '/'", "path:"),
    ('                  prefix: "/hello"',
     '                  prefix: "/hello"\n                  headers: [{name: x, range_match: {}}]',
     ROUTE + ".match.headers[0].range_match", "range_match is not supported", "range_match"),
    ('                  prefix: "/hello"',
     '                  prefix: "/hello"\n                  headers: [{name: x, exact_match: y,'
     ' prefix_match: z}]', ROUTE + ".match.headers[0]", "exactly one of", "headers:"),
    ('                  prefix: "/hello"',
     '                  prefix: "/hello"\n                  headers:\n'
     '                  - {name: x, safe_regex_match: {regex: "(("}}',
     ROUTE + ".match.headers[0].safe_regex_match.regex", "invalid regex", "(("),
    ('              domains: ["*"]', '              domains: ["a.*.b"]',
     HCM + ".route_config.virtual_hosts[0].domains[0]", "invalid domain", "a.*.b"),
    ("    connect_timeout: 0.25s", "    connect_timeout: quick",
     "static_resources.clusters[0].connect_timeout", "invalid duration", "quick"),
    ("      port_value: 8081", "      port_value: 70000",
     "admin.address.socket_address.port_value", "must be in 0..65535", "70000"),
    ("  access_log_path: /tmp/admin_access.log", "  socket_options: []",
     "admin.socket_options", "unsupported field", "socket_options"),
    ("static_resources:", "dynamic_resources: {}\nstatic_resources:", "dynamic_resources",
     "unsupported field", "dynamic_resources"),
    ("static_resources:", "layered_runtime:\n  layers:\n  - name: l\n    static_layer:\n"
     "      overload.global_downstream_max_connections: 10\nstatic_resources:",
     "layered_runtime.layers[0].static_layer.overload.global_downstream_max_connections",
     "nodeproxy has no runtime", "overload.global_downstream_max_connections"),
    ("  clusters:", "  secrets: [{name: x}]\n  clusters:", "static_resources.secrets",
     "TLS secrets are not supported", "secrets"),
    ("        port_value: 80\n", "        port_value: 8081\n",
     "static_resources.listeners[0].address", "0.0.0.0:8081 is also used by admin.address",
     "address:"),
    ("  clusters:\n", "  clusters:\n  - name: local_service\n",
     "static_resources.clusters[1]", "duplicate cluster name", "- name: local_service"),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "field", "words", "on_line"), REJECTED)
def test_unsupported_or_invalid_envoy_fields_are_named(
    old: str, new: str, field: str, words: str, on_line: str
) -> None:
    text = _edit(SEED_V2, old, new)
    with pytest.raises(ConfigError) as info:
        load_config_text(text, {}, source="envoy.yaml")
    err = info.value
    assert (err.field, err.file) == (field, "envoy.yaml")
    assert words in err.message
    assert err.line is not None
    assert on_line in text.splitlines()[err.line - 1]


def test_static_cluster_needs_ip_addresses() -> None:
    text = _edit(_edit(SEED_V2, "type: STRICT_DNS", "type: STATIC"), "172.17.0.1", "greeter")
    with pytest.raises(ConfigError) as info:
        load_config_text(text, {})
    assert info.value.field == "static_resources.clusters[0].hosts[0]"
    assert "STATIC clusters need IP addresses" in info.value.message
    # A number is seconds, for connect_timeout as everywhere.
    text = _edit(SEED_V2, "connect_timeout: 0.25s", "connect_timeout: 0.5")
    assert load_config_text(text, {}).clusters["local_service"].connect_timeout == 0.5


def test_v3_typed_config_type_is_checked() -> None:
    text = _edit(
        SEED_V3, "http_connection_manager.v3.HttpConnectionManager", "tcp_proxy.v3.TcpProxy"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text, {})
    assert info.value.field.endswith("filters[0].typed_config.@type")
    assert info.value.line is not None
    assert "TcpProxy" in text.splitlines()[info.value.line - 1]


def test_weighted_total_weight_must_add_up() -> None:
    text = _edit(V3_ROUTES, "total_weight: 100", "total_weight: 90")
    with pytest.raises(
        ConfigError, match=r"total_weight: total_weight 90 != sum of the weights \(100\)"
    ):
        load_config_text(text, {})
