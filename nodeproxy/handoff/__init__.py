"""Hitless handoff: a new process takes over the running one's listening sockets.

``protocol.py`` is the conversation (sans I/O), ``channel.py`` moves it over a
Unix socket, ``client.py`` is the new process's side (``acquire_listen_sockets``),
``server.py`` the running process's side (``HandoffServer``), ``sockets.py``
names the listening sockets and binds them afresh when nobody hands them over.
"""

from nodeproxy.handoff.client import Acquired, Predecessor, acquire_listen_sockets
from nodeproxy.handoff.protocol import HandoffError, HandoffProtocolError, HandoffRefused
from nodeproxy.handoff.server import HandoffServer
from nodeproxy.handoff.sockets import (
    ADMIN,
    MESH_INBOUND,
    PROBES,
    ListenAddress,
    Sockets,
    close_all,
    listener_key,
    wanted_listeners,
)

__all__ = [
    "ADMIN",
    "MESH_INBOUND",
    "PROBES",
    "Acquired",
    "HandoffError",
    "HandoffProtocolError",
    "HandoffRefused",
    "HandoffServer",
    "ListenAddress",
    "Predecessor",
    "Sockets",
    "acquire_listen_sockets",
    "close_all",
    "listener_key",
    "wanted_listeners",
]
