"""Where a supervisor's listening sockets come from: bound once here, inherited by workers.

Why one socket shared by every worker (the default): a connection waits in
one accept queue that every idle worker takes from, so a busy or dead worker
never strands connections, and a restart loses nothing. The alternative, one
``SO_REUSEPORT`` socket per worker (the kernel hashes each connection to one
of them), is kept for the comparison in docs/architecture.md and chosen only
by ``NODEPROXY_WORKER_SOCKETS=reuseport``. The shared sockets themselves come
from ``handoff/process.py`` (taken over from a running predecessor at
``handoff_socket``, or bound afresh), as for a single process.
"""

from __future__ import annotations

import socket

from nodeproxy.config.model import Config, ListenerConfig

SOCKETS_ENV = "NODEPROXY_WORKER_SOCKETS"  # "reuseport": the benchmark's comparison only


def wanted_listeners(config: Config) -> list[ListenerConfig]:
    """Every data-path listener, the mesh's inbound one included."""
    wanted = list(config.listeners)
    if config.mesh is not None:
        m = config.mesh
        wanted.append(ListenerConfig(name="inbound", host=m.inbound_host, port=m.inbound_port))
    return wanted


def bind_reuseport(config: Config, count: int) -> list[dict[str, list[socket.socket]]]:
    """The alternative measured in docs/architecture.md: one SO_REUSEPORT socket per worker
    and listener (the kernel spreads connections by a hash of their addresses)."""
    slots: list[dict[str, list[socket.socket]]] = [{} for _ in range(count)]
    for lc in wanted_listeners(config):
        port = lc.port
        for mine in slots:
            host = lc.host or "0.0.0.0"
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
            port = sock.getsockname()[1]  # port 0: the others join the one the first got
            mine[lc.name] = [sock]
    return slots
