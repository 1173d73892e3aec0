"""What the data path refuses at the request's framing, driven with raw bytes.

One nodeproxy carries every pod's traffic over shared upstream connections, so
a request whose body length two parsers could read differently lets one
client's bytes become another client's request (request smuggling). Each rule
here follows RFC 9112 §6.1-6.3 or Envoy's default; docs/security.md lists them.
The backend in the smuggling test frames by Content-Length only, as a naive
server would.
"""

from __future__ import annotations

import h11
import pytest
import trio

from nodeproxy.config.model import Limits
from tests.helpers.backends import (
    ask,
    backend,
    raw_request,
    read_all,
    run_proxy,
    serving,
    simple_config,
)
from tests.helpers.raw_backend import raw_backend

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: svc.default\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)


CL_TE = [
    pytest.param(b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", id="cl-then-te"),
    pytest.param(b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", id="te-then-cl"),
    pytest.param(b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n", id="cl-zero"),
    pytest.param(b"Content-Length: 4\r\nTransfer-Encoding:\tchunked\r\n", id="tab"),
    pytest.param(b"Content-Length: 4\r\nX-A: b\r\nTransfer-Encoding:\r\n chunked\r\n", id="fold"),
]


@pytest.mark.parametrize("framing", CL_TE)
async def test_desync_with_content_length_and_chunked_is_refused(framing: bytes) -> None:
    """The TE.CL desync: a request hidden in a chunk must never reach a CL-framing backend."""
    attack = b"POST /attack HTTP/1.1\r\nHost: svc.default\r\n" + framing + b"\r\n"
    attack += _chunk(SMUGGLED)
    async with raw_backend() as b:
        config = simple_config({"svc": [b.address]}, max_connections_per_endpoint=1)
        async with run_proxy(config) as p:
            with trio.fail_after(5):
                raw = await raw_request(p.port, attack)  # read to EOF: the proxy closes
            assert raw.startswith(b"HTTP/1.1 400 "), raw
            assert b"x-nodeproxy-error: bad_framing" in raw
            assert b"connection: close" in raw
            with trio.fail_after(5):
                assert (await ask(p.port, b"GET", b"/victim"))[1] == b"own:GET /victim"
    assert b"/smuggled" not in b.targets
    assert b"/attack" not in b.targets


@pytest.mark.parametrize(
    ("coding", "status", "cause"),
    [
        (b"chunked, gzip", b"400", b"bad_framing"),  # chunked not final: cannot be framed
        (b"gzip", b"400", b"bad_framing"),
        (b"xchunked", b"400", b"bad_framing"),
        (b"chunked, chunked", b"400", b"bad_framing"),
        (b"gzip, chunked", b"501", b"unsupported_transfer_coding"),
    ],
)
async def test_transfer_encoding_must_end_in_exactly_chunked(
    coding: bytes, status: bytes, cause: bytes
) -> None:
    data = b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: " + coding + b"\r\n\r\n0\r\n\r\n"
    async with backend() as b, run_proxy(simple_config({"svc": [b.address]})) as p:
        raw = await raw_request(p.port, data)
    assert raw.startswith(b"HTTP/1.1 " + status), raw
    assert b"x-nodeproxy-error: " + cause in raw
    assert b"connection: close" in raw
    assert b.connections == 0


async def test_transfer_encoding_on_http10_is_refused() -> None:
    data = b"POST / HTTP/1.0\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    async with backend() as b, run_proxy(simple_config({"svc": [b.address]})) as p:
        raw = await raw_request(p.port, data)
    assert raw.startswith(b"HTTP/1.1 400"), raw
    assert b"x-nodeproxy-error: bad_framing" in raw
    assert b.connections == 0


async def test_upstream_framing_is_written_by_the_proxy() -> None:
    """The upstream sees exactly one framing header, in the proxy's spelling."""
    cases = [
        (
            b"Transfer-Encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "transfer-encoding",
            "chunked",
        ),
        (b"Content-Length: 3, 3\r\n\r\nabc", "content-length", "3"),
    ]
    async with backend() as b, run_proxy(simple_config({"svc": [b.address]})) as p:
        for framing_and_body, _, _ in cases:
            data = b"POST / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n" + framing_and_body
            raw = await raw_request(p.port, data)
            assert raw.startswith(b"HTTP/1.1 200"), raw
    for request, (_, name, value) in zip(b.requests, cases, strict=True):
        framing_headers = [
            (k.decode(), v.decode())
            for k, v in request.headers
            if k in (b"content-length", b"transfer-encoding")
        ]
        assert framing_headers == [(name, value)]


async def test_request_trailers_lose_framing_hop_by_hop_and_mesh_fields() -> None:
    """Trailers must not smuggle framing or an identity past the head's checks."""
    trailers = (
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
        b"X-Forwarded-Client-Cert: By=spiffe://forged\r\nx-nodeproxy-destination: 10.0.0.1:80\r\n"
        b"X-Checksum: abc\r\n"
    )
    data = (
        b"POST /t HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n"
        b"3\r\nabc\r\n0\r\n" + trailers + b"\r\n"
    )
    seen: list[list[tuple[bytes, bytes]]] = []

    async def trailer_backend(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.EndOfMessage):
                seen.append(list(event.headers))
                head = h11.Response(status_code=200, headers=[("content-length", "0")])
                await stream.send_all(conn.send(head) + conn.send(h11.EndOfMessage()))
                return

    async with serving(trailer_backend) as port:
        config = simple_config({"svc": [("127.0.0.1", port)]})
        async with run_proxy(config) as p:
            stream = await trio.open_tcp_stream("127.0.0.1", p.port)
            async with stream:
                await stream.send_all(data)
                with trio.fail_after(5):
                    head = await stream.receive_some(65536)
            assert head.startswith(b"HTTP/1.1 200"), head
    assert seen == [[(b"x-checksum", b"abc")]]


async def test_request_line_counts_against_the_header_limit() -> None:
    """A 60 kB target passes no 8 kB limit: 414; line + headers over it together: 431."""
    limits = Limits(max_request_header_bytes=8192)
    async with backend() as b, run_proxy(simple_config({"svc": [b.address]}, limits=limits)) as p:
        long_target = b"/" + b"a" * 60_000
        raw = await raw_request(p.port, b"GET " + long_target + b" HTTP/1.1\r\nHost: svc\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 414"), raw[:80]
        assert b"x-nodeproxy-error: uri_too_long" in raw
        # In one read, under h11's incomplete-head bound: still 414 for the line alone.
        raw = await raw_request(p.port, b"GET /" + b"b" * 8200 + b" HTTP/1.1\r\nHost: svc\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 414"), raw[:80]
        # A 6 kB target and 3 kB of headers: each under the limit, the head over it.
        head = b"GET /" + b"c" * 6000 + b" HTTP/1.1\r\nHost: svc\r\nX-Big: " + b"d" * 3000
        raw = await raw_request(p.port, head + b"\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 431"), raw[:80]
        # Just under: served.
        raw = await raw_request(
            p.port, b"GET /" + b"e" * 7000 + b" HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n"
        )
        assert raw.startswith(b"HTTP/1.1 200"), raw[:80]
    assert len(b.requests) == 1


async def test_header_read_timeout_counts_from_the_heads_first_wait(autojump_clock: object) -> None:
    """A first byte sent late does not buy the head a second header_read_timeout."""
    config = simple_config({"svc": [("127.0.0.1", 1)]}, limits=Limits(header_read_timeout=10.0))
    async with run_proxy(config) as p:
        stream = await trio.open_tcp_stream("127.0.0.1", p.port)
        async with stream:
            start = trio.current_time()
            await trio.sleep(8)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: svc\r\n")  # ...and never finishes
            raw = await read_all(stream)
            elapsed = trio.current_time() - start
    assert raw.startswith(b"HTTP/1.1 408")
    assert 10.0 <= elapsed < 10.5, elapsed


async def test_a_later_heads_timeout_counts_from_its_first_byte(autojump_clock: object) -> None:
    """Between requests the idle timeout applies; once a head starts, header_read_timeout."""
    async with backend() as b:
        config = simple_config({"svc": [b.address]}, limits=Limits(header_read_timeout=10.0))
        async with run_proxy(config) as p:
            stream = await trio.open_tcp_stream("127.0.0.1", p.port)
            async with stream:
                await stream.send_all(b"GET /1 HTTP/1.1\r\nHost: svc\r\n\r\n")
                first = await stream.receive_some(65536)
                assert first.startswith(b"HTTP/1.1 200")
                await trio.sleep(30)  # idle, under the 60 s keep-alive
                start = trio.current_time()
                await stream.send_all(b"GET /2 HTTP/1.1\r\nHost: svc\r\n")
                raw = await read_all(stream)
                elapsed = trio.current_time() - start
    assert raw.startswith(b"HTTP/1.1 408")
    assert 10.0 <= elapsed < 10.5, elapsed


async def test_what_the_fuzz_found_in_framing() -> None:
    """CONNECT, a space before the colon, a 20-digit Content-Length: 400, never forwarded."""
    cases = [
        b"CONNECT /abs HTTP/1.1\r\nHost: svc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 99999999999999999999\r\n\r\nx",
    ]
    async with backend() as b, run_proxy(simple_config({"svc": [b.address]})) as p:
        for data in cases:
            with trio.fail_after(5):
                raw = await raw_request(p.port, data)
            assert raw.startswith(b"HTTP/1.1 400"), (data, raw)
            assert b"connection: close" in raw
    assert b.connections == 0
