"""An mTLS stream that fits where the plain data path expects a socket stream.

The connection loop, the downstream/upstream records and the relay were
written for ``trio.SocketStream``: they read and write with ``receive_some``
/ ``send_all``, half-close with ``send_eof``, and close through
``.socket.close()`` (cheap and never blocking). ``TLSStream`` wraps a
handshaken ``trio.SSLStream`` with exactly that surface, so the mesh reuses
the plain HTTP/1.1 path unchanged on both sides of a node-to-node hop:

- ``socket`` is the TCP transport's socket (peer address, hard close);
- TLS has no half-close: ``send_eof`` sends ``close_notify`` and closes
  (what the lingering close after an error answer and the WebSocket splice
  need: the peer sees a clean end of stream);
- ``identity`` is the peer's verified SPIFFE ID, read once after the
  handshake;
- ``half_close`` is the real TLS 1.3 half-close a byte tunnel needs
  (``tunnel/splice.py``): ``close_notify`` goes out and the stream stays
  readable until the peer's own ``close_notify``. trio's ``SSLStream`` has no
  public call for it, so it drives the ssl object the way ``aclose`` does
  (``unwrap`` without waiting for the peer's answer); with a trio that lacks
  those internals it falls back to a full close.
"""

from __future__ import annotations

import ssl

import trio

from nodeproxy.tls.identity import SpiffeId


class TLSStream:
    """A handshaken ``SSLStream`` over TCP, shaped like ``trio.SocketStream``."""

    __slots__ = ("identity", "socket", "tls")

    def __init__(self, tls: trio.SSLStream[trio.SocketStream], identity: SpiffeId) -> None:
        self.tls = tls
        self.socket = tls.transport_stream.socket
        self.identity = identity

    def __repr__(self) -> str:
        return f"<TLSStream {self.identity} {self.tls.version()}>"

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            return await self.tls.receive_some(max_bytes)
        except trio.BrokenResourceError as exc:
            # After our own close_notify (half_close), ssl reports the peer's as an
            # error rather than b"": it is the clean end of the stream.
            if isinstance(exc.__cause__, ssl.SSLZeroReturnError):
                return b""
            raise

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.tls.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.tls.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """No TLS half-close: send close_notify and close the connection."""
        await self.aclose()

    def buffered(self) -> bool:
        """TLS holds received bytes not read yet (invisible to a ``poll`` of the socket)."""
        incoming = getattr(self.tls, "_incoming", None)
        return bool(incoming is not None and incoming.pending) or bool(
            getattr(self.tls, "_ssl_object", None) and self.tls._ssl_object.pending()
        )

    async def half_close(self) -> None:
        """Send ``close_notify`` and keep reading (TLS 1.3 half-close)."""
        retry = getattr(self.tls, "_retry", None)
        obj = getattr(self.tls, "_ssl_object", None)
        incoming = getattr(self.tls, "_incoming", None)
        if retry is None or not isinstance(obj, ssl.SSLObject):
            await self.aclose()
            return
        if not isinstance(incoming, ssl.MemoryBIO):
            await self.aclose()
            return
        with trio.move_on_after(1.0) as scope:  # a peer that never reads must not hold us
            await retry(close_notify, obj, incoming, ignore_want_read=True)
        if scope.cancelled_caught:
            await trio.aclose_forcefully(self.tls.transport_stream)

    async def aclose(self) -> None:
        try:
            with trio.move_on_after(1.0) as scope:  # a peer that never reads must not hold us
                await self.tls.aclose()
            if scope.cancelled_caught:
                await trio.aclose_forcefully(self.tls.transport_stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.socket.close()


def close_notify(obj: ssl.SSLObject, incoming: ssl.MemoryBIO) -> None:
    """Put our ``close_notify`` in the outgoing BIO, and nothing else happens.

    ``SSLObject.unwrap`` calls ``SSL_shutdown`` twice: the second call reads on
    towards the peer's ``close_notify``, consuming (and losing) any records the
    peer already sent that sit unread in ``incoming``. So those bytes are taken
    out first and put back, in order, before anyone else can touch the BIO
    (no await in between): the second call finds nothing to read.
    """
    held = incoming.read()
    try:
        obj.unwrap()
    except ssl.SSLWantReadError:
        pass  # the peer's close_notify comes later, through a read
    finally:
        if held:
            incoming.write(held)
