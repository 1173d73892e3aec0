"""The admin listener: the small, bounded HTTP/1.1 server around ``handlers.handle``.

Why its own listener and its own server: the admin port must keep answering
``/ready`` and ``/stats`` while the data path is saturated or draining, and
must never become a way to exhaust the proxy. So it has its own connection
cap, small header and body limits, and timeouts for every read and write
(``http1/small_server.py``, shared with the demo greeter, frames it). All
decisions live in ``access.py`` (whose Host is answered) and ``handlers.py``
(what to answer); this file wires them to the server and binds the sockets.

The same shell serves the probe listener (``admin.probe_address``), which
answers only ``/ready`` and ``/healthz`` (``probes.py``).
"""

from __future__ import annotations

import socket
from functools import partial

import structlog
import trio

from nodeproxy.admin.access import HostPolicy, check_request, is_loopback
from nodeproxy.admin.handlers import AdminContext, AdminResponse, WorkersView, handle, respond
from nodeproxy.admin.probes import probe_answer
from nodeproxy.http1.small_server import Request, ServerLimits, SmallServer, reason_phrase
from nodeproxy.runtime import Runtime

log = structlog.get_logger("nodeproxy.admin")

LIMITS = ServerLimits()  # 64 connections, 16 KiB heads, 64 KiB bodies, 10 s reads, 15 s idle
MAX_CONNECTIONS = LIMITS.max_connections
MAX_BODY_BYTES = LIMITS.max_body_bytes
HEADER_TIMEOUT = LIMITS.header_timeout  # first request's headers (slowloris guard)
_FROM_WORKERS = ("/stats", "/clusters", "/dashboard.json")
_CLUSTER_VIEWS = ("/clusters", "/dashboard.json")


class AdminServer(SmallServer):
    """The admin (or probe) listener's connections, answered by ``handlers``/``probes``."""

    def __init__(self, ctx: AdminContext, *, probes_only: bool = False) -> None:
        extra = (("server", "nodeproxy-admin"),)
        super().__init__("admin", self.answer, _error_page, LIMITS, extra_headers=extra)
        self.ctx = ctx
        self.probes_only = probes_only
        self.policy = HostPolicy.from_config(ctx.runtime.config.admin)

    async def answer(self, request: Request) -> AdminResponse:
        headers = dict(request.headers)
        target, method = request.target, request.method
        if self.probes_only:
            return probe_answer(self.ctx, method, target, headers, trio.current_time())
        hosts = [v for n, v in request.headers if n == "host"]
        refused = check_request(self.policy, target, hosts, request.http_version, request.peer)
        if refused is not None:
            return refused
        workers = self.ctx.workers
        if workers is not None and target.startswith(_FROM_WORKERS):
            dashboard = target.startswith("/dashboard.json")  # only the clusters with traffic
            await workers.refresh(target.startswith(_CLUSTER_VIEWS), active_only=dashboard)
        now = trio.current_time()
        return handle(
            self.ctx, method, target, headers, now, peer_loopback=is_loopback(request.peer)
        )


def _error_page(status: int, detail: str) -> AdminResponse:
    return respond(status, f"{reason_phrase(status).lower()}: {detail}\n")


async def serve_admin(
    runtime: Runtime,
    workers: WorkersView | None = None,
    *,
    probes_only: bool = False,
    bound: list[socket.socket] | None = None,
    stop_accepting: trio.Event | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind ``config.admin`` (or take the listening sockets ``bound``), report the
    bound port via ``task_status``, serve until cancelled.

    ``probes_only``: the probe listener instead (``admin.probe_address``: ``/ready``
    and ``/healthz`` only). ``workers``: a supervisor's view, whose stats and
    clusters are its workers' merged. ``stop_accepting`` (a handoff: the
    successor serves on the same sockets now) ends the accept loop and drops
    this process's copy of the sockets; admin requests already accepted are
    still answered until the app ends.
    """
    cfg = runtime.config.admin
    host, port = (cfg.probe_host, cfg.probe_port) if probes_only else (cfg.host, cfg.port)
    assert port is not None, "the probe listener is only started when admin.probe_address is set"
    listeners = await _listeners(host, port, bound)
    await _serve(runtime, listeners, host, probes_only, workers, stop_accepting, task_status)


serve_probes = partial(serve_admin, probes_only=True)  # admin.probe_address: /ready, /healthz


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
