"""What runs inside the intercept box's pod namespaces: servers, and the client's TCP checks.

    python -m tests.helpers.box_pods serve NAME CA_DIR   HTTP :8080, echo :9000,
                                                          TLS echo :9443, banner :3306
    python -m tests.helpers.box_pods tcp CA_DIR ADDR...   client checks, one JSON line

The servers know nothing of the mesh: plain sockets, as an application in a
pod. The TLS server holds a certificate for ``tls.example`` from a trustme
CA the box wrote to CA_DIR (``write_tls``); the client verifies it and sends that SNI. The banner
server speaks first (as MySQL does): it writes a greeting on accept, then echoes.
Client checks, each ``kind@ip:port``: ``echo``, ``tls``, ``banner`` (expect the
exchange to work) and ``closed`` (expect the connection to end with no echo).
"""

from __future__ import annotations

import json
import ssl
import sys
from pathlib import Path

import trio

READ = 65536


def write_tls(ca_dir: Path) -> None:
    """A CA and a ``tls.example`` server certificate for the TLS servers (the box calls it)."""
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(ca_dir / "tls-ca.pem"))
    leaf = ca.issue_cert("tls.example")
    leaf.private_key_and_cert_chain_pem.write_to_path(str(ca_dir / "tls-server.pem"))


async def _http(stream: trio.SocketStream, name: str) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(READ)
        if not chunk:
            return
        data += chunk
    line = data.split(b"\r\n", 1)[0].decode("latin-1")
    host = [h for h in data.split(b"\r\n") if h.lower().startswith(b"host:")]
    body = f"hello from {name}: {line} host={host[0][5:].strip().decode() if host else '-'}\n"
    head = (f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\nx-served-by: {name}\r\n"
            "connection: close\r\n\r\n")  # fmt: skip
    await stream.send_all(head.encode() + body.encode())


async def _echo(stream: trio.abc.Stream, greeting: bytes = b"", prefix: bytes = b"") -> None:
    if greeting:
        await stream.send_all(greeting)
    while data := await stream.receive_some(READ):
        await stream.send_all(prefix + data)


async def _closing(handler, stream: trio.SocketStream) -> None:  # type: ignore[no-untyped-def]
    try:
        async with stream:
            await handler(stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
        pass


async def serve(name: str, ca_dir: Path) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(ca_dir / "tls-server.pem")  # written by the box (write_tls)

    async def tls(stream: trio.SocketStream) -> None:
        wrapped = trio.SSLStream(stream, server_ctx, server_side=True)
        await wrapped.do_handshake()
        await _echo(wrapped, prefix=b"tls:")

    handlers = {8080: lambda s: _http(s, name), 9000: _echo, 9443: tls,
                3306: lambda s: _echo(s, greeting=f"BANNER {name}\n".encode())}  # fmt: skip
    async with trio.open_nursery() as nursery:
        for port, handler in handlers.items():
            listeners = await trio.open_tcp_listeners(port)
            nursery.start_soon(trio.serve_listeners, lambda s, h=handler: _closing(h, s), listeners)
        print("serving", flush=True)


async def _check(kind: str, ip: str, port: int, ca_dir: Path) -> object:
    with trio.move_on_after(5):
        stream: trio.abc.Stream = await trio.open_tcp_stream(ip, port)
        async with stream:
            if kind == "banner":  # server first: we send nothing until it spoke
                greeting = await stream.receive_some(READ)
                await stream.send_all(b"ping-banner")
                return [
                    greeting.decode(errors="replace"),
                    (await stream.receive_some(READ)).decode(),
                ]
            if kind == "tls":
                ctx = ssl.create_default_context(cafile=str(ca_dir / "tls-ca.pem"))
                stream = trio.SSLStream(stream, ctx, server_hostname="tls.example")
            marker = f"{kind}-marker-{port}".encode()
            try:
                await stream.send_all(marker)
                got = await stream.receive_some(READ)
            except (trio.BrokenResourceError, ssl.SSLError) as exc:
                return f"error: {type(exc).__name__}"
            return got.decode(errors="replace") if got else "closed"
    return "timeout"


async def client(ca_dir: Path, targets: list[str]) -> None:
    results = {}
    for target in targets:
        kind, _, where = target.partition("@")
        ip, _, port = where.rpartition(":")
        try:
            results[target] = await _check(kind, ip, int(port), ca_dir)
        except OSError as exc:
            results[target] = f"error: {exc}"
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        trio.run(serve, sys.argv[2], Path(sys.argv[3]))
    else:
        trio.run(client, Path(sys.argv[2]), sys.argv[3:])
