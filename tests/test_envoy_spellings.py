"""Every spelling Envoy accepts loads, and loads to the same config as the canonical one.

Envoy reads YAML through protobuf's JSON mapping with case-insensitive enums,
resolves an extension by its well-known name when ``typed_config`` is empty
and by ``@type`` whatever the name, accepts numbers written as strings and
durations as strings or ``{seconds, nanos}``. Each row below rewrites one
thing in the article's envoy.yaml (examples/envoy/envoy.yaml) and expects the
very same ``Config`` as the file in canonical v3 spelling.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeproxy.config import load_config_text
from nodeproxy.config.model import Config, EndpointConfig, RouteMatch
from tests.helpers.envoy_docs import bootstrap, load

ARTICLE = (Path(__file__).parent.parent / "examples" / "envoy" / "envoy.yaml").read_text()
V2_HCM = (
    "type.googleapis.com/envoy.config.filter.network.http_connection_manager.v2."
    "HttpConnectionManager"
)
ROUTER_V2 = "- name: envoy.router\n            typed_config: {}"
V3_HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
V3_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def canonical() -> str:
    """The article's file as a v3 user writes it today: upper-case enums, v3 names."""
    text = ARTICLE
    for old, new in (
        ("name: envoy.http_connection_manager",
         "name: envoy.filters.network.http_connection_manager"),
        (V2_HCM, V3_HCM),
        ("codec_type: auto", "codec_type: AUTO"),
        ("type: strict_dns", "type: STRICT_DNS"),
        ("lb_policy: round_robin", "lb_policy: ROUND_ROBIN"),
        ("- name: envoy.router\n            typed_config: {}",
         f"- name: envoy.filters.http.router\n            typed_config:\n"
         f"              \"@type\": {V3_ROUTER}"),
    ):  # fmt: skip
        assert old in text, old
        text = text.replace(old, new)
    return text


def same(config: Config, expected: Config) -> None:
    assert config.listeners == expected.listeners
    assert dict(config.clusters) == dict(expected.clusters)
    assert config.admin == expected.admin


HOSTS = """    hosts:
    - socket_address: {address: 172.17.0.1, port_value: 3000}
"""
LOAD_ASSIGNMENT = """    load_assignment:
      cluster_name: local_service
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address:
                address: 172.17.0.1
                port_value: 3000
"""
SPELLINGS = [
    ("the article's file as it is (lower-case enums, envoy.router, typed_config: {})", "", ""),
    ("enum values in mixed case", "type: strict_dns", "type: Strict_Dns"),
    ("socket protocol in lower case", "port_value: 3000",
     "port_value: 3000\n                protocol: tcp"),
    ("dns_lookup_family in lower case", "lb_policy: round_robin",
     "lb_policy: round_robin\n    dns_lookup_family: v4_only"),
    ("the router by its v3 name, no config", "- name: envoy.router\n            typed_config: {}",
     "- name: envoy.filters.http.router"),
    ("the router named just 'router'", "- name: envoy.router\n            typed_config: {}",
     "- name: router"),
    ("the router under any name, said by @type", ROUTER_V2,
     f"- name: my-router\n            typed_config: {{'@type': '{V3_ROUTER}'}}"),
    ("the router in a TypedStruct", "- name: envoy.router\n            typed_config: {}",
     "- name: x\n            typed_config:\n              '@type': type.googleapis.com/"
     "udpa.type.v1.TypedStruct\n              type_url: type.googleapis.com/envoy.extensions."
     "filters.http.router.v3.Router\n              value: {}"),
    ("the v2 router with v2 config:", "- name: envoy.router\n            typed_config: {}",
     "- name: envoy.router\n            config: {}"),
    ("a field with no value is a field not set", ROUTER_V2,
     "- name: envoy.router\n            typed_config:"),
    ("the connection manager under any name, said by @type",
     "name: envoy.http_connection_manager", "name: hcm"),
    ("the connection manager by its v3 name with a v2 @type",
     "name: envoy.http_connection_manager", "name: envoy.filters.network.http_connection_manager"),
    ("durations as {seconds, nanos}", "connect_timeout: 0.25s",
     "connect_timeout: {seconds: 0, nanos: 250000000}"),
    ("durations with seconds as a string", "connect_timeout: 0.25s",
     "connect_timeout: {nanos: 250000000, seconds: '0'}"),
    ("port numbers as strings", "port_value: 3000", "port_value: '3000'"),
    ("v2 hosts: instead of load_assignment", LOAD_ASSIGNMENT, HOSTS),
    ("case_sensitive: true (Envoy's default)", 'prefix: "/hello"',
     'prefix: "/hello"\n                  case_sensitive: true'),
    ("one value where a list is expected (protobuf's JSON parser takes it)",
     '              domains:\n              - "*"', '              domains: "*"'),
    ("one listener as a mapping, not a list", "  listeners:\n  - address:",
     "  listeners:\n    address:"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "old", "new"), SPELLINGS, ids=[s[0] for s in SPELLINGS])
def test_every_spelling_loads_as_the_canonical_file(what: str, old: str, new: str) -> None:
    assert old in ARTICLE, old
    text = ARTICLE.replace(old, new, 1)
    same(load_config_text(text, {}), load_config_text(canonical(), {}))


def test_the_v2_http_connection_manager_with_config() -> None:
    text = ARTICLE.replace('typed_config:\n          "@type": ' + V2_HCM, "config:")
    assert text != ARTICLE
    same(load_config_text(text, {}), load_config_text(canonical(), {}))


def test_a_route_config_without_virtual_hosts_loads_and_routes_nothing() -> None:
    doc = bootstrap(hcm={"route_config": {"name": "empty"}})
    assert load(doc).listeners[0].virtual_hosts == ()


def test_load_balancing_weight_is_the_endpoint_weight() -> None:
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}},
         "load_balancing_weight": w}
        for p, w in ((8001, "3"), (8002, 1))
    ]  # fmt: skip
    doc = bootstrap(first={"load_assignment": {"endpoints": [{"lb_endpoints": endpoints}]}})
    cluster = load(doc).clusters["a"]
    assert cluster.endpoints == (
        EndpointConfig("127.0.0.1", 8001, weight=3.0),
        EndpointConfig("127.0.0.1", 8002, weight=1.0),
    )
    assert cluster.lb_policy == "weighted_round_robin"  # Envoy's round robin honours weights


def test_case_sensitive_false_compares_lowercased() -> None:
    doc = bootstrap(match={"prefix": "/Hello", "case_sensitive": False})
    rule = load(doc).listeners[0].virtual_hosts[0].routes[0]
    assert rule.match == RouteMatch(prefix="/hello", case_sensitive=False)
