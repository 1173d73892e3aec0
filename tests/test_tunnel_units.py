"""The sans-I/O parts of nodeproxy.tunnel: TCP policy, the CONNECT wire, routing."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from nodeproxy.config.model import ClusterConfig, EndpointConfig
from nodeproxy.discovery.snapshot import EndpointSnapshot
from nodeproxy.errors import (
    ConfigError,
    MissingDestination,
    NotLocalDestination,
    ProxyError,
    UpstreamConnectFailure,
    UpstreamProtocolError,
)
from nodeproxy.policy import Decision, Denied, parse_policy
from nodeproxy.tls.identity import SpiffeId
from nodeproxy.tunnel.resolve import Path, PodIndex, route_pod
from nodeproxy.tunnel.wire import ConnectHandshake, parse_authority

WEB = SpiffeId.workload("shop", "webserver")
BATCH = SpiffeId.workload("ops", "batch")


def policy(*rules: dict[str, Any], default: str = "deny") -> Any:
    named = [{"name": f"r{i}", **r} for i, r in enumerate(rules)]
    return parse_policy({"default_action": default, "rules": named})


WEB_ID = "spiffe://cluster.local/ns/shop/sa/webserver"


@pytest.mark.parametrize(
    ("rules", "caller", "service", "port", "expected"),
    [
        # a plain rule: any port
        ([{"action": "allow", "from": [WEB_ID], "to": ["db.shop"]}], WEB, "db.shop", 5432, "r0"),
        # ports narrow it; a miss falls to the default (deny)
        (
            [{"action": "allow", "from": [WEB_ID], "to": ["db.shop"], "ports": [5432]}],
            WEB, "db.shop", 6379, None,
        ),
        # first match decides: a deny on one port before a broad allow
        (
            [
                {"action": "deny", "from": ["*"], "to": ["db.shop"], "ports": [22]},
                {"action": "allow", "from": ["*"], "to": ["db.shop"]},
            ],
            WEB, "db.shop", 22, "r0",
        ),
        # an allow rule with HTTP conditions never matches raw TCP ...
        (
            [{"action": "allow", "from": [WEB_ID], "to": ["db.shop"], "methods": ["GET"]}],
            WEB, "db.shop", 80, None,
        ),
        # ... and a deny rule with HTTP conditions always does (fail closed)
        (
            [
                {"action": "deny", "from": ["*"], "to": ["db.shop"], "path_prefixes": ["/x"]},
                {"action": "allow", "from": ["*"], "to": ["*"]},
            ],
            WEB, "db.shop", 80, "r0",
        ),
        # other callers: the default
        ([{"action": "allow", "from": [WEB_ID], "to": ["db.shop"]}], BATCH, "db.shop", 5432, None),
    ],
)  # fmt: skip
def test_tcp_decisions(
    rules: list[dict[str, Any]], caller: SpiffeId, service: str, port: int, expected: str | None
) -> None:
    p = policy(*rules)
    decision = p.decide_tcp(caller, service, port)
    assert decision.rule == expected
    rule = next((r for r in p.rules if r.name == expected), None)
    allowed = rule.action.value == "allow" if rule is not None else False
    assert decision == Decision(allowed, expected)


def test_ports_apply_to_http_requests_too() -> None:
    p = policy({"action": "allow", "from": [WEB_ID], "to": ["api.shop"], "ports": [8080]})
    assert p.decide(WEB, "api.shop", "GET", "/", 8080).allowed
    assert not p.decide(WEB, "api.shop", "GET", "/", 9090).allowed
    assert not p.decide(WEB, "api.shop", "GET", "/").allowed  # port unknown: rule cannot match


def test_has_http_rules_looks_only_at_rules_that_may_apply() -> None:
    p = policy(
        {"action": "allow", "from": ["*"], "to": ["api.shop"], "methods": ["GET"]},
        {"action": "allow", "from": ["*"], "to": ["db.shop"], "ports": [5432]},
    )
    assert p.has_http_rules("api.shop")
    assert not p.has_http_rules("db.shop")
    assert policy({"action": "deny", "from": ["*"], "to": ["*.shop"], "path_prefixes": ["/a"]}) \
        .has_http_rules("db.shop")  # fmt: skip
    assert not policy().has_http_rules("anything.ns")


@pytest.mark.parametrize("bad", [[0], [70000], ["80"], [], 80])
def test_bad_ports_are_config_errors(bad: object) -> None:
    with pytest.raises(ConfigError) as err:
        policy({"action": "allow", "from": ["*"], "to": ["*"], "ports": bad})
    assert "policy.rules[0].ports" in str(err.value)


def test_denied_is_a_403() -> None:
    assert Denied("r0").status == 403


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"10.0.0.1:80", ("10.0.0.1", 80)),
        (b"[fd00::1]:5432", ("fd00::1", 5432)),
        (b"Pod.Example:8080", ("pod.example", 8080)),
    ],
)
def test_parse_authority(target: bytes, expected: tuple[str, int]) -> None:
    assert parse_authority(target) == expected


@pytest.mark.parametrize(
    "target", [b"10.0.0.1", b"10.0.0.1:", b":80", b"10.0.0.1:0", b"10.0.0.1:99999", b"fd00::1:80",
               b"[fd00::1:80", b"/path"]
)  # fmt: skip
def test_parse_authority_rejects(target: bytes) -> None:
    with pytest.raises(MissingDestination):
        parse_authority(target)


def test_connect_request_bytes() -> None:
    shake = ConnectHandshake("10.0.0.7:5432")
    data = shake.request("db.shop")
    assert data.startswith(b"CONNECT 10.0.0.7:5432 HTTP/1.1\r\n")
    assert b"host: 10.0.0.7:5432\r\n" in data
    assert b"x-nodeproxy-service: db.shop\r\n" in data
    assert data.endswith(b"\r\n\r\n")


def test_connect_answer_fed_byte_by_byte_keeps_the_bytes_after_it() -> None:
    shake = ConnectHandshake("10.0.0.7:5432")
    shake.request(None)
    answer = b"HTTP/1.1 200 Connection Established\r\n\r\nSERVER-FIRST"
    results = [shake.receive(answer[i : i + 1]) for i in range(len(answer) - len(b"SERVER-FIRST"))]
    assert results[:-1] == [None] * (len(results) - 1)
    assert results[-1] == b""
    shake = ConnectHandshake("10.0.0.7:5432")
    shake.request(None)
    assert shake.receive(answer) == b"SERVER-FIRST"


@pytest.mark.parametrize(
    ("answer", "error", "cause"),
    [
        (b"HTTP/1.1 403 Forbidden\r\nx-nodeproxy-error: denied\r\ncontent-length: 19\r\n\r\n"
         b"RBAC: access denied", Denied, "denied"),
        (b"HTTP/1.1 421 Misdirected\r\nx-nodeproxy-error: not_local_destination\r\n"
         b"content-length: 0\r\n\r\n", NotLocalDestination, "not_local_destination"),
        (b"HTTP/1.1 503 Unavailable\r\nx-nodeproxy-error: connection_failure\r\n"
         b"content-length: 0\r\n\r\n", UpstreamConnectFailure, "connection_failure"),
        (b"HTTP/1.1 302 Found\r\ncontent-length: 0\r\n\r\n", UpstreamProtocolError, None),
        (b"garbage\r\n\r\n", UpstreamProtocolError, None),
        (b"", UpstreamProtocolError, None),  # closed before answering
    ],
)  # fmt: skip
def test_refusals_become_the_same_typed_errors(
    answer: bytes, error: type[ProxyError], cause: str | None
) -> None:
    shake = ConnectHandshake("10.0.0.7:5432")
    shake.request(None)

    def feed() -> None:
        shake.receive(answer)
        shake.receive(b"")  # then EOF

    with pytest.raises(error) as raised:
        feed()
    if cause is not None:
        assert raised.value.cause == cause


def _snapshot() -> tuple[EndpointSnapshot, dict[str, ClusterConfig]]:
    local = EndpointConfig("10.0.0.5", 5432, node="node-a")
    remote = EndpointConfig("10.0.1.5", 5432, node="node-b")
    outside = EndpointConfig("192.0.2.1", 5432)
    clusters = {
        "db.shop": ClusterConfig("db.shop", namespace="shop"),
        "db.shop:5432": ClusterConfig("db.shop:5432", namespace="shop"),
        "legacy": ClusterConfig("legacy"),
    }
    snap = EndpointSnapshot(
        1,
        MappingProxyType(
            {"db.shop": (local, remote), "db.shop:5432": (local, remote), "legacy": (outside,)}
        ),
    )
    return snap, clusters


@pytest.mark.parametrize(
    ("ip", "port", "path", "services"),
    [
        ("10.0.0.5", 5432, Path.DIRECT, ("db.shop",)),  # both clusters: one Service
        ("10.0.1.5", 5432, Path.TUNNEL, ("db.shop",)),
        ("10.0.1.5", 22, Path.PASSTHROUGH, ()),  # not a port any Service names
        ("192.0.2.1", 5432, Path.PASSTHROUGH, ("legacy.default",)),  # endpoint without a node
        ("198.51.100.9", 443, Path.PASSTHROUGH, ()),
    ],
)
def test_route_pod(ip: str, port: int, path: Path, services: tuple[str, ...]) -> None:
    snap, clusters = _snapshot()
    route = route_pod(PodIndex(snap, clusters), ip, port, "node-a")
    assert (route.path, route.services, route.destination) == (path, services, f"{ip}:{port}")


def test_a_pod_port_backing_several_services_is_judged_as_one_that_allows() -> None:
    from nodeproxy.tunnel.resolve import pick_service

    p = policy(
        {"action": "deny", "from": ["*"], "to": ["secret.shop"]},
        {"action": "allow", "from": [WEB_ID], "to": ["echo.shop"]},
    )
    both = ("echo.shop", "secret.shop")
    assert pick_service(p, WEB, both, 9000) == "echo.shop"  # same socket either way
    assert pick_service(p, WEB, ("secret.shop", "echo.shop"), 9000) == "echo.shop"
    assert pick_service(p, BATCH, both, 9000) == "echo.shop"  # none allows: the first, denied
    assert not p.decide_tcp(BATCH, pick_service(p, BATCH, both, 9000), 9000).allowed


async def test_tls_bytes_read_ahead_make_an_idle_tunnel_connection_unusable() -> None:
    """A record the pod sent after its answer may sit in TLS's buffer, where a poll of the
    socket cannot see it: the pooled connection must not serve a next request."""
    import socket as stdsocket

    import trio

    from nodeproxy.http1.codec import H11ClientCodec
    from nodeproxy.upstream.connection import UpstreamConnection, stirred

    a, b = stdsocket.socketpair()
    tcp = trio.SocketStream(trio.socket.from_stdlib_socket(a))

    class Buffered:
        socket = tcp.socket
        held = False

        def buffered(self) -> bool:
            return self.held

    stream = Buffered()
    conn = UpstreamConnection(stream, H11ClientCodec(1024), ("c", "e"))  # type: ignore[arg-type]
    assert not stirred(conn)
    stream.held = True
    assert stirred(conn)
    a.close()
    b.close()


async def test_rawtls_takes_over_a_trio_tls_stream_without_losing_read_ahead_bytes() -> None:
    """Two records arrive in one read: trio decrypts the first, RawTLS must find the
    second in the shared buffer, even after sending its own close_notify (unwrap reads
    on, and would eat it); then half-close both ways."""
    import socket as stdsocket
    import ssl

    import trio
    import trustme

    from nodeproxy.tls.stream import TLSStream
    from nodeproxy.tunnel.rawtls import RawTLS

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("pod.example").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    a, b = stdsocket.socketpair()
    client = trio.SSLStream(
        trio.SocketStream(trio.socket.from_stdlib_socket(a)), client_ctx,
        server_hostname="pod.example",
    )  # fmt: skip
    server = trio.SSLStream(
        trio.SocketStream(trio.socket.from_stdlib_socket(b)), server_ctx, server_side=True
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        await server.do_handshake()
    await client.send_all(b"head|")
    await client.send_all(b"tail")  # a second record, in the kernel before the server reads
    assert await server.receive_some(5) == b"head|"
    raw = RawTLS.adopt(TLSStream(server, SpiffeId.node("n")))
    assert raw is not None
    await raw.send_all(b"answer")
    await raw.half_close()  # before reading "tail": closing our side must not swallow it
    assert await raw.receive_some() == b"tail"
    assert await client.receive_some(100) == b"answer"
    peer = TLSStream(client, SpiffeId.node("m"))
    assert await peer.receive_some(100) == b""  # our close_notify: end of that direction
    await peer.send_all(b"still open")  # the other direction still works
    assert await raw.receive_some() == b"still open"
    await peer.half_close()
    assert await raw.receive_some() == b""
    await raw.aclose()
    await peer.aclose()
