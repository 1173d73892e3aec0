"""Steady HTTP/1.1 load with a strict verdict: which requests failed, and why.

Two kinds of client, as a node's pods behave:

- keep-alive clients reuse one connection for request after request; when a
  *reused* connection is closed before any byte of the response arrived,
  they retry the (idempotent) GET once on a new connection, as urllib3 and
  browsers do. That retry is counted, not failed.
- new-connection clients open a connection per request: nothing may fail.

Anything else (a reset after response bytes, a non-200, a second failure of
the same request, a new connection refused or closed) is a failure with a
one-line reason. Every client stops after ``max_requests`` or when ``stop``
is set, so the load is bounded in requests and time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h11
import trio

RECEIVE = 64 * 1024
Client = Callable[..., Awaitable[None]]
REQUEST_TIMEOUT = 10.0


@dataclass
class LoadResult:
    ok: int = 0
    retried: int = 0  # reused keep-alive connections closed before a response byte
    failures: list[str] = field(default_factory=list)
    progress: trio.Event = field(default_factory=trio.Event)  # set at each ``progress_every``
    progress_every: int = 50
    stop: trio.Event = field(default_factory=trio.Event)
    running: int = 0
    finished: trio.Event = field(default_factory=trio.Event)
    # (finished at, seconds) per successful request: bounded by the clients' max_requests
    latencies: list[tuple[float, float]] = field(default_factory=list)

    def count_ok(self, started: float) -> None:
        now = trio.current_time()
        self.latencies.append((now, now - started))
        self.ok += 1
        if self.ok % self.progress_every == 0:
            self.progress.set()
            self.progress = trio.Event()

    async def finish(self) -> None:
        """Stop the clients and wait until every one has returned."""
        self.stop.set()
        await self.finished.wait()

    async def wait_for(self, more: int) -> None:
        """Wait until ``more`` further requests succeeded (rounded up to ``progress_every``)."""
        target = self.ok + more
        while self.ok < target:
            await self.progress.wait()


class Closed(Exception):
    """The connection ended; ``answered`` says whether any response byte had arrived."""

    def __init__(self, answered: bool, why: str) -> None:
        super().__init__(why)
        self.answered = answered


class Connection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        self.used = 0

    async def get(self, target: str, host: str) -> tuple[int, bool]:
        """(status, keep-alive?) of one GET; Closed when the connection ends first."""
        conn = self.h11
        self.used += 1
        request = h11.Request(method="GET", target=target, headers=[("host", host)])
        try:
            await self.stream.send_all(conn.send(request) + (conn.send(h11.EndOfMessage()) or b""))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise Closed(False, f"send: {exc!r}") from None
        answered, status = False, 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await self.stream.receive_some(RECEIVE)
                except trio.BrokenResourceError as exc:
                    raise Closed(answered, f"receive: {exc.__cause__!r}") from None
                if not data and not answered:
                    raise Closed(False, "EOF before a response byte")
                answered = answered or bool(data)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                keep = conn.our_state is h11.DONE and conn.their_state is h11.DONE
                if keep:
                    conn.start_next_cycle()
                return status, keep
            elif isinstance(event, h11.ConnectionClosed):
                raise Closed(True, "closed mid-response")

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def _connect(port: int) -> Connection:
    return Connection(await trio.open_tcp_stream("127.0.0.1", port))


async def keepalive_client(
    port: int, host: str, result: LoadResult, stop: trio.Event, max_requests: int, name: str
) -> None:
    conn: Connection | None = None
    try:
        for n in range(max_requests):
            if stop.is_set():
                return
            target = f"/{name}/{n}"
            started = trio.current_time()
            for attempt in (1, 2):
                fresh = conn is None
                try:
                    with trio.fail_after(REQUEST_TIMEOUT):
                        if conn is None:
                            conn = await _connect(port)
                        status, keep = await conn.get(target, host)
                except Closed as exc:
                    assert conn is not None
                    await conn.aclose()
                    conn = None
                    if fresh or exc.answered or attempt == 2:
                        result.failures.append(f"{target} (attempt {attempt}): {exc}")
                        break
                    result.retried += 1
                    continue
                except (OSError, trio.TooSlowError) as exc:
                    result.failures.append(f"{target}: {exc!r}")
                    if conn is not None:  # mid-exchange: never reused
                        await conn.aclose()
                        conn = None
                    break
                if status != 200:
                    result.failures.append(f"{target}: status {status}")
                else:
                    result.count_ok(started)
                if not keep:
                    await conn.aclose()
                    conn = None
                break
    finally:
        if conn is not None:
            await conn.aclose()


async def fresh_client(
    port: int, host: str, result: LoadResult, stop: trio.Event, max_requests: int, name: str
) -> None:
    for n in range(max_requests):
        if stop.is_set():
            return
        target = f"/{name}/{n}"
        started = trio.current_time()
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                conn = await _connect(port)
                try:
                    status, _ = await conn.get(target, host)
                finally:
                    await conn.aclose()
        except (Closed, OSError, trio.TooSlowError) as exc:
            result.failures.append(f"{target} (new connection): {exc!r}")
            continue
        if status != 200:
            result.failures.append(f"{target}: status {status}")
        else:
            result.count_ok(started)


async def _client(kind: Client, result: LoadResult, *args: object) -> None:
    result.running += 1
    try:
        await kind(*args)  # (port, host, result, stop, n, name)
    finally:
        result.running -= 1
        if not result.running:
            result.finished.set()


@asynccontextmanager
async def steady_load(
    port: int,
    host: str,
    *,
    keepalive: int = 4,
    fresh: int = 4,
    max_requests: int = 2000,
) -> AsyncIterator[LoadResult]:
    """Run the clients while the block runs; on exit stop them and wait for them."""
    result = LoadResult()
    async with trio.open_nursery() as nursery:
        clients = [(keepalive_client, f"k{i}") for i in range(keepalive)]
        clients += [(fresh_client, f"f{i}") for i in range(fresh)]
        for kind, name in clients:
            args = (port, host, result, result.stop, max_requests, name)
            nursery.start_soon(_client, kind, result, *args)
        try:
            yield result
        finally:
            result.stop.set()
