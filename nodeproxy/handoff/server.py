"""The running process's side: hand the listening sockets to a successor, then drain.

``HandoffServer.run`` listens on the handoff path (mode 0600, bound under a
temporary name and renamed over the path, so a successor takes the path over
atomically from its predecessor). A hello from the same user gets every
listening socket (``SCM_RIGHTS``); when the successor says "serving" the
server calls ``on_handoff`` once (the app starts its drain: accept loops stop
and drop their copy of each socket, which stays open in the successor, so
nothing in the accept backlog is lost), stops listening on the path, and
once the app has drained, ``finish`` says "done".

One handoff at a time. A second hello is refused, with the reason, while a
handoff is running, while this process is still taking over from its own
predecessor (until that one said "done"), and, as "draining", while a
signal or ``/drain`` is draining this process (its sockets are closing: the
caller binds afresh). A successor that does not say "serving" within
``timeout`` aborts the handoff: this process never stopped accepting, so it
simply goes on serving.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import structlog
import trio

from nodeproxy.handoff import protocol
from nodeproxy.handoff.channel import Channel
from nodeproxy.handoff.client import Predecessor
from nodeproxy.handoff.protocol import HandoffError, Message, Role
from nodeproxy.handoff.sockets import Sockets

log = structlog.get_logger("nodeproxy.handoff")

DONE_TIMEOUT = 5.0  # finish(): how long "done" may take to go out


class HandoffServer:
    """Owns the handoff path while this process serves, and the one handoff in progress."""

    def __init__(
        self,
        path: str,
        sockets: Sockets,
        on_handoff: Callable[[str], None],
        *,
        timeout: float,
        draining: Callable[[], bool] = lambda: False,
        predecessor: Predecessor | None = None,
    ) -> None:
        self.path = path
        self.sockets = sockets
        self.on_handoff = on_handoff
        self.timeout = timeout
        self.draining = draining
        self.predecessor = predecessor
        self.successor: int | None = None  # pid of the process being handed the sockets
        self.handed_off = False
        self.inode: int | None = None  # the path's inode while it is ours
        self.drained = trio.Event()
        self.done_sent = trio.Event()
        self.listen_scope = trio.CancelScope()

    def __repr__(self) -> str:
        state = "handed off" if self.handed_off else f"handing to {self.successor}"
        return f"<HandoffServer {self.path} [{state if self.successor else 'idle'}]>"

    def refusal(self) -> Message | None:
        """Why a hello arriving now must be refused, or None."""
        if self.successor is not None:
            return protocol.refused(
                "busy", f"a handoff to pid {self.successor} is already in progress"
            )
        pred = self.predecessor
        if pred is not None and not pred.finished.is_set():
            return protocol.refused(
                "busy",
                f"pid {os.getpid()} is still taking over from pid {pred.pid}, "
                "which is draining; retry once it has exited",
            )
        if self.draining():
            return protocol.refused("draining", f"pid {os.getpid()} is draining")
        return None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the path and answer hellos until handed off (then wait) or cancelled."""
        listener = await self._bind()
        try:
            async with trio.open_nursery() as nursery:
                if self.predecessor is not None:
                    nursery.start_soon(self.predecessor.wait_done)
                task_status.started()
                with self.listen_scope:
                    while True:
                        conn, _ = await listener.accept()
                        nursery.start_soon(self._serve, conn)
                listener.close()  # handed off: the path is the successor's now
        finally:
            listener.close()
            self._unlink_if_ours()

    async def finish(self) -> None:
        """After the drain: "done" to the successor (bounded), release the path."""
        self.drained.set()
        if self.handed_off:
            with trio.move_on_after(DONE_TIMEOUT):
                await self.done_sent.wait()
        self._unlink_if_ours()

    async def _bind(self) -> trio.socket.SocketType:
        tmp = f"{self.path}.{os.getpid()}"
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            await sock.bind(tmp)
            os.chmod(tmp, 0o600)
            sock.listen(8)
            os.replace(tmp, self.path)
            self.inode = os.stat(self.path).st_ino
        except BaseException:
            sock.close()
            raise
        log.info("handoff_listening", path=self.path)
        return sock

    def _unlink_if_ours(self) -> None:
        try:
            if self.inode is not None and os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except OSError:
            pass
        self.inode = None

    async def _serve(self, sock: trio.socket.SocketType) -> None:
        channel = Channel(sock, Role.OLD)
        try:
            await self._converse(channel)
        except (HandoffError, OSError) as exc:
            log.warning("handoff_aborted", successor=self.successor, error=str(exc))
        finally:
            channel.close()
            if not self.handed_off:
                self.successor = None

    async def _converse(self, channel: Channel) -> None:
        pid, _ = channel.peer()
        if not channel.peer_allowed():
            log.warning("handoff_peer_refused", pid=pid, reason="another user")
            return
        with trio.move_on_after(self.timeout) as waited:
            hello = await channel.receive()
        if waited.cancelled_caught:
            log.warning("handoff_no_hello", pid=pid, timeout_s=self.timeout)
            return
        answer = protocol.version_refusal(hello) or self.refusal()
        if answer is not None:
            log.warning("handoff_refused", pid=pid, reason=answer.fields["reason"])
            await channel.send(answer)
            return
        self.successor = pid  # no await since refusal(): one handoff at a time
        names = [name for name, socks in self.sockets.items() for _ in socks]
        fds = [s.fileno() for socks in self.sockets.values() for s in socks]
        log.info("handoff_sending", successor=pid, listeners=sorted(self.sockets))
        await channel.send(protocol.sockets(names, fds))
        with trio.move_on_after(self.timeout) as waited:
            await channel.receive()  # the session admits only "serving" here
        if waited.cancelled_caught:
            log.warning("handoff_not_confirmed", successor=pid, timeout_s=self.timeout)
            return
        self.handed_off = True
        self.listen_scope.cancel()
        log.info("handoff_done_draining", successor=pid)
        self.on_handoff(f"handoff to pid {pid}")
        await self.drained.wait()
        await channel.send(protocol.done())
        self.done_sent.set()
