"""Unit tables for the pure parts of the data path: header rewriting, targets, codec limits."""

from __future__ import annotations

import pytest

from nodeproxy.errors import BadRequest, HeadersTooLarge, UpstreamProtocolError
from nodeproxy.http1.codec import (
    NEED_DATA,
    H11ClientCodec,
    H11ServerCodec,
    request_event,
    response_event,
)
from nodeproxy.http1.headers import (
    downstream_response_headers,
    is_upgrade,
    new_request_id,
    request_authority,
    split_target,
    upstream_request_headers,
)
from nodeproxy.http1.impl import h11


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/hello", (None, b"/hello")),
        (b"*", (None, b"*")),
        (b"http://bdgreeter/hello", (b"bdgreeter", b"/hello")),
        (b"HTTP://bdgreeter:8080/a?b=c", (b"bdgreeter:8080", b"/a?b=c")),
        (b"http://bdgreeter", (b"bdgreeter", b"/")),
        (b"http://bdgreeter?x=1", (b"bdgreeter", b"/?x=1")),
        (b"http://[::1]:80/p", (b"[::1]:80", b"/p")),
    ],
)
def test_split_target(target: bytes, expected: tuple[bytes | None, bytes]) -> None:
    assert split_target(target) == expected


@pytest.mark.parametrize("target", [b"https://svc/", b"svc:443", b"http:///path", b"ftp://x/"])
def test_split_target_rejects(target: bytes) -> None:
    with pytest.raises(BadRequest):
        split_target(target)


def test_authority_prefers_absolute_form_over_host() -> None:
    headers = [(b"host", b"other")]
    assert request_authority(b"http://svc/x", headers) == (b"svc", b"/x")
    assert request_authority(b"/x", headers) == (b"other", b"/x")
    with pytest.raises(BadRequest):
        request_authority(b"/x", [])


def test_request_rewrite_drops_hop_by_hop_and_adds_forwarding_headers() -> None:
    incoming = [
        (b"host", b"client-host"),
        (b"connection", b"keep-alive, x-secret"),
        (b"keep-alive", b"timeout=5"),
        (b"x-secret", b"hop"),
        (b"proxy-connection", b"keep-alive"),
        (b"proxy-authorization", b"Basic abc"),
        (b"te", b"gzip"),
        (b"upgrade", b"h2c"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"x-forwarded-proto", b"https"),
        (b"content-length", b"3"),
        (b"accept", b"*/*"),
    ]
    out, request_id = upstream_request_headers(
        incoming, host=b"svc", client_ip="127.0.0.9", upgrade=False
    )
    names = [n for n, _ in out]
    for gone in (b"connection", b"keep-alive", b"x-secret", b"proxy-connection", b"te", b"upgrade"):
        assert gone not in names
    assert b"proxy-authorization" not in names
    d = dict(out)
    assert d[b"host"] == b"svc"
    assert d[b"x-forwarded-for"] == b"10.0.0.1, 127.0.0.9"
    assert d[b"x-forwarded-proto"] == b"https"  # kept from the client (native rule)
    assert d[b"via"] == b"1.1 nodeproxy"
    assert d[b"content-length"] == b"3"
    assert d[b"accept"] == b"*/*"
    assert len(request_id) == 32
    assert d[b"x-request-id"] == request_id.encode()


def test_request_rewrite_keeps_client_request_id_te_trailers_and_upgrade() -> None:
    incoming = [
        (b"x-request-id", b"abc"),
        (b"te", b"trailers"),
        (b"connection", b"Upgrade"),
        (b"upgrade", b"websocket"),
    ]
    assert is_upgrade(incoming)
    out, request_id = upstream_request_headers(
        incoming, host=b"s", client_ip="1.2.3.4", upgrade=True
    )
    assert request_id == "abc"
    assert out.count((b"x-request-id", b"abc")) == 1
    assert (b"te", b"trailers") in out
    assert (b"upgrade", b"websocket") in out
    assert (b"connection", b"upgrade") in out


def test_connection_cannot_strip_framing_headers() -> None:
    incoming = [(b"connection", b"content-length, host"), (b"content-length", b"5")]
    out, _ = upstream_request_headers(incoming, host=b"s", client_ip="1.1.1.1", upgrade=False)
    assert (b"content-length", b"5") in out


def test_response_rewrite() -> None:
    incoming = [
        (b"connection", b"keep-alive, x-hop"),
        (b"x-hop", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"content-type", b"text/plain"),
    ]
    out = downstream_response_headers(incoming, close=True)
    assert out == [
        (b"transfer-encoding", b"chunked"),
        (b"content-type", b"text/plain"),
        (b"connection", b"close"),
        (b"via", b"1.1 nodeproxy"),
    ]


@pytest.mark.parametrize(
    "value", [b"keep-alive", b"Keep-Alive", b"upgrade", b"Upgrade", b"keep-alive, Upgrade"]
)
def test_common_connection_values_drop_what_the_general_rule_drops(value: bytes) -> None:
    """The usual Connection values skip the token split (a fast path): the result must be
    the one the split gives, for responses with and without an upgrade."""
    incoming = [
        (b"connection", value),
        (b"keep-alive", b"timeout=5"),
        (b"upgrade", b"websocket"),
        (b"x-app", b"1"),
    ]
    for upgrade in (False, True):
        fast = downstream_response_headers(incoming, upgrade=upgrade)
        # a second, equivalent Connection header forces the general path
        slow = downstream_response_headers(
            [(b"connection", b"keep-alive"), *incoming], upgrade=upgrade
        )
        assert fast == slow
        assert (b"x-app", b"1") in fast
        assert (b"keep-alive", b"timeout=5") not in fast
        assert ((b"upgrade", b"websocket") in fast) is upgrade


def test_a_connection_value_naming_more_still_drops_it() -> None:
    incoming = [(b"connection", b"Keep-Alive, X-Hop"), (b"x-hop", b"1"), (b"x-app", b"2")]
    out = downstream_response_headers(incoming)
    assert (b"x-hop", b"1") not in out
    assert (b"x-app", b"2") in out


def _feed_bytewise(codec: H11ServerCodec, data: bytes) -> object:
    for i in range(len(data)):
        codec.receive(data[i : i + 1])
        event = codec.next_event()
        if event is not NEED_DATA:
            return event
    return NEED_DATA


def test_server_codec_parses_a_request_fed_byte_by_byte() -> None:
    codec = H11ServerCodec(max_header_bytes=1024)
    event = _feed_bytewise(codec, b"GET /a HTTP/1.1\r\nHost: svc\r\n\r\n")
    assert isinstance(event, h11.Request)
    assert event.target == b"/a"


@pytest.mark.parametrize("bytewise", [True, False])
def test_server_codec_headers_over_limit_is_431(bytewise: bool) -> None:
    codec = H11ServerCodec(max_header_bytes=1024)
    data = b"GET / HTTP/1.1\r\nHost: svc\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
    if bytewise:
        with pytest.raises(HeadersTooLarge):
            _feed_bytewise(codec, data)
    else:
        codec.receive(data)
        with pytest.raises(HeadersTooLarge):
            codec.next_event()


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: svc\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"NOT-HTTP\r\n\r\n",
    ],
)
def test_server_codec_malformed_is_400(data: bytes) -> None:
    codec = H11ServerCodec(max_header_bytes=1024)
    codec.receive(data)
    with pytest.raises(BadRequest):
        codec.next_event()


def test_client_codec_malformed_response_is_upstream_protocol_error() -> None:
    codec = H11ClientCodec(max_header_bytes=1024)
    codec.send(h11.Request(method="GET", target="/", headers=[("host", "a")]))
    codec.send(h11.EndOfMessage())
    codec.receive(b"HTTP/1.1 abc\r\n\r\n")
    with pytest.raises(UpstreamProtocolError):
        codec.next_event()


def test_generated_request_ids_are_unique_32_hex_digits() -> None:
    ids = {upstream_request_headers([], host=b"s", client_ip="1.1.1.1", upgrade=False)[1]}
    ids |= {new_request_id().decode() for _ in range(999)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_parsed_heads_iterate_as_lowercased_pairs_and_relay_byte_exact() -> None:
    server = H11ServerCodec(max_header_bytes=1024)
    server.receive(b"GET /a HTTP/1.1\r\nHost: svc\r\nX-Mixed-Case: V\r\n\r\n")
    request = server.next_event()
    assert isinstance(request, h11.Request)
    assert list(request.headers) == [(b"host", b"svc"), (b"x-mixed-case", b"V")]
    assert request.headers == [(b"host", b"svc"), (b"x-mixed-case", b"V")]
    client = H11ClientCodec(max_header_bytes=1024)
    out = client.send(request_event(b"GET", b"/a", list(request.headers)))
    assert out == b"GET /a HTTP/1.1\r\nhost: svc\r\nx-mixed-case: V\r\n\r\n"
    client.send(h11.EndOfMessage())
    client.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok")
    response = client.next_event()
    assert isinstance(response, h11.Response)
    assert list(response.headers) == [(b"content-length", b"2"), (b"x-a", b"b")]
    head = server.send(response_event(200, b"OK", list(response.headers)))
    assert head == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: b\r\n\r\n"


def test_built_requests_still_get_h11_host_checks() -> None:
    with pytest.raises(h11.LocalProtocolError):
        request_event(b"GET", b"/", [(b"host", b"a"), (b"host", b"b")])
    with pytest.raises(h11.LocalProtocolError):
        request_event(b"GET", b"/", [(b"accept", b"*/*")])
