"""A hand-written HTTP/1.1 backend that frames requests by Content-Length only.

It stands for two real kinds of server a shared proxy must survive:

* a naive parser that ignores ``Transfer-Encoding`` (the classic target of a
  CL/TE desync): it reads exactly ``Content-Length`` bytes of body and takes
  whatever follows as the next request on the connection;
* a server that breaks response framing, picked by the request path:

      /extra      a correct answer followed by a whole second response
      /head-body  to HEAD: a Content-Length body although HEAD has none
      /204, /304  that status, then a body anyway
      /late       a correct answer, then a stray response 50 ms later
      /clte       a response carrying both Content-Length and Transfer-Encoding
      /hang-up    reads the request, closes without answering
      anything    200 with body ``own:<method> <target>``

Every answer's body names the request it answers, so a test can tell whether
a client got its own answer or somebody else's (``POISON``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from tests.helpers.backends import serving

POISON = b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\nPOISONED-REPLY"


def _answer(body: bytes, status: bytes = b"200 OK") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)


@dataclass
class RawBackend:
    port: int = 0
    connections: int = 0
    requests: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)  # method, target, body

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def targets(self) -> list[bytes]:
        return [target for _, target, _ in self.requests]

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf.lstrip(b"\r\n"):
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.lstrip(b"\r\n").split(b"\r\n\r\n", 1)
                lines = head.split(b"\r\n")
                parts = lines[0].split(b" ")
                if len(parts) != 3:
                    return  # garbage where a request line should be: hang up
                method, target = parts[0], parts[1]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                while len(buf) < length:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                body, buf = buf[:length], buf[length:]
                self.requests.append((method, target, body))
                if not await self._respond(stream, method, target):
                    return
        except trio.BrokenResourceError:
            return
        finally:
            stream.socket.close()

    async def _respond(self, stream: trio.SocketStream, method: bytes, target: bytes) -> bool:
        own = _answer(b"own:" + method + b" " + target)
        if target == b"/hang-up":
            return False
        if target == b"/extra":
            await stream.send_all(own + POISON)
        elif target == b"/head-body":
            await stream.send_all(own)  # to HEAD the body is extra
        elif target in (b"/204", b"/304"):
            status = b"204 No Content" if target == b"/204" else b"304 Not Modified"
            await stream.send_all(b"HTTP/1.1 %s\r\n\r\n%s" % (status, POISON))
        elif target == b"/late":
            await stream.send_all(own)
            await trio.sleep(0.05)
            await stream.send_all(POISON)
        elif target == b"/clte":
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"0\r\n\r\n" + POISON
            )
        else:
            await stream.send_all(own)
        return True


@asynccontextmanager
async def raw_backend() -> AsyncIterator[RawBackend]:
    """A running ``RawBackend`` on 127.0.0.1, port 0."""
    b = RawBackend()
    async with serving(b.handle) as b.port:
        yield b
