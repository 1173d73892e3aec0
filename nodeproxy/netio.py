"""Socket reads and writes of the data path: straight to the kernel, parking in trio only
when the kernel would block.

Why not ``trio.SocketStream.receive_some`` / ``send_all``: trio makes every send
and every successful receive a full trip through the scheduler (a
``cancel_shielded_checkpoint`` after the system call), wrapped in a conflict
detector, an error-translating context manager and an async context manager
per call. For a proxied request that is four extra scheduler trips and their
bookkeeping, each resuming the whole coroutine stack of the connection: about a
tenth of nodeproxy's CPU per request. Here a read or write is one ``recv`` /
``send`` on the non-blocking socket; only ``EAGAIN`` parks the task in
``trio.lowlevel.wait_readable`` / ``wait_writable``.

What trio's checkpoints gave, and how it is kept:

- Cancellation: every call starts with ``trio.lowlevel.checkpoint_if_cancelled``,
  so a connection whose deadline fired (the sweeper cancelled its scope) stops at
  its next read or write, as before.
- Batching and fairness: a completed ``send_all`` yields once
  (``cancel_shielded_checkpoint``, as trio's own ``send_all`` does). A write is
  nearly always followed by a read of the peer's answer (the upstream's response,
  the client's next request); reading at once finds nothing, so the read returns
  EAGAIN and the task parks, which costs an ``epoll_ctl`` to re-arm trio's one-shot
  registration and a wake through ``epoll_wait``. Yielding first lets every other
  ready connection run, so by the time this task reads, the answer is usually
  there. Measured on nodeproxy under wrk -c16: read calls per request 3.9 -> 2.0
  (no EAGAIN), CPU per request -11 % (/proc/PID/io and utime+stime). A successful
  read does not yield (its caller parses and then writes, which yields), and the
  one loop that could run on without writing, pipelined request heads already
  buffered, checkpoints explicitly (``server/connection.py``).
- Errors: ``EBADF`` or a socket closed under us -> ``trio.ClosedResourceError``,
  any other ``OSError`` (reset, broken pipe) -> ``trio.BrokenResourceError``: the
  exceptions trio's streams raise, which the data path already handles.
- No descriptor number is kept: the calls go to the standard-library socket object
  trio wraps, which answers ``EBADF`` once closed, so a number reused by a newer
  socket is never written through an old reference. ``recv``/``send``, not
  ``os.read``/``os.write``: the socket calls skip the kernel's file layer
  (``vfs_read``, ``fdget_pos``: about 0.8 µs a request in ``perf``) and trio's
  interpreted ``fileno()``.

Two more choices about when to park, both against the kernel's wake-ups of the peers
(bench/README.md, "Wake-ups, counted"): a request's write upstream waits one scheduler
pass first (``yield_before_shared_write``), and a read for a next request parks before
reading once the client has been idle (``IdleReads``).

Only plain TCP streams take this path; TLS streams (mTLS between node proxies)
keep trio's, which buffers and frames records.
"""

from __future__ import annotations

import errno
import socket
from typing import Final

import trio

# Bound once (Final: a C static in the compiled build, not two lookups per call).
_checkpoint_if_cancelled: Final = trio.lowlevel.checkpoint_if_cancelled
_yield_after_write: Final = trio.lowlevel.cancel_shielded_checkpoint
_Stream: Final = trio.SocketStream


async def receive_some(stream: trio.SocketStream, max_bytes: int) -> bytes:
    """Up to ``max_bytes`` from ``stream``; b"" at end of stream."""
    if type(stream) is not _Stream:
        return await stream.receive_some(max_bytes)
    await _checkpoint_if_cancelled()
    sock = stream.socket
    while (data := _try_read(sock, max_bytes)) is None:
        await trio.lowlevel.wait_readable(sock)
    return data


def _stdlib(sock: trio.socket.SocketType) -> socket.socket:
    """The standard-library socket a trio socket wraps (trio keeps it as ``_sock``; trio
    is pinned, and tests/test_netio.py fails first if that ever changes)."""
    raw: socket.socket = sock._sock  # type: ignore[attr-defined]
    return raw


def _try_read(sock: trio.socket.SocketType, max_bytes: int) -> bytes | None:
    """One ``recv``: the bytes (b"" at end of stream), or None when it would block."""
    try:
        return _stdlib(sock).recv(max_bytes)
    except BlockingIOError:
        return None
    except OSError as exc:
        raise _stream_error(exc) from exc


class IdleReads:
    """One connection's guess whether a read between its requests would find nothing.

    A client that waits between requests (a keep-alive pool at less than full load)
    has sent nothing yet when the proxy, its response written, reads for the next
    request: that read returns ``EAGAIN``, a system call and an exception for
    nothing, and only then does the task park. Once a connection's read between
    requests has found nothing, its next ones park first and read when the
    socket is readable; every ``PROBE_EVERY``-th reads first again, so a client
    that turns busy (its next request already there) is noticed. Measured
    (bench/throughput.py --pace 4): reads per request 3.04 -> 2.1.
    """

    PROBE_EVERY: Final = 16
    __slots__ = ("parks", "streak")

    def __init__(self) -> None:
        self.parks = False  # the last read-first between requests found nothing
        self.streak = 0  # parks-first since the last read-first


async def receive_between_requests(
    stream: trio.SocketStream, max_bytes: int, guess: IdleReads
) -> bytes:
    """``receive_some`` for the first bytes of a next request, parking first when
    ``guess`` says the client is idle (see ``IdleReads``)."""
    if type(stream) is not _Stream:
        return await stream.receive_some(max_bytes)
    sock = stream.socket
    if guess.parks and guess.streak < IdleReads.PROBE_EVERY:
        guess.streak += 1
    else:  # read first: the client may have turned busy
        guess.streak = 0
        await _checkpoint_if_cancelled()
        data = _try_read(sock, max_bytes)
        guess.parks = data is None
        if data is not None:
            return data
    await trio.lowlevel.wait_readable(sock)  # a cancellation point itself
    return await receive_some(stream, max_bytes)


async def send_all(stream: trio.SocketStream, data: bytes) -> None:
    """Write all of ``data`` (non-empty) to ``stream``."""
    if type(stream) is not _Stream:
        await stream.send_all(data)
        return
    await _checkpoint_if_cancelled()
    sock = stream.socket
    rest: bytes | memoryview = data
    raw = _stdlib(sock)
    while True:
        try:
            sent = raw.send(rest)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        except OSError as exc:
            # After send_eof the kernel answers EPIPE; trio's send_all checks the flag up
            # front, which is an interpreted property call per write for a rare case.
            if sock.did_shutdown_SHUT_WR:
                raise trio.ClosedResourceError("can't send data after sending EOF") from exc
            raise _stream_error(exc) from exc
        if sent == len(rest):
            await _yield_after_write()
            return
        rest = memoryview(rest)[sent:]


async def yield_before_shared_write() -> None:
    """Let every other connection ready in this scheduler pass run up to its own write
    first, so that writes to a peer many connections share (the upstream) leave back
    to back instead of one request's processing apart.

    Why: a peer that has answered one request and found nothing more to do goes idle,
    and its core halts; the next write must wake it with an interrupt, which on a VM
    is an exit to the hypervisor, the dearest part of a request's kernel time
    (bench/README.md, "Wake-ups"). Writes that arrive while the peer is still busy
    with the previous one wake nobody. Envoy gets the same batching from its event
    loop: ``Connection::write`` only buffers and activates the socket's write event,
    which runs after the other ready events of the same pass.

    Measured (bench/throughput.py --pace 4, 16 connections whose requests arrive
    together): wake-up interrupts 1.9 -> 1.1 a request, CPU per request -6 %,
    p99 latency 1.7 -> 1.5 ms. Alone on the scheduler it is one cheap trip through
    it. Not a cancellation point: the write that follows is one.
    """
    await _yield_after_write()


def _stream_error(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")
