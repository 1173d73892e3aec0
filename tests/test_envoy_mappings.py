"""Envoy fields onto what nodeproxy has, one row per field: the config each one becomes.

Each row builds a small v3 bootstrap (tests/helpers/envoy_docs.py) with one
field set, loads it as ``nodeproxy run`` would, and compares the part of the
``Config`` the field maps onto; the rows without the field check Envoy's
defaults (no retries, no ejection, no upgrades, no x-forwarded-for append).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from nodeproxy.config.model import (
    BucketConfig,
    Config,
    DirectResponse,
    HeaderMatch,
    HeaderMutation,
    QueryMatch,
    RateLimitConfig,
    Redirect,
    RetryConfig,
    RouteMatch,
    WeightedCluster,
)
from nodeproxy.resilience.health import HealthCheckConfig
from nodeproxy.resilience.outlier import DISABLED, OutlierConfig
from nodeproxy.resilience.overload import OverloadLimits
from tests.helpers.envoy_docs import bootstrap, cluster, load

LR = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
ALL = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
BUCKET = {"max_tokens": 10, "tokens_per_fill": 5, "fill_interval": "0.5s"}
LOCAL_RL = {
    "name": "envoy.filters.http.local_ratelimit",
    "typed_config": {"@type": LR, "stat_prefix": "rl", "token_bucket": BUCKET,
                     "filter_enabled": ALL, "filter_enforced": ALL},
}  # fmt: skip
ROUTER = {"name": "envoy.filters.http.router"}
B = cluster("b", 8003)
DNS = cluster("d", 8004, extra={"type": "strict_dns", "load_assignment": {"endpoints": [
    {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
        "address": "backend.local", "port_value": 80}}}}]}]}})  # fmt: skip


def rule(c: Config) -> Any:
    return c.listeners[0].virtual_hosts[0].routes[0]


def first(c: Config) -> Any:
    return c.clusters["a"]


def listener(c: Config) -> Any:
    return c.listeners[0]


def hm(key: str, value: str, append: bool = True) -> dict[str, Any]:
    return {"header": {"key": key, "value": value}, "append": append}


MAPPINGS: list[tuple[str, dict[str, Any], Callable[[Config], Any], Any]] = [
    # retries: none without retry_policy; Envoy's defaults and no budget unless the cluster's
    ("no retry_policy: no retries", {}, lambda c: rule(c).retries, None),
    ("retry_policy", {"action": {"retry_policy": {
        "retry_on": "5xx,retriable-status-codes", "num_retries": "3", "per_try_timeout": "0.5s",
        "retriable_status_codes": [409], "retry_back_off": {"base_interval": "0.1s"}}}},
     lambda c: rule(c).retries,
     RetryConfig(retry_on=("5xx", "retriable-status-codes"), num_retries=3, per_try_timeout=0.5,
                 backoff_base=0.1, backoff_max=1.0, budget_ratio=1.0, budget_min_concurrency=3,
                 retriable_status_codes=(409,))),
    ("retry_policy on the virtual host", {"vhost": {"retry_policy": {"retry_on": "reset"}}},
     lambda c: rule(c).retries.retry_on, ("reset",)),
    ("retry_on for HTTP/2 only counts (never fires on HTTP/1.1)",
     {"action": {"retry_policy": {"retry_on": "refused-stream,connect-failure"}}},
     lambda c: rule(c).retries.retry_on, ("connect-failure",)),
    ("the cluster's retry_budget", {"action": {"retry_policy": {"retry_on": "5xx"}},
     "first": {"circuit_breakers": {"thresholds": [{"retry_budget": {
         "budget_percent": {"value": 25}, "min_retry_concurrency": 5}}]}}},
     lambda c: (rule(c).retries.budget_ratio, rule(c).retries.budget_min_concurrency,
                first(c).overload.max_retries), (0.25, 5, 2**31)),
    # outlier detection: none without it
    ("no outlier_detection: no ejection", {}, lambda c: first(c).outlier, DISABLED),
    ("outlier_detection: {} has Envoy's defaults", {"first": {"outlier_detection": {}}},
     lambda c: first(c).outlier,
     OutlierConfig(max_ejection_percent=10.0, enforcing_consecutive_gateway_failure=0.0)),
    ("outlier_detection fields", {"first": {"outlier_detection": {
        "consecutive_5xx": 3, "consecutive_gateway_failure": "2", "interval": "1s",
        "base_ejection_time": {"seconds": 2}, "max_ejection_time": "20s",
        "max_ejection_percent": 50, "enforcing_consecutive_gateway_failure": 100,
        "enforcing_success_rate": 0}}},
     lambda c: first(c).outlier,
     OutlierConfig(consecutive_5xx=3, consecutive_gateway_failure=2, interval=1.0,
                   base_ejection_time=2.0, max_ejection_time=20.0, max_ejection_percent=50.0)),
    # circuit breakers and health checks
    ("circuit_breakers.thresholds", {"first": {"circuit_breakers": {"thresholds": [
        {"priority": "high", "max_connections": 1},
        {"max_connections": 10, "max_pending_requests": "20", "max_requests": 30,
         "max_retries": 0}]}}},
     lambda c: (first(c).overload, first(c).max_connections_per_endpoint),
     (OverloadLimits(10, 20, 30, 0), 10)),
    ("per_host_thresholds max_connections", {"first": {"circuit_breakers": {
        "per_host_thresholds": [{"max_connections": 4}]}}},
     lambda c: first(c).max_connections_per_endpoint, 4),
    ("health_checks (HTTP)", {"first": {"health_checks": [{
        "timeout": "0.5s", "interval": "2s", "unhealthy_threshold": 2, "healthy_threshold": "3",
        "http_health_check": {"path": "/ready"}}]}},
     lambda c: first(c).health_check, HealthCheckConfig("/ready", 2.0, 0.5, 2, 3)),
    # balancing
    ("lb_policy LEAST_REQUEST", {"first": {"lb_policy": "LEAST_REQUEST"}},
     lambda c: first(c).lb_policy, "least_request"),
    ("lb_policy random", {"first": {"lb_policy": "random"}},
     lambda c: first(c).lb_policy, "random"),
    ("Envoy's cluster defaults", {},
     lambda c: (first(c).lb_policy, first(c).connect_timeout, first(c).idle_timeout,
                first(c).max_connections_per_endpoint), ("round_robin", 5.0, 3600.0, 1024)),
    ("weighted_clusters", {"action": {"cluster": None, "weighted_clusters": {"clusters": [
        {"name": "a", "weight": "3"}, {"name": "b", "weight": 0}]}}, "clusters": (B,)},
     lambda c: rule(c).weighted, (WeightedCluster("a", 3), WeightedCluster("b", 0))),
    # matches
    ("header matchers, every spelling", {"match": {"headers": [
        {"name": "x-a", "exact_match": "1"},
        {"name": "x-b", "suffix_match": ".v2"},
        {"name": "x-c", "contains_match": "mid"},
        {"name": "x-d", "string_match": {"exact": "Yes", "ignore_case": True}},
        {"name": "x-e"},
        {"name": "x-f", "value": "v[0-9]", "regex": True},
        {"name": "x-g", "regex_match": "a+"},
        {"name": "x-h", "present_match": False}]}},
     lambda c: rule(c).match.headers,
     (HeaderMatch("x-a", exact="1"), HeaderMatch("x-b", regex=r"(?s).*\.v2"),
      HeaderMatch("x-c", regex="(?s).*mid.*"), HeaderMatch("x-d", regex="(?is)Yes"),
      HeaderMatch("x-e", present=True), HeaderMatch("x-f", regex="v[0-9]"),
      HeaderMatch("x-g", regex="a+"), HeaderMatch("x-h", present=False))),
    ("query_parameters", {"match": {"query_parameters": [
        {"name": "v", "string_match": {"exact": "2"}},
        {"name": "debug", "present_match": True},
        {"name": "id", "string_match": {"safe_regex": {"regex": "[0-9]+"}}},
        {"name": "old", "value": "x"},
        {"name": "bare"}]}},
     lambda c: rule(c).match.query,
     (QueryMatch("v", exact="2"), QueryMatch("debug", present=True),
      QueryMatch("id", regex="[0-9]+"), QueryMatch("old", exact="x"),
      QueryMatch("bare", present=True))),
    ("safe_regex path", {"match": {"prefix": None, "safe_regex": {"regex": "/v[12]/.*"}}},
     lambda c: rule(c).match, RouteMatch(regex="/v[12]/.*")),
    ("path_separated_prefix", {"match": {"prefix": None, "path_separated_prefix": "/api"}},
     lambda c: rule(c).match.regex, "/api(/.*)?"),
    # route actions
    ("prefix_rewrite, host_rewrite_literal", {"action": {
        "prefix_rewrite": "/v2/", "host_rewrite_literal": "api.internal"}},
     lambda c: (rule(c).prefix_rewrite, rule(c).host_rewrite), ("/v2/", "api.internal")),
    ("regex_rewrite", {"action": {
        "regex_rewrite": {"pattern": {"regex": "^/old/(.*)"}, "substitution": "/new/\\1"}}},
     lambda c: rule(c).regex_rewrite, ("^/old/(.*)", "/new/\\1")),
    ("v2 host_rewrite", {"action": {"host_rewrite": "h.example"}},
     lambda c: rule(c).host_rewrite, "h.example"),
    ("auto_host_rewrite to a STRICT_DNS cluster", {"action": {"cluster": "d",
     "auto_host_rewrite": True}, "clusters": (DNS,)},
     lambda c: rule(c).auto_host_rewrite, True),
    ("auto_host_rewrite to a STATIC cluster does nothing (as in Envoy)",
     {"action": {"auto_host_rewrite": True}}, lambda c: rule(c).auto_host_rewrite, False),
    ("route timeout: 15 s default, 0s none", {"action": {"timeout": "0s"}},
     lambda c: (rule(c).timeout, first(c).response_timeout), (math.inf, 15.0)),
    ("redirect", {"route": {"route": None, "redirect": {
        "https_redirect": True, "host_redirect": "example.com", "port_redirect": 8443,
        "prefix_rewrite": "/new", "response_code": "permanent_redirect", "strip_query": True}}},
     lambda c: (rule(c).redirect, rule(c).cluster),
     (Redirect("https", "example.com", 8443, None, "/new", 308, True), None)),
    ("direct_response", {"route": {"route": None, "direct_response": {
        "status": 503, "body": {"inline_string": "down\n"}}}},
     lambda c: (rule(c).direct_response, rule(c).weighted), (DirectResponse(503, "down\n"), ())),
    # upgrades, forwarding, limits, rate limits, access log
    ("no upgrade_configs: no upgrades", {}, lambda c: listener(c).upgrades, ()),
    ("upgrade_configs, overridden by a route",
     {"hcm": {"upgrade_configs": [{"upgrade_type": "WebSocket"}]},
      "action": {"upgrade_configs": [{"upgrade_type": "websocket", "enabled": False}]}},
     lambda c: (listener(c).upgrades, rule(c).upgrades), (("websocket",), ())),
    ("Envoy's forwarding defaults", {},
     lambda c: (listener(c).use_remote_address, listener(c).xff_num_trusted_hops,
                listener(c).via, listener(c).host_port_match), (False, 0, None, "exact")),
    ("use_remote_address, xff_num_trusted_hops, via, strip_any_host_port",
     {"hcm": {"use_remote_address": True, "xff_num_trusted_hops": 1, "via": "edge",
              "strip_any_host_port": True}},
     lambda c: (listener(c).use_remote_address, listener(c).xff_num_trusted_hops,
                listener(c).via, listener(c).host_port_match), (True, 1, "edge", "strip_any")),
    ("strip_matching_host_port", {"hcm": {"strip_matching_host_port": True}},
     lambda c: listener(c).host_port_match, "strip_matching"),
    ("connection manager timeouts and header size", {"hcm": {
        "stream_idle_timeout": "0s", "request_headers_timeout": "5s",
        "max_request_headers_kb": 96, "common_http_protocol_options": {"idle_timeout": "90s"}}},
     lambda c: (c.limits.stream_idle_timeout, c.limits.header_read_timeout,
                c.limits.max_request_header_bytes, c.limits.downstream_idle_timeout),
     (math.inf, 5.0, 96 * 1024, 90.0)),
    ("Envoy's downstream idle timeout", {}, lambda c: c.limits.downstream_idle_timeout, 3600.0),
    ("cluster idle_timeout in HttpProtocolOptions", {"first": {
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                         "HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {}},
                "common_http_protocol_options": {"idle_timeout": "30s"}}}}},
     lambda c: first(c).idle_timeout, 30.0),
    ("local_ratelimit filter: the listener's bucket",
     {"hcm": {"http_filters": [LOCAL_RL, ROUTER]}}, lambda c: listener(c).rate_limit,
     RateLimitConfig(total=BucketConfig(10.0, 10))),
    ("local_ratelimit per route", {"hcm": {"http_filters": [LOCAL_RL, ROUTER]},
     "route": {"typed_per_filter_config": {"envoy.filters.http.local_ratelimit": {
         "@type": LR, "stat_prefix": "r", "filter_enabled": ALL, "filter_enforced": ALL,
         "token_bucket": {"max_tokens": 2, "fill_interval": "1s"}}}}},
     lambda c: rule(c).rate_limit, RateLimitConfig(total=BucketConfig(1.0, 2))),
    ("local_ratelimit not enforced: no limit (Envoy only counts)",
     {"hcm": {"http_filters": [{**LOCAL_RL, "typed_config": {
         "@type": LR, "stat_prefix": "rl", "token_bucket": BUCKET}}, ROUTER]}},
     lambda c: listener(c).rate_limit, None),
    ("no access_log: no access line", {}, lambda c: c.log.access_log, False),
    ("access_log to /dev/stdout, JSON", {"hcm": {"access_log": [{
        "name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": "/dev/stdout", "log_format": {"json_format": {"s": "%RESPONSE_CODE%"}}}}]}},
     lambda c: (c.log.access_log, c.log.format), (True, "json")),
    ("access_log to /dev/null: no access line", {"hcm": {"access_log": [{
        "name": "envoy.file_access_log", "config": {"path": "/dev/null"}}]}},
     lambda c: c.log.access_log, False),
]  # fmt: skip


@pytest.mark.parametrize(("what", "kw", "get", "expected"), MAPPINGS, ids=[m[0] for m in MAPPINGS])
def test_envoy_field_maps_onto_nodeproxy(
    what: str, kw: dict[str, Any], get: Callable[[Config], Any], expected: Any
) -> None:
    assert get(load(bootstrap(**kw))) == expected


@pytest.mark.parametrize("most_specific_wins", [False, True])
def test_header_mutations_merge_route_virtual_host_and_route_config(
    most_specific_wins: bool,
) -> None:
    doc = bootstrap(
        route={"request_headers_to_add": [hm("x-r", "1"), hm("x-v", "route", False)],
               "response_headers_to_remove": ["server"]},
        vhost={"request_headers_to_add": [hm("x-v", "vh", False)],
               "request_headers_to_remove": ["x-drop"]},
    )  # fmt: skip
    rc = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    rc["typed_config"]["route_config"].update(
        request_headers_to_add=[hm("x-v", "rc", False)],
        response_headers_to_add=[hm("x-rc", "3")],
        most_specific_header_mutations_wins=most_specific_wins,
    )
    r = rule(load(doc))
    levels = [
        (HeaderMutation("x-r", "1"), HeaderMutation("x-v", "route", append=False)),
        (HeaderMutation("x-v", "vh", append=False),),
        (HeaderMutation("x-v", "rc", append=False),),
    ]
    if most_specific_wins:  # applied last, the route's own value wins
        levels.reverse()
    assert r.request_headers_to_add == tuple(m for level in levels for m in level)
    assert r.request_headers_to_remove == ("x-drop",)
    assert r.response_headers_to_add == (HeaderMutation("x-rc", "3"),)
    assert r.response_headers_to_remove == ("server",)
