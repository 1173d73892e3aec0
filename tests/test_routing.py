"""Authority parsing and the route table: tables of inputs and the decisions they get."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from nodeproxy.config import load_config_text
from nodeproxy.config.model import (
    HeaderMatch,
    ListenerConfig,
    RouteMatch,
    RouteRule,
    VirtualHost,
    WeightedCluster,
)
from nodeproxy.errors import BadRequest, NoRoute, UnknownService
from nodeproxy.routing.authority import Authority, parse_authority
from nodeproxy.routing.router import Headers, Router


@pytest.mark.parametrize(
    ("raw", "host", "port", "key"),
    [
        ("bdgreeter", "bdgreeter", None, "bdgreeter.default"),
        ("bdgreeter:8080", "bdgreeter", 8080, "bdgreeter.default"),
        ("BdGreeter", "bdgreeter", None, "bdgreeter.default"),
        ("bdgreeter.prod", "bdgreeter.prod", None, "bdgreeter.prod"),
        ("bdgreeter.prod:80", "bdgreeter.prod", 80, "bdgreeter.prod"),
        ("bdgreeter.prod.svc", "bdgreeter.prod.svc", None, "bdgreeter.prod"),
        ("bdgreeter.prod.svc:3000", "bdgreeter.prod.svc", 3000, "bdgreeter.prod"),
        ("bdgreeter.prod.svc.cluster.local", "bdgreeter.prod.svc.cluster.local", None,
         "bdgreeter.prod"),
        ("bdgreeter.prod.svc.cluster.local:443", "bdgreeter.prod.svc.cluster.local", 443,
         "bdgreeter.prod"),
        ("bdgreeter.prod.svc.cluster.local.", "bdgreeter.prod.svc.cluster.local", None,
         "bdgreeter.prod"),
        ("bdgreeter.prod.svc.other.domain", "bdgreeter.prod.svc.other.domain", None, None),
        ("a.b.c", "a.b.c", None, None),
        ("example.com:65535", "example.com", 65535, "example.com"),
        ("10.0.0.1", "10.0.0.1", None, None),
        ("10.0.0.1:80", "10.0.0.1", 80, None),
        ("[::1]", "::1", None, None),
        ("[::1]:4140", "::1", 4140, None),
        ("[2001:DB8:0:0::1]:80", "2001:db8::1", 80, None),
    ],
)  # fmt: skip
def test_parse_authority(raw: str, host: str, port: int | None, key: str | None) -> None:
    authority = parse_authority(raw)
    assert authority == Authority(host, port)
    assert authority.service_key("default", "cluster.local") == key


@pytest.mark.parametrize(
    "raw",
    [
        "", " ", "host:", "host:0", "host:65536", "host:http", "host:+80", "host:٨٠",
        "::1", "[::1", "[::1]x", "[::1]:", "[nope]:80", "[]:80", "user@host", "host/path",
        "a b", "host:80:90", ":80", "ho\tst", "hö st", "bad\x00host", ".",
    ],
)  # fmt: skip
def test_malformed_authority_is_bad_request(raw: str) -> None:
    with pytest.raises(BadRequest):
        parse_authority(raw)


def vhost(name: str, domains: tuple[str, ...], *rules: RouteRule) -> VirtualHost:
    return VirtualHost(name, domains, rules or (RouteRule(RouteMatch(prefix="/"), cluster=name),))


def to(cluster: str, **match: object) -> RouteRule:
    return RouteRule(RouteMatch(**match), cluster=cluster)  # type: ignore[arg-type]


GREETER = vhost(
    "bdgreeter",
    ("bdgreeter.default",),
    to("exact", path="/hello"),
    to("canary", prefix="/hello", headers=(HeaderMatch("x-canary", exact="1"),)),
    to("beta", prefix="/hello", headers=(HeaderMatch("x-user", prefix="beta-"),)),
    to("regex", prefix="/hello", headers=(HeaderMatch("x-id", regex="[0-9]+"),)),
    to("debug", prefix="/hello", headers=(HeaderMatch("x-debug", present=True),)),
    to("not-mobile", prefix="/hello", headers=(HeaderMatch("x-agent", exact="m", invert=True),)),
    to("hello", prefix="/hello"),
)
LISTENER = ListenerConfig(
    name="outbound",
    virtual_hosts=(
        GREETER,
        vhost("db.prod", ("db.prod",)),
        vhost("with-port", ("example.com:8080",)),
        vhost("suffix", ("*.example.com",)),
        vhost("longer-suffix", ("*.api.example.com",)),
        vhost("prefix", ("internal.*",)),
        vhost("only-api", ("api.other.org",), to("api", prefix="/api")),
    ),
)


def route(
    raw: str, path: str = "/", headers: Headers = (), listener: ListenerConfig = LISTENER
) -> str:
    router = Router(listener, "default", "cluster.local")
    return router.route(parse_authority(raw), raw, path, headers).cluster


@pytest.mark.parametrize(
    ("raw", "path", "headers", "cluster"),
    [
        ("bdgreeter", "/hello", (), "exact"),
        ("bdgreeter", "/hello?x=1", (), "exact"),
        ("bdgreeter:80", "/hello/bob", (), "not-mobile"),
        ("bdgreeter.default.svc.cluster.local", "/hello/bob", [(b"x-agent", b"m")], "hello"),
        ("bdgreeter", "/hello/bob", [(b"x-canary", b"1")], "canary"),
        ("bdgreeter", "/hello/bob", [(b"x-canary", b"2"), (b"x-agent", b"m")], "hello"),
        ("bdgreeter", "/hello/bob", [(b"x-user", b"beta-ann")], "beta"),
        ("bdgreeter", "/hello/bob", [(b"x-user", b"alpha"), (b"x-agent", b"m")], "hello"),
        ("bdgreeter", "/hello/bob", [(b"x-id", b"123")], "regex"),
        ("bdgreeter", "/hello/bob", [(b"x-id", b"123a"), (b"x-agent", b"m")], "hello"),
        ("bdgreeter", "/hello/bob", [(b"x-debug", b"")], "debug"),
        ("bdgreeter.default", "/hellothere", [(b"x-agent", b"m")], "hello"),
        ("db.prod", "/anything", (), "db.prod"),
        ("db.prod.svc", "/", (), "db.prod"),
        ("DB.PROD.SVC.CLUSTER.LOCAL:5432", "/", (), "db.prod"),
        ("example.com:8080", "/", (), "with-port"),
        ("Example.COM:8080", "/", (), "with-port"),
        ("www.example.com", "/", (), "suffix"),
        ("v1.api.example.com", "/", (), "longer-suffix"),
        ("internal.tools", "/", (), "prefix"),
        ("api.other.org", "/api/v1", (), "api"),
    ],
)  # fmt: skip
def test_router_table(raw: str, path: str, headers: Headers, cluster: str) -> None:
    assert route(raw, path, headers) == cluster


@pytest.mark.parametrize(
    "raw", ["nope", "nope.default", "db.staging", "example.com", "internal.", "10.0.0.1", "[::1]"]
)
def test_unknown_service(raw: str) -> None:
    with pytest.raises(UnknownService):
        route(raw)


def test_no_route() -> None:
    with pytest.raises(NoRoute):
        route("api.other.org", "/web")


def test_header_values_are_joined_like_envoy() -> None:
    only = vhost("x", ("x.default",), to("both", headers=(HeaderMatch("x-a", exact="1,2"),)))
    listener = ListenerConfig("l", virtual_hosts=(only,))
    assert route("x", "/", [(b"x-a", b"1"), (b"x-a", b"2")], listener) == "both"
    with pytest.raises(NoRoute):
        route("x", "/", [(b"x-a", b"1")], listener)


def test_present_false_and_invert() -> None:
    rules = (
        to("absent", headers=(HeaderMatch("x-a", present=False),)),
        to("inverted-present", headers=(HeaderMatch("x-b", present=True, invert=True),)),
        to("rest"),
    )
    listener = ListenerConfig("l", virtual_hosts=(vhost("x", ("x.default",), *rules),))
    assert route("x", "/", [], listener) == "absent"
    assert route("x", "/", [(b"x-a", b"1")], listener) == "inverted-present"
    assert route("x", "/", [(b"x-a", b"1"), (b"x-b", b"1")], listener) == "rest"


@pytest.mark.parametrize(
    ("domains", "raw", "expected"),
    [
        (("*",), "anything.at.all:9", "catch-all"),
        (("*", "exact.host"), "exact.host", "exact-first"),
        (("*.x", "*"), "a.x", "wildcard"),
        (("*.x", "*"), ".x", "catch-all"),  # "*" stands for at least one character
        (("x.*", "*"), "x.y", "wildcard"),
        (("x.*", "*"), "x.", "catch-all"),
    ],
)
def test_wildcard_domains(domains: tuple[str, ...], raw: str, expected: str) -> None:
    hosts = [vhost("catch-all", ("*",))]
    if "exact.host" in domains:
        hosts.append(vhost("exact-first", ("exact.host",)))
    hosts += [vhost("wildcard", (d,)) for d in domains if d not in ("*", "exact.host")]
    listener = ListenerConfig("l", virtual_hosts=tuple(hosts))
    assert route(raw, listener=listener) == expected


def test_weighted_split_lands_near_the_weights() -> None:
    rule = RouteRule(
        RouteMatch(prefix="/"),
        weighted=(WeightedCluster("v1", 90), WeightedCluster("v2", 9), WeightedCluster("v3", 1)),
    )
    listener = ListenerConfig("l", virtual_hosts=(VirtualHost("x", ("x.default",), (rule,)),))
    router = Router(listener, rng=random.Random(1234))
    authority = parse_authority("x")
    picks = Counter(router.route(authority, "x", "/", ()).cluster for _ in range(10_000))
    assert abs(picks["v1"] - 9000) < 200
    assert abs(picks["v2"] - 900) < 150
    assert 50 < picks["v3"] < 160


def test_router_from_the_seed_envoy_file() -> None:
    text = (Path(__file__).parent / "data" / "seed-envoy.yaml").read_text()
    config = load_config_text(text, {})
    router = Router(config.listeners[0])
    assert router.route(parse_authority("127.0.0.1:80"), "127.0.0.1:80", "/hello", ()).cluster == (
        "local_service"
    )
    with pytest.raises(NoRoute):
        router.route(parse_authority("anything"), "anything", "/bye", ())
    assert "1 wildcards" in repr(router)
