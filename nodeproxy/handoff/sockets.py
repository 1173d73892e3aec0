"""Listening sockets by name: what a config wants, binding afresh, and checking inherited ones.

Why names: the handoff carries "every listening socket this process has" and
the new process may run a different config. A name (``admin``,
``listener/<name>``) says which socket serves what; an inherited socket is
used only when its bound address is the one the new config asks for, so a
changed port is bound afresh instead of silently serving the old one.

A name maps to a list: a listener on every interface (host ``""``) gets one
socket per address family, as ``trio.open_tcp_listeners`` binds them.
Sockets here are plain ``socket.socket`` objects (non-blocking, listening), so
a supervisor can pass their descriptors to worker processes as they are.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import trio

from nodeproxy.config.model import Config

ADMIN = "admin"
PROBES = "probes"  # admin.probe_address: /ready and /healthz only
LISTENER_PREFIX = "listener/"
MESH_INBOUND = "inbound"  # mesh/inbound.py LISTENER (not imported: it pulls in the data path)
INTERCEPT = "intercept"  # intercept/listener.py LISTENER (the transparent listener)
BACKLOG = 0xFFFF  # as trio.open_tcp_listeners: the kernel caps it at somaxconn

Sockets = dict[str, list[socket.socket]]


@dataclass(frozen=True)
class ListenAddress:
    host: str  # "" = every interface
    port: int  # 0 = any free port (tests)

    def __str__(self) -> str:
        return f"{self.host or '*'}:{self.port}"


class BindError(OSError):
    """A listening socket could not be bound; says which, where, and the errno."""

    def __init__(self, name: str, address: ListenAddress, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.name = name.replace("/", " ")  # "listener/outbound" -> "listener outbound"
        self.address = address

    def __str__(self) -> str:
        code = errno.errorcode.get(self.errno or 0)
        why = f"{code}, errno {self.errno}" if code else f"errno {self.errno}"
        return f"{self.name}: cannot listen on {self.address}: {self.strerror} ({why})"


def listener_key(name: str) -> str:
    return LISTENER_PREFIX + name


def wanted_listeners(config: Config) -> dict[str, ListenAddress]:
    """Every listening socket ``config`` serves on, by name (the admin's included)."""
    admin = config.admin
    wanted = {ADMIN: ListenAddress(admin.host, admin.port)}
    if admin.probe_port is not None:
        wanted[PROBES] = ListenAddress(admin.probe_host, admin.probe_port)
    for lc in config.listeners:
        wanted[listener_key(lc.name)] = ListenAddress(lc.host, lc.port)
    if config.mesh is not None:
        wanted[listener_key(MESH_INBOUND)] = ListenAddress(
            config.mesh.inbound_host, config.mesh.inbound_port
        )
    if config.intercept is not None:
        wanted[listener_key(INTERCEPT)] = ListenAddress(
            config.intercept.host, config.intercept.port
        )
    return wanted


async def bind_fresh(address: ListenAddress) -> list[socket.socket]:
    """Bind and listen on ``address`` as ``trio.open_tcp_listeners`` would; OSError if not."""
    infos = await trio.socket.getaddrinfo(
        address.host or None, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    bound: list[socket.socket] = []
    try:
        for family, type_, proto, _, sockaddr in infos:
            sock = socket.socket(family, type_, proto)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        close_all({"": bound})
        raise
    return bound


def close_all(sockets: Mapping[str, list[socket.socket]]) -> None:
    for socks in sockets.values():
        for sock in socks:
            sock.close()


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def serves(address: ListenAddress, sock: socket.socket) -> bool:
    """Whether the listening ``sock`` is bound where ``address`` asks (port 0: any port).

    A host name is compared by what it resolved to when the old process bound
    it: only literal addresses and "" are checked; a name is trusted by port.
    """
    try:
        bound = sock.getsockname()
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        return False
    if sock.type != socket.SOCK_STREAM or not listening or not isinstance(bound, tuple):
        return False
    if address.port and bound[1] != address.port:
        return False
    have = _ip(str(bound[0]))
    if not address.host:
        return have is not None and have.is_unspecified
    want = _ip(address.host)
    return want is None or want == have
