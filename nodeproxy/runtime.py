"""The shared, process-wide objects every component is handed at start-up.

``Runtime`` is built once by ``app.py`` and passed down; it is not a global.
It owns the state every listener shares: the per-cluster traffic state
(``traffic``) and the per-route rate-limit buckets and retry budgets
(``routes``), so a limit or budget means the same whatever port a request
came in on, and the mesh (``mesh``: certificates, identities, policy), which
the app creates when ``config.mesh`` is set and everyone else reads here.

``DrainState`` is the single switch for graceful shutdown: the app flips it on
SIGTERM/SIGINT or ``POST /drain``; listeners stop accepting, connection loops
stop keeping connections alive, and ``/ready`` answers 503.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from nodeproxy.config.model import Config
from nodeproxy.discovery.snapshot import EndpointRegistry
from nodeproxy.stats.registry import Stats
from nodeproxy.traffic.routes import Routes
from nodeproxy.traffic.sources import Sources
from nodeproxy.traffic.state import Traffic

if TYPE_CHECKING:
    from nodeproxy.mesh.state import Mesh
    from nodeproxy.tunnel.carry import Tunnels


class DrainState:
    """Owned by the app; everyone else only reads it or waits on it."""

    def __init__(self) -> None:
        self.started = trio.Event()  # for waiters
        self.reason = ""
        self.draining = False  # for readers: a plain attribute, read a few times a request

    def __repr__(self) -> str:
        return f"<DrainState [{'draining: ' + self.reason if self.draining else 'serving'}]>"

    def start(self, reason: str) -> None:
        if not self.draining:
            self.reason = reason
            self.draining = True
            self.started.set()


@dataclass
class Runtime:
    config: Config
    stats: Stats = field(default_factory=Stats)
    endpoints: EndpointRegistry = field(default_factory=EndpointRegistry)
    drain: DrainState = field(default_factory=DrainState)
    listeners_ready: bool = False
    # Listening sockets bound by someone else (a supervisor's, for a worker), by listener
    # name; a listener takes its own once, and binds afresh when there is none.
    listen_sockets: dict[str, list[socket.socket]] = field(default_factory=dict, repr=False)
    # Route-level state (rate-limit buckets, retry budgets): one per route rule, every listener's
    routes: Routes = field(default_factory=Routes, repr=False, compare=False)
    # The draws of weighted route splits (every listener's router); seeded in tests
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)
    # Per calling source (pod IP): in flight, answered, throttled; the admin dashboard reads it
    sources: Sources = field(default_factory=Sources, repr=False, compare=False)
    # Certificates, identities and policy (config.mesh set; a supervisor has none: its
    # workers mint their own). Set once by the app before anything starts.
    mesh: Mesh | None = field(default=None, repr=False, compare=False)
    _traffic: Traffic | None = field(default=None, init=False, repr=False, compare=False)
    # TCP carrying (nodeproxy/tunnel/), set by app.py before the listeners start.
    tunnels: Tunnels | None = field(default=None, repr=False, compare=False)
    # More conditions for /ready (the mesh certificates): each gives None when all is
    # well, else (still ready?, a one-line reason that /ready shows).
    health_checks: list[Callable[[], tuple[bool, str] | None]] = field(
        default_factory=list, repr=False, compare=False
    )

    @property
    def traffic(self) -> Traffic:
        """Per-cluster balancers, outlier detectors and breakers, shared by every listener."""
        if self._traffic is None:
            self._traffic = Traffic(self.config.clusters, self.endpoints, self.config.node_name)
        return self._traffic

    def health(self) -> list[tuple[bool, str]]:
        """What the ``health_checks`` report now: (still ready?, reason) each."""
        return [found for check in self.health_checks if (found := check()) is not None]

    def take_listen_sockets(self, name: str) -> list[trio.SocketListener]:
        """The inherited sockets of listener ``name`` (removed: one owner), or []."""
        return [
            trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            for sock in self.listen_sockets.pop(name, [])
        ]

    @property
    def ready(self) -> bool:
        return (
            self.listeners_ready
            and self.endpoints.synced
            and not self.drain.draining
            and all(ok for ok, _ in self.health())
        )
