"""Fields that change nothing load with one warning each; fields that would change
behaviour are refused, naming the field. check-config prints the warnings.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nodeproxy.config.envoy_ignored import NO_WARNING, TABLES
from nodeproxy.errors import ConfigError
from tests.helpers.envoy_docs import bootstrap, load

ROOT = Path(__file__).parent.parent
HCM = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
ROUTE = HCM + ".route_config.virtual_hosts[0].routes[0]"
CLUSTER = "static_resources.clusters[0]"

IGNORED = [
    ({"hcm": {"tracing": {}}}, HCM + ".tracing", "tracing"),
    ({"hcm": {"generate_request_id": False}}, HCM + ".generate_request_id", "x-request-id"),
    ({"route": {"decorator": {"operation": "op"}}}, ROUTE + ".decorator", "tracing"),
    ({"listener": {"traffic_direction": "OUTBOUND"}}, "static_resources.listeners[0]."
     "traffic_direction", "label"),
    ({"listener": {"per_connection_buffer_limit_bytes": 32768}}, "static_resources.listeners[0]."
     "per_connection_buffer_limit_bytes", "buffer"),
    ({"first": {"http2_protocol_options": {}}}, CLUSTER + ".http2_protocol_options", "HTTP/1.1"),
    ({"first": {"dns_refresh_rate": "5s"}}, CLUSTER + ".dns_refresh_rate", "resolves"),
    ({"root": {"stats_sinks": []}}, "stats_sinks", "statistics"),
    ({"vhost": {"virtual_clusters": []}}, HCM + ".route_config.virtual_hosts[0].virtual_clusters",
     "statistics"),
    ({"action": {"hash_policy": []}}, ROUTE + ".route.hash_policy", "RING_HASH"),
    ({"hcm": {"common_http_protocol_options": {"max_headers_count": 50}}},
     HCM + ".common_http_protocol_options.max_headers_count", "by size"),
    ({"first": {"outlier_detection": {"failure_percentage_threshold": 85}}},
     CLUSTER + ".outlier_detection.failure_percentage_threshold", "only counted"),
    ({"root": {"layered_runtime": {"layers": [{"name": "l", "static_layer": {"envoy": {
        "resource_limits": {"listener": {"example_listener_name": {"connection_limit": 9}}}}}}]}}},
     "layered_runtime.layers[0].static_layer.envoy.resource_limits.listener."
     "example_listener_name.connection_limit", "does not exist"),
    ({"listener": {"freebind": True}}, "static_resources.listeners[0].freebind",
     "binds only addresses already on the host"),
    ({"root": {"runtime": {"symlink_root": "/srv/runtime/current", "subdirectory": "envoy",
                           "override_subdirectory": "o"}}}, "runtime", "no runtime"),
    ({"root": {"layered_runtime": {"layers": [{"name": "d", "disk_layer": {
        "symlink_root": "/srv/rt", "subdirectory": "envoy"}}]}}},
     "layered_runtime.layers[0].disk_layer", "reads no keys"),
    ({"first": {"load_assignment": {"endpoints": [{"lb_endpoints": [{"endpoint": {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8001}},
        "health_check_config": {"port_value": 9000}}}]}]}}},
     CLUSTER + ".load_assignment.endpoints[0].lb_endpoints[0].endpoint.health_check_config",
     "no health_checks"),
]  # fmt: skip


@pytest.mark.parametrize(("kw", "field", "words"), IGNORED, ids=[i[1] for i in IGNORED])
def test_a_field_that_changes_nothing_loads_with_one_warning(
    kw: dict[str, Any], field: str, words: str
) -> None:
    (warning,) = load(bootstrap(**kw)).warnings
    assert warning.startswith(field + " (line ")
    assert "ignored: " in warning
    assert words in warning


def test_repeated_fields_make_one_warning_line() -> None:
    routes = [{"match": {"prefix": f"/{i}"}, "route": {"cluster": "a"},
               "decorator": {"operation": "op"}} for i in range(3)]  # fmt: skip
    (warning,) = load(bootstrap(vhost={"routes": routes})).warnings
    assert "routes[0].decorator" in warning
    assert "(and 2 more)" in warning


def test_a_plain_file_has_no_warnings() -> None:
    assert load(bootstrap()).warnings == ()


REFUSED = [
    ({"hcm": {"normalize_path": True}}, HCM + ".normalize_path", "only false"),
    ({"hcm": {"skip_xff_append": True, "use_remote_address": True}}, HCM + ".skip_xff_append",
     "use_remote_address"),
    ({"hcm": {"http_filters": [{"name": "envoy.filters.http.lua"},
                               {"name": "envoy.filters.http.router"}]}},
     HCM + ".http_filters[0].name", "unsupported HTTP filter 'envoy.filters.http.lua'"),
    ({"hcm": {"http_filters": [{"name": "envoy.filters.http.router"},
                               {"name": "envoy.filters.http.local_ratelimit"}]}},
     HCM + ".http_filters[0]", "must be the last"),
    ({"hcm": {"codec_type": "http2"}}, HCM + ".codec_type", "'http2'"),
    ({"hcm": {"request_timeout": "10s"}}, HCM + ".request_timeout", "request_body_timeout"),
    ({"hcm": {"access_log": [{"name": "envoy.access_loggers.file",
                              "typed_config": {"path": "/var/log/a.log"}}]}},
     HCM + ".access_log[0].typed_config", "/dev/stdout, /dev/stderr or /dev/null"),
    ({"first": {"lb_policy": "MAGLEV"}}, CLUSTER + ".lb_policy", "'MAGLEV'"),
    ({"first": {"type": "EDS"}}, CLUSTER + ".type", "'EDS'"),
    ({"first": {"outlier_detection": {"success_rate_stdev_factor": 1900}}},
     CLUSTER + ".outlier_detection.success_rate_stdev_factor", "success-rate"),
    ({"first": {"outlier_detection": {"enforcing_consecutive_5xx": 50}}},
     CLUSTER + ".outlier_detection.enforcing_consecutive_5xx", "only 0 or 100"),
    ({"first": {"health_checks": [{"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1,
                                   "healthy_threshold": 1, "tcp_health_check": {}}]}},
     CLUSTER + ".health_checks[0].tcp_health_check", "unsupported field"),
    ({"first": {"transport_socket": {"name": "envoy.transport_sockets.tls"}}},
     CLUSTER + ".transport_socket.name",
     "unsupported upstream transport socket 'envoy.transport_sockets.tls'"),
    ({"action": {"retry_policy": {"retry_on": "5xx,envoy-ratelimited"}}},
     ROUTE + ".route.retry_policy.retry_on", "unsupported retry_on 'envoy-ratelimited'"),
    ({"action": {"cluster_header": "x-cluster"}}, ROUTE + ".route.cluster_header",
     "unsupported field"),
    ({"action": {"request_mirror_policies": [{"cluster": "a"}]}},
     ROUTE + ".route.request_mirror_policies", "unsupported field"),
    ({"match": {"grpc": {"x": 1}}}, ROUTE + ".match.grpc.x", "unsupported field"),
    ({"match": {"headers": [{"name": "x", "range_match": {"start": 1, "end": 3}}]}},
     ROUTE + ".match.headers[0].range_match", "range_match"),
    ({"route": {"request_headers_to_add": [{"header": {"key": "x-up", "value":
                                                      "%UPSTREAM_HOST%"}}]}},
     ROUTE + ".request_headers_to_add[0].header.value", "unsupported variable '%UPSTREAM_HOST%'"),
    ({"action": {"prefix_rewrite": "/a", "regex_rewrite": {"pattern": {"regex": "x"},
                                                            "substitution": "y"}}},
     ROUTE, "use one of prefix_rewrite or regex_rewrite"),
    ({"route": {"route": None, "direct_response": {"status": 204,
                                                   "body": {"inline_string": "x"}}}},
     ROUTE + ".direct_response.body", "no body"),
    ({"vhost": {"require_tls": "ALL"}}, HCM + ".route_config.virtual_hosts[0].require_tls",
     "'ALL'"),
    ({"listener": {"listener_filters": [{"name": "envoy.filters.listener.original_dst"}]}},
     "static_resources.listeners[0].listener_filters[0].name", "unsupported listener filter"),
    ({"root": {"layered_runtime": {"layers": [{"name": "l", "static_layer": {
        "envoy.resource_limits.listener.l.connection_limit": 9}}]}}},
     "layered_runtime.layers[0].static_layer.envoy.resource_limits.listener.l.connection_limit",
     "nodeproxy has no runtime"),
    ({"first": {"health_checks": [{"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1,
                                   "healthy_threshold": 1, "http_health_check": {"path": "/"}}],
                "load_assignment": {"endpoints": [{"lb_endpoints": [{"endpoint": {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8001}},
                    "health_check_config": {"port_value": 9000}}}]}]}}},
     CLUSTER + ".load_assignment.endpoints[0].lb_endpoints[0].endpoint.health_check_config."
     "port_value", "own address and port"),
    ({"first": {"health_checks": [{"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1,
                                   "healthy_threshold": 1, "http_health_check": {
                                       "path": "/", "service_name_matcher": {"contains": "x",
                                                                             "y": 1}}}]}},
     CLUSTER + ".health_checks[0].http_health_check.service_name_matcher.y", "unsupported field"),
]  # fmt: skip


@pytest.mark.parametrize(("kw", "field", "words"), REFUSED, ids=[r[1] for r in REFUSED])
def test_a_field_that_would_change_behaviour_is_refused_by_name(
    kw: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(bootstrap(**kw))
    assert info.value.field == field
    assert words in info.value.message
    assert info.value.file == "envoy.yaml"
    assert info.value.line is not None


def test_unsupported_fields_point_at_the_docs() -> None:
    with pytest.raises(ConfigError, match=r"docs/configuration\.md, 'Envoy bootstrap'"):
        load(bootstrap(action={"cluster_header": "x"}))


def test_every_ignored_field_is_in_the_docs_table() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    section = docs[docs.index("### Fields accepted without effect") :]
    rows = set(re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|", section, re.M))
    for where, table in TABLES.items():
        for name, why in table.items():
            assert (where, name) in rows, (where, name)
            assert why.removeprefix(NO_WARNING) in section, why


def test_check_config_prints_each_warning(tmp_path: Path) -> None:
    doc = tmp_path / "envoy.yaml"
    doc.write_text(
        (ROOT / "examples" / "envoy" / "envoy.yaml").read_text()
        + "stats_flush_interval: 5s\ntracing: {}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "nodeproxy", "check-config", str(doc)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ok: envoy config")
    assert lines[1].startswith("warning: stats_flush_interval (line ")
    assert lines[2].startswith("warning: tracing (line ")
    assert len(lines) == 3


def test_check_config_takes_both_examples_at_once() -> None:
    examples = sorted(str(p) for p in (ROOT / "examples" / "envoy").glob("*.yaml"))
    assert len(examples) == 2
    done = subprocess.run(
        [sys.executable, "-m", "nodeproxy", "check-config", *examples],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [line.split(": ", 1)[0] for line in done.stdout.splitlines()] == examples
    assert all(": ok: envoy config" in line for line in done.stdout.splitlines())
