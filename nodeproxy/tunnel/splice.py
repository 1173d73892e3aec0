"""Raw bytes both ways between two streams, with half-close and an idle bound.

Why its own splice (``server/relay.py`` has one for 101 upgrades): a TCP
tunnel must keep a half-closed connection working. A client that sends its
request and then shuts down its write side (``nc -N``, a Redis pipeline
closed with ``QUIT``, a TLS client's ``close_notify``) still expects the
whole answer. So the end of one direction is passed on as an end of that
direction only: ``send_eof`` on TCP, ``close_notify`` with the stream left
readable on TLS (``TLSStream.half_close``), and the other direction runs on
until it ends too. A broken stream (reset, error) ends both at once.

Bytes already read before the splice started (``pending``: what protocol
detection peeked, what h11 read past a CONNECT head) go first, in order.
A tunnel with no byte either way for ``idle`` seconds is closed (0: never).

A TLS side is driven straight on its ssl object (``rawtls.py``): a tunnel
only moves bytes, and trio's ``SSLStream`` costs more than the crypto.

Two tasks per tunnel, in one nursery: per connection, never per request.
The caller closes both streams afterwards.

Drain (``quiet_after_answer``): a tunnel that carries HTTP/1.1 for a source
node's pool would otherwise hold a draining process until its deadline, as
it never ends by itself. HTTP's client speaks first, so once the drain has
started such a tunnel is closed as soon as the last bytes were the answer
(b -> a) and nothing moved for ``quiet_after_answer`` seconds: between two
exchanges, like an idle keep-alive. The source sees a keep-alive close and
its pool opens a new connection (to a node not draining). A raw TCP tunnel
has no such boundary (servers may speak first) and runs to the deadline.
"""

from __future__ import annotations

import math
from contextlib import suppress
from dataclasses import dataclass

import trio

from nodeproxy.netio import receive_some, send_all
from nodeproxy.tls.stream import TLSStream
from nodeproxy.tunnel.rawtls import RawTLS

Stream = trio.abc.Stream | TLSStream
_Side = Stream | RawTLS


@dataclass(slots=True)
class Spliced:
    """What crossed a finished splice: bytes each way and how it ended."""

    a_to_b: int = 0
    b_to_a: int = 0
    idle_timeout: bool = False
    broken: bool = False
    drained: bool = False  # closed between exchanges by a drain
    last_b_to_a: bool = False  # the last bytes moved were b's (an answer)
    last_at: float = 0.0  # when bytes last moved


async def half_close(stream: _Side) -> None:
    """End our sending direction only (TLS: ``close_notify``; TCP: shutdown write)."""
    with suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        if isinstance(stream, (TLSStream, RawTLS)):
            await stream.half_close()
        elif isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
        else:  # nothing finer than a close
            await stream.aclose()


async def _receive(stream: _Side, chunk: int) -> bytes | bytearray:
    if type(stream) is trio.SocketStream:
        return await receive_some(stream, chunk)
    return await stream.receive_some(chunk)


async def _send(stream: _Side, data: bytes | bytearray) -> None:
    if type(stream) is trio.SocketStream:
        await send_all(stream, bytes(data))
    else:
        await stream.send_all(data)


async def splice(
    a: Stream,
    b: Stream,
    *,
    a_pending: bytes = b"",
    b_pending: bytes = b"",
    idle: float,
    chunk: int = 64 * 1024,
    drain: trio.Event | None = None,
    quiet_after_answer: float = 1.0,
) -> Spliced:
    """Copy a -> b (``a_pending`` first) and b -> a (``b_pending`` first) until both end;
    with ``drain``, also end between exchanges once it is set (module docstring)."""
    a_side: _Side = RawTLS.adopt(a) or a if isinstance(a, TLSStream) else a
    b_side: _Side = RawTLS.adopt(b) or b if isinstance(b, TLSStream) else b
    result = Spliced(last_at=trio.current_time())
    watcher = trio.CancelScope()  # ends the watcher once both directions ended
    bound = idle if idle > 0 else math.inf  # 0: no idle bound
    ended = 0
    async with trio.open_nursery() as nursery:
        scope = nursery.cancel_scope

        async def pipe(src: _Side, dst: _Side, pending: bytes, forward: bool) -> None:
            nonlocal ended
            try:
                await copy(src, dst, pending, forward)
            finally:
                ended += 1
                if ended == 2:
                    watcher.cancel()

        async def copy(src: _Side, dst: _Side, pending: bytes, forward: bool) -> None:
            try:
                data: bytes | bytearray = pending
                while True:
                    if data:
                        result.last_at = trio.current_time()  # a byte: not idle
                        result.last_b_to_a = not forward
                        await _send(dst, data)
                        if forward:
                            result.a_to_b += len(data)
                        else:
                            result.b_to_a += len(data)
                    data = await _receive(src, chunk)
                    if not data:
                        break
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                result.broken = True
                scope.cancel()
                return
            await half_close(dst)

        async def watch() -> None:
            """Ends the tunnel when idle past the bound, or between exchanges once the
            drain started. A byte only stamps ``last_at``: moving a trio deadline per
            chunk cost the destination node ~10 us per request."""
            with watcher:
                while True:
                    now = trio.current_time()
                    wake = result.last_at + bound
                    if now >= wake:
                        result.idle_timeout = True
                        scope.cancel()
                        return
                    if drain is None:
                        await trio.sleep_until(wake)
                    elif not drain.is_set():
                        with trio.move_on_at(wake):
                            await drain.wait()
                    else:
                        quiet_at = result.last_at + quiet_after_answer
                        if result.last_b_to_a and now >= quiet_at:
                            result.drained = True
                            scope.cancel()
                            return
                        await trio.sleep_until(min(wake, max(quiet_at, now + 0.05)))

        nursery.start_soon(pipe, a_side, b_side, a_pending, True)
        nursery.start_soon(pipe, b_side, a_side, b_pending, False)
        nursery.start_soon(watch)
    return result
