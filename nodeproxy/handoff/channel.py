"""The trio shell around ``protocol.py``: one handoff conversation over a Unix socket.

It only moves bytes and descriptors: ``sendmsg`` with ``SCM_RIGHTS`` for the
one message that carries sockets, ``recvmsg`` with room for ``MAX_FDS``
descriptors (received close-on-exec) for everything. What may be said when
is ``protocol.Session``'s business; a peer that closes mid-conversation is
``PeerGone``.
"""

from __future__ import annotations

import array
import os
import socket
import struct

import trio

from nodeproxy.handoff.protocol import (
    MAX_FDS,
    Decoder,
    HandoffError,
    HandoffProtocolError,
    Message,
    Role,
    Session,
    close_fds,
)

RECEIVE_BYTES = 64 * 1024
_ANCILLARY = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class PeerGone(HandoffError):
    """The other process closed the connection (or exited) mid-conversation."""


def _fds_in(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


class Channel:
    """One end of a handoff connection; owns the socket and the descriptors not yet handed out."""

    def __init__(self, sock: trio.socket.SocketType, role: Role) -> None:
        self.sock = sock
        self.session = Session(role)
        self.decoder = Decoder()

    def __repr__(self) -> str:
        return f"<Channel {self.session!r} {self.decoder!r}>"

    def peer(self) -> tuple[int, int]:
        """The peer's (pid, uid), from the kernel (SO_PEERCRED)."""
        raw = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        pid, uid, _ = _UCRED.unpack(raw)
        return pid, uid

    def peer_allowed(self) -> bool:
        """Only the same user (or root) may take this process's sockets."""
        _, uid = self.peer()
        return uid in (os.getuid(), 0)

    async def send(self, message: Message) -> None:
        data = self.session.send(message)
        try:
            if message.fds:
                fds = array.array("i", message.fds)
                sent = await self.sock.sendmsg(
                    [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())]
                )
                data = data[sent:]
            while data:
                sent = await self.sock.send(data)
                data = data[sent:]
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise PeerGone(f"peer closed the handoff connection ({exc.strerror})") from None

    async def receive(self) -> Message:
        """The next message, checked against the session; PeerGone at end of stream."""
        while (message := self.decoder.next_message()) is None:
            try:
                data, ancdata, flags, _ = await self.sock.recvmsg(
                    RECEIVE_BYTES, _ANCILLARY, socket.MSG_CMSG_CLOEXEC
                )
            except ConnectionResetError:
                raise PeerGone("peer reset the handoff connection") from None
            fds = _fds_in(ancdata)
            if flags & socket.MSG_CTRUNC:
                close_fds(fds)
                self.decoder.close()
                raise HandoffProtocolError(f"more than {MAX_FDS} descriptors (truncated)")
            if not data:
                close_fds(fds)
                self.decoder.close()
                raise PeerGone(f"peer closed the handoff connection ({self.session.state.value})")
            self.decoder.feed(data, fds)
        return self.session.receive(message)

    def close(self) -> None:
        self.decoder.close()
        self.sock.close()
