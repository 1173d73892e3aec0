"""A worker process: the data path of ``run_app`` on sockets its supervisor bound.

Started by the supervisor as ``python -m nodeproxy.workers.child SPEC`` (SPEC
is JSON: the config file and CLI overrides, its index, the fd of its end of
the control socketpair and the fds of every listening socket, inherited with
``pass_fds``). It reads the same config file the supervisor read, so both see
the same ``${VAR}`` expansions from the same environment.

What a worker does not do: serve admin, watch Kubernetes, probe health. It
takes endpoint snapshots and health verdicts from the control channel
(``WorkerLink``), reports ``Ready`` once its listeners are up and it has
endpoints, answers ``StatsRequest`` with a copy of its stats, and drains on
``Drain``, on SIGTERM, or when the channel closes (the supervisor is gone:
no orphan keeps serving on its own).
"""

from __future__ import annotations

import json
import os
import resource
import socket
import sys
from collections.abc import Sequence

import structlog
import trio

from nodeproxy.admin.clusters import active_clusters, clusters_view
from nodeproxy.admin.process import resident_memory_bytes
from nodeproxy.runtime import Runtime
from nodeproxy.stats.registry import Stats
from nodeproxy.stats.traffic import traffic_families
from nodeproxy.workers import wire

log = structlog.get_logger("nodeproxy.worker")


def _snapshot_stats(runtime: Runtime, now: float) -> Stats:
    """The worker's registry plus its scrape-time traffic counters (subsets, breakers)."""
    out = Stats()
    out.counters = {name: dict(series) for name, series in runtime.stats.counters.items()}
    out.gauges = {name: dict(series) for name, series in runtime.stats.gauges.items()}
    out.histograms = runtime.stats.histograms
    for fam in traffic_families(runtime.traffic, now):
        target = out.counters if fam.kind == "counter" else out.gauges
        target[fam.name] = dict(fam.samples)
    return out


class WorkerLink:
    """The worker's end of the control channel; the only writer of endpoints and health."""

    def __init__(self, index: int, control: socket.socket, listen: dict[str, list[socket.socket]]):
        self.index = index
        self.stream = trio.SocketStream(trio.socket.from_stdlib_socket(control))
        self.listen = listen
        self.runtime: Runtime | None = None
        self.unhealthy: frozenset[tuple[str, str]] = frozenset()
        self._send_lock = trio.Lock()
        self._ready_sent = False
        self._tripped: set[str] = set()  # breakers that tripped here, not yet reported
        self._trip_wake = trio.Event()
        self.listening = trio.Event()

    def __repr__(self) -> str:
        return f"<WorkerLink #{self.index} [{'ready' if self._ready_sent else 'starting'}]>"

    def attach(self, runtime: Runtime) -> None:
        runtime.listen_sockets = self.listen
        runtime.traffic.on_breaker_trip = self.breaker_tripped
        self.runtime = runtime

    async def _send(self, message: object) -> None:
        async with self._send_lock:
            await wire.send(self.stream, message)

    async def _maybe_ready(self) -> None:
        runtime = self.runtime
        assert runtime is not None
        if not self._ready_sent and self.listening.is_set() and runtime.ready:
            self._ready_sent = True
            await self._send(wire.Ready(os.getpid()))

    async def run(self) -> None:
        """Read control messages until the channel closes, then drain."""
        runtime = self.runtime
        assert runtime is not None
        receiver = wire.Receiver(self.stream)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._announce)
            nursery.start_soon(self._report_trips)
            try:
                while True:
                    message = await receiver.receive()
                    await self._handle(message)
            except (wire.ChannelClosed, trio.BrokenResourceError) as exc:
                log.warning("supervisor_gone", worker=self.index, detail=str(exc))
                runtime.drain.start("supervisor gone")
            nursery.cancel_scope.cancel()

    async def _announce(self) -> None:
        await self.listening.wait()
        await self._maybe_ready()

    async def _report_trips(self) -> None:
        while True:
            await self._trip_wake.wait()
            self._trip_wake = trio.Event()
            tripped, self._tripped = sorted(self._tripped), set()
            for cluster in tripped:
                await self._send(wire.BreakerTripped(cluster))

    async def _handle(self, message: object) -> None:
        runtime = self.runtime
        assert runtime is not None
        now = trio.current_time()
        if isinstance(message, wire.Endpoints):
            if runtime.mesh is not None:
                runtime.mesh.update(message.node_proxies, message.pods)
            runtime.endpoints.install(message.version, message.endpoints(), message.service_ips)
            self._apply_health(now)
            await self._maybe_ready()
        elif isinstance(message, wire.Health):
            self.unhealthy = message.unhealthy
            self._apply_health(now)
        elif isinstance(message, wire.StatsRequest):
            await self._send(self._stats(message, now))
        elif isinstance(message, wire.Drain):
            runtime.drain.start(message.reason)
        elif isinstance(message, wire.BreakerOpen):
            cluster = runtime.config.clusters.get(message.cluster)
            breaker = runtime.traffic.cluster(cluster, now).breaker if cluster else None
            if breaker is not None:
                breaker.force_open(now)

    def _apply_health(self, now: float) -> None:
        """Mirror the supervisor's verdicts into every health-checked cluster's tracker."""
        runtime = self.runtime
        assert runtime is not None
        snapshot = runtime.endpoints.current()
        for cluster in list(runtime.config.clusters.values()):
            if cluster.health_check is None:
                continue
            tracker = runtime.traffic.cluster(cluster, now).health
            if tracker is not None:
                bad = frozenset(a for c, a in self.unhealthy if c == cluster.name)
                tracker.assign(snapshot.endpoints(cluster.name), bad, now)

    def _stats(self, request: wire.StatsRequest, now: float) -> wire.StatsReply:
        runtime = self.runtime
        assert runtime is not None
        stats = _snapshot_stats(runtime, now)
        active = request.active_only
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return wire.StatsReply(
            seq=request.seq,
            counters=stats.counters,
            gauges=stats.gauges,
            histograms=stats.histograms,
            resident_bytes=resident_memory_bytes(),
            cpu_seconds=usage.ru_utime + usage.ru_stime,
            clusters=(
                clusters_view(runtime, now, only=active_clusters(runtime) if active else None)
                if request.clusters
                else None
            ),
            sources=runtime.sources.wire_rows(now) if request.clusters else None,
        )

    def breaker_tripped(self, cluster: str) -> None:
        """Called by a breaker of this worker as it trips: tell the supervisor (best effort)."""
        self._tripped.add(cluster)
        self._trip_wake.set()


def main(argv: Sequence[str] | None = None) -> int:
    from nodeproxy import cli

    spec = json.loads((argv if argv is not None else sys.argv[1:])[0])
    config = cli.load_for_run(
        spec["config"], spec.get("log_format"), spec.get("log_level"),
        spec.get("kubeconfig"), spec.get("context"),
    )  # fmt: skip
    if config is None:
        return cli.EXIT_CONFIG
    listen = {
        name: [socket.socket(fileno=fd) for fd in fds] for name, fds in spec["listen"].items()
    }
    control = socket.socket(fileno=spec["control_fd"])
    structlog.contextvars.bind_contextvars(worker=spec["index"])
    return cli.serve(config, link=WorkerLink(spec["index"], control, listen))


if __name__ == "__main__":
    sys.exit(main())
