"""Protocol detection (intercept/detect.py, and the listener's peek): fed whole,
byte by byte, and cut off by the deadline."""

from __future__ import annotations

import ssl

import pytest
import trio
import trio.testing

from nodeproxy.intercept.detect import Detected, Protocol, classify, server_name
from nodeproxy.intercept.listener import peek

HTTP, TLS, TCP = Protocol.HTTP1, Protocol.TLS, Protocol.TCP


def client_hello(sni: str | None) -> bytes:
    """A real ClientHello, as Python's ssl (OpenSSL) writes it."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = sni is not None
    if sni is None:
        ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


CASES = [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Detected(HTTP)),
    (b"POST /api HTTP/1.0\r\n\r\n", Detected(HTTP)),
    (b"OPTIONS * HTTP/1.1\r\n\r\n", Detected(HTTP)),
    (b"PATCH /x HTTP/1.1\r\n\r\n", Detected(HTTP)),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Detected(TCP)),  # h2 prior knowledge: not ours
    (b"GET / HTTP/2.0\r\n\r\n", Detected(TCP)),
    (b"GET /\r\n", Detected(TCP)),  # HTTP/0.9: no version
    (b"GETS / HTTP/1.1\r\n", Detected(TCP)),
    (b"get / HTTP/1.1\r\n", Detected(TCP)),  # methods are case-sensitive
    (b"*3\r\n$3\r\nSET\r\n", Detected(TCP)),  # redis
    (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", Detected(TCP)),  # postgres SSLRequest
    (client_hello("tls.example"), Detected(TLS, "tls.example")),
    (client_hello(None), Detected(TLS, None)),
    (b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", Detected(TCP)),  # a ServerHello first
    (b"\x16\x02\x00", Detected(TCP)),  # not TLS 1.x
]


@pytest.mark.parametrize(("data", "expected"), CASES)
def test_whole_input(data: bytes, expected: Detected) -> None:
    assert classify(data) == expected
    assert classify(data, final=True) == expected


@pytest.mark.parametrize(("data", "expected"), CASES)
def test_byte_by_byte_never_decides_early_or_differently(data: bytes, expected: Detected) -> None:
    decided = None
    for i in range(len(data) + 1):
        verdict = classify(data[:i])
        if verdict is not None:
            decided = verdict
            break
    assert decided == expected


def test_the_deadline_decides_what_the_bytes_could_not() -> None:
    assert classify(b"", final=True) == Detected(TCP)  # server first: the client said nothing
    assert classify(b"GE", final=True) == Detected(TCP)
    assert classify(b"GET /slow-target", final=True) == Detected(HTTP)  # a method and a space
    hello = client_hello("tls.example")
    assert classify(hello[:2], final=True) == Detected(TCP)
    assert classify(hello[:3], final=True) == Detected(TLS, None)  # a record header: TLS
    assert classify(hello[:40], final=True) == Detected(TLS, None)  # cut short: no SNI
    assert classify(b"GET /" + b"a" * 9000) == Detected(HTTP)  # a long target: not held


def test_malformed_server_name_is_none_not_an_error() -> None:
    hello = client_hello("tls.example")
    record = hello[5:]
    for cut in range(0, len(record), 7):
        server_name(record[:cut])  # never raises
    assert server_name(b"\x01") is None


async def _pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def test_peek_server_first_protocol_is_tcp_after_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = await _pair()
    async with client, server:
        start = trio.current_time()
        data, verdict = await peek(server, 0.1)
        assert (data, verdict) == (b"", Detected(TCP))
        assert trio.current_time() - start == pytest.approx(0.1)


async def test_peek_collects_a_request_line_split_over_writes() -> None:
    client, server = await _pair()
    async with client, server, trio.open_nursery() as nursery:

        async def dribble() -> None:
            for part in (b"GE", b"T /x HT", b"TP/1.1\r", b"\nHost: y\r\n\r\n"):
                await client.send_all(part)
                await trio.testing.wait_all_tasks_blocked()  # peek has read this part

        nursery.start_soon(dribble)
        data, verdict = await peek(server, 5.0)
    assert verdict == Detected(HTTP)
    assert data.startswith(b"GET /x HTTP/1.1\r\n")  # everything read is handed on


async def test_peek_stops_at_eof_and_keeps_the_bytes() -> None:
    client, server = await _pair()
    async with client, server:
        await client.send_all(b"GE")
        await client.send_eof()
        assert await peek(server, 5.0) == (b"GE", Detected(TCP))


async def test_peek_reads_a_whole_client_hello() -> None:
    client, server = await _pair()
    async with client, server:
        hello = client_hello("db.internal")
        await client.send_all(hello)
        assert await peek(server, 5.0) == (hello, Detected(TLS, "db.internal"))
