"""Route actions: rewrites, header edits, direct responses and redirects.

Pure tables for ``routing/actions.py`` and ``routing/header_edits.py`` (Envoy's
documented examples among them), then each action end to end through the
proxy on loopback (the test backend echoes the request it received), then the
native config's refusals, each naming its field.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import replace
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from nodeproxy.config import load_config_text
from nodeproxy.config.model import (
    ClusterConfig,
    Config,
    DirectResponse,
    EndpointConfig,
    HeaderMutation,
    ListenerConfig,
    Redirect,
    RouteMatch,
    RouteRule,
    VirtualHost,
)
from nodeproxy.errors import ConfigError
from nodeproxy.routing.actions import (
    auto_host,
    check_substitution,
    compile_actions,
    redirect_location,
    swap_prefix,
)
from nodeproxy.routing.authority import parse_authority
from nodeproxy.routing.header_edits import (
    HeaderEdits,
    check_header_name,
    check_header_value,
    client_source,
)
from nodeproxy.routing.router import Router
from tests.helpers.backends import backend, raw_request, run_proxy

PREFIX = RouteMatch(prefix="/api/")


# --- pure: path rewrites ------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "replacement", "target", "expected"),
    [
        (PREFIX, "/", "/api/users?x=1", "/users?x=1"),
        (PREFIX, "/v2/", "/api/", "/v2/"),
        (RouteMatch(prefix="/prefix"), "/", "/prefix/etc", "//etc"),  # Envoy's trailing-slash note
        (RouteMatch(prefix="/prefix/"), "/", "/prefix/etc", "/etc"),
        (RouteMatch(path="/old"), "/new", "/old?q=2", "/new?q=2"),
        (RouteMatch(regex="/item/[0-9]+"), "/item", "/item/42?full=1", "/item?full=1"),
        (RouteMatch(), "/base/", "/x", "/base/x"),  # no path condition: "/" matched
        (RouteMatch(prefix="/API/", case_sensitive=False), "/", "/api/x", "/x"),
        (PREFIX, "", "/api/x", "/x"),  # the result is always origin-form
    ],
)
def test_prefix_rewrite_swaps_what_the_route_matched(
    match: RouteMatch, replacement: str, target: str, expected: str
) -> None:
    assert swap_prefix(match, replacement, target) == expected


def _regex_rule(pattern: str, substitution: str) -> RouteRule:
    return RouteRule(
        match=RouteMatch(prefix="/"), cluster="c", regex_rewrite=(pattern, substitution)
    )


@pytest.mark.parametrize(
    ("pattern", "substitution", "target", "expected"),
    [  # Envoy's own examples (RouteAction.regex_rewrite), plus the query kept aside
        (
            r"^/service/([^/]+)(/.*)$",
            r"\2/instance/\1",
            "/service/foo/v1/api",
            "/v1/api/instance/foo",
        ),
        ("one", "two", "/xxx/one/yyy/one/zzz", "/xxx/two/yyy/two/zzz"),
        (r"^(.*?)one(.*)$", r"\1two\2", "/xxx/one/yyy/one/zzz", "/xxx/two/yyy/one/zzz"),
        ("(?i)/xxx/", "/yyy/", "/aaa/XxX/bbb", "/aaa/yyy/bbb"),
        ("one", "two", "/one?one=one", "/two?one=one"),  # the path only, never the query
        (r"^/a(/.*)$", r"\0\\\1", "/a/b", "/a/b\\/b"),  # \0 is the whole match, \\ a backslash
        ("^/strip", "", "/strip", "/"),  # an empty result is still a path
    ],
)
def test_regex_rewrite_with_re2_substitutions(
    pattern: str, substitution: str, target: str, expected: str
) -> None:
    actions = compile_actions(_regex_rule(pattern, substitution))
    assert actions is not None
    assert actions.path(target) == expected


@pytest.mark.parametrize(
    ("pattern", "substitution", "words"),
    [
        ("(a)", r"\2", "uses \\2 but the pattern has 1 group"),
        ("a", r"\n", "invalid escape \\n"),
        ("(", "x", "invalid regex"),
    ],
)
def test_bad_substitutions_are_refused(pattern: str, substitution: str, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        check_substitution(pattern, substitution)


# --- pure: redirects ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("redirect", "authority", "target", "location"),
    [
        (Redirect(), "svc:8080", "/a?b=1", "http://svc:8080/a?b=1"),
        (Redirect(scheme="https"), "svc:80", "/a", "https://svc/a"),  # old scheme's default port
        (Redirect(scheme="https"), "svc:8080", "/a", "https://svc:8080/a"),
        (Redirect(scheme="http"), "svc:80", "/a", "http://svc:80/a"),  # scheme unchanged: kept
        (Redirect(port=8443), "svc:8080", "/a", "http://svc:8443/a"),
        (Redirect(host="example.com"), "svc:8080", "/a", "http://example.com/a"),
        (Redirect(host="example.com", port=81), "svc", "/a", "http://example.com:81/a"),
        (Redirect(scheme="https", port=443), "[::1]:8080", "/", "https://[::1]:443/"),
        (Redirect(scheme="https"), "[::1]:80", "/", "https://[::1]/"),
        (Redirect(path="/new"), "svc", "/old?x=1", "http://svc/new?x=1"),
        (Redirect(path="/new", strip_query=True), "svc", "/old?x=1", "http://svc/new"),
        (Redirect(path="/new?y=2", strip_query=True), "svc", "/old?x=1", "http://svc/new?y=2"),
        (Redirect(prefix_rewrite="/v2/"), "svc", "/api/a?x=1", "http://svc/v2/a?x=1"),
        (Redirect(strip_query=True), "svc", "/api/a?x=1", "http://svc/api/a"),
    ],
)
def test_redirect_location_as_envoy_builds_it(
    redirect: Redirect, authority: str, target: str, location: str
) -> None:
    got = redirect_location(redirect, PREFIX, scheme="http", authority=authority, target=target)
    assert got == location


def test_local_answers_carry_framing_and_response_edits() -> None:
    rule = RouteRule(
        match=PREFIX,
        direct_response=DirectResponse(200, "ok\n"),
        response_headers_to_add=(HeaderMutation("x-by", "%DOWNSTREAM_REMOTE_ADDRESS%"),),
    )
    actions = compile_actions(rule)
    assert actions is not None
    assert actions.local
    status, headers, body = actions.local_response(
        scheme="http", authority="svc", target="/api/", source="127.0.0.5:4321"
    )
    assert (status, body) == (200, b"ok\n")
    assert headers == [
        (b"content-type", b"text/plain"),
        (b"content-length", b"3"),
        (b"x-by", b"127.0.0.5:4321"),
    ]
    empty = compile_actions(RouteRule(match=PREFIX, direct_response=DirectResponse(204)))
    assert empty is not None
    assert empty.local_response(scheme="http", authority="s", target="/", source="a:1")[1] == []


# --- pure: header edits -------------------------------------------------------------


def test_header_edits_remove_first_then_add_in_order() -> None:
    edits = HeaderEdits.build(
        [
            HeaderMutation("x-env", "prod", append=False),  # replaces the client's
            HeaderMutation("x-tag", "a"),
            HeaderMutation("x-tag", "b"),  # append: a second line
            HeaderMutation("x-empty", ""),  # Envoy adds nothing for an empty value
            HeaderMutation("X-Debug", "re-added"),  # removed first, then added
            HeaderMutation("x-src", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% 100%%"),
        ],
        ["x-debug", "x-gone"],
    )
    assert edits is not None
    headers = [
        (b"host", b"svc"),
        (b"x-env", b"dev"),
        (b"x-debug", b"1"),
        (b"x-gone", b"1"),
        (b"x-env", b"dev2"),
    ]
    assert edits.apply(headers, "::1:5555") == [
        (b"host", b"svc"),
        (b"x-env", b"prod"),
        (b"x-tag", b"a"),
        (b"x-tag", b"b"),
        (b"x-debug", b"re-added"),
        (b"x-src", b"::1 100%"),
    ]
    assert HeaderEdits.build([], []) is None


@pytest.mark.parametrize(
    "name",
    [
        "host", "Content-Length", "transfer-encoding", "connection", "keep-alive", "te",
        "upgrade", "trailer", "proxy-connection", "proxy-authorization",
        "x-forwarded-client-cert", "x-nodeproxy-identity", "X-NodeProxy-Anything",
    ],
)  # fmt: skip
def test_names_the_proxy_writes_itself_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="cannot be added or removed by a route"):
        check_header_name(name)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("%REQ(x-a?x-b)%", "unsupported variable '%REQ(x-a?x-b)%'"),
        ("%UPSTREAM_HOST%", "unsupported variable"),
        ("50%", "write %% for a percent sign"),
        (" padded", "no leading or trailing space"),
        ("a\r\nb", "invalid header value"),
        ("snow\u2603", "invalid header value"),
    ],
)
def test_bad_header_values_are_refused(value: str, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        check_header_value(value)


@pytest.mark.parametrize(
    ("host", "port", "ip_endpoints", "expected"),
    [
        ("backend.example", 8080, True, b"backend.example"),  # Envoy: the DNS name, no port
        ("backend.example", 8080, False, b"backend.example"),
        ("10.0.0.7", 8080, True, b"10.0.0.7:8080"),
        ("::1", 80, True, b"[::1]:80"),
        ("10.0.0.7", 8080, False, None),  # Envoy leaves Host toward a static IP host
    ],
)
def test_auto_host(host: str, port: int, ip_endpoints: bool, expected: bytes | None) -> None:
    assert auto_host(host, port, ip_endpoints=ip_endpoints) == expected


def test_a_rule_without_actions_compiles_to_nothing() -> None:
    assert compile_actions(RouteRule(match=PREFIX, cluster="c")) is None


def test_router_decides_local_rules_without_a_cluster() -> None:
    rules = (
        RouteRule(match=RouteMatch(path="/healthz"), direct_response=DirectResponse(200, "ok")),
        RouteRule(match=RouteMatch(prefix="/old/"), redirect=Redirect(prefix_rewrite="/new/")),
        RouteRule(match=RouteMatch(prefix="/"), cluster="svc"),
    )
    vh = VirtualHost("svc", ("svc.default",), rules)
    router = Router(ListenerConfig("l", virtual_hosts=(vh,)))
    a = parse_authority("svc")
    health = router.route(a, "svc", "/healthz", [])
    assert health.actions is not None
    assert (health.actions.local, health.cluster) == (True, "")
    old = router.route(a, "svc", "/old/x", [])
    assert old.actions is not None
    assert old.actions.redirect == Redirect(prefix_rewrite="/new/")
    plain = router.route(a, "svc", "/x", [])
    assert (plain.cluster, plain.actions) == ("svc", None)


# --- end to end ---------------------------------------------------------------------


def _config(port: int, *rules: RouteRule, endpoint_host: str = "127.0.0.1") -> Config:
    vh = VirtualHost("api", ("api.default",), rules)
    cluster = ClusterConfig("api", endpoints=(EndpointConfig(endpoint_host, port),))
    listener = ListenerConfig("outbound", host="127.0.0.1", port=0, virtual_hosts=(vh,))
    return Config(listeners=(listener,), clusters={"api": cluster})


def _seen(body: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in body["headers"]:
        out.setdefault(k, []).append(v)
    return out


async def test_prefix_and_regex_rewrites_reach_the_upstream() -> None:
    async with backend() as b:
        config = _config(
            b.port,
            RouteRule(match=RouteMatch(prefix="/v1/"), cluster="api", prefix_rewrite="/"),
            RouteRule(
                match=RouteMatch(prefix="/service/"),
                cluster="api",
                regex_rewrite=(r"^/service/([^/]+)(/.*)$", r"\2/instance/\1"),
            ),
        )
        async with run_proxy(config) as p, httpx.AsyncClient(proxy=p.url, trust_env=False) as c:
            r = await c.get("http://api.default/v1/users?id=7")
            assert r.json()["target"] == "/users?id=7"
            r = await c.get("http://api.default/service/foo/v1/api?q=one")
            assert r.json()["target"] == "/v1/api/instance/foo?q=one"


async def test_host_rewrite_and_auto_host_rewrite() -> None:
    async with backend() as b:
        config = _config(
            b.port,
            RouteRule(match=RouteMatch(prefix="/lit"), cluster="api", host_rewrite="api.internal"),
            RouteRule(match=RouteMatch(prefix="/auto"), cluster="api", auto_host_rewrite=True),
        )
        async with run_proxy(config) as p, httpx.AsyncClient(proxy=p.url, trust_env=False) as c:
            assert _seen((await c.get("http://api.default/lit")).json())["host"] == ["api.internal"]
            auto = _seen((await c.get("http://api.default/auto")).json())["host"]
            assert auto == [f"127.0.0.1:{b.port}"]
        envoy = replace(config, source_format="envoy")
        async with run_proxy(envoy) as p, httpx.AsyncClient(proxy=p.url, trust_env=False) as c:
            auto = _seen((await c.get("http://api.default/auto")).json())["host"]
            assert auto == ["api.default"]  # Envoy: a static IP host leaves Host alone
        dns = _config(
            b.port, *config.listeners[0].virtual_hosts[0].routes, endpoint_host="localhost"
        )
        async with run_proxy(dns) as p, httpx.AsyncClient(proxy=p.url, trust_env=False) as c:
            assert _seen((await c.get("http://api.default/auto")).json())["host"] == ["localhost"]


async def test_request_and_response_header_edits() -> None:
    async with backend() as b:
        rule = RouteRule(
            match=RouteMatch(prefix="/"),
            cluster="api",
            request_headers_to_add=(
                HeaderMutation("x-env", "prod", append=False),
                HeaderMutation("x-tag", "a"),
                HeaderMutation("x-client", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
            ),
            request_headers_to_remove=("x-debug", "x-forwarded-for"),
            response_headers_to_add=(HeaderMutation("x-served-by", "nodeproxy"),),
            response_headers_to_remove=("content-type",),
        )
        config = _config(b.port, rule)
        async with run_proxy(config) as p, httpx.AsyncClient(proxy=p.url, trust_env=False) as c:
            r = await c.get(
                "http://api.default/x",
                headers={"x-env": "dev", "x-tag": "client", "x-debug": "1"},
            )
        seen = _seen(r.json())
        assert seen["x-env"] == ["prod"]
        assert seen["x-tag"] == ["client", "a"]
        assert seen["x-client"] == ["127.0.0.1"]
        assert "x-debug" not in seen
        assert "x-forwarded-for" not in seen  # the route removes what the proxy added
        assert seen["host"] == ["api.default"]
        assert r.headers["x-served-by"] == "nodeproxy"
        assert "content-type" not in r.headers


async def test_direct_response_answers_without_an_upstream() -> None:
    async with backend() as b:
        rule = RouteRule(
            match=RouteMatch(path="/healthz"),
            direct_response=DirectResponse(200, "ok\n"),
            response_headers_to_add=(HeaderMutation("x-by", "proxy"),),
        )
        async with run_proxy(_config(b.port, rule)) as p:
            with capture_logs() as logs:
                async with httpx.AsyncClient(proxy=p.url, trust_env=False) as c:
                    r1 = await c.get("http://api.default/healthz")
                    r2 = await c.post("http://api.default/healthz", content=b"ignored body")
                    head = await c.head("http://api.default/healthz")
            assert b.requests == []
        for r in (r1, r2):
            assert (r.status_code, r.text) == (200, "ok\n")
            assert r.headers["content-type"] == "text/plain"
            assert r.headers["x-by"] == "proxy"
        assert (head.status_code, head.content) == (200, b"")
        assert head.headers["content-length"] == "3"
        access = [e for e in logs if e["event"] == "access"]
        assert [(e["status"], e["cluster"], e["upstream"]) for e in access] == [
            (200, None, None)
        ] * 3


async def test_direct_response_keeps_the_connection_alive() -> None:
    async with backend() as b:
        rule = RouteRule(match=RouteMatch(prefix="/"), direct_response=DirectResponse(503, "down"))
        async with run_proxy(_config(b.port, rule)) as p:
            req = b"GET /a HTTP/1.1\r\nHost: api.default\r\n\r\n"
            last = b"GET /b HTTP/1.1\r\nHost: api.default\r\nConnection: close\r\n\r\n"
            out = await raw_request(p.port, req + req + last)
        assert out.count(b"HTTP/1.1 503 Service Unavailable\r\n") == 3
        assert out.endswith(b"down")


async def test_direct_response_closes_when_the_body_is_still_coming() -> None:
    async with backend() as b:
        rule = RouteRule(match=RouteMatch(prefix="/"), direct_response=DirectResponse(202))
        async with run_proxy(_config(b.port, rule)) as p:
            head = b"POST / HTTP/1.1\r\nHost: api.default\r\nContent-Length: 100000\r\n\r\n"
            out = await raw_request(p.port, head + b"x" * 10)
        assert out.startswith(b"HTTP/1.1 202 Accepted\r\n")
        assert b"connection: close\r\n" in out.lower()


async def test_redirects() -> None:
    async with backend() as b:
        rules = (
            RouteRule(match=RouteMatch(prefix="/old/"), redirect=Redirect(prefix_rewrite="/new/")),
            RouteRule(
                match=RouteMatch(prefix="/secure"),
                redirect=Redirect(scheme="https", host="example.com", response_code=308),
            ),
            RouteRule(
                match=RouteMatch(prefix="/moved"),
                redirect=Redirect(path="/here", strip_query=True, response_code=302),
            ),
        )
        async with run_proxy(_config(b.port, *rules)) as p:
            async with httpx.AsyncClient(proxy=p.url, trust_env=False) as c:
                r1 = await c.get("http://api.default:8080/old/a?x=1")
                r2 = await c.post("http://api.default/secure/pay?amount=3", content=b"{}")
                r3 = await c.get("http://api.default/moved?x=1")
            assert b.requests == []
        assert (r1.status_code, r1.headers["location"]) == (
            301,
            "http://api.default:8080/new/a?x=1",
        )
        assert (r2.status_code, r2.headers["location"]) == (
            308,
            "https://example.com/secure/pay?amount=3",
        )
        assert (r3.status_code, r3.headers["location"]) == (302, "http://api.default/here")
        assert (r1.content, r1.headers["content-length"]) == (b"", "0")


async def test_redirect_scheme_and_variables_follow_the_listener_forwarding_rules() -> None:
    """The native listener keeps an incoming x-forwarded-proto (a redirect stays https);
    with Envoy's rule (edge, no trusted hop) it is the connection's scheme. A listener
    that reads the client from x-forwarded-for gives that client to the variables."""
    async with backend() as b:
        rules = (
            RouteRule(match=RouteMatch(path="/"), redirect=Redirect(path="/login")),
            RouteRule(
                match=RouteMatch(prefix="/api"),
                cluster="api",
                request_headers_to_add=(HeaderMutation("x-real", "%DOWNSTREAM_REMOTE_ADDRESS%"),),
            ),
        )
        native = _config(b.port, *rules)
        edge = replace(native.listeners[0], trust_forwarded_proto=False)
        behind = replace(native.listeners[0], use_remote_address=False)
        cases = (
            (native, "https", "127.0.0.1:"),
            (replace(native, listeners=(edge,)), "http", "127.0.0.1:"),
            (replace(native, listeners=(behind,)), "https", "10.9.8.7:0"),
        )
        sent = {"x-forwarded-proto": "https", "x-forwarded-for": "10.9.8.7"}
        for cfg, scheme, real in cases:
            async with run_proxy(cfg) as p, httpx.AsyncClient(proxy=p.url, trust_env=False) as c:
                r = await c.get("http://api.default/", headers=sent)
                seen = _seen((await c.get("http://api.default/api", headers=sent)).json())
            assert r.headers["location"] == f"{scheme}://api.default/login"
            assert seen["x-real"][0].startswith(real)


def test_client_source() -> None:
    assert client_source("127.0.0.1:5000", None) == "127.0.0.1:5000"
    assert client_source("127.0.0.1:5000", "127.0.0.1") == "127.0.0.1:5000"
    assert client_source("127.0.0.1:5000", "10.0.0.1") == "10.0.0.1:0"


def test_explain_reports_the_action() -> None:
    from nodeproxy.runtime import Runtime
    from nodeproxy.traffic.explain import explain

    rules = (
        RouteRule(match=RouteMatch(path="/healthz"), direct_response=DirectResponse(200, "ok")),
        RouteRule(match=RouteMatch(prefix="/v1/"), cluster="api", prefix_rewrite="/"),
    )
    runtime = Runtime(_config(9, *rules))
    local = explain(runtime, authority="api.default", path="/healthz", now=0.0)
    assert local["decision"] == "200 direct_response: answered by the proxy, no upstream"
    assert local["response"]["status"] == 200
    rewritten = explain(runtime, authority="api.default", path="/v1/x?y=1", now=0.0)
    assert rewritten["route"]["upstream_target"] == "/x?y=1"


# --- native config ------------------------------------------------------------------


def _load(routes: str) -> Config:
    text = textwrap.dedent(
        """\
        services:
          - name: api
            endpoints: ["127.0.0.1:9"]
            routes:
        """
    ) + textwrap.indent(textwrap.dedent(routes), "      ")
    return load_config_text(text, {}, source="r.yaml")


def test_native_route_actions_load_into_the_model() -> None:
    config = _load(
        """\
        - match: {path: /healthz}
          direct_response: {status: 200, body: "ok"}
          response_headers_to_add: [{name: x-by, value: "%DOWNSTREAM_REMOTE_ADDRESS%"}]
        - match: {prefix: /old/}
          redirect: {scheme: https, host: example.com, port: 8443, prefix_rewrite: /new/,
                     response_code: 307, strip_query: true}
        - match: {prefix: /v1/}
          service: api
          prefix_rewrite: /
          host_rewrite: api.internal
          request_headers_to_add: [{name: X-Env, value: prod, append: false}]
          request_headers_to_remove: [x-debug]
          response_headers_to_remove: [server]
        - match: {prefix: /}
          service: api
          regex_rewrite: {pattern: "^/a/(.*)$", substitution: "/b/\\\\1"}
          auto_host_rewrite: true
        """
    )
    health, old, v1, rest = config.listeners[0].virtual_hosts[0].routes
    assert (health.cluster, health.direct_response) == (None, DirectResponse(200, "ok"))
    assert health.response_headers_to_add == (
        HeaderMutation("x-by", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    )
    assert old.redirect == Redirect("https", "example.com", 8443, None, "/new/", 307, True)
    assert (v1.cluster, v1.prefix_rewrite, v1.host_rewrite) == ("api", "/", "api.internal")
    assert v1.request_headers_to_add == (HeaderMutation("x-env", "prod", append=False),)
    assert v1.request_headers_to_remove == ("x-debug",)
    assert v1.response_headers_to_remove == ("server",)
    assert (rest.regex_rewrite, rest.auto_host_rewrite) == (("^/a/(.*)$", "/b/\\1"), True)


BAD_ROUTES = [
    ("- {service: api, direct_response: {status: 200}}", "routes[0]", "needs exactly one of"),
    ("- {direct_response: {status: 700}}", "direct_response.status", "200-599"),
    ("- {direct_response: {status: 101}}", "direct_response.status", "200-599"),
    ("- {direct_response: {status: 204, body: x}}", "direct_response.body", "has no body"),
    ("- {direct_response: {body: x}}", "direct_response", "missing required field 'status'"),
    (f"- {{direct_response: {{status: 200, body: {'x' * 4097}}}}}", "direct_response.body",
     "over 4096 bytes"),
    ("- {direct_response: {status: 200}, timeout: 1s}", "timeout", "only a route that forwards"),
    ("- {redirect: {}, retries: {}}", "retries", "only a route that forwards"),
    ("- {redirect: {}, prefix_rewrite: /x}", "prefix_rewrite", "only a route that forwards"),
    ("- {redirect: {}, request_headers_to_add: [{name: a, value: b}]}",
     "request_headers_to_add", "only a route that forwards"),
    ("- {redirect: {response_code: 305}}", "redirect.response_code", "301, 302, 303, 307, 308"),
    ("- {redirect: {path: /a, prefix_rewrite: /b}}", "redirect.prefix_rewrite", "not both"),
    ("- {redirect: {port: 0}}", "redirect.port", "1"),
    ("- {redirect: {host: 'a b'}}", "redirect.host", "invalid host"),
    ("- {redirect: {scheme: '1x'}}", "redirect", "invalid scheme"),
    ("- {redirect: {path: nope}}", "redirect.path", "must start with '/'"),
    ("- {service: api, prefix_rewrite: /a, regex_rewrite: {pattern: a, substitution: b}}",
     "regex_rewrite", "not both"),
    ("- {service: api, prefix_rewrite: api}", "prefix_rewrite", "must start with '/'"),
    ("- {service: api, regex_rewrite: {pattern: '(', substitution: b}}",
     "regex_rewrite.pattern", "invalid regex"),
    ("- {service: api, regex_rewrite: {pattern: a, substitution: '\\2'}}",
     "regex_rewrite.substitution", "pattern has 0 group"),
    ("- {service: api, host_rewrite: a, auto_host_rewrite: true}", "auto_host_rewrite",
     "one of host_rewrite or auto_host_rewrite"),
    ("- {service: api, host_rewrite: 'a/b'}", "host_rewrite", "invalid host"),
    ("- {service: api, request_headers_to_add: [{name: host, value: x}]}",
     "request_headers_to_add[0].name", "set it with host_rewrite"),
    ("- {service: api, request_headers_to_add: [{name: content-length, value: '1'}]}",
     "request_headers_to_add[0].name", "the proxy writes it itself"),
    ("- {service: api, request_headers_to_remove: [x-nodeproxy-identity]}",
     "request_headers_to_remove[0]", "cannot be added or removed"),
    ("- {service: api, request_headers_to_remove: [x-forwarded-client-cert]}",
     "request_headers_to_remove[0]", "cannot be added or removed"),
    ("- {service: api, response_headers_to_add: [{name: transfer-encoding, value: chunked}]}",
     "response_headers_to_add[0].name", "cannot be added or removed"),
    ("- {service: api, response_headers_to_remove: [connection]}",
     "response_headers_to_remove[0]", "cannot be added or removed"),
    ("- {service: api, response_headers_to_add: [{name: x-a, value: '%START_TIME%'}]}",
     "response_headers_to_add[0].value", "unsupported variable '%START_TIME%'"),
    ("- {service: api, response_headers_to_add: [{name: x-a, value: '50%'}]}",
     "response_headers_to_add[0].value", "write %% for a percent sign"),
    ("- {service: api, response_headers_to_add: [{name: 'x a', value: b}]}",
     "response_headers_to_add[0].name", "invalid header name"),
    ("- {service: api, response_headers_to_add: [{name: x-a}]}",
     "response_headers_to_add[0]", "missing required field 'value'"),
]  # fmt: skip


@pytest.mark.parametrize(("routes", "field", "words"), BAD_ROUTES, ids=[b[2] for b in BAD_ROUTES])
def test_bad_route_actions_name_the_field(routes: str, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(routes)
    where = "services[0].routes[0]" + ("" if field == "routes[0]" else f".{field}")
    assert (info.value.field, info.value.line) == (where, 5)
    assert words in info.value.message, info.value.message


def test_local_rules_built_by_hand_are_checked_too() -> None:
    with pytest.raises(ValueError, match="has no service"):
        compile_actions(RouteRule(match=PREFIX, cluster="c", direct_response=DirectResponse(200)))
    with pytest.raises(ValueError, match="request_headers_to_add"):
        compile_actions(
            RouteRule(
                match=PREFIX,
                request_headers_to_add=(HeaderMutation("host", "x"),),
                cluster="c",
            )
        )


ENVOY_HOST_EDIT = """\
static_resources:
  listeners:
  - name: ingress
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.\
http_connection_manager.v3.HttpConnectionManager
          stat_prefix: in
          route_config:
            virtual_hosts:
            - name: web
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: web}
                request_headers_to_add:
                - header: {key: host, value: other.example}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: web
    load_assignment:
      cluster_name: web
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}
"""


def test_every_loaded_rule_is_checked_whatever_the_format() -> None:
    """A rule the data path would refuse is a ConfigError at load, never a crash at start."""
    with pytest.raises(ConfigError, match="set it with host_rewrite") as info:
        load_config_text(ENVOY_HOST_EDIT, {}, source="envoy.yaml")
    assert "routes[0]" in info.value.field
