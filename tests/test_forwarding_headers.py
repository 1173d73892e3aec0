"""Forwarding headers as Envoy's connection manager writes them, end to end on loopback.

The backend echoes the headers it received, so each case reads what the
upstream saw: ``x-forwarded-for`` (appended only with ``use_remote_address``),
``x-forwarded-proto`` (kept from a trusted hop, else the connection's scheme),
``via`` (only when set, on the request and the response). ``ENVOY`` is a
listener with Envoy's defaults for these fields; the native defaults are
``ListenerConfig``'s own.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from nodeproxy.config import load_config_text
from nodeproxy.config.model import Config, ListenerConfig
from nodeproxy.errors import ConfigError
from nodeproxy.http1 import forwarding as fwd
from nodeproxy.http1.headers import upstream_request_headers
from tests.helpers.backends import backend, run_proxy, simple_config

# Envoy's HttpConnectionManager defaults (use_remote_address false, via unset, no port
# stripping) and its rule for x-forwarded-proto, as the Envoy loader sets them.
ENVOY: dict[str, Any] = {
    "use_remote_address": False,
    "xff_num_trusted_hops": 0,
    "via": None,
    "host_port_match": "exact",
    "trust_forwarded_proto": False,
}
HOST = "bdgreeter.default"  # simple_config's domain, matched exactly under either format


def config_for(port: tuple[str, int], **listener_kw: Any) -> Config:
    config = simple_config({"bdgreeter": [port]})
    listener = replace(config.listeners[0], **listener_kw)
    return replace(config, listeners=(listener,))


async def exchange(
    config: Config, headers: dict[str, str]
) -> tuple[list[tuple[str, str]], httpx.Headers]:
    """(headers the upstream saw, as a list of pairs; response headers the client saw)."""
    async with run_proxy(config) as p, httpx.AsyncClient(trust_env=False) as client:
        r = await client.get(f"{p.url}/x", headers={"host": HOST, **headers})
        assert r.status_code == 200, r.text
        seen = [(k, v) for k, v in r.json()["headers"]]
        return seen, r.headers


def values(seen: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in seen if k == name]


# -- the findings: each failed before, with Envoy's defaults --------------------


async def test_envoy_defaults_append_no_xff_and_add_no_via() -> None:
    async with backend() as b:
        seen, response = await exchange(
            config_for(b.address, **ENVOY), {"x-forwarded-for": "203.0.113.7"}
        )
        assert values(seen, "x-forwarded-for") == ["203.0.113.7"]  # untouched
        assert values(seen, "via") == []
        assert "via" not in response
        seen, _ = await exchange(config_for(b.address, **ENVOY), {})
        assert values(seen, "x-forwarded-for") == []  # transparent: none made up


async def test_envoy_defaults_keep_an_incoming_https_proto() -> None:
    async with backend() as b:
        seen, _ = await exchange(config_for(b.address, **ENVOY), {"x-forwarded-proto": "https"})
        assert values(seen, "x-forwarded-proto") == ["https"]
        seen, _ = await exchange(config_for(b.address, **ENVOY), {})
        assert values(seen, "x-forwarded-proto") == ["http"]  # absent: the connection's scheme


async def test_native_defaults_keep_https_proto_append_xff_and_add_via() -> None:
    async with backend() as b:
        seen, response = await exchange(
            config_for(b.address),
            {"x-forwarded-proto": "https", "x-forwarded-for": "203.0.113.7"},
        )
        assert values(seen, "x-forwarded-proto") == ["https"]  # a front proxy's TLS survives
        assert values(seen, "x-forwarded-for") == ["203.0.113.7, 127.0.0.1"]
        assert values(seen, "via") == ["1.1 nodeproxy"]
        assert response["via"] == "1.1 nodeproxy"


# -- every combination, Envoy's rule for x-forwarded-proto --------------------------------


@pytest.mark.parametrize(
    ("use_remote_address", "hops", "incoming_xff", "xff", "proto"),
    [
        # use_remote_address false: XFF untouched, an incoming proto is kept
        (False, 0, None, [], "https"),
        (False, 0, "203.0.113.7", ["203.0.113.7"], "https"),
        (False, 1, "198.51.100.1, 203.0.113.7", ["198.51.100.1, 203.0.113.7"], "https"),
        # use_remote_address true: the peer is appended; with no trusted hop the peer
        # is the client, and its x-forwarded-proto is replaced by the connection's scheme
        (True, 0, None, ["127.0.0.1"], "http"),
        (True, 0, "203.0.113.7", ["203.0.113.7, 127.0.0.1"], "http"),
        # one trusted hop in front: its x-forwarded-proto is kept
        (True, 1, "203.0.113.7", ["203.0.113.7, 127.0.0.1"], "https"),
        (True, 1, None, ["127.0.0.1"], "https"),
    ],
)
async def test_xff_and_proto_under_envoy_rules(
    use_remote_address: bool, hops: int, incoming_xff: str | None, xff: list[str], proto: str
) -> None:
    settings = {**ENVOY, "use_remote_address": use_remote_address, "xff_num_trusted_hops": hops}
    headers = {"x-forwarded-proto": "https"}
    if incoming_xff is not None:
        headers["x-forwarded-for"] = incoming_xff
    async with backend() as b:
        seen, _ = await exchange(config_for(b.address, **settings), headers)
    assert values(seen, "x-forwarded-for") == xff
    assert values(seen, "x-forwarded-proto") == [proto]


@pytest.mark.parametrize(("via", "expected"), [(None, []), ("1.1 edge", ["1.1 edge"])])
async def test_via_is_added_only_when_set(via: str | None, expected: list[str]) -> None:
    async with backend() as b:
        seen, response = await exchange(config_for(b.address, **{**ENVOY, "via": via}), {})
    assert values(seen, "via") == expected
    assert response.get_list("via") == expected


async def test_native_adds_proto_when_absent() -> None:
    async with backend() as b:
        seen, _ = await exchange(config_for(b.address), {})
        assert values(seen, "x-forwarded-proto") == ["http"]


@pytest.mark.parametrize(
    ("settings", "client"),
    [
        ({}, None),  # native: the peer (the access line's source), no client field
        (ENVOY, "203.0.113.7"),  # Envoy's default trusts the last XFF entry
        ({**ENVOY, "use_remote_address": True}, None),  # the edge: the peer is the client
        ({**ENVOY, "use_remote_address": True, "xff_num_trusted_hops": 1}, "203.0.113.7"),
    ],
)
async def test_access_line_names_the_client_xff_trusted_hops_pick(
    settings: dict[str, Any], client: str | None
) -> None:
    async with backend() as b:
        with capture_logs() as logs:
            await exchange(config_for(b.address, **settings), {"x-forwarded-for": "203.0.113.7"})
    (line,) = [e for e in logs if e["event"] == "access"]
    assert line.get("client") == client
    assert line["source"].startswith("127.0.0.1:")


# -- the pure parts -----------------------------------------------------------------------


def test_forwarding_of_a_listener() -> None:
    native = fwd.Forwarding.of(ListenerConfig(name="n"))
    assert native == fwd.Forwarding()  # the default the hot path shares
    envoy = fwd.Forwarding.of(ListenerConfig(name="e", **ENVOY))
    assert (envoy.append_xff, envoy.via, envoy.keep_proto) == (False, None, True)
    edge = fwd.Forwarding.of(ListenerConfig(name="e", **{**ENVOY, "use_remote_address": True}))
    assert (edge.append_xff, edge.keep_proto) == (True, False)
    trusted = fwd.Forwarding.of(
        ListenerConfig(name="e", **{**ENVOY, "use_remote_address": True, "xff_num_trusted_hops": 2})
    )
    assert trusted.keep_proto


def test_two_xff_lines_are_one_list_and_two_protos_keep_the_first() -> None:
    incoming = [
        (b"x-forwarded-for", b"1.1.1.1"),
        (b"x-forwarded-for", b"2.2.2.2"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-proto", b"http"),
    ]
    out, _ = upstream_request_headers(incoming, host=b"s", client_ip="3.3.3.3", upgrade=False)
    assert [v for n, v in out if n == b"x-forwarded-for"] == [b"1.1.1.1, 2.2.2.2, 3.3.3.3"]
    assert [v for n, v in out if n == b"x-forwarded-proto"] == [b"https"]


@pytest.mark.parametrize(
    ("use_remote_address", "hops", "xff", "client"),
    [
        (True, 0, None, "10.0.0.9"),  # the peer
        (True, 0, "203.0.113.7", "10.0.0.9"),  # an untrusted XFF names nobody
        (True, 1, "203.0.113.7", "203.0.113.7"),  # the trusted hop says who
        (True, 2, "198.51.100.1, 203.0.113.7", "198.51.100.1"),
        (True, 2, "203.0.113.7", "10.0.0.9"),  # too few entries: the peer
        (True, 1, "not-an-ip", "10.0.0.9"),
        (False, 0, "198.51.100.1, 203.0.113.7", "203.0.113.7"),  # the last entry
        (False, 1, "198.51.100.1, 203.0.113.7", "198.51.100.1"),
        (False, 0, None, "10.0.0.9"),
        (False, 0, "2001:db8::1", "2001:db8::1"),
    ],
)
def test_forwarded_client_as_envoy_picks_it(
    use_remote_address: bool, hops: int, xff: str | None, client: str
) -> None:
    fw = fwd.Forwarding(append_xff=use_remote_address, trusted_hops=hops)
    headers = [] if xff is None else [(b"x-forwarded-for", xff.encode())]
    assert fwd.forwarded_client(headers, "10.0.0.9", fw) == client


# -- the native format -------------------------------------------------------------------

NATIVE_FILE = """
listeners:
  - address: 127.0.0.1:4140
  - address: 127.0.0.1:4141
    use_remote_address: false
    xff_num_trusted_hops: 1
    via: "1.1 edge"
    trust_forwarded_proto: false
  - address: 127.0.0.1:4142
    via: ""
services:
  - name: bdgreeter
    endpoints: ["127.0.0.1:8080"]
"""


def test_native_listener_fields_and_defaults() -> None:
    native, custom, no_via = load_config_text(NATIVE_FILE, {}, source="t.yaml").listeners
    assert (native.use_remote_address, native.xff_num_trusted_hops, native.via) == (
        True,
        0,
        "1.1 nodeproxy",
    )
    assert native.trust_forwarded_proto
    assert (custom.use_remote_address, custom.xff_num_trusted_hops, custom.via) == (
        False,
        1,
        "1.1 edge",
    )
    assert not custom.trust_forwarded_proto
    assert no_via.via is None


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("via", '"bad\\r\\nx-injected: 1"', "not a valid Via header value"),
        ("via", '" padded"', "not a valid Via header value"),
        ("xff_num_trusted_hops", "-1", "must be >= 0"),
        ("use_remote_address", "maybe", "expected true or false"),
    ],
)
def test_native_listener_field_errors(field: str, value: str, words: str) -> None:
    text = f"listeners:\n  - address: 127.0.0.1:4140\n    {field}: {value}\n"
    with pytest.raises(ConfigError, match=words) as err:
        load_config_text(text + "services: []\n", {}, source="t.yaml")
    assert field in str(err.value)
