"""One listener: bind, accept under a connection cap, serve, and drain.

Connections live in their own nursery, apart from the accept loops (trio's
``serve_listeners`` shape), so drain can stop accepting without touching the
requests in flight. Drain, started by ``runtime.drain``: close the listening
sockets, wake every idle keep-alive connection so it closes now, let in-flight
requests finish (their responses carry ``Connection: close``), and return when
the last connection is gone. The app bounds all of this with a deadline;
cancellation closes every socket through the connection tasks' ``finally``.

Connection slots (``server/connection_limits.py`` decides): a source (client
IP) already holding ``limits.max_connections_per_source`` of this listener's
connections, or a new connection while ``limits.max_downstream_connections``
are open and none of them is an idle keep-alive, is accepted and closed at
once (``nodeproxy_downstream_connections_rejected_total{reason}``): cheaper
and fairer than leaving it in the kernel backlog, where it would time out
without a word. At the total cap with a keep-alive idle between requests, the
one idle longest is closed instead and its slot goes to the newcomer
(``nodeproxy_downstream_connections_evicted_total``). Its slot is counted free
at once; its socket closes when its task next runs, within the same scheduler
pass, so the open sockets exceed the cap only by the connections evicted in
that pass and only until it ends. Eviction is O(1): ``ConnectionLoop.idle`` is
ordered by the time each connection started to wait.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable

import structlog
import trio

from nodeproxy.config.model import ListenerConfig
from nodeproxy.runtime import Runtime
from nodeproxy.server.connection import ConnectionLoop
from nodeproxy.server.connection_limits import ConnectionSlots
from nodeproxy.server.handler import Handler
from nodeproxy.stats.names import (
    DOWNSTREAM_CONNECTIONS_ACTIVE,
    DOWNSTREAM_CONNECTIONS_EVICTED,
    DOWNSTREAM_CONNECTIONS_REJECTED,
    DOWNSTREAM_CONNECTIONS_TOTAL,
)
from nodeproxy.stats.registry import labels

log = structlog.get_logger("nodeproxy.server")

# Out of file descriptors or buffers: pause accepting briefly instead of spinning.
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_BACKOFF = 0.1


ConnectionHandler = Callable[[trio.SocketStream], Awaitable[None]]


class Acceptor:
    """Accept loop state for one listener: its connection slots and their caps.

    ``handle`` serves one accepted connection: by default ``loop.serve``; the mTLS
    listener handshakes first (``server/inbound.py``), the transparent one tells
    HTTP from TCP first (``intercept/listener.py``). A handler passed in, rather
    than a subclass overriding a method, so that the compiled build (mypyc,
    ``nodeproxy/compiled.py``) calls it like any callable.
    ``per_source_cap``: False where ``limits.max_connections_per_source`` does not
    apply (the mTLS port: a source is a whole node's proxy).
    """

    def __init__(
        self,
        runtime: Runtime,
        listener: ListenerConfig,
        loop: ConnectionLoop,
        *,
        handle: ConnectionHandler | None = None,
        per_source_cap: bool = True,
    ) -> None:
        self.runtime = runtime
        self.loop = loop
        self._handle: ConnectionHandler = handle if handle is not None else loop.serve
        limits = runtime.config.limits
        per_source = limits.max_connections_per_source if per_source_cap else 0
        self.slots: ConnectionSlots[trio.socket.SocketType] = ConnectionSlots(
            limits.max_downstream_connections, per_source
        )
        self.lbls = labels(listener=listener.name)
        self.rejected_lbls = {
            reason: labels(listener=listener.name, reason=reason)
            for reason in ("per_source", "max_connections")
        }

    def __repr__(self) -> str:
        return f"<Acceptor {self.slots!r}>"

    @property
    def active(self) -> int:
        return self.slots.active

    def admit(self, stream: trio.SocketStream) -> bool:
        """Give ``stream`` a connection slot, closing the oldest idle keep-alive if
        that makes room; False (counted) when it must be refused."""
        slots, stats = self.slots, self.runtime.stats
        source = ""
        if slots.per_source:
            try:
                source = str(stream.socket.getpeername()[0])
            except OSError:  # reset before we got to it
                return False
        refusal = slots.refusal(source)
        if refusal == "max_connections":
            evicted = self.loop.close_oldest_idle()
            if evicted is not None:
                slots.release(evicted.stream.socket)  # it closes when its task next runs
                stats.inc(DOWNSTREAM_CONNECTIONS_EVICTED, self.lbls)
                refusal = slots.refusal(source)
        if refusal is not None:
            stats.inc(DOWNSTREAM_CONNECTIONS_REJECTED, self.rejected_lbls[refusal])
            return False
        slots.take(stream.socket, source)
        return True

    async def accept_loop(self, sock: trio.SocketListener, nursery: trio.Nursery) -> None:
        stats = self.runtime.stats
        while True:
            try:
                stream = await sock.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                log.warning("accept paused", error=str(exc))
                await trio.sleep(_ACCEPT_BACKOFF)
                continue
            if not self.admit(stream):
                stream.socket.close()
                continue
            stats.inc(DOWNSTREAM_CONNECTIONS_TOTAL, self.lbls)
            stats.gauge_add(DOWNSTREAM_CONNECTIONS_ACTIVE, self.lbls, 1)
            nursery.start_soon(self.serve, stream)

    async def serve(self, stream: trio.SocketStream) -> None:
        try:
            await self._handle(stream)
        finally:
            self.slots.release(stream.socket)  # a no-op if it was evicted (released then)
            self.runtime.stats.gauge_add(DOWNSTREAM_CONNECTIONS_ACTIVE, self.lbls, -1)


async def serve_listener(
    runtime: Runtime,
    listener: ListenerConfig,
    handler: Handler,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``listener``'s requests with ``handler`` (the outbound listeners': a
    ``Pipeline``) until drain completes; ``task_status.started(bound_port)``."""
    loop = ConnectionLoop(runtime, handler, listener.name)
    await serve_acceptor(runtime, listener, Acceptor(runtime, listener, loop), task_status)


async def serve_acceptor(
    runtime: Runtime,
    listener: ListenerConfig,
    acceptor: Acceptor,
    task_status: trio.TaskStatus[int],
) -> None:
    """Bind ``listener``, run ``acceptor`` on it, drain; shared by the plain and mTLS listeners."""
    loop = acceptor.loop
    sockets = runtime.take_listen_sockets(listener.name) or await trio.open_tcp_listeners(
        listener.port, host=listener.host or None
    )
    port = int(sockets[0].socket.getsockname()[1])
    loop.handler.bound(port)  # the pipeline's host_port_match compares it
    log.info("listening", listener=listener.name, host=listener.host, port=port)
    try:
        async with trio.open_nursery() as connections:
            connections.start_soon(loop.sweep)  # every connection's timeouts (until drained)
            async with trio.open_nursery() as accepting:
                for sock in sockets:
                    accepting.start_soon(acceptor.accept_loop, sock, connections)
                task_status.started(port)
                await runtime.drain.started.wait()
                accepting.cancel_scope.cancel()
            for sock in sockets:
                await sock.aclose()
            loop.close_idle()
            log.info("draining", listener=listener.name, connections=acceptor.active)
            # Connections finish their request and return; the nursery waits for them.
    finally:
        for sock in sockets:
            sock.socket.close()
    log.info("drained", listener=listener.name)
