"""One serving process's listening sockets and its side of a handoff, for ``app.py``.

Why a class apart from the app: the app only needs four moments. Before
anything binds, ``acquire`` gets every listening socket (taken over from the
process at ``handoff_socket``, or bound afresh) and leaves the data-path ones
in ``runtime.listen_sockets``, where each listener takes its own (the same
seam a worker's inherited sockets use). Once the listeners run, ``serving``
takes over the handoff path and tells the predecessor to drain. After the
drain, ``finish`` tells a successor "done". ``close`` drops whatever is left.
A supervisor can drive the same steps around its workers.

Taking over from a running predecessor, the listeners start only after the
first discovery sync (``wait_for_discovery``): a process that accepted before
would answer 503 ``not_synced`` while its predecessor, fully synced, stood by.
That is Envoy's hot-restart order too (the child finishes initialising,
initial xDS fetches included, before it tells the parent to drain). If the
sync does not come within most of ``handoff_timeout`` (an unreachable API
server), nothing is handed over: the predecessor keeps serving and this
process exits with the reason, so a rollout stalls instead of failing pods.
"""

from __future__ import annotations

import signal
import socket

import structlog
import trio

from nodeproxy.config.model import Config
from nodeproxy.handoff.client import Acquired, acquire_listen_sockets
from nodeproxy.handoff.protocol import HandoffError
from nodeproxy.handoff.server import HandoffServer
from nodeproxy.handoff.sockets import (
    ADMIN,
    LISTENER_PREFIX,
    PROBES,
    close_all,
    wanted_listeners,
)
from nodeproxy.runtime import Runtime

log = structlog.get_logger("nodeproxy.handoff")

SYNC_SHARE = 0.8  # of handoff_timeout, for the first sync; the rest carries "serving"


class ProcessSockets:
    """Owns the acquired sockets (until a listener takes its own) and the handoff server."""

    def __init__(self, config: Config, runtime: Runtime, acquired: Acquired) -> None:
        self.config = config
        self.acquired = acquired
        self.handed_off = trio.Event()  # a successor serves on our sockets now
        self.server: HandoffServer | None = None
        if config.handoff_socket is not None:
            self.server = HandoffServer(
                config.handoff_socket,
                acquired.sockets,
                self._hand_off,
                timeout=config.handoff_timeout,
                draining=lambda: runtime.drain.draining,
                predecessor=acquired.predecessor,
            )
        self.runtime = runtime
        runtime.listen_sockets.update(
            (name.removeprefix(LISTENER_PREFIX), socks)
            for name, socks in acquired.sockets.items()
            if name.startswith(LISTENER_PREFIX)
        )

    def __repr__(self) -> str:
        return f"<ProcessSockets {sorted(self.acquired.sockets)} {self.server!r}>"

    @classmethod
    async def acquire(cls, config: Config, runtime: Runtime) -> ProcessSockets:
        wanted = wanted_listeners(config)
        acquired = await acquire_listen_sockets(
            wanted, config.handoff_socket, config.handoff_timeout
        )
        return cls(config, runtime, acquired)

    @property
    def admin(self) -> list[socket.socket]:
        return self.acquired.sockets[ADMIN]

    @property
    def probes(self) -> list[socket.socket] | None:
        return self.acquired.sockets.get(PROBES)

    def _hand_off(self, reason: str) -> None:
        self.handed_off.set()
        self.runtime.drain.start(reason)

    async def wait_for_discovery(self) -> None:
        """Taking over from a predecessor: return once discovery has synced, or raise."""
        predecessor = self.acquired.predecessor
        if predecessor is None:
            return
        registry = self.runtime.endpoints
        budget = self.config.handoff_timeout * SYNC_SHARE
        with trio.move_on_after(budget):
            await registry.first_sync.wait()
            return
        waiting = registry.waiting_for() or "the first sync"
        log.warning("handoff_abandoned_not_synced", pid=predecessor.pid, waiting_for=waiting)
        predecessor.close()  # it stops waiting for "serving" and keeps its sockets
        raise HandoffError(
            f"discovery did not sync within {budget:g}s (0.8 x handoff_timeout), waiting for "
            f"{waiting}: nothing was handed over, pid {predecessor.pid} keeps serving"
        )

    async def serving(self, nursery: trio.Nursery) -> None:
        """Our listeners run: own the handoff path, tell the predecessor to drain."""
        if self.server is not None:
            await nursery.start(self.server.run)
        if self.acquired.predecessor is not None:
            await self.acquired.predecessor.confirm_serving()

    def log_fields(self) -> dict[str, object]:
        """For the ``started`` line: whom the sockets came from, and which."""
        predecessor = self.acquired.predecessor
        if predecessor is None:
            return {}
        return {"handoff_from": predecessor.pid, "inherited": sorted(self.acquired.inherited)}

    async def finish(self, *, signals: bool = True) -> None:
        """After the drain: "done" to a successor; then, with ``after_handoff: wait``
        (and ``signals``: the main thread's), stay until SIGTERM/SIGINT."""
        if self.server is None:
            return
        await self.server.finish()
        if self.server.handed_off and self.config.after_handoff == "wait" and signals:
            log.info("handed_off_waiting_for_signal")
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
                async for signum in received:
                    log.info("stopping", signal=signal.Signals(signum).name)
                    return

    def close(self) -> None:
        """Close what no listener took (a failed start) and our copies; drop the predecessor."""
        close_all(self.acquired.sockets)
        if self.acquired.predecessor is not None:
            self.acquired.predecessor.close()
