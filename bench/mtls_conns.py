"""The new-connection client of bench/mtls_hop.py: one fresh connection per request.

Why apart: keep-alive load is wrk's job, but wrk cannot present a client certificate nor open a
new TLS connection per request, and that is exactly the cost to measure (a handshake). This
loop does it with the same tools node-a uses for its outbound hop (trio's SSLStream over
Python's ssl, h11): connect, handshake (mTLS with a workload certificate, or none for plaintext),
one GET, read the whole answer, close. A few workers share a bounded count of connections under
a time limit. It measures the server's CPU per connection (its process group, from /proc, via
harness.cpu_seconds) and its own (getrusage: what the client side of a handshake costs).
"""

from __future__ import annotations

import resource
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import h11
import trio
from harness import cpu_seconds

from nodeproxy.tls.context import client_context, server_context

FAILURES = (
    OSError,
    RuntimeError,
    h11.ProtocolError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    ssl.SSLError,
)


@dataclass
class NewConns:
    """One new-connection loop against one server."""

    mode: str
    target: str
    cpu_of: str
    ok: int = 0
    failed: int = 0
    seconds: float = 0.0
    server_us: float = 0.0  # server CPU per successful connection
    client_us: float = 0.0  # this process's CPU per successful connection
    accepted: float | None = None  # connections the server counted, when it counts them
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    first_error: str = ""
    latencies: list[float] = field(default_factory=list, repr=False)

    @property
    def rate(self) -> float:
        """Successful connections per second."""
        return self.ok / self.seconds if self.seconds else 0.0


def mtls_contexts(ca: Path, cert: Path, key: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(client, server) contexts built by nodeproxy itself for one certificate.

    The client context is the one node-a builds for its outbound hop (same versions, suites and
    verification flags), so the client's CPU per connection is node-a's price of a new hop.
    """
    pems = ca.read_bytes(), cert.read_bytes(), key.read_bytes()
    return client_context(pems[1], pems[2], pems[0]), server_context(pems[1], pems[2], pems[0])


async def one_connection(port: int, ctx: ssl.SSLContext | None, request: bytes) -> None:
    """Connect (and handshake), send one GET, read the whole answer, close; raise unless 200."""
    stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        if ctx is not None:
            stream = trio.SSLStream(stream, ctx, server_hostname=None)
            await stream.do_handshake()
        await stream.send_all(request)
        conn, status = h11.Connection(h11.CLIENT), 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise RuntimeError("closed before the end of the answer")
    if status != 200:
        raise RuntimeError(f"status {status}")


async def _loop(
    row: NewConns,
    port: int,
    ctx: ssl.SSLContext | None,
    request: bytes,
    count: int,
    seconds: float,
    concurrency: int,
) -> None:
    left = count
    start = trio.current_time()

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            began = trio.current_time()
            try:
                with trio.fail_after(5):
                    await one_connection(port, ctx, request)
            except FAILURES as exc:
                row.failed += 1
                row.first_error = row.first_error or f"{type(exc).__name__}: {exc}"
                continue
            row.ok += 1
            row.latencies.append(trio.current_time() - began)

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
    row.seconds = trio.current_time() - start


def measure_loop(
    row: NewConns,
    server_pgid: int,
    port: int,
    ctx: ssl.SSLContext | None,
    request: bytes,
    *,
    count: int,
    seconds: float,
    concurrency: int,
) -> None:
    """Run `concurrency` workers over at most `count` connections or `seconds`; fill `row`."""
    server, client = cpu_seconds(server_pgid), resource.getrusage(resource.RUSAGE_SELF)
    try:
        trio.run(_loop, row, port, ctx, request, count, seconds, concurrency)
    except BaseExceptionGroup as group:  # Ctrl-C inside a worker arrives wrapped by the nursery
        interrupted = group.subgroup(KeyboardInterrupt)
        if interrupted is None:
            raise
        raise KeyboardInterrupt(str(interrupted.exceptions[0])) from None
    done = resource.getrusage(resource.RUSAGE_SELF)
    if not row.ok:
        return
    row.server_us = (cpu_seconds(server_pgid) - server) * 1e6 / row.ok
    spent = done.ru_utime + done.ru_stime - client.ru_utime - client.ru_stime
    row.client_us = spent * 1e6 / row.ok
    lat = sorted(row.latencies)
    row.p50_ms = lat[len(lat) // 2] * 1e3
    row.p99_ms = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3


def _pump(src: ssl.MemoryBIO, dst: ssl.MemoryBIO) -> None:
    if data := src.read():
        dst.write(data)


def memory_handshake_us(client: ssl.SSLContext, server: ssl.SSLContext, count: int) -> float:
    """CPU µs of one full mutual-TLS handshake, BOTH sides, through ssl.MemoryBIO in-process.

    The calibration floor: what OpenSSL (via Python's ssl) costs on this machine for the same
    certificates and settings, with no sockets, no trio and no proxy around it.
    """
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(count):
        c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
        c = client.wrap_bio(c_in, c_out, server_side=False, server_hostname=None)
        s = server.wrap_bio(s_in, s_out, server_side=True)
        done = {id(c): False, id(s): False}
        for _round in range(10):  # a TLS 1.3 mutual handshake needs 2-3 round trips
            for side in (c, s):
                if not done[id(side)]:
                    try:
                        side.do_handshake()
                        done[id(side)] = True
                    except ssl.SSLWantReadError:
                        pass
            _pump(c_out, s_in)
            _pump(s_out, c_in)
            if all(done.values()):
                break
        else:
            raise RuntimeError("in-memory handshake did not finish")
    after = resource.getrusage(resource.RUSAGE_SELF)
    spent = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return spent * 1e6 / count
