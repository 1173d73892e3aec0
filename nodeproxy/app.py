"""The root of the nursery tree: discovery, admin, listeners, signals and drain.

One function, ``run_app``, owns the process's lifetime:

    root nursery
    ├── admin server            (started first, so /ready can say "starting")
    ├── probe listener          (admin.probe_address only: /ready and /healthz)
    ├── upstream pool reaper
    ├── active health checks    (probes the clusters with ``health_check``,
    │                            upstream/health_check.py)
    ├── Kubernetes discovery    (discovery: kubernetes only; else the static
    │                            endpoints are published before the tree starts;
    │                            discovery/setup.py)
    ├── certificate rotation    (mesh only: renews at 2/3 of life, from the local CA
    │                            or the signer, tls/node_certs.py)
    ├── signal watcher          (SIGTERM/SIGINT -> drain; a second signal -> stop now)
    ├── handoff server          (handoff_socket only: hands our sockets to a successor)
    └── serving nursery
        ├── one task per listener, each with its own connection nursery
        ├── the inbound mTLS listener (mesh only, server/inbound.py)
        └── the transparent listener (intercept only, intercept/listener.py)

A worker process (``workers/child.py``, under ``workers/supervisor.py``) runs
this same tree with a ``WorkerLink`` in place of the admin server, the health
checker and the Kubernetes watch, which its supervisor runs once for all
workers; its listeners take the sockets the supervisor bound.

Every listening socket (admin and probes included) is acquired before the
tree starts (``handoff/process.py``): with ``handoff_socket`` set, taken
over from the process running there, else bound afresh. Once the listeners
serve, this process owns that path and the predecessor, if any, drains.

Drain is the only way out: a signal, ``POST /drain`` or a handoff to a
successor flips ``DrainState``; listeners stop accepting, finish in-flight
requests and close idle keep-alives; the serving nursery gets a deadline of
``limits.drain_timeout`` and whatever is still running then is cancelled.
After a handoff the admin stops accepting too (the successor has its socket)
and the successor hears "done". Then the rest of the tree is cancelled and
``run_app`` returns, so the process exits 0.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import structlog
import trio

from nodeproxy import __version__, access_log, compiled
from nodeproxy.admin.server import serve_admin, serve_probes
from nodeproxy.config.model import Config
from nodeproxy.discovery.setup import build_kubernetes, build_runtime
from nodeproxy.handoff.process import ProcessSockets
from nodeproxy.http1 import impl
from nodeproxy.mesh.inbound import LISTENER, InboundHandler
from nodeproxy.mesh.state import Mesh
from nodeproxy.pipeline import Pipeline
from nodeproxy.runtime import DrainState, Runtime
from nodeproxy.server.inbound import serve_inbound
from nodeproxy.server.listener import serve_listener
from nodeproxy.stats.names import BUILD_INFO
from nodeproxy.stats.registry import Stats, labels
from nodeproxy.tunnel import Tunnels, carry_tcp
from nodeproxy.upstream.health_check import HealthChecker
from nodeproxy.upstream.pool import Upstreams

if TYPE_CHECKING:
    from nodeproxy.workers.child import WorkerLink

log = structlog.get_logger("nodeproxy")


@dataclass
class AppHandle:
    """What a started app reports back: its runtime and the ports it bound."""

    runtime: Runtime
    listener_ports: dict[str, int] = field(default_factory=dict)
    admin_port: int = 0
    probe_port: int | None = None  # admin.probe_address's bound port, when set

    @property
    def mesh(self) -> Mesh | None:
        """The runtime's mesh (certificates, identities, policy), when config.mesh is set."""
        return self.runtime.mesh


async def watch_signals(drain: DrainState, stop: trio.CancelScope) -> None:
    """First SIGTERM/SIGINT starts the drain; a second one stops at once."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not drain.draining:
                log.info("drain_requested", signal=name)
                drain.start(name)
            else:
                log.warning("second_signal_stopping_now", signal=name)
                stop.cancel()
                return


def publish_build_info(stats: Stats, data_path: str) -> None:
    """``nodeproxy_build_info``: the release, the codec running and the data path's build
    (a worker's and its supervisor's alike)."""
    build = labels(
        version=__version__, codec=impl.NAME, codec_version=impl.VERSION, data_path=data_path
    )
    stats.gauge_set(BUILD_INFO, build, 1)


async def run_app(
    config: Config,
    *,
    handle_signals: bool = True,
    link: WorkerLink | None = None,
    task_status: trio.TaskStatus[AppHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    runtime = build_runtime(config)  # static endpoints published, or the k8s catalog
    data_path = compiled.status()  # looks up each compiled module's file: once
    publish_build_info(runtime.stats, data_path)
    config = runtime.config
    mesh = runtime.mesh = Mesh.create(config, runtime.stats) if config.mesh is not None else None
    kubernetes = None
    if link is None:  # raises ConfigError before anything starts
        kubernetes = build_kubernetes(runtime)
    else:
        link.attach(runtime)
    upstreams = Upstreams(runtime, mesh.certs if mesh is not None else None)
    runtime.tunnels = Tunnels(runtime, mesh)  # TCP carrying: nodeproxy.tunnel.carry_tcp
    handle = AppHandle(runtime)
    # A worker's sockets come from its supervisor (link.attach); ours are acquired here.
    own = await ProcessSockets.acquire(config, runtime) if link is None else None
    addresses: dict[str, str] = {}
    try:
        async with trio.open_nursery() as root:
            if own is not None:
                stop = own.handed_off
                admin_task = partial(serve_admin, bound=own.admin, stop_accepting=stop)
                handle.admin_port = await root.start(admin_task, runtime)
                if config.admin.probe_port is not None:
                    probes_task = partial(serve_probes, bound=own.probes, stop_accepting=stop)
                    handle.probe_port = await root.start(probes_task, runtime)
                root.start_soon(HealthChecker(runtime).run)
            if link is not None:
                root.start_soon(link.run)
            root.start_soon(upstreams.run)
            root.start_soon(access_log.run_flusher)  # batched access lines, flushed at the end
            if kubernetes is not None:
                await root.start(kubernetes.run)  # /ready stays 503 until its first sync
            # First certificates before the listeners (a signer may not answer).
            if mesh is not None:
                runtime.health_checks.append(mesh.certs.readiness)
                await root.start(mesh.certs.run)
            if handle_signals:
                root.start_soon(watch_signals, runtime.drain, root.cancel_scope)
            if own is not None:  # taking over: accept nothing before the first sync
                await own.wait_for_discovery()
            async with trio.open_nursery() as serving:
                for lc in config.listeners:
                    pipeline = Pipeline(runtime, lc, upstreams)
                    port = await serving.start(serve_listener, runtime, lc, pipeline)
                    handle.listener_ports[lc.name] = port
                    addresses[lc.name] = f"{lc.host}:{port}"
                if mesh is not None:
                    inbound = InboundHandler(runtime, upstreams)
                    mtls = partial(
                        serve_inbound,
                        server_context=mesh.certs.server_context,
                        trust_domain=mesh.config.trust_domain,
                    )
                    port = await serving.start(mtls, runtime, inbound.listener, inbound)
                    handle.listener_ports[LISTENER] = port
                    addresses[LISTENER] = f"{mesh.config.inbound_host}:{port}"
                if config.intercept is not None:  # the transparent listener (intercept/)
                    from nodeproxy.intercept.listener import LISTENER as INTERCEPT
                    from nodeproxy.intercept.listener import Intercepted, serve_intercept

                    async def carrier(stream: trio.SocketStream, conn: Intercepted) -> None:
                        await carry_tcp(
                            runtime, stream, peeked=conn.peeked, caller_ip=conn.caller_ip,
                            dst_ip=conn.dst_ip, dst_port=conn.dst_port, sni=conn.sni,
                        )  # fmt: skip

                    port = await serving.start(serve_intercept, runtime, upstreams, carrier)
                    handle.listener_ports[INTERCEPT] = port
                    addresses[INTERCEPT] = f"{config.intercept.host}:{port}"
                runtime.listeners_ready = True
                if link is not None:
                    link.listening.set()
                if own is not None:
                    await own.serving(root)  # the handoff path is ours; a predecessor drains
                admin = (
                    {"admin": f"{config.admin.host}:{handle.admin_port}"} if link is None else {}
                )
                log.info(
                    "started" if link is None else "worker_started",
                    listeners=addresses,
                    **admin,
                    clusters=len(config.clusters),
                    discovery=config.discovery.mode,
                    codec=f"{impl.NAME} {impl.VERSION}",
                    data_path=data_path,
                    **(own.log_fields() if own is not None else {}),
                )
                if data_path == "partial":  # a broken or stale build: it runs, slower
                    missing = sorted(set(compiled.MODULES) - set(compiled.compiled_modules()))
                    log.warning("data_path_partly_compiled", interpreted=missing)
                task_status.started(handle)
                await runtime.drain.started.wait()
                deadline = trio.current_time() + config.limits.drain_timeout
                serving.cancel_scope.deadline = deadline
                log.info(
                    "draining", reason=runtime.drain.reason, deadline_s=config.limits.drain_timeout
                )
            if serving.cancel_scope.cancelled_caught:
                log.warning("drain_deadline_reached_connections_cancelled")
            await upstreams.aclose()
            if own is not None:
                await own.finish(signals=handle_signals)  # "done" to a successor
            log.info("stopped")
            root.cancel_scope.cancel()
    finally:
        if own is not None:
            own.close()  # what no listener took (a failed start), and our copies
