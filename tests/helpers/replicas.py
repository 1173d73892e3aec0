"""Replicas for the traffic tests: a fixed delay and a settable status, plus a fast client.

``backend()`` in ``backends.py`` picks its behaviour by path, which is the
same for every replica behind one service; the traffic tests need replicas
of one service that differ (one slow, one failing, one labelled v2), so
each ``Replica`` answers every path with its own ``status`` after its own
``delay`` (both may change while it runs), and counts connections and
requests; ``GET /healthz`` (an active health check) gets ``health_status``
instead and is counted in ``probes`` only. ``KeepAliveClient`` speaks
HTTP/1.1 over one raw socket with h11, so thousands of small requests stay
quick.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import h11
import trio

CHUNK = 65536


@dataclass
class Replica:
    name: str
    delay: float = 0.0  # seconds before each answer (real time)
    status: int = 200
    port: int = 0
    connections: int = 0
    requests: int = 0
    health_status: int = 200  # the answer to GET /healthz (not counted in ``requests``)
    probes: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        status = self.status
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(CHUNK))
                    continue
                if type(event) is h11.Request:
                    if event.target == b"/healthz":
                        self.probes += 1
                        self.connections -= 1  # probes come on connections of their own
                        status = self.health_status
                    else:
                        self.requests += 1
                        status = self.status
                    continue
                if type(event) is not h11.EndOfMessage:
                    return
                if self.delay:
                    await trio.sleep(self.delay)
                body = self.name.encode()
                headers = [("content-length", str(len(body))), ("x-replica", self.name)]
                out = conn.send(h11.Response(status_code=status, headers=headers))
                out += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
                await stream.send_all(out)
                if conn.our_state is h11.MUST_CLOSE:  # the client sent connection: close
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.RemoteProtocolError):
            return
        finally:
            stream.socket.close()


@asynccontextmanager
async def replicas(*specs: Replica) -> AsyncIterator[tuple[Replica, ...]]:
    """Start every replica on 127.0.0.1, port 0."""
    async with trio.open_nursery() as nursery:
        for r in specs:
            listeners = await nursery.start(partial(trio.serve_tcp, r.handle, 0, host="127.0.0.1"))
            r.port = listeners[0].socket.getsockname()[1]
        yield specs
        nursery.cancel_scope.cancel()


class KeepAliveClient:
    """Sequential requests over one kept-alive connection: (status, headers, body)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def get(
        self, host: str, path: str = "/", headers: list[tuple[str, str]] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = self.conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        request = h11.Request(method="GET", target=path, headers=[("host", host), *(headers or [])])
        await self.stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        status, head, body = 0, {}, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self.stream.receive_some(CHUNK))
            elif type(event) is h11.Response:
                status = event.status_code
                head = {k.decode(): v.decode() for k, v in event.headers}
            elif type(event) is h11.Data:
                body += event.data
            elif type(event) is h11.EndOfMessage:
                return status, head, body
            else:
                raise AssertionError(f"unexpected {event!r}")


@asynccontextmanager
async def keep_alive(port: int) -> AsyncIterator[KeepAliveClient]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        yield KeepAliveClient(stream)
