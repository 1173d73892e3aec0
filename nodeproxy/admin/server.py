"""The admin listener: a small, bounded HTTP/1.1 server shell around ``handlers.handle``.

Why its own listener and its own tiny server: the admin port must keep
answering ``/ready`` and ``/stats`` while the data path is saturated or
draining, and must never become a way to exhaust the proxy. So it has its own
connection cap, small header and body limits, and timeouts for every read
and write; anything unexpected closes the connection. All decisions live in
``access.py`` (whose Host is answered) and ``handlers.py`` (what to answer);
this file only moves bytes with h11 and tells them who the peer is.

The same shell serves the probe listener (``admin.probe_address``), which
answers only ``/ready`` and ``/healthz`` (``probes.py``).
"""

from __future__ import annotations

import socket
from functools import partial
from http import HTTPStatus

import h11
import structlog
import trio

from nodeproxy.admin.access import HostPolicy, check_request, is_loopback
from nodeproxy.admin.handlers import AdminContext, AdminResponse, WorkersView, handle, respond
from nodeproxy.admin.probes import probe_answer
from nodeproxy.runtime import Runtime

log = structlog.get_logger("nodeproxy.admin")

MAX_CONNECTIONS = 64
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
HEADER_TIMEOUT = 10.0  # first request's headers (slowloris guard)
IDLE_TIMEOUT = 15.0  # keep-alive: the next request's headers must arrive within this
BODY_TIMEOUT = 10.0
SEND_TIMEOUT = 10.0
RECEIVE_BYTES = 16 * 1024
LINGER_TIMEOUT = 1.0  # after an early answer, read and drop for this long before closing
LINGER_BYTES = 256 * 1024
_FROM_WORKERS = ("/stats", "/clusters")  # a supervisor asks its workers before answering


class AdminServer:
    """Owns the admin connections; ``active`` is only touched between awaits."""

    def __init__(self, ctx: AdminContext, *, probes_only: bool = False) -> None:
        self.ctx = ctx
        self.probes_only = probes_only
        self.policy = HostPolicy.from_config(ctx.runtime.config.admin)
        self.active = 0
        self.rejected = 0

    def __repr__(self) -> str:
        return (
            f"<AdminServer [{self.active}/{MAX_CONNECTIONS} connections, {self.rejected} rejected]>"
        )

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        if self.active >= MAX_CONNECTIONS:
            self.rejected += 1
            await self._reject(stream)
            return
        self.active += 1
        try:
            await self._serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass  # the client went away or stalled: nothing to answer
        except Exception:
            # A bug in one admin answer must not take the admin listener (or the app) down.
            log.exception("admin_connection_failed")
        finally:
            self.active -= 1
            await _linger_close(stream)

    async def _reject(self, stream: trio.SocketStream) -> None:
        resp = respond(503, "too many admin connections\n")
        conn = h11.Connection(h11.SERVER)
        try:
            with trio.move_on_after(LINGER_TIMEOUT):
                await stream.send_all(_encode(conn, resp, close=True))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await _linger_close(stream)

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        peer = _peer_ip(stream)
        loopback = is_loopback(peer)
        timeout = HEADER_TIMEOUT
        while True:
            try:
                with trio.fail_after(timeout):
                    event = await _next_event(conn, stream)
            except h11.RemoteProtocolError as exc:
                await _send_error(conn, stream, exc.error_status_hint, str(exc))
                return
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed (or a stray event): we are done
            if _header_bytes(event) > MAX_HEADER_BYTES:
                # h11 bounds only *incomplete* heads; a big one arriving at once gets here.
                await _send_error(conn, stream, 431, f"headers over {MAX_HEADER_BYTES} bytes")
                return
            try:
                with trio.fail_after(BODY_TIMEOUT):
                    body_ok = await _discard_body(conn, stream, event)
            except h11.RemoteProtocolError as exc:
                await _send_error(conn, stream, exc.error_status_hint, str(exc))
                return
            if not body_ok:
                await _send_error(conn, stream, 413, f"body over {MAX_BODY_BYTES} bytes")
                return
            headers = {n.decode("latin-1"): v.decode("latin-1") for n, v in event.headers}
            target = event.target.decode("latin-1")
            hosts = [v.decode("latin-1") for n, v in event.headers if n == b"host"]
            version = event.http_version.decode("ascii")
            method = event.method.decode("ascii")
            try:
                if self.probes_only:
                    resp = probe_answer(self.ctx, method, target, headers, trio.current_time())
                else:
                    refused = check_request(self.policy, target, hosts, version, peer)
                    workers = self.ctx.workers
                    if refused is None and workers is not None and target.startswith(_FROM_WORKERS):
                        await workers.refresh(clusters=target.startswith("/clusters"))
                    resp = refused or handle(
                        self.ctx,
                        method,
                        target,
                        headers,
                        trio.current_time(),
                        peer_loopback=loopback,
                    )
            except Exception:
                log.exception("admin_handler_failed", target=event.target.decode("latin-1"))
                resp = respond(500, "admin handler failed; see the proxy log\n")
            with trio.fail_after(SEND_TIMEOUT):
                await stream.send_all(_encode(conn, resp))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
            timeout = IDLE_TIMEOUT


def _peer_ip(stream: trio.SocketStream) -> str:
    """The client's IP ("" when the socket cannot say, which counts as not loopback)."""
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return ""
    return str(peer[0]) if isinstance(peer, tuple) else ""


def _header_bytes(request: h11.Request) -> int:
    """Size of the request head as sent (request line + ``name: value\\r\\n`` lines)."""
    size = len(request.method) + len(request.target) + 12
    return size + sum(len(n) + len(v) + 4 for n, v in request.headers)


async def _linger_close(stream: trio.SocketStream) -> None:
    """Half-close, then drop what the client still sends (bounded) before closing.

    Closing a socket with unread input makes the kernel send a reset, which can
    destroy the answer we just wrote (a 431, 413 or 503) before the client reads it.
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


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(RECEIVE_BYTES))


async def _discard_body(
    conn: h11.Connection, stream: trio.SocketStream, request: h11.Request
) -> bool:
    """Read and drop the request body; False once it is (or says it is) over the limit."""
    for name, value in request.headers:
        if name == b"content-length" and int(value) > MAX_BODY_BYTES:
            return False  # h11 has validated the value already
    if conn.they_are_waiting_for_100_continue:
        await stream.send_all(
            conn.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue"))
        )
    seen = 0
    while True:
        event = await _next_event(conn, stream)
        if isinstance(event, h11.Data):
            seen += len(event.data)
            if seen > MAX_BODY_BYTES:
                return False
        else:
            return isinstance(event, h11.EndOfMessage)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _encode(conn: h11.Connection, resp: AdminResponse, *, close: bool = False) -> bytes:
    headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in resp.headers]
    headers.append((b"server", b"nodeproxy-admin"))
    if close:
        headers.append((b"connection", b"close"))
    reason = _reason(resp.status).encode()
    out = conn.send(h11.Response(status_code=resp.status, headers=headers, reason=reason)) or b""
    if resp.body:
        out += conn.send(h11.Data(data=resp.body)) or b""
    out += conn.send(h11.EndOfMessage()) or b""
    return out


async def _send_error(
    conn: h11.Connection, stream: trio.SocketStream, status: int, detail: str
) -> None:
    """Answer a bad request when h11 still lets us, then the caller closes."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    log.debug("admin_bad_request", status=status, detail=detail)
    resp = respond(status, f"{_reason(status).lower()}: {detail}\n")
    with trio.move_on_after(SEND_TIMEOUT):
        await stream.send_all(_encode(conn, resp, close=True))


async def serve_admin(
    runtime: Runtime,
    workers: WorkersView | None = None,
    *,
    bound: list[socket.socket] | None = None,
    stop_accepting: trio.Event | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind ``config.admin`` (or take the listening sockets ``bound``), report the
    bound port via ``task_status``, serve until cancelled.

    ``workers``: a supervisor's view, whose stats and clusters are its workers' merged.
    ``stop_accepting`` (a handoff: the successor serves on the same sockets now)
    ends the accept loop and drops this process's copy of the sockets; admin
    requests already accepted are still answered until the app ends.
    """
    cfg = runtime.config.admin
    listeners = await _listeners(cfg.host, cfg.port, bound)
    await _serve(runtime, listeners, cfg.host, False, workers, stop_accepting, task_status)


async def serve_probes(
    runtime: Runtime,
    workers: WorkersView | None = None,
    *,
    bound: list[socket.socket] | None = None,
    stop_accepting: trio.Event | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind ``admin.probe_address`` (``/ready`` and ``/healthz`` only), serve until cancelled."""
    cfg = runtime.config.admin
    assert cfg.probe_port is not None, "only started when admin.probe_address is set"
    listeners = await _listeners(cfg.probe_host, cfg.probe_port, bound)
    await _serve(runtime, listeners, cfg.probe_host, True, workers, stop_accepting, task_status)


async def _listeners(
    host: str, port: int, bound: list[socket.socket] | None
) -> list[trio.SocketListener]:
    if bound is None:
        return await trio.open_tcp_listeners(port, host=host)
    return [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in bound]


async def _serve(
    runtime: Runtime,
    listeners: list[trio.SocketListener],
    host: str,
    probes_only: bool,
    workers: WorkersView | None,
    stop_accepting: trio.Event | None,
    task_status: trio.TaskStatus[int],
) -> None:
    port: int = listeners[0].socket.getsockname()[1]
    name = "probes" if probes_only else "admin"
    ctx = AdminContext(runtime, started_at=trio.current_time(), workers=workers)
    server = AdminServer(ctx, probes_only=probes_only)
    log.info(f"{name}_listening", address=f"{host}:{port}")
    handler = server.handle_connection
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as accepting:
            accepting.start_soon(
                partial(trio.serve_listeners, handler, listeners, handler_nursery=connections)
            )
            task_status.started(port)
            await (trio.Event() if stop_accepting is None else stop_accepting).wait()
            accepting.cancel_scope.cancel()
        for listener in listeners:
            listener.socket.close()
        log.info(f"{name}_stopped_accepting")
