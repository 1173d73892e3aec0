"""Envoy fields that used to be refused and now load, each with Envoy's behaviour:
``direct_response.body.filename``, ``match.grpc``, the local rate limit's
``response_headers_to_add``, ``%REQ()%``/``%RESPONSE_CODE%`` in header edits, and a
health check's ``service_name`` / ``service_name_matcher``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml

from nodeproxy.config.model import Config, DirectResponse, EndpointConfig, HeaderMutation
from nodeproxy.errors import ConfigError
from nodeproxy.resilience.health import HealthCheckConfig, passes
from nodeproxy.routing.header_edits import Header, HeaderEdits
from nodeproxy.routing.match import grpc_ok
from nodeproxy.upstream.health_check import probe
from tests.helpers.backends import backend, run_proxy, serving
from tests.helpers.envoy_docs import bootstrap, cluster, load
from tests.helpers.replicas import Replica, keep_alive, replicas

HCM = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
ROUTE = HCM + ".route_config.virtual_hosts[0].routes[0]"
CLUSTER = "static_resources.clusters[0]"


def rule(c: Config) -> Any:
    return c.listeners[0].virtual_hosts[0].routes[0]


def body_file(path: str) -> dict[str, Any]:
    return {"route": None, "direct_response": {"status": 200, "body": {"filename": path}}}


# --- direct_response.body.filename ----------------------------------------------------


def test_a_body_file_is_read_at_load(tmp_path: Path) -> None:
    (tmp_path / "page.txt").write_text("hello from a file\n")
    c = load(bootstrap(route=body_file(str(tmp_path / "page.txt"))))
    assert rule(c).direct_response == DirectResponse(200, "hello from a file\n")


def test_a_relative_body_file_is_read_from_the_working_directory_as_envoy_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lorem.txt").write_text("lorem")
    monkeypatch.chdir(tmp_path)
    assert rule(load(bootstrap(route=body_file("./lorem.txt")))).direct_response.body == "lorem"


BAD_BODY_FILES = [
    ("missing", None, "cannot read"),
    ("big", b"x" * 4097, "over 4096 bytes"),
    ("binary", b"\xff\xfe", "not UTF-8"),
]


@pytest.mark.parametrize(
    ("name", "data", "words"), BAD_BODY_FILES, ids=[b[0] for b in BAD_BODY_FILES]
)
def test_a_body_file_that_cannot_be_served_is_refused_naming_the_field(
    tmp_path: Path, name: str, data: bytes | None, words: str
) -> None:
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(ConfigError) as err:
        load(bootstrap(route=body_file(str(path))))
    assert err.value.field == ROUTE + ".direct_response.body.filename"
    assert words in err.value.message


def test_a_body_file_of_exactly_4096_bytes_loads(tmp_path: Path) -> None:
    (tmp_path / "max").write_bytes(b"y" * 4096)
    assert (
        len(rule(load(bootstrap(route=body_file(str(tmp_path / "max"))))).direct_response.body)
        == 4096
    )


# --- match.grpc ---------------------------------------------------------------------------

GRPC_CONTENT_TYPES = [
    ([(b"content-type", b"application/grpc")], True),
    ([(b"content-type", b"application/grpc+proto")], True),
    ([(b"content-type", b"application/grpc+json")], True),
    ([(b"content-type", b"application/grpc-web")], False),
    ([(b"content-type", b"application/grpc-web-text")], False),
    ([(b"content-type", b"application/json")], False),
    ([(b"content-type", b"Application/gRPC")], False),  # Envoy compares case-sensitively
    ([(b"accept", b"application/grpc")], False),
    ([], False),
]


@pytest.mark.parametrize(("headers", "want"), GRPC_CONTENT_TYPES)
def test_what_envoy_calls_a_grpc_request(headers: list[tuple[bytes, bytes]], want: bool) -> None:
    assert grpc_ok(headers) is want


def test_match_grpc_loads_onto_the_route_match() -> None:
    assert rule(load(bootstrap(match={"grpc": {}}))).match.grpc is True
    assert rule(load(bootstrap())).match.grpc is False


async def test_a_grpc_route_takes_only_grpc_requests() -> None:
    grpc, other = Replica("grpc"), Replica("other")
    async with replicas(grpc, other):
        routes = [
            {"match": {"prefix": "/", "grpc": {}}, "route": {"cluster": "a"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "b"}},
        ]
        config = load(
            bootstrap(
                ports=(grpc.port,), vhost={"routes": routes}, clusters=(cluster("b", other.port),)
            )
        )
        async with run_proxy(config) as p, keep_alive(p.port) as c:
            picks = []
            for ct in ("application/grpc", "application/grpc+proto", "application/grpc-web", None):
                headers: list[tuple[str, str]] = [] if ct is None else [("content-type", ct)]
                picks.append((await c.get("x", "/svc/Call", headers))[1]["x-replica"])
    assert picks == ["grpc", "grpc", "other", "other"]


# --- %REQ(name)% and %RESPONSE_CODE% in header edits ---------------------------------

REQUEST = [(b"host", b"svc"), (b"x-in", b"one"), (b"x-in", b"two"), (b"x-gone", b"g")]
VARIABLE_EDITS = [
    # (value, request edit adds, response edit (status 503, the request above) adds)
    ("%REQ(x-in)%", b"one", b"one"),  # the first value, as Envoy's header formatter
    ("%REQ(X-In)%", b"one", b"one"),  # names are case-insensitive
    ("%REQ(x-absent)%", None, None),  # "" when absent: no header at all
    ("%REQ(x-gone)%", None, b"g"),  # a request edit reads after its removals
    ("%REQ(x-new)%", None, None),  # ... and before its own additions
    ("id=%REQ(x-in)%;%%", b"id=one;%", b"id=one;%"),
    ("%RESPONSE_CODE%", None, b"503"),  # "" in a request edit: no response yet
    ("%RESPONSE_CODE%/%REQ(x-in)%", b"/one", b"503/one"),
]


@pytest.mark.parametrize(("value", "on_request", "on_response"), VARIABLE_EDITS)
def test_header_value_variables_as_envoy_formats_them(
    value: str, on_request: bytes | None, on_response: bytes | None
) -> None:
    edits = HeaderEdits.build(
        [HeaderMutation("x-out", value), HeaderMutation("x-new", "n")], ["x-gone"]
    )
    assert edits is not None
    req = dict(edits.apply(REQUEST, "10.0.0.1:5"))
    assert req.get(b"x-out") == on_request
    response: list[Header] = [(b"content-length", b"0")]
    resp = dict(edits.for_request(REQUEST).apply(response, "10.0.0.1:5", 503))
    assert resp.get(b"x-out") == on_response


def test_edits_without_a_request_variable_are_not_copied_per_request() -> None:
    edits = HeaderEdits.build(
        [HeaderMutation("x-a", "%RESPONSE_CODE% %DOWNSTREAM_REMOTE_ADDRESS%")], []
    )
    assert edits is not None
    assert not edits.reads_request
    assert edits.for_request(REQUEST) is edits


@pytest.mark.parametrize(
    "value", ["%REQ(x-a?x-b)%", "%REQ(x-a):10%", "%REQ()%", "%REQ(x a)%", "%RESP(x-a)%"]
)
def test_other_formatter_forms_are_refused_naming_the_field(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(
            bootstrap(vhost={"response_headers_to_add": [{"header": {"key": "x", "value": value}}]})
        )
    assert err.value.field.endswith("response_headers_to_add[0].header.value")
    assert "unsupported variable" in err.value.message


def test_a_local_answer_cannot_read_the_request_in_its_response_edits() -> None:
    edit = {"header": {"key": "x", "value": "%REQ(x-a)%"}}
    route = {"route": None, "direct_response": {"status": 200}, "response_headers_to_add": [edit]}
    with pytest.raises(ConfigError, match="not supported on a direct_response"):
        load(bootstrap(route=route))


async def test_request_and_response_edits_read_the_request_and_the_status() -> None:
    def add(key: str, value: str) -> dict[str, Any]:
        return {"header": {"key": key, "value": value}}

    async with backend() as b:
        config = load(
            bootstrap(
                ports=(b.port,),
                route={
                    "request_headers_to_add": [
                        add("x-copy", "%REQ(x-b3-traceid)%"),
                        add("x-rc", "%RESPONSE_CODE%"),
                    ]
                },
                vhost={
                    "response_headers_to_add": [
                        add("x-b3-traceid", "%REQ(x-b3-traceid)%"),
                        add("x-copied", "%REQ(x-copy)%"),
                        add("x-code", "code %RESPONSE_CODE%"),
                    ]
                },
            )
        )
        async with (
            run_proxy(config) as p,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{p.port}") as c,
        ):
            traced = await c.get("/status/201", headers={"x-b3-traceid": "abc"})
            plain = await c.get("/status/404")
    seen = dict(traced.json()["headers"])
    assert seen["x-copy"] == "abc"
    assert "x-rc" not in seen  # no response yet: no header
    assert traced.headers["x-b3-traceid"] == "abc"
    assert traced.headers["x-copied"] == "abc"  # the request as sent upstream
    assert traced.headers["x-code"] == "code 201"
    assert "x-b3-traceid" not in plain.headers
    assert "x-copied" not in plain.headers
    assert plain.headers["x-code"] == "code 404"


# --- local_ratelimit response_headers_to_add -----------------------------------------

LIMIT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
ALWAYS = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}


def limit(max_tokens: int, *headers: dict[str, Any]) -> dict[str, Any]:
    return {
        "@type": LIMIT_TYPE,
        "stat_prefix": "rl",
        "token_bucket": {"max_tokens": max_tokens, "tokens_per_fill": 1, "fill_interval": "60s"},
        "filter_enabled": ALWAYS,
        "filter_enforced": ALWAYS,
        "response_headers_to_add": list(headers),
    }


def limited_config(port: int, route_limit: dict[str, Any] | None = None) -> Config:
    filters = [
        {"name": "envoy.filters.http.local_ratelimit", "typed_config": limit(2, OVERWRITE)},
        {"name": "envoy.filters.http.router"},
    ]
    route = None
    if route_limit is not None:
        route = {"typed_per_filter_config": {"envoy.filters.http.local_ratelimit": route_limit}}
    return load(bootstrap(ports=(port,), hcm={"http_filters": filters}, route=route))


OVERWRITE = {"append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
             "header": {"key": "x-local-rate-limit", "value": "true"}}  # fmt: skip
CODE = {"header": {"key": "x-limited", "value": "code %RESPONSE_CODE%"}}
V2_REPLACE = {"append": False, "header": {"key": "content-type", "value": "text/x-limited"}}


async def test_the_limit_adds_its_response_headers_to_the_429_only() -> None:
    async with (
        backend() as b,
        run_proxy(limited_config(b.port)) as p,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{p.port}") as c,
    ):
        answers = [await c.get("/") for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert [r.headers.get("x-local-rate-limit") for r in answers] == [None, None, "true"]
    assert answers[2].text == "local_rate_limited\n"


async def test_a_route_limit_adds_its_own_headers_as_envoys_per_route_config() -> None:
    per_route = limit(1, CODE, V2_REPLACE)
    async with (
        backend() as b,
        run_proxy(limited_config(b.port, per_route)) as p,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{p.port}") as c,
    ):
        answers = [await c.get("/") for _ in range(2)]
    assert [r.status_code for r in answers] == [200, 429]
    limited = answers[1].headers
    assert limited["x-limited"] == "code 429"
    assert limited.get_list("content-type") == ["text/x-limited"]  # append: false replaces
    assert "x-local-rate-limit" not in limited  # the route's config replaces the filter's


def test_rate_limit_headers_load_onto_the_limit() -> None:
    limit = limited_config(8001).listeners[0].rate_limit
    assert limit is not None
    (m,) = limit.response_headers_to_add
    assert (m.name, m.value, m.append) == ("x-local-rate-limit", "true", False)


def test_rate_limit_headers_cannot_read_the_request() -> None:
    bad = {"header": {"key": "x", "value": "%REQ(x-a)%"}}
    with pytest.raises(ConfigError) as err:
        limited_config(8001, limit(1, bad))
    assert err.value.field.endswith("local_ratelimit.response_headers_to_add")


# --- health_checks: service_name (v2) / service_name_matcher (v3) ------------------------

HC = b"x-envoy-upstream-healthchecked-cluster"
SERVICE_NAME_VERDICTS = [
    # (service_name, status, the answer's header (None: absent), healthy)
    (None, 200, None, True),
    (None, 302, None, True),
    (None, 503, b"svc", False),
    (("prefix", "svc"), 200, b"svc", True),
    (("prefix", "svc"), 200, b"svc-canary", True),  # v2 service_name: a prefix match
    (("prefix", "svc"), 200, b"other", False),
    (("prefix", "svc"), 200, None, False),  # absent: "" does not start with "svc"
    (("prefix", "svc"), 503, b"svc", False),  # the status is checked first
    (("exact", "svc"), 200, b"svc-canary", False),
    (("regex", "(?i)SVC"), 200, b"svc", True),
]


@pytest.mark.parametrize(("service", "status", "header", "healthy"), SERVICE_NAME_VERDICTS)
def test_a_probe_answer_must_name_the_checked_service(
    service: tuple[str, str] | None, status: int, header: bytes | None, healthy: bool
) -> None:
    headers = [(b"content-length", b"0")] + ([] if header is None else [(HC, header)])
    assert passes(HealthCheckConfig(service_name=service), status, headers) is healthy


def health_check(**http: Any) -> dict[str, Any]:
    check = {"timeout": "1s", "interval": "5s", "unhealthy_threshold": 2, "healthy_threshold": 1}
    return {"health_checks": [{**check, "http_health_check": {"path": "/hc", **http}}]}


SERVICE_NAME_SPELLINGS = [
    ({"service_name": "test-service"}, ("prefix", "test-service")),
    ({"service_name": ""}, None),  # Envoy checks nothing for an empty name
    ({"service_name_matcher": {"exact": "svc"}}, ("exact", "svc")),
    ({"service_name_matcher": {"prefix": "svc"}}, ("prefix", "svc")),
    ({"service_name_matcher": {"suffix": "svc", "ignore_case": True}}, ("regex", "(?is).*svc")),
]


@pytest.mark.parametrize(("http", "want"), SERVICE_NAME_SPELLINGS)
def test_both_spellings_of_the_service_name_load(
    http: dict[str, Any], want: tuple[str, str] | None
) -> None:
    check = load(bootstrap(first=health_check(**http))).clusters["a"].health_check
    assert check is not None
    assert check.service_name == want


def test_service_name_and_its_matcher_together_are_refused() -> None:
    both = health_check(service_name="a", service_name_matcher={"exact": "a"})
    with pytest.raises(ConfigError, match="not both"):
        load(bootstrap(first=both))


@asynccontextmanager
async def answering(header: bytes | None) -> AsyncIterator[EndpointConfig]:
    """A server answering every request 200, with ``HC: header`` unless None."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(4096)
            extra = b"" if header is None else HC + b": " + header + b"\r\n"
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n" + extra + b"\r\n")

    async with serving(handle) as port:
        yield EndpointConfig(host="127.0.0.1", port=port)


async def test_a_probe_checks_the_healthchecked_cluster_header_on_the_wire() -> None:
    check = load(bootstrap(first=health_check(service_name="test-service"))).clusters["a"]
    assert check.health_check is not None
    verdicts = []
    for header in (b"test-service", b"test-service-v2", b"other", None):
        async with answering(header) as ep:
            verdicts.append(await probe(ep, "/hc", 1.0, check.health_check))
    assert verdicts == [True, True, False, False]
    async with answering(None) as ep:  # without a service name the header is not needed
        assert await probe(ep, "/hc", 1.0) is True


# --- listeners[].freebind -----------------------------------------------------------------


def test_freebind_loads_and_an_address_not_on_the_host_fails_at_start_plainly(
    tmp_path: Path,
) -> None:
    doc = bootstrap(
        listener={"freebind": True, "address": {"socket_address": {
            "address": "192.0.2.1", "port_value": 18080}}},  # TEST-NET-1: never local
        root={"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}},
    )  # fmt: skip
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(doc))
    done = subprocess.run(
        [sys.executable, "-m", "nodeproxy", "run", "--config", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert "freebind" in done.stderr + done.stdout  # the warning
    assert done.returncode == 1
    (line,) = [ln for ln in done.stderr.splitlines() if "cannot start" in ln]
    assert line == (
        "nodeproxy: cannot start: listener l: cannot listen on 192.0.2.1:18080: "
        "Cannot assign requested address (EADDRNOTAVAIL, errno 99)"
    )
