"""A small, bounded HTTP/1.1 server on plain h11, for the proxy's own little servers.

Why one shell: the admin listener (``admin/server.py``) and the demo greeter
(``demo/greeter.py``) both answer whole requests with whole responses, and
both must stay well behaved against any client: a connection cap (503 past
it), bounded heads (431) and bodies (413), a deadline on every read and
write (a slowloris gets cut off), a 500 when the app fails, and a lingering
close so an early answer is not destroyed by a reset. They differ only in
what they answer, which is the ``App`` they pass in. The data path keeps its
own server (``server/``): it streams, pools and is tuned for throughput.

Plain ``h11``, not ``http1.impl``'s build: nothing here meets the data path's
events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol

import h11
import structlog
import trio

RECEIVE_BYTES = 16 * 1024
LINGER_TIMEOUT = 1.0  # after the last answer, read and drop for this long before closing
LINGER_BYTES = 256 * 1024


@dataclass(frozen=True)
class ServerLimits:
    max_connections: int = 64  # past it a connection gets 503 and is closed
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 64 * 1024
    header_timeout: float = 10.0  # a connection's first request head (slowloris guard)
    idle_timeout: float = 15.0  # keep-alive: the next request head must arrive within this
    body_timeout: float = 10.0
    send_timeout: float = 10.0


@dataclass(frozen=True)
class Request:
    """One whole request, decoded: header names lowercase, in order."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    http_version: str
    body: bytes
    peer: str  # the client's IP ("" when the socket cannot say)


class Answer(Protocol):
    """A whole response; its headers include content-length."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> Sequence[tuple[str, str]]: ...
    @property
    def body(self) -> bytes: ...


@dataclass(frozen=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


App = Callable[[Request], Awaitable[Answer]]
ErrorPage = Callable[[int, str], Answer]  # (status, what went wrong) -> the answer


class SmallServer:
    """Serves connections with ``app``; ``active`` is only touched between awaits."""

    def __init__(
        self,
        name: str,
        app: App,
        error_page: ErrorPage,
        limits: ServerLimits | None = None,
        *,
        extra_headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.name = name
        self.app = app
        self.error_page = error_page
        self.limits = limits or ServerLimits()
        self.extra_headers = tuple((n.encode(), v.encode()) for n, v in extra_headers)
        self.active = 0
        self.rejected = 0
        self.log = structlog.get_logger(f"nodeproxy.{name}")

    def __repr__(self) -> str:
        cap = self.limits.max_connections
        return (
            f"<SmallServer {self.name} [{self.active}/{cap} connections, {self.rejected} rejected]>"
        )

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        """Serve one accepted connection until it ends, then close it (lingering)."""
        try:
            if self.active >= self.limits.max_connections:
                self.rejected += 1
                conn = h11.Connection(h11.SERVER)
                await self._send_error(conn, stream, 503, "too many connections")
                return
            self.active += 1
            try:
                await self._serve(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                pass  # the client went away or stalled: nothing to answer
            except Exception:
                # A bug in one answer must not take the listener (or the app) down.
                self.log.exception(f"{self.name}_connection_failed")
            finally:
                self.active -= 1
        finally:
            await _linger_close(stream)

    async def _serve(self, stream: trio.SocketStream) -> None:
        limits = self.limits
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        peer = peer_ip(stream)
        timeout = limits.header_timeout
        while True:
            try:
                with trio.fail_after(timeout):
                    event = await _next_event(conn, stream)
                if not isinstance(event, h11.Request):
                    return  # ConnectionClosed (or a stray event): we are done
                if _header_bytes(event) > limits.max_header_bytes:
                    # h11 bounds only *incomplete* heads; a big one arriving at once gets here.
                    detail = f"headers over {limits.max_header_bytes} bytes"
                    await self._send_error(conn, stream, 431, detail)
                    return
                with trio.fail_after(limits.body_timeout):
                    body = await self._read_body(conn, stream, event)
            except h11.RemoteProtocolError as exc:
                await self._send_error(conn, stream, exc.error_status_hint, str(exc))
                return
            if body is None:
                detail = f"body over {limits.max_body_bytes} bytes"
                await self._send_error(conn, stream, 413, detail)
                return
            request = _request(event, body, peer)
            try:
                answer = await self.app(request)
            except Exception:
                self.log.exception(f"{self.name}_handler_failed", target=request.target)
                answer = self.error_page(500, "handler failed; see the proxy log")
            with trio.fail_after(limits.send_timeout):
                await stream.send_all(self._encode(conn, answer, head=request.method == "HEAD"))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
            timeout = limits.idle_timeout

    async def _read_body(
        self, conn: h11.Connection, stream: trio.SocketStream, request: h11.Request
    ) -> bytes | None:
        """The request body; None once it is (or says it is) over the limit."""
        limit = self.limits.max_body_bytes
        for name, value in request.headers:
            if name == b"content-length" and int(value) > limit:
                return None  # h11 has validated the value already
        if conn.they_are_waiting_for_100_continue:
            continue_ = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            await stream.send_all(conn.send(continue_) or b"")
        chunks: list[bytes] = []
        seen = 0
        while True:
            event = await _next_event(conn, stream)
            if isinstance(event, h11.Data):
                seen += len(event.data)
                if seen > limit:
                    return None
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:  # ConnectionClosed mid-body: nobody to answer
                raise trio.BrokenResourceError("client closed during the body")

    def _encode(
        self, conn: h11.Connection, answer: Answer, *, head: bool = False, close: bool = False
    ) -> bytes:
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in answer.headers]
        headers.extend(self.extra_headers)
        if close:
            headers.append((b"connection", b"close"))
        reason = reason_phrase(answer.status).encode()
        out = conn.send(h11.Response(status_code=answer.status, headers=headers, reason=reason))
        if answer.body and not head:
            out = (out or b"") + (conn.send(h11.Data(data=answer.body)) or b"")
        return (out or b"") + (conn.send(h11.EndOfMessage()) or b"")

    async def _send_error(
        self, conn: h11.Connection, stream: trio.SocketStream, status: int, detail: str
    ) -> None:
        """Answer a request we will not serve when h11 still lets us; the caller closes."""
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        self.log.debug(f"{self.name}_bad_request", status=status, detail=detail)
        data = self._encode(conn, self.error_page(status, detail), close=True)
        try:
            with trio.move_on_after(self.limits.send_timeout):
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def peer_ip(stream: trio.SocketStream) -> str:
    """The client's IP ("" when the socket cannot say)."""
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return ""
    return str(peer[0]) if isinstance(peer, tuple) else ""


def _request(event: h11.Request, body: bytes, peer: str) -> Request:
    return Request(
        method=event.method.decode("ascii"),
        target=event.target.decode("latin-1"),
        headers=tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers),
        http_version=event.http_version.decode("ascii"),
        body=body,
        peer=peer,
    )


def _header_bytes(request: h11.Request) -> int:
    """Size of the request head as sent (request line + ``name: value\\r\\n`` lines)."""
    size = len(request.method) + len(request.target) + 12
    return size + sum(len(n) + len(v) + 4 for n, v in request.headers)


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(RECEIVE_BYTES))


async def _linger_close(stream: trio.SocketStream) -> None:
    """Half-close, then drop what the client still sends (bounded) before closing.

    Closing a socket with unread input makes the kernel send a reset, which can
    destroy the answer just written (a 431, 413 or 503) before the client reads it.
    """
    try:
        with trio.move_on_after(LINGER_TIMEOUT):
            await stream.send_eof()
            dropped = 0
            while dropped < LINGER_BYTES:
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data:
                    break
                dropped += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)
