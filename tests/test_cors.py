"""CORS (Envoy's ``envoy.filters.http.cors``): policies on routes and virtual hosts.

Pure tables for ``routing/cors.py`` (origin conditions, preflight detection,
the headers of each answer, the route-over-virtual-host merge), then end to
end through the proxy on loopback with the echoing test backend: a preflight
is answered without the backend seeing it, an allowed request's response gets
the headers, a disallowed origin passes unchanged; in the native format and
in an Envoy file (where the filter must be in ``http_filters``).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import httpx
import pytest

from nodeproxy.config import load_config_text
from nodeproxy.config.model import Config, CorsPolicy
from nodeproxy.errors import ConfigError
from nodeproxy.routing.cors import (
    Verdict,
    apply,
    classify,
    merge,
    origin_allowed,
    preflight_headers,
    response_headers,
)
from tests.helpers.backends import backend, run_proxy

DATA = Path(__file__).parent / "data" / "envoy"
POLICY = CorsPolicy(
    origins=(
        ("exact", "https://app.example"),
        ("prefix", "https://dev."),
        ("regex", r".*\.ok\.io"),
    ),
    allow_methods="GET,PUT",
    allow_headers="x-token",
    expose_headers="x-trace",
    max_age="600",
    allow_credentials=True,
)
PREFLIGHT_HEADERS = [
    (b"origin", b"https://app.example"),
    (b"access-control-request-method", b"PUT"),
    (b"access-control-request-headers", b"x-token, x-other"),
]


@pytest.mark.parametrize(
    ("origins", "origin", "allowed"),
    [
        ((("exact", "https://app.example"),), "https://app.example", True),
        ((("exact", "https://app.example"),), "https://app.example:8443", False),
        ((("exact", "https://app.example"),), "HTTPS://APP.EXAMPLE", False),
        ((("prefix", "https://dev."),), "https://dev.x", True),
        ((("prefix", "https://dev."),), "http://dev.x", False),
        ((("regex", r".*\.ok\.io"),), "https://a.ok.io", True),
        ((("regex", r".*\.ok\.io"),), "https://a.ok.io.evil", False),  # a full match
        ((("exact", "*"),), "https://anything", True),  # a condition matching "*": any
        ((("regex", r"\*"),), "null", True),  # Envoy's cors example spells it so
        ((), "https://app.example", False),
    ],
)
def test_origin_conditions(
    origins: tuple[tuple[str, str], ...], origin: str, allowed: bool
) -> None:
    assert origin_allowed(CorsPolicy(origins=origins), origin) is allowed


@pytest.mark.parametrize(
    ("method", "headers", "verdict"),
    [
        (b"OPTIONS", PREFLIGHT_HEADERS, Verdict.PREFLIGHT),
        (b"OPTIONS", PREFLIGHT_HEADERS[:1], Verdict.ACTUAL),  # no request method: not one
        (b"OPTIONS", [*PREFLIGHT_HEADERS[:1], (b"access-control-request-method", b"")],
         Verdict.ACTUAL),
        (b"options", PREFLIGHT_HEADERS, Verdict.ACTUAL),  # methods are case-sensitive
        (b"GET", PREFLIGHT_HEADERS, Verdict.ACTUAL),
        (b"GET", [], Verdict.NONE),  # no Origin: not a CORS request
        (b"GET", [(b"origin", b"")], Verdict.NONE),
        (b"OPTIONS", [(b"origin", b"https://evil.example"), *PREFLIGHT_HEADERS[1:]],
         Verdict.NONE),  # not allowed: forwarded unchanged
        (b"GET", [(b"origin", b"https://evil.example")], Verdict.NONE),
    ],
)  # fmt: skip
def test_what_the_filter_does(
    method: bytes, headers: list[tuple[bytes, bytes]], verdict: Verdict
) -> None:
    assert classify(POLICY, method, headers)[0] is verdict


def test_a_disabled_policy_or_a_refused_preflight() -> None:
    off = CorsPolicy(origins=(("exact", "*"),), enabled=False)
    assert classify(off, b"OPTIONS", PREFLIGHT_HEADERS) == (Verdict.NONE, b"")
    strict = CorsPolicy(origins=(("exact", "https://x"),), forward_not_matching_preflights=False)
    assert classify(strict, b"OPTIONS", PREFLIGHT_HEADERS)[0] is Verdict.FORBIDDEN
    assert classify(strict, b"GET", PREFLIGHT_HEADERS)[0] is Verdict.NONE


def test_preflight_and_response_headers() -> None:
    origin = b"https://app.example"
    assert preflight_headers(POLICY, origin, PREFLIGHT_HEADERS) == [
        (b"access-control-allow-origin", origin),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-allow-methods", b"GET,PUT"),
        (b"access-control-allow-headers", b"x-token"),
        (b"access-control-max-age", b"600"),
        (b"content-length", b"0"),
    ]
    star = CorsPolicy(origins=(("exact", "*"),), allow_methods="*", allow_headers="*")
    assert preflight_headers(star, origin, PREFLIGHT_HEADERS) == [
        (b"access-control-allow-origin", origin),  # the origin, not "*"
        (b"access-control-allow-methods", b"PUT"),
        (b"access-control-allow-headers", b"x-token, x-other"),
        (b"content-length", b"0"),
    ]
    added = response_headers(POLICY, origin)
    assert added == [
        (b"access-control-allow-origin", origin),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-expose-headers", b"x-trace"),
    ]
    upstream = [(b"content-type", b"text/plain"), (b"access-control-allow-origin", b"*")]
    assert apply(upstream, added) == [(b"content-type", b"text/plain"), *added]


def test_the_route_policy_wins_field_by_field() -> None:
    vhost = CorsPolicy(origins=(("exact", "*"),), allow_methods="GET", max_age="60")
    route = CorsPolicy(allow_methods="PUT", enabled=False)
    merged = merge(route, vhost)
    assert merged == CorsPolicy(
        origins=(("exact", "*"),), allow_methods="PUT", max_age="60", enabled=False
    )
    assert merge(None, vhost) is vhost
    assert merge(route, None) is route


# --- end to end ---------------------------------------------------------------------

NATIVE = """\
services:
  - name: api
    endpoints: ["127.0.0.1:{port}"]
    routes:
      - match: {{prefix: /open}}
        service: api
        cors: {{allow_origins: ["*"], allow_methods: [GET, PUT], max_age: 600}}
      - match: {{prefix: /}}
        service: api
        cors:
          allow_origins: ["https://app.example", {{suffix: .ok.io}}]
          allow_methods: [GET, PUT]
          allow_headers: [x-token]
          expose_headers: [x-trace]
          max_age: 600
          allow_credentials: true
"""

ENVOY = """\
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.\
http_connection_manager.v3.HttpConnectionManager
          stat_prefix: in
          route_config:
            virtual_hosts:
            - name: api
              domains: ["*"]
              cors:
                allow_origin_string_match: [{{exact: "https://app.example"}}, {{suffix: .ok.io}}]
                allow_methods: "GET,PUT"
                allow_headers: x-token
                expose_headers: x-trace
                max_age: "600"
                allow_credentials: true
              routes:
              - match: {{prefix: /open}}
                route:
                  cluster: api
                  cors: {{allow_origin_string_match: [{{prefix: ""}}], allow_credentials: false}}
              - match: {{prefix: /}}
                route: {{cluster: api}}
          http_filters:
          - name: envoy.filters.http.cors
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: api
    load_assignment:
      cluster_name: api
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"""


def _native(port: int) -> Config:
    return load_config_text(NATIVE.format(port=port), {}, source="cors.yaml")


def _envoy(port: int, text: str = ENVOY) -> Config:
    return load_config_text(text.format(port=port), {}, source="envoy.yaml")


@pytest.mark.parametrize("load", [_native, _envoy])
async def test_cors_end_to_end(load: object) -> None:
    async with backend() as b:
        config = load(b.port)  # type: ignore[operator]  # one of the two loaders above
        host = "api.default" if config.source_format == "native" else "api"
        async with run_proxy(config) as p, httpx.AsyncClient(base_url=p.url, trust_env=False) as c:
            # a preflight from an allowed origin: answered here, the backend sees nothing
            pre = await c.options(
                "/x",
                headers={
                    "host": host,
                    "origin": "https://app.example",
                    "access-control-request-method": "PUT",
                },
            )
            assert pre.status_code == 200
            assert pre.headers["access-control-allow-origin"] == "https://app.example"
            assert pre.headers["access-control-allow-methods"] == "GET,PUT"
            assert pre.headers["access-control-allow-headers"] == "x-token"
            assert pre.headers["access-control-max-age"] == "600"
            assert pre.headers["access-control-allow-credentials"] == "true"
            assert pre.content == b""
            assert b.requests == []
            # an actual request from an allowed origin: forwarded, headers added
            ok = await c.get("/x", headers={"host": host, "origin": "https://a.ok.io"})
            assert ok.status_code == 200
            assert ok.headers["access-control-allow-origin"] == "https://a.ok.io"
            assert ok.headers["access-control-expose-headers"] == "x-trace"
            assert ok.headers["access-control-allow-credentials"] == "true"
            assert len(b.requests) == 1
            # a disallowed origin: forwarded unchanged (preflight too), no CORS header
            for method in ("GET", "OPTIONS"):
                no = await c.request(
                    method,
                    "/x",
                    headers={
                        "host": host,
                        "origin": "https://evil.example",
                        "access-control-request-method": "PUT",
                    },
                )
                assert no.status_code == 200
                assert not any(k.startswith("access-control-") for k in no.headers)
                assert no.json()["method"] == method  # the backend answered
            assert len(b.requests) == 3
            # no Origin: not a CORS request
            plain = await c.get("/x", headers={"host": host})
            assert "access-control-allow-origin" not in plain.headers
            # the /open route's own policy: any origin, the route's fields first
            anyone = await c.options(
                "/open",
                headers={
                    "host": host,
                    "origin": "https://evil.example",
                    "access-control-request-method": "GET",
                },
            )
            assert anyone.status_code == 200
            assert anyone.headers["access-control-allow-origin"] == "https://evil.example"
            assert "access-control-allow-credentials" not in anyone.headers
            assert len(b.requests) == 4


async def test_envoy_policies_need_the_filter() -> None:
    """As in Envoy: without envoy.filters.http.cors in http_filters, policies do nothing."""
    no_filter = ENVOY.replace(
        """          - name: envoy.filters.http.cors
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors
""",
        "",
    )
    async with backend() as b:
        config = _envoy(b.port, no_filter)
        assert any("cors" in w for w in config.warnings)
        assert all(r.cors is None for r in config.listeners[0].virtual_hosts[0].routes)
        async with run_proxy(config) as p, httpx.AsyncClient(base_url=p.url, trust_env=False) as c:
            r = await c.options(
                "/x",
                headers={
                    "host": "api",
                    "origin": "https://app.example",
                    "access-control-request-method": "PUT",
                },
            )
            assert "access-control-allow-origin" not in r.headers
            assert len(b.requests) == 1  # forwarded


def test_typed_per_filter_config_policy_replaces_the_cors_fields() -> None:
    text = ENVOY.replace(
        """              - match: {{prefix: /}}
                route: {{cluster: api}}
""",
        """              - match: {{prefix: /}}
                route: {{cluster: api}}
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    allow_origin_string_match: [{{exact: "https://typed.example"}}]
""",
    )
    rules = _envoy(9, text).listeners[0].virtual_hosts[0].routes
    typed = rules[1].cors
    assert typed is not None
    assert typed.origins == (("exact", "https://typed.example"),)
    assert typed.allow_methods == ""  # the virtual host's ``cors`` is not read (Envoy)
    assert rules[0].cors is not None
    assert rules[0].cors.allow_methods == "GET,PUT"


def test_envoy_example_files_load() -> None:
    """Envoy's own cors example: a regex \\* for any origin, filter_enabled 0 % to switch
    a route off, and a route's regex restricting the virtual host's policy."""
    text = (DATA / "envoyproxy__envoy__examples_cors_backend_front-envoy.yaml").read_text()
    rules = load_config_text(text, {}, source="envoy.yaml").listeners[0].virtual_hosts[0].routes
    assert [r.cors is not None and r.cors.enabled for r in rules] == [True, False, True, True]
    restricted = rules[2].cors
    assert restricted is not None
    assert not origin_allowed(restricted, "https://example.com")
    assert origin_allowed(restricted, "https://www.envoyproxy.io")


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("cors: {allow_methods: [GET]}", "cors", "required field 'allow_origins'"),
        ("cors: {allow_origins: [{regex: '('}]}", "allow_origins[0].regex", "regex"),
        ("cors: {allow_origins: ['*'], max_age: -1}", "cors.max_age", ">= 0"),
        ("cors: {allow_origins: ['*'], allow: x}", "cors.allow", "unknown field"),
    ],
)
def test_bad_native_policies_name_the_field(text: str, field: str, words: str) -> None:
    config = textwrap.dedent(
        f"""\
        services:
          - name: api
            endpoints: ["127.0.0.1:9"]
            routes:
              - service: api
                {text}
        """
    )
    with pytest.raises(ConfigError, match=words) as info:
        load_config_text(config, {}, source="r.yaml")
    assert field in info.value.field


def test_envoy_fractional_filter_enabled_is_refused() -> None:
    text = ENVOY.replace(
        '                max_age: "600"\n',
        '                max_age: "600"\n'
        "                filter_enabled: {{default_value: {{numerator: 50}}}}\n",
    )
    with pytest.raises(ConfigError, match="only 0 %") as info:
        _envoy(9, text)
    assert "cors.filter_enabled" in info.value.field


async def test_local_answers_and_refused_preflights() -> None:
    """A direct response gets the headers too; forward_not_matching_preflights: false
    answers a preflight from another origin 403 without the service."""
    text = textwrap.dedent(
        """\
        services:
          - name: api
            endpoints: ["127.0.0.1:{port}"]
            routes:
              - match: {{prefix: /here}}
                direct_response: {{status: 200, body: hi}}
                cors: {{allow_origins: ["https://app.example"], expose_headers: [x-a]}}
              - service: api
                cors:
                  allow_origins: ["https://app.example"]
                  forward_not_matching_preflights: false
        """
    )
    async with backend() as b:
        config = load_config_text(text.format(port=b.port), {}, source="cors.yaml")
        async with run_proxy(config) as p, httpx.AsyncClient(base_url=p.url, trust_env=False) as c:
            here = await c.get(
                "/here", headers={"host": "api.default", "origin": "https://app.example"}
            )
            assert here.text == "hi"
            assert here.headers["access-control-allow-origin"] == "https://app.example"
            assert here.headers["access-control-expose-headers"] == "x-a"
            refused = await c.options(
                "/x",
                headers={
                    "host": "api.default",
                    "origin": "https://evil.example",
                    "access-control-request-method": "GET",
                },
            )
            assert refused.status_code == 403
            assert "access-control-allow-origin" not in refused.headers
            other = await c.get(
                "/x", headers={"host": "api.default", "origin": "https://evil.example"}
            )
            assert other.status_code == 200  # only preflights are refused
            assert len(b.requests) == 1
