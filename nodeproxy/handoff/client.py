"""The new process's side: take the running process's listening sockets, or bind afresh.

``acquire_listen_sockets`` runs before anything binds. It connects to the
handoff path, says hello and receives every listening socket the running
process has; the ones the new config wants (same name, same address) are
used as they are, so the kernel's accept backlog never closes. Whatever did
not come over is bound afresh. Nobody answering is not an error, it is the
first start: no file, a stale file (ECONNREFUSED), a peer that closes or
says nonsense, or no answer within ``timeout`` all fall back to binding
afresh. A refusal is an error only when the running process keeps its
sockets ("busy": a handoff is already running; "version"): binding afresh
would only fail on addresses in use, so the caller exits with the reason.

The connection stays open as ``Predecessor``: the app confirms "serving"
once its listeners run (the old process then drains) and waits for "done".
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import structlog
import trio

from nodeproxy.handoff import protocol
from nodeproxy.handoff.channel import Channel, PeerGone
from nodeproxy.handoff.protocol import HandoffError, HandoffRefused, Role
from nodeproxy.handoff.sockets import (
    BindError,
    ListenAddress,
    Sockets,
    bind_fresh,
    close_all,
    serves,
)

log = structlog.get_logger("nodeproxy.handoff")


class Predecessor:
    """The new process's end of the conversation with the process it replaces."""

    def __init__(self, channel: Channel, pid: int) -> None:
        self.channel = channel
        self.pid = pid
        self.finished = trio.Event()  # set once the old one said "done" or went away

    def __repr__(self) -> str:
        return f"<Predecessor pid {self.pid} {'finished' if self.finished.is_set() else 'running'}>"

    async def confirm_serving(self) -> None:
        """Tell the old process we serve on its sockets: it stops accepting and drains."""
        try:
            await self.channel.send(protocol.serving(os.getpid()))
        except (PeerGone, OSError) as exc:
            # It gave up waiting (its timeout): it keeps serving on the same sockets
            # beside us until it is stopped; nothing is lost, only not handed over.
            log.warning("handoff_serving_not_delivered", pid=self.pid, error=str(exc))
            self.close()

    async def wait_done(self) -> None:
        """Return once the old process said "done" (drained) or exited."""
        try:
            if not self.finished.is_set():
                await self.channel.receive()
                log.info("handoff_predecessor_done", pid=self.pid)
        except (HandoffError, OSError, trio.ClosedResourceError) as exc:
            log.info("handoff_predecessor_gone", pid=self.pid, detail=str(exc))
        finally:
            self.close()

    def close(self) -> None:
        self.channel.close()
        self.finished.set()


@dataclass
class Acquired:
    sockets: Sockets  # every wanted name -> its listening sockets
    inherited: frozenset[str]  # the names that came from the running process
    predecessor: Predecessor | None  # None: nobody answered, everything bound afresh


async def _ask(path: str, timeout: float) -> tuple[Sockets, Predecessor | None]:
    """The running process's sockets by name and its connection, or ({}, None)."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = Channel(sock, Role.NEW)
    try:
        with trio.fail_after(timeout):
            await sock.connect(path)
            await channel.send(protocol.hello(os.getpid()))
            answer = await channel.receive()
    except FileNotFoundError:
        log.info("handoff_nobody_running", path=path)
    except ConnectionRefusedError:
        log.info("handoff_stale_socket", path=path)
    except trio.TooSlowError:
        log.warning("handoff_no_answer", path=path, timeout_s=timeout)
    except (HandoffError, OSError) as exc:
        log.warning("handoff_failed", path=path, error=str(exc))
    else:
        if answer.type == "sockets":
            pid = channel.peer()[0]
            received: Sockets = {}
            for name, fd in zip(answer.fields["names"], answer.fds, strict=True):
                received.setdefault(name, []).append(socket.socket(fileno=fd))
            return received, Predecessor(channel, pid)
        code, reason = answer.fields["code"], answer.fields["reason"]
        channel.close()
        if code != "draining":
            raise HandoffRefused(code, f"handoff refused by the process at {path}: {reason}")
        log.warning("handoff_refused_draining", path=path, reason=reason)
        return {}, None
    channel.close()
    return {}, None


async def acquire_listen_sockets(
    wanted: Mapping[str, ListenAddress], handoff_path: str | None, timeout: float
) -> Acquired:
    """Every ``wanted`` name's listening sockets, taken over from the process at
    ``handoff_path`` where it has them, else bound afresh (OSError if that fails)."""
    received, predecessor = await _ask(handoff_path, timeout) if handoff_path else ({}, None)
    out: Sockets = {}
    inherited: set[str] = set()
    try:
        for name, address in wanted.items():
            socks = received.pop(name, [])
            if socks and all(serves(address, s) for s in socks):
                out[name] = socks
                inherited.add(name)
                continue
            if socks:
                log.info("handoff_socket_rebound", listener=name, wanted=str(address))
                close_all({name: socks})
            try:
                out[name] = await bind_fresh(address)
            except OSError as exc:
                raise BindError(name, address, exc) from exc
    except BaseException:
        close_all(out)
        close_all(received)
        if predecessor is not None:
            predecessor.close()  # the old process never hears "serving": it keeps serving
        raise
    for name in received:
        log.info("handoff_socket_unused", listener=name)
    close_all(received)
    if predecessor is not None:
        log.info("handoff_received", pid=predecessor.pid, listeners=sorted(inherited))
    return Acquired(out, frozenset(inherited), predecessor)
