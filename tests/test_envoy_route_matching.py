"""Route matching on regex paths, case-insensitive paths and query parameters, as Envoy's.

A table of (request target, expected route) per config, checked through the
real ``Router`` for an Envoy file and for the same rules in the native
format: the query string is split on ``&``/``=`` without decoding, the first
value of a parameter counts, a regex must match the whole path without the
query, ``case_sensitive: false`` ignores case in ``prefix``/``path`` only.
"""

from __future__ import annotations

import pytest

from nodeproxy.config import load_config_text
from nodeproxy.config.model import Config
from nodeproxy.routing.authority import parse_authority
from nodeproxy.routing.match import first_value
from nodeproxy.routing.router import Router
from tests.helpers.envoy_docs import bootstrap, cluster, load

ROUTES = [
    {"name": "v2", "match": {"prefix": "/", "query_parameters": [
        {"name": "v", "string_match": {"exact": "2"}}]}, "route": {"cluster": "a"}},
    {"name": "debug", "match": {"prefix": "/", "query_parameters": [
        {"name": "debug", "present_match": True}]}, "route": {"cluster": "a"}},
    {"name": "item", "match": {"safe_regex": {"regex": "/items/[0-9]+"}},
     "route": {"cluster": "a"}},
    {"name": "api", "match": {"prefix": "/API/", "case_sensitive": False},
     "route": {"cluster": "a"}},
    {"name": "exact", "match": {"path": "/Exact", "case_sensitive": False},
     "route": {"cluster": "a"}},
    {"name": "tail", "match": {"path_separated_prefix": "/tail"}, "route": {"cluster": "a"}},
    {"name": "rest", "match": {"prefix": "/"}, "route": {"cluster": "a"}},
]  # fmt: skip
NATIVE = """
listeners: [{address: "127.0.0.1:0"}]
services:
  - name: a
    endpoints: ["127.0.0.1:8001"]
    routes:
      - {name: v2, match: {query: [{name: v, exact: "2"}]}, service: a}
      - {name: debug, match: {query: [{name: debug, present: true}]}, service: a}
      - {name: item, match: {regex: "/items/[0-9]+"}, service: a}
      - {name: rest, service: a}
"""
CASES = [
    ("/?v=2", "v2"),
    ("/x?a=1&v=2", "v2"),
    ("/?v=2&v=3", "v2"),  # the first value counts
    ("/?v=3&v=2", "rest"),
    ("/?v=20", "rest"),
    ("/?v=%32", "rest"),  # not percent-decoded
    ("/?debug", "debug"),  # a parameter without '=' is present, with value ""
    ("/?debug=", "debug"),
    ("/?nodebug=1", "rest"),
    ("/items/42", "item"),
    ("/items/42?v=1", "item"),  # the regex sees the path without the query
    ("/items/42/x", "rest"),  # ... and must match all of it
    ("/items/", "rest"),
]
ENVOY_ONLY = [
    ("/api/x", "api"),
    ("/Api/X", "api"),
    ("/apix", "rest"),
    ("/exact", "exact"),
    ("/EXACT", "exact"),
    ("/exact/", "rest"),
    ("/tail", "tail"),
    ("/tail/more", "tail"),
    ("/tailx", "rest"),
]


def picks(config: Config, target: str) -> str:
    router = Router(config.listeners[0])
    authority = "a.default"
    rule = router.route(parse_authority(authority), authority, target, ()).rule
    return rule.name


ENVOY = load(
    bootstrap(vhost={"domains": ["a.default"], "routes": ROUTES}, clusters=(cluster("b", 1),))
)


@pytest.mark.parametrize(("target", "route"), CASES + ENVOY_ONLY)
def test_envoy_file(target: str, route: str) -> None:
    assert picks(ENVOY, target) == route


@pytest.mark.parametrize(("target", "route"), CASES)
def test_native_file(target: str, route: str) -> None:
    assert picks(load_config_text(NATIVE, {}), target) == route


@pytest.mark.parametrize(
    ("query", "name", "value"),
    [("a=1&b=2", "b", "2"), ("a&b", "a", ""), ("", "a", None), ("a=1=2", "a", "1=2"),
     ("=x&a=1", "a", "1"), ("&&a=", "a", "")],
)  # fmt: skip
def test_first_value(query: str, name: str, value: str | None) -> None:
    assert first_value(query, name) == value
