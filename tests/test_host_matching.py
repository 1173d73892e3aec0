"""Which virtual host an authority with or without a port selects, under each host_port_match.

Envoy matches the whole Host, port included, against a virtual host's domains
(``exact``, its default); ``strip_any_host_port`` drops any port first and
``strip_matching_host_port`` only the listener's own (``strip_any`` and
``strip_matching`` here), and both also drop it from the Host sent upstream
(``strip_port_upstream``). The native format matches port-agnostically and
maps every Kubernetes spelling of a service name onto its ``svc.ns`` domain.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from nodeproxy.config import load_config_text
from nodeproxy.config.model import (
    ClusterConfig,
    Config,
    EndpointConfig,
    ListenerConfig,
    RouteMatch,
    RouteRule,
    VirtualHost,
)
from nodeproxy.errors import ConfigError, UnknownService
from nodeproxy.routing.authority import parse_authority
from nodeproxy.routing.router import Router
from tests.helpers.backends import backend, run_proxy

LISTENER_PORT = 8080
DATA = Path(__file__).parent / "data"


def vhost(name: str, *domains: str) -> VirtualHost:
    rule = RouteRule(match=RouteMatch(prefix="/"), cluster=name)
    return VirtualHost(name=name, domains=domains, routes=(rule,))


VHOSTS = (
    vhost("plain", "example.com"),
    vhost("ported", "example.com:8080"),
    vhost("suffix", "*.example.com"),
    vhost("prefix", "api.*"),
    vhost("greeter", "bdgreeter.default"),
    vhost("v6", "[2001:db8::1]"),
)


def route(mode: str, raw: str) -> str:
    listener = ListenerConfig(
        name="l",
        port=LISTENER_PORT,
        virtual_hosts=VHOSTS,
        host_port_match=mode,  # type: ignore[arg-type]  # the three modes are parametrized strings
    )
    router = Router(listener, "default", "cluster.local")
    try:
        return router.route(parse_authority(raw), raw.lower(), "/", ()).cluster
    except UnknownService:
        return "404"


@pytest.mark.parametrize(
    ("raw", "strip_any", "strip_matching", "exact"),
    [
        ("example.com", "plain", "plain", "plain"),
        ("EXAMPLE.com", "plain", "plain", "plain"),
        ("example.com:8080", "ported", "plain", "ported"),  # the listener's port
        ("example.com:9090", "plain", "404", "404"),  # another port
        ("www.example.com", "suffix", "suffix", "suffix"),
        ("www.example.com:8080", "suffix", "suffix", "404"),
        ("www.example.com:9090", "suffix", "404", "404"),
        ("api.internal:9090", "prefix", "prefix", "prefix"),  # a prefix's * takes the port too
        ("bdgreeter.default", "greeter", "greeter", "greeter"),
        ("bdgreeter.default:80", "greeter", "404", "404"),
        ("bdgreeter", "greeter", "404", "404"),  # Kubernetes spellings: native matching only
        ("bdgreeter.default.svc.cluster.local", "greeter", "404", "404"),
        ("[2001:db8::1]", "v6", "v6", "v6"),
        ("[2001:db8::1]:8080", "v6", "v6", "404"),
        ("[2001:db8::1]:9090", "v6", "404", "404"),
    ],
)
def test_domain_match_per_mode(raw: str, strip_any: str, strip_matching: str, exact: str) -> None:
    assert route("strip_any", raw) == strip_any
    assert route("strip_matching", raw) == strip_matching
    assert route("exact", raw) == exact


def test_catch_all_still_answers_any_port() -> None:
    listener = ListenerConfig(
        name="l",
        virtual_hosts=(vhost("plain", "example.com"), vhost("any", "*")),
        host_port_match="exact",
    )
    router = Router(listener)
    assert router.route(parse_authority("example.com:9"), "example.com:9", "/", ()).cluster == "any"


# -- end to end: the port the listener really bound, the Host sent upstream ----------------


def proxy_config(address: tuple[str, int], **listener_kw: Any) -> Config:
    cluster = ClusterConfig(name="plain", endpoints=(EndpointConfig(*address),))
    listener = ListenerConfig(
        name="l", host="127.0.0.1", port=0, virtual_hosts=(vhost("plain", "example.com"),)
    )
    return Config(listeners=(replace(listener, **listener_kw),), clusters={"plain": cluster})


async def get(config: Config, host: str | None = None) -> tuple[int, str | None]:
    """(status, the Host the upstream saw); ``{port}`` in ``host`` is the proxy's port."""
    async with run_proxy(config) as p, httpx.AsyncClient(trust_env=False) as client:
        r = await client.get(f"{p.url}/x", headers={"host": (host or "").format(port=p.port)})
        if r.status_code != 200:
            return r.status_code, None
        return 200, dict(r.json()["headers"])["host"]


async def test_envoy_default_treats_the_port_as_part_of_the_name() -> None:
    async with backend() as b:
        config = proxy_config(b.address, host_port_match="exact")
        assert await get(config, "example.com:8080") == (404, None)
        assert await get(config, "example.com") == (200, "example.com")


async def test_native_default_ignores_the_port_and_forwards_the_host_as_written() -> None:
    async with backend() as b:
        assert await get(proxy_config(b.address), "example.com:8080") == (200, "example.com:8080")


async def test_strip_matching_compares_with_the_bound_port() -> None:
    async with backend() as b:
        config = proxy_config(b.address, host_port_match="strip_matching", strip_port_upstream=True)
        assert await get(config, "example.com:{port}") == (200, "example.com")
        assert await get(config, "example.com:1") == (404, None)


async def test_strip_any_as_envoy_also_strips_the_upstream_host() -> None:
    async with backend() as b:
        config = proxy_config(b.address, host_port_match="strip_any", strip_port_upstream=True)
        assert await get(config, "example.com:8080") == (200, "example.com")
        assert await get(config, "example.com") == (200, "example.com")


def test_native_host_port_match_field() -> None:
    text = (
        "listeners:\n"
        "  - address: 127.0.0.1:4140\n"
        "  - address: 127.0.0.1:4141\n"
        "    host_port_match: exact\n"
        "    strip_port_upstream: true\n"
        "services: []\n"
    )
    default, exact = load_config_text(text, {}, source="t.yaml").listeners
    assert (default.host_port_match, default.strip_port_upstream) == ("strip_any", False)
    assert (exact.host_port_match, exact.strip_port_upstream) == ("exact", True)
    with pytest.raises(ConfigError, match="host_port_match"):
        load_config_text(text.replace("exact", "ignore"), {}, source="t.yaml")


@pytest.mark.parametrize(
    ("hcm_line", "mode", "strip"),
    [
        ("", "exact", False),
        ("strip_any_host_port: true", "strip_any", True),
        ("strip_matching_host_port: true", "strip_matching", True),
    ],
)
def test_envoy_file_host_port_fields(hcm_line: str, mode: str, strip: bool) -> None:
    text = (DATA / "seed-envoy-v3.yaml").read_text()
    text = text.replace("codec_type: AUTO", f"codec_type: AUTO\n          {hcm_line}")
    (listener,) = load_config_text(text, {}, source="envoy.yaml").listeners
    assert (listener.host_port_match, listener.strip_port_upstream) == (mode, strip)
    assert not listener.trust_forwarded_proto  # Envoy's x-forwarded-proto rule
