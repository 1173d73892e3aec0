"""The supervisor: binds every listener once, runs N workers on them, answers admin.

    supervisor
    ├── admin server          (merged stats, /clusters, /ready, /drain: admin/)
    ├── Kubernetes discovery  (once, for all workers; snapshots pushed on publish)
    ├── active health checks  (once; verdicts pushed as ``Health``)
    ├── stats collector       (every STATS_INTERVAL, so a crash loses little)
    ├── signal watcher
    └── one keeper per slot   (spawn, talk over the control channel, restart)

Listening sockets: the supervisor binds each listener once and every worker
inherits the same socket, so all workers accept from one queue (measured
against one SO_REUSEPORT socket per worker in docs/architecture.md). A worker
that dies takes nothing with it: the socket stays open here and the other
workers keep accepting while its slot restarts. The sockets come from
``handoff/process.py`` as in a single process: taken over from a running
predecessor (``--handoff-socket``) or bound afresh; after the workers are
up the supervisor owns the handoff path, and a successor's handoff drains
every worker while the successor already serves on the same sockets.

Endpoint snapshots, health verdicts and breaker trips go to each worker's
``Outbox`` (latest wins). Drain (signal or ``POST /drain``) is sent to every
worker; the supervisor closes its copies of the sockets, waits up to
``limits.drain_timeout`` (plus a grace) for the workers to exit, and exits 0,
or ``EXIT_WORKERS_FAILED`` when the restart budget ran out.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from functools import partial
from typing import Any

import structlog
import trio

from nodeproxy import compiled
from nodeproxy.admin.server import serve_admin, serve_probes
from nodeproxy.app import publish_build_info, watch_signals
from nodeproxy.config.model import Config
from nodeproxy.discovery.kubernetes import KubernetesDiscovery
from nodeproxy.discovery.setup import build_kubernetes, build_runtime
from nodeproxy.discovery.snapshot import EndpointSnapshot
from nodeproxy.errors import ConfigError
from nodeproxy.handoff.process import ProcessSockets
from nodeproxy.handoff.protocol import HandoffError
from nodeproxy.runtime import Runtime
from nodeproxy.stats.names import DOWNSTREAM_CONNECTIONS_TOTAL, REQUESTS
from nodeproxy.upstream.health_check import HealthChecker
from nodeproxy.workers import wire
from nodeproxy.workers.fleet import ChildArgs, RestartBudget, Slot, backoff, spawn
from nodeproxy.workers.merge import Retired
from nodeproxy.workers.sockets import SOCKETS_ENV, bind_reuseport
from nodeproxy.workers.view import AdminView, total

__all__ = ["ChildArgs", "supervise"]

log = structlog.get_logger("nodeproxy.supervisor")

EXIT_WORKERS_FAILED = 3
STATS_INTERVAL = 1.0  # periodic collection: what a crashed worker's counters can miss
DRAIN_GRACE = 5.0  # beyond limits.drain_timeout before a worker is killed


class Supervisor:
    """Owns the slots, the retired totals, the latest snapshots and the restart budget."""

    def __init__(self, config: Config, count: int, child: ChildArgs) -> None:
        self.runtime: Runtime = build_runtime(config)
        self.config = self.runtime.config
        self.child = child
        self.slots = [Slot(i) for i in range(count)]
        self.retired = Retired()
        self.budget = RestartBudget()
        self.failed = False
        # Per slot, the listening sockets its workers get (the same dict for every slot,
        # unless NODEPROXY_WORKER_SOCKETS=reuseport, the benchmark's comparison).
        self.listen: list[dict[str, list[socket.socket]]] = []
        self.kubernetes: KubernetesDiscovery | None = build_kubernetes(self.runtime)
        self.endpoints: wire.Endpoints | None = None
        self.health: wire.Health | None = None
        self.view = AdminView(self.runtime, self.slots, self.retired)
        self.all_up = trio.Event()
        publish_build_info(self.runtime.stats, compiled.status())
        if self.kubernetes is not None:
            self.runtime.endpoints.on_publish = self._published

    def __repr__(self) -> str:
        up = sum(s.ready for s in self.slots)
        return f"<Supervisor [{up}/{len(self.slots)} workers up | {self.retired!r}]>"

    # -- what workers are told ----------------------------------------------------

    def _broadcast(self, message: wire.Endpoints | wire.Health | wire.BreakerOpen) -> None:
        for slot in self.slots:
            slot.outbox.put(message)

    def _published(self, snapshot: EndpointSnapshot) -> None:
        disc = self.kubernetes
        assert disc is not None
        self.endpoints = wire.Endpoints.of(
            snapshot.version,
            snapshot.clusters,
            disc.node_proxies,
            disc.pod_identities,
            snapshot.service_ips,
        )
        self._broadcast(self.endpoints)

    def _health_changed(self) -> None:
        bad = frozenset(
            (name, address)
            for name, state in self.runtime.traffic.items()
            if state.health is not None
            for address in state.health.unhealthy()
        )
        self.health = wire.Health(bad)
        self._broadcast(self.health)

    # -- readiness ------------------------------------------------------------------

    def _readiness(self) -> None:
        up = all(s.ready for s in self.slots)
        self.runtime.listeners_ready = up
        if up:
            self.all_up.set()

    # -- one slot's life ------------------------------------------------------------------

    async def keep(self, slot: Slot) -> None:
        """Run a worker in ``slot`` until drain; restart it while the budget allows."""
        in_a_row = 0
        while not self.runtime.drain.draining:
            code = await self._run_once(slot)
            if self.runtime.drain.draining:
                return
            was_ready = slot.ready  # a worker that came up and later died starts a new row
            last = slot.gone()
            self._retire(slot, last)
            self._readiness()
            log.error("worker_exited", worker=slot.index, code=code)
            if not self.budget.allow(trio.current_time()):
                log.error("workers_failing", detail=repr(self.budget))
                self.failed = True
                self.runtime.drain.start("workers keep failing")
                return
            slot.restarts += 1
            in_a_row = in_a_row + 1 if not was_ready else 1
            await trio.sleep(backoff(in_a_row))

    def _retire(self, slot: Slot, last: wire.StatsReply | None) -> None:
        if last is None:
            return
        self.retired.add(last)
        slot.retired_requests += total(last, REQUESTS)
        slot.retired_connections += total(last, DOWNSTREAM_CONNECTIONS_TOTAL)

    async def _run_once(self, slot: Slot) -> int:
        slot.outbox = wire.Outbox()
        for message in (self.endpoints, self.health):
            if message is not None:
                slot.outbox.put(message)
        process, stream = await spawn(self.child, slot, self.listen[slot.index])
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_quietly, slot.outbox.run(stream))
                nursery.start_soon(_quietly, self._read(slot, stream))
                code = await process.wait()
                nursery.cancel_scope.cancel()
        finally:
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
            await trio.aclose_forcefully(stream)
        return code

    async def _read(self, slot: Slot, stream: trio.SocketStream) -> None:
        receiver = wire.Receiver(stream)
        while True:
            message = await receiver.receive()
            if isinstance(message, wire.Ready):
                slot.ready = True
                log.info("worker_ready", worker=slot.index, pid=message.pid)
                self._readiness()
            elif isinstance(message, wire.StatsReply):
                slot.take_reply(message)
            elif isinstance(message, wire.BreakerTripped):
                for other in self.slots:
                    if other is not slot:
                        other.outbox.put(wire.BreakerOpen(message.cluster))

    # -- the tree ------------------------------------------------------------------------------

    async def run(self) -> None:
        runtime = self.runtime
        own: ProcessSockets | None = None
        if os.environ.get(SOCKETS_ENV) == "reuseport":
            self.listen = bind_reuseport(self.config, len(self.slots))
        else:  # from a predecessor at handoff_socket, or bound afresh (handoff/process.py)
            own = await ProcessSockets.acquire(self.config, runtime)
            shared = dict(runtime.listen_sockets)  # the workers', not this process's listeners
            runtime.listen_sockets.clear()
            self.listen = [shared] * len(self.slots)
        ports = {name: socks[0].getsockname()[1] for name, socks in self.listen[0].items()}
        try:
            async with trio.open_nursery() as root:
                self.view.started_at = trio.current_time()
                admin, probes = serve_admin, serve_probes
                if own is not None:
                    stop = own.handed_off
                    admin = partial(serve_admin, bound=own.admin, stop_accepting=stop)
                    probes = partial(serve_probes, bound=own.probes, stop_accepting=stop)
                admin_port = await root.start(admin, runtime, self.view)
                if self.config.admin.probe_port is not None:
                    await root.start(probes, runtime, self.view)
                root.start_soon(HealthChecker(runtime, on_change=self._health_changed).run)
                if self.kubernetes is not None:
                    await root.start(self.kubernetes.run)
                root.start_soon(watch_signals, runtime.drain, root.cancel_scope)
                if own is not None:  # taking over: no worker accepts before the first sync
                    await own.wait_for_discovery()
                async with trio.open_nursery() as fleet:
                    for slot in self.slots:
                        fleet.start_soon(self.keep, slot)
                    root.start_soon(self._collect)
                    with trio.move_on_after(60.0):  # a worker that cannot start: its keeper says
                        await _first(self.all_up.wait(), runtime.drain.started.wait())
                    if self.all_up.is_set():
                        if own is not None:  # the handoff path is ours; a predecessor drains
                            await own.serving(root)
                        self._log_started(ports, admin_port, own)
                    await runtime.drain.started.wait()
                    log.info("draining", reason=runtime.drain.reason, workers=len(self.slots))
                    for slot in self.slots:
                        slot.outbox.put(wire.Drain(runtime.drain.reason))
                    self._close_listen()
                    fleet.cancel_scope.deadline = (
                        trio.current_time() + self.config.limits.drain_timeout + DRAIN_GRACE
                    )
                if own is not None:
                    await own.finish()  # "done" to a successor, after every worker is gone
                log.info("stopped")
                root.cancel_scope.cancel()
        finally:
            self._close_listen()
            if own is not None:
                own.close()

    def _close_listen(self) -> None:
        for listen in self.listen:
            for socks in listen.values():
                for sock in socks:
                    sock.close()

    async def _collect(self) -> None:
        while True:
            await trio.sleep(STATS_INTERVAL)
            await self.view.refresh(clusters=False)

    def _log_started(
        self, ports: dict[str, int], admin_port: int, own: ProcessSockets | None
    ) -> None:
        hosts = {lc.name: lc.host for lc in self.config.listeners}
        if self.config.mesh is not None:
            hosts["inbound"] = self.config.mesh.inbound_host
        if self.config.intercept is not None:
            hosts["intercept"] = self.config.intercept.host
        log.info(
            "started",
            listeners={name: f"{hosts[name]}:{port}" for name, port in ports.items()},
            admin=f"{self.config.admin.host}:{admin_port}",
            workers=len(self.slots),
            pids=[s.process.pid for s in self.slots if s.process is not None],
            discovery=self.config.discovery.mode,
            **(own.log_fields() if own is not None else {}),
        )


_CLOSED = (wire.ChannelClosed, trio.BrokenResourceError, trio.ClosedResourceError)


async def _quietly(work: Any) -> None:
    """Run one side of a control channel; a closed channel just ends it."""
    with contextlib.suppress(*_CLOSED):
        await work


async def _first(*waits: Any) -> None:
    async with trio.open_nursery() as nursery:

        async def one(w: Any) -> None:
            await w
            nursery.cancel_scope.cancel()

        for w in waits:
            nursery.start_soon(one, w)


def supervise(config: Config, count: int, child: ChildArgs) -> int:
    """``nodeproxy run`` with ``workers`` > 1: the supervisor's process, until it stops."""
    from nodeproxy.cli import EXIT_CONFIG, _leaves, start_logging

    if (problem := start_logging(config, fleet=True)) is not None:
        print(f"nodeproxy: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        supervisor = Supervisor(config, count, child)
    except ConfigError as exc:  # e.g. an unreadable kubeconfig: before anything starts
        print(f"nodeproxy: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    code = 0
    try:
        trio.run(supervisor.run)
    except* ConfigError as errors:
        for error in errors.exceptions:
            print(f"nodeproxy: config error: {error}", file=sys.stderr)
        code = EXIT_CONFIG
    except* HandoffError as refusals:  # a handoff already running, another version
        for refusal in refusals.exceptions:
            print(f"nodeproxy: cannot start: {refusal}", file=sys.stderr)
        code = 1
    except* OSError as group:
        for leaf in _leaves(group):
            print(f"nodeproxy: cannot start: {leaf}", file=sys.stderr)
        code = 1
    if code == 0 and supervisor.failed:
        code = EXIT_WORKERS_FAILED
    return code
