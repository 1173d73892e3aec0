"""The per-connection loop: read a request head, proxy it, account for it, repeat.

This is the boundary where errors become answers, exactly once: a
``ProxyError`` raised anywhere below (codec, router, balancer, pool, upstream)
is answered here with its status, a one-line text body and the
``x-nodeproxy-error`` header, if the response has not started yet; once
response headers have gone out the only honest signal left is to close the
connection. Each request then yields one access-log event and its counters.

Timeouts: a new connection has ``header_read_timeout`` to deliver its first
request head, counted from the accept (slowloris guard; a partial head gets
408); between requests a keep-alive connection may sit idle
``downstream_idle_timeout``, then is closed silently, and a next head has
``header_read_timeout`` from its first byte. While idle the connection
exposes its cancel scope so that drain can close it at once instead of
waiting out the idle timeout, and so that the accept loop, at the connection
cap, can close the oldest idle keep-alive to make room (``server/listener.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from http import HTTPStatus

import structlog
import trio

from nodeproxy.errors import (
    ERROR_HEADER,
    BadRequest,
    ProxyError,
    RateLimited,
    RequestHeaderTimeout,
    UpstreamResponseTimeout,
)
from nodeproxy.http1.codec import NEED_DATA
from nodeproxy.http1.impl import h11
from nodeproxy.routing.header_edits import client_source
from nodeproxy.runtime import Runtime
from nodeproxy.server.accounting import Accounting
from nodeproxy.server.downstream import ClientGone, Downstream, Exchange
from nodeproxy.server.handler import Handler
from nodeproxy.stats.names import PROXY_ERRORS
from nodeproxy.stats.registry import labels
from nodeproxy.tls.identity import SpiffeId

# How late a timeout may fire: the sweeper's period (``ConnectionLoop.sweep``).
SWEEP_INTERVAL = 0.05
# Drain: how long a connection accepted before it, with no byte read yet, may still
# deliver its first request. Its client is sending it (a handoff's successor serves
# everything after); closing it unanswered would fail a request no client retries.
DRAIN_FIRST_REQUEST_GRACE = 1.0

# After these the stream cannot be trusted to frame a next request (bad framing,
# a head cut short, an unread body): answer, then close.
_CLOSE_AFTER = frozenset({400, 408, 413, 414, 431, 501})

log = structlog.get_logger("nodeproxy.server")


class ConnectionLoop:
    """Serves the connections of one listener; shared by all its connection tasks."""

    def __init__(self, runtime: Runtime, handler: Handler, listener: str) -> None:
        self.handler = handler
        self.runtime = runtime
        self.listener = listener
        self.limits = self.runtime.config.limits
        self.access_log_enabled = self.runtime.config.log.access_log
        # Connections waiting for a request head, in the order they started to
        # wait (dicts as ordered sets): keep-alives between requests (the oldest
        # is closed first to make room at the connection cap) and new
        # connections before their first request. Drain wakes the keep-alives and
        # gives the new ones ``DRAIN_FIRST_REQUEST_GRACE`` for their first request.
        self.idle: dict[Downstream, None] = {}
        self.live: set[Downstream] = set()  # every open connection (the sweeper reads it)
        self.opening: dict[Downstream, None] = {}
        # (cluster, status) -> label sets: bounded by clusters x 3-digit statuses.
        self.sources = self.runtime.sources  # per calling pod, for the admin dashboard
        self.accounting = Accounting(
            self.runtime.stats, listener, self.access_log_enabled, self.sources
        )
        self.admission = handler.admission if handler.admission.enabled else None
        # The mesh inbound port takes CONNECT tunnels (tunnel/inbound.py); others refuse them.
        self.accepts_connect = handler.accepts_connect

    def __repr__(self) -> str:
        return f"<ConnectionLoop {self.listener} [{len(self.idle)} idle]>"

    def close_idle(self) -> None:
        """Drain: wake every keep-alive waiting for a next request, so it closes; a
        new connection waiting for its first request closes after a short grace."""
        for down in self.idle:
            if down.scope is not None:
                down.scope.cancel()
        grace = trio.current_time() + DRAIN_FIRST_REQUEST_GRACE
        for down in self.opening:
            down.deadline = min(down.deadline, grace)

    async def sweep(self, interval: float = SWEEP_INTERVAL) -> None:
        """Fire the deadlines of this listener's connections; returns once drained and empty.

        One task per listener instead of a trio deadline moved per wait: a
        connection past its ``Downstream.deadline`` gets its scope cancelled,
        at most ``interval`` late. The loop reads ``live`` without awaiting,
        so no connection task changes it underneath.
        """
        drain = self.runtime.drain
        while not (drain.draining and not self.live):
            await trio.sleep(interval)
            now = trio.current_time()
            for down in self.live:
                if down.deadline <= now and down.scope is not None:
                    down.deadline = math.inf
                    down.scope.cancel()

    def close_oldest_idle(self) -> Downstream | None:
        """Wake the keep-alive idle longest so it closes; None when none is idle.

        Only a connection between requests (one response sent, no byte of the
        next request read): a client treats the close of a reused keep-alive
        like an idle timeout and retries on a new connection. Never a request
        in flight, never a new connection before its first request.
        """
        idle = self.idle
        while idle:
            down = next(iter(idle))
            del idle[down]
            if down.scope is not None:
                down.scope.cancel()
                return down
        return None

    async def serve(
        self,
        stream: trio.SocketStream,
        caller: SpiffeId | None = None,
        setup: Callable[[Downstream], None] | None = None,
    ) -> None:
        """Serve one accepted connection until it closes (``caller``: its verified mTLS
        peer; ``setup``: prepares the ``Downstream``, e.g. with bytes already read)."""
        limits = self.limits
        down = Downstream(stream, limits, caller)
        down.codec.allow_connect = self.accepts_connect
        if setup is not None:
            setup(down)
        self.live.add(down)
        deadline = trio.current_time() + limits.header_read_timeout
        first = True  # the first head's deadline counts from the accept
        try:
            while True:
                # One scope for many requests, its deadline moved per wait
                # (Downstream.arm). Once fired it is spent: after a response
                # timeout (answered here, outside it) the next requests get a
                # new one; an idle timeout or drain just ends the connection.
                with trio.CancelScope() as down.scope:
                    await self._serve_requests(down, deadline, first)
                    return
                first = False
                ex, timeout = down.exchange, down.response_timeout
                if ex is None or timeout is None:
                    return
                err = UpstreamResponseTimeout(f"no response headers in {timeout}s")
                keep = await self._answer_error(down, ex, err)
                self.accounting.account(down, ex)
                if not keep or self.runtime.drain.draining:
                    return
                down.codec.start_next_cycle()
                deadline = trio.current_time() + limits.downstream_idle_timeout
        except Exception:  # last resort: one broken connection must not stop the listener
            log.exception("connection failed", listener=self.listener, source=down.source)
        finally:
            self.live.discard(down)
            down.scope = None
            down.close()

    async def _serve_requests(self, down: Downstream, deadline: float, first: bool) -> None:
        """Read a request, proxy it, account for it, repeat; returns when the connection ends."""
        limits = self.limits
        while True:
            ex: Exchange | None = None
            down.exchange = None
            baseline = (down.bytes_in, down.bytes_out)
            try:
                request = await self._read_head(down, deadline, first)
                first = False
                if request is None:
                    return
                ex = down.exchange = self._exchange(down, request, baseline)
                source = self.sources.start(down.client_ip, ex.started)
                try:
                    if self.admission is None:
                        keep = await self.handler.handle(down, request, ex)
                    else:  # rate limits and per-source fairness (server/admission.py)
                        keep = await self.admission.serve(self.handler.handle, down, request, ex)
                finally:
                    self.sources.end(source)
            except ProxyError as err:
                ex = ex or self._exchange(down, None, baseline)
                keep = await self._answer_error(down, ex, err)
            except ClientGone:
                keep = False
            except Exception as exc:  # a bug: answer 500 if we still can, then close
                log.exception("request failed", listener=self.listener, source=down.source)
                ex = ex or self._exchange(down, None, baseline)
                await self._answer_error(down, ex, ProxyError(repr(exc)))
                keep = False
            now = self.accounting.account(down, ex) if ex is not None else trio.current_time()
            if not keep or self.runtime.drain.draining:
                return
            down.codec.start_next_cycle()
            deadline = now + limits.downstream_idle_timeout

    async def _read_head(
        self, down: Downstream, idle_deadline: float, first: bool
    ) -> h11.Request | None:
        """The next request head; None when the client closed.

        Idle too long (or drained while idle): the connection's scope fires.
        A connection's first head must be complete by ``idle_deadline`` (the
        accept plus ``header_read_timeout``); a later one within
        ``header_read_timeout`` of its first byte.
        """
        codec = down.codec
        event = codec.next_event()
        if event is not NEED_DATA:  # pipelined: let other tasks run (netio.py: fairness)
            await trio.lowlevel.checkpoint()
        else:  # nothing pipelined: wait (idle) for the first byte
            if self.runtime.drain.draining:
                if down.bytes_in:
                    return None
                grace = trio.current_time() + DRAIN_FIRST_REQUEST_GRACE
                idle_deadline = min(idle_deadline, grace)
            down.arm(idle_deadline)
            waiting = self.idle if down.bytes_in else self.opening  # nothing read yet: new
            waiting[down] = None
            try:
                data = await down.receive(next_request=True)
            finally:
                waiting.pop(down, None)
                down.disarm()
            if not data:
                return None
            event = codec.next_event()
        if event is NEED_DATA:  # a head split over reads: the slowloris guard applies
            if not first:
                idle_deadline = trio.current_time() + self.limits.header_read_timeout
            with trio.move_on_at(idle_deadline):
                while event is NEED_DATA:
                    await down.receive()
                    event = codec.next_event()
            if event is NEED_DATA:
                raise RequestHeaderTimeout("request headers not received in time")
        if type(event) is h11.Request:
            return event
        if type(event) is h11.ConnectionClosed:
            return None
        raise BadRequest(f"unexpected {event!r}")

    def _exchange(
        self, down: Downstream, request: h11.Request | None, baseline: tuple[int, int]
    ) -> Exchange:
        ex = Exchange(listener=self.listener, source=down.source, started=trio.current_time())
        ex.peer_identity, ex.caller = down.peer_identity, down.caller
        ex.bytes_received, ex.bytes_sent = baseline  # counters before this request
        if request is not None:
            ex.method = request.method.decode("latin-1")
            ex.protocol = "HTTP/" + request.http_version.decode("latin-1")
            ex.path = request.target.decode("latin-1")
        return ex

    async def _answer_error(self, down: Downstream, ex: Exchange, err: ProxyError) -> bool:
        """Answer ``err`` if the response has not started; True if keep-alive holds."""
        ex.cause = err.cause
        self.runtime.stats.inc(PROXY_ERRORS, labels(cause=err.cause))
        codec = down.codec
        if ex.response_started or not codec.can_send_response:
            return False
        ex.status = err.status
        try:
            request_done = down.skip_buffered_body()
        except ProxyError:
            request_done = False
        # After bad input the stream cannot be trusted to frame a next request.
        close = not request_done or err.status in _CLOSE_AFTER or self.runtime.drain.draining
        # A refused CONNECT: what the client sent after its head is tunnel payload,
        # never to be read as a next request.
        close = close or codec.method == b"CONNECT"
        body = err.response_body()
        headers = [
            (b"content-type", b"text/plain"),
            (b"content-length", str(len(body)).encode()),
            (ERROR_HEADER.encode(), err.cause.encode()),
        ]
        if isinstance(err, RateLimited):
            if err.retry_after is not None:
                headers.append((b"retry-after", _retry_after(err.retry_after)))
            if err.headers is not None:  # the limit's response_headers_to_add (Envoy's)
                headers = err.headers.apply(headers, client_source(ex.source, ex.client), 429)
        if close:
            headers.append((b"connection", b"close"))
        reason = HTTPStatus(err.status).phrase.encode()
        data = codec.send(h11.Response(status_code=err.status, headers=headers, reason=reason))
        if codec.method != b"HEAD":
            data += codec.send(h11.Data(data=body))
        data += codec.send(h11.EndOfMessage())
        try:
            await down.send(data)
        except ClientGone:
            return False
        if close:
            await down.linger()
        return not close and codec.keep_alive


def _retry_after(seconds: float) -> bytes:
    """``Retry-After`` in whole seconds, rounded up (RFC 9110 10.2.3), 1 s to 1 h."""
    whole = min(math.ceil(seconds), 3600) if math.isfinite(seconds) else 3600
    return str(max(1, whole)).encode()
