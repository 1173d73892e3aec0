"""One pooled upstream connection: its socket, its client codec, and whether it is still clean.

Lent to one request at a time by ``pool.Upstreams``; ``stirred`` tells the
pool, at checkout, whether the idle socket received anything while nobody
was asking (then it must not be reused: those bytes are not the next
request's answer).
"""

from __future__ import annotations

import select
from typing import TYPE_CHECKING, Final

import trio

from nodeproxy.http1.codec import H11ClientCodec
from nodeproxy.resilience.overload import OverloadGuard, Resource

# A plain TCP stream has no read-ahead buffer: checked by type, not by a getattr that
# fails (an AttributeError made and dropped at every reuse, 4k instructions).
_Stream: Final = trio.SocketStream

if TYPE_CHECKING:
    PoolKey = tuple[str, str]  # (cluster name, endpoint address)


class UpstreamConnection:
    """One socket to an endpoint plus its client codec; lent to one request at a time."""

    __slots__ = ("_poller", "bytes_in", "codec", "guard", "pool_key", "reused", "stream")

    def __init__(self, stream: trio.SocketStream, codec: H11ClientCodec, key: PoolKey) -> None:
        self.stream = stream
        self.codec = codec
        self.pool_key = key
        self.reused = False  # True once it has served a request and come back from idle
        self.bytes_in = 0
        self.guard: OverloadGuard | None = None  # holds a max_connections slot until closed
        self._poller: select.poll | None = None  # made at the first reuse, kept for the next

    def __repr__(self) -> str:
        return f"<UpstreamConnection {self.pool_key[1]} [{'reused' if self.reused else 'new'}]>"

    @property
    def endpoint(self) -> str:
        return self.pool_key[1]

    def close(self) -> None:
        """Close the socket and give back its ``max_connections`` slot (once)."""
        self.stream.socket.close()
        guard, self.guard = self.guard, None
        if guard is not None:
            guard.release(Resource.CONNECTIONS)


def stirred(conn: UpstreamConnection) -> bool:
    """An idle connection that became readable (bytes or EOF) while nobody asked it anything.

    Whatever arrived is not the answer to the request we are about to send: a
    late body after a HEAD/204/304 answer, extra bytes after a Content-Length
    body, or the server closing. Reusing it would hand those bytes to the next
    client (Envoy closes a connection that receives data with no request
    outstanding), so it is closed and a new one opened in its slot. One
    ``poll(0)`` syscall per reuse; the poll object lives with the connection.
    """
    if type(conn.stream) is not _Stream:  # TLS: what it read ahead is unseen
        buffered = getattr(conn.stream, "buffered", None)
        if buffered is not None and buffered():
            return True
    poller = conn._poller
    if poller is None:
        poller = conn._poller = select.poll()
        try:
            poller.register(conn.stream.socket.fileno(), select.POLLIN | select.POLLRDHUP)
        except (OSError, ValueError):  # already closed
            return True
    return bool(poller.poll(0))
