"""A spliced tunnel's TLS, driven straight on the ssl object: the cheap way to move bytes.

Why: once a tunnel is open, its node does nothing but move bytes, and
trio's ``SSLStream`` costs more than the crypto itself for small records:
every ``receive_some``/``send_all`` goes through ``_retry`` with its conflict
detectors, locks and scheduler trips, then trio's socket stream with its own
(``netio.py`` explains the same cost for plain sockets). A tunnel carrying
HTTP pays it twice per request on the destination node. Here, after trio did
the handshake, the same ``SSLObject`` and memory BIOs are driven directly:
a read decrypts what is buffered and reads the socket only when it must
(``netio``: one system call, parking only on ``EAGAIN``); a write encrypts
into the outgoing BIO and sends it at once.

Two tasks use one ssl object (one per direction). That is safe because
every ssl call is synchronous (no await between touching the object and
leaving it), and records leave in the order they were made: the outgoing
BIO is drained only by the one task sending (``_sending``), and each drain
sends all of it before the next may start, so a record made by the reader (a TLS 1.3 key update
answer) can never overtake or split one made by the writer.

Also the stream of a source node's pooled HTTP connection through a tunnel
(``upstream/pool.py``): it has ``trio.SocketStream``'s surface (``socket``,
``send_eof``) and tells what TLS holds unread (``buffered``), which a plain
socket's ``poll`` cannot see.

Only for a ``TLSStream`` over a plain ``trio.SocketStream`` whose trio
internals are where this trio keeps them (``adopt`` returns None otherwise,
and the splice keeps the trio stream). Nothing else may use the trio stream
afterwards; closing it still closes the connection.
"""

from __future__ import annotations

import ssl

import trio

from nodeproxy.netio import receive_some, send_all
from nodeproxy.tls.stream import TLSStream, close_notify

_READ = 64 * 1024
_RECORD = 16 * 1024  # TLS's largest plaintext record


class RawTLS:
    """``receive_some`` / ``send_all`` / ``half_close`` on a handshaken TLS connection."""

    __slots__ = (
        "_early", "_free", "_incoming", "_obj", "_outgoing", "_sending", "_sock", "stream",
    )  # fmt: skip

    def __init__(
        self,
        stream: TLSStream,
        obj: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        sock: trio.SocketStream,
        early: bytes = b"",
    ) -> None:
        self.stream = stream  # the TLSStream adopted (its aclose still closes everything)
        self._obj, self._incoming, self._outgoing, self._sock = obj, incoming, outgoing, sock
        # One sender at a time. Not a trio.Lock: its uncontended acquire still yields to
        # the scheduler, a round trip per record; here only a waiter ever parks.
        self._sending = False
        self._free: trio.Event | None = None
        self._early = early  # records trio held back (TLS 1.3 tickets): they go out first

    def __repr__(self) -> str:
        return f"<RawTLS {self.stream!r}>"

    @property
    def socket(self) -> trio.socket.SocketType:
        """The TCP socket (peer address, a hard close), as on ``trio.SocketStream``."""
        return self._sock.socket

    def buffered(self) -> bool:
        """Bytes received but not read yet (ciphertext or plaintext held by TLS): an
        idle pooled connection with any is not reused (``upstream/connection.py``)."""
        return bool(self._incoming.pending or self._obj.pending())

    @classmethod
    def adopt(cls, stream: TLSStream) -> RawTLS | None:
        tls = stream.tls
        obj = getattr(tls, "_ssl_object", None)
        incoming = getattr(tls, "_incoming", None)
        outgoing = getattr(tls, "_outgoing", None)
        sock = tls.transport_stream
        if (
            not isinstance(obj, ssl.SSLObject)
            or not isinstance(incoming, ssl.MemoryBIO)
            or not isinstance(outgoing, ssl.MemoryBIO)
            or type(sock) is not trio.SocketStream
        ):
            return None
        delayed = getattr(tls, "_delayed_outgoing", None)
        if delayed is not None and not isinstance(delayed, bytes):
            return None
        tls._delayed_outgoing = None  # ours now, sent before anything else
        return cls(stream, obj, incoming, outgoing, sock, (delayed or b"") + outgoing.read())

    async def _flush(self) -> None:
        while self._sending:  # the other direction is sending: then we drain what is left
            if self._free is None:
                self._free = trio.Event()
            await self._free.wait()
        data = self._outgoing.read()
        if self._early:
            data, self._early = self._early + data, b""
        if not data:
            return
        self._sending = True
        try:
            await send_all(self._sock, data)
        finally:
            self._sending = False
            free, self._free = self._free, None
            if free is not None:
                free.set()

    async def receive_some(self, max_bytes: int = _READ) -> bytes:
        """Plaintext, b"" at the peer's close_notify (or a bare end of the connection)."""
        while True:
            try:
                # a whole record at a time (<= 16 KiB): nothing decrypted stays behind,
                # which a close_notify (half_close) could otherwise swallow
                data = self._obj.read(max(max_bytes, _RECORD))
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return b""
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            else:
                if self._outgoing.pending:  # the read made records of its own
                    await self._flush()
                return data
            if self._outgoing.pending:
                await self._flush()
            wire = await receive_some(self._sock, _READ)
            if not wire:
                return b""
            self._incoming.write(wire)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._obj.write(data)
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        await self._flush()

    async def half_close(self) -> None:
        """close_notify; still readable (TLS 1.3)."""
        try:
            close_notify(self._obj, self._incoming)
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        with trio.move_on_after(1.0):  # a peer that never reads must not hold us
            await self._flush()

    async def send_eof(self) -> None:
        await self.half_close()

    async def aclose(self) -> None:
        await self.stream.aclose()
