"""The seed lab's birthday greeter, rebuilt as a tiny trio + h11 app for the embedded demo.

Why it exists: `nodeproxy demo` needs real upstream replicas to route to, and the seed lab's
greeter is what users know. It is deliberately small but well behaved, so the demo exercises the
proxy the way a real service would: HTTP/1.1 keep-alive, content-length bodies, a bounded request
body (64 KiB -> 413), and a header `x-greeter-replica` so round robin is visible from curl.

The decision (`respond`) is plain synchronous code that takes the request and `today`; the trio
shell below only moves bytes. Run one standalone with
`python -m nodeproxy.demo.greeter --port 3000 --replica a`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from urllib.parse import unquote

import h11
import trio

MAX_BODY_BYTES = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024
IDLE_TIMEOUT_S = 60.0
MAX_CONNECTIONS = 256
LINGER_S = 1.0
LINGER_MAX_BYTES = 1024 * 1024
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")

Today = Callable[[], datetime.date]
_Next = h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]


def wall_clock_today() -> datetime.date:
    """Today's local date."""
    return datetime.date.today()  # wall clock: birthday is a calendar fact


@dataclass(frozen=True)
class Reply:
    """What the greeter answers: a status, a JSON document and extra headers."""

    status: int
    doc: dict[str, str]
    headers: tuple[tuple[str, str], ...] = field(default=())


def _error(status: int, message: str) -> Reply:
    return Reply(status, {"error": message})


def _greeting(name: str, birthday: bool) -> Reply:
    suffix = " Happy birthday" if birthday else ""
    return Reply(200, {"message": f"Hello, {name}!{suffix}"})


def _parse_birth_date(body: bytes, today: datetime.date) -> datetime.date | Reply:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _error(400, 'body must be JSON like {"dateOfBirth": "YYYY-MM-DD"}')
    raw = doc.get("dateOfBirth") if isinstance(doc, dict) else None
    if not isinstance(raw, str) or not _DATE_RE.fullmatch(raw):
        return _error(400, "dateOfBirth must be a string YYYY-MM-DD")
    try:
        born = datetime.date.fromisoformat(raw)
    except ValueError:
        return _error(400, f"dateOfBirth is not a valid date: {raw}")
    if born > today:
        return _error(400, "dateOfBirth is in the future")
    return born


def respond(method: str, target: str, body: bytes, today: datetime.date) -> Reply:
    """Decide the answer to one complete request (pure: no I/O, no clock)."""
    path = target.split("?", 1)[0]
    if path == "/healthz":
        if method not in ("GET", "HEAD"):
            return Reply(405, {"error": "method not allowed"}, (("allow", "GET, HEAD"),))
        return Reply(200, {"status": "ok"})
    if not path.startswith("/hello/"):
        return _error(404, f"not found: {path}")
    name = unquote(path.removeprefix("/hello/"))
    if not name or "/" in name:
        return _error(404, f"not found: {path}")
    if method in ("GET", "HEAD"):
        return _greeting(name, birthday=False)
    if method != "POST":
        return Reply(405, {"error": "method not allowed"}, (("allow", "GET, HEAD, POST"),))
    born = _parse_birth_date(body, today)
    if isinstance(born, Reply):
        return born
    return _greeting(name, birthday=(born.month, born.day) == (today.month, today.day))


class _BodyTooLarge(Exception):
    """The request body is over MAX_BODY_BYTES; answered 413 and the connection closed."""


async def _next_event(stream: trio.SocketStream, conn: h11.Connection) -> _Next:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(65536))


async def _read_body(
    stream: trio.SocketStream, conn: h11.Connection, request: h11.Request
) -> bytes:
    for key, value in request.headers:
        if key == b"content-length" and int(value) > MAX_BODY_BYTES:
            raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await _next_event(stream, conn)
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_BODY_BYTES:
                raise _BodyTooLarge
            chunks.append(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        else:  # ConnectionClosed mid-body: nothing to answer
            raise trio.BrokenResourceError("client closed during the body")


def _encode(conn: h11.Connection, reply: Reply, replica: str, *, head: bool, close: bool) -> bytes:
    body = json.dumps(reply.doc).encode() + b"\n"
    headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("x-greeter-replica", replica),
        *reply.headers,
    ]
    if close:
        headers.append(("connection", "close"))
    reason = HTTPStatus(reply.status).phrase.encode()
    out = conn.send(h11.Response(status_code=reply.status, headers=headers, reason=reason))
    if not head:
        out += conn.send(h11.Data(data=body))
    return out + conn.send(h11.EndOfMessage())


async def _linger(stream: trio.SocketStream) -> None:
    """Half-close, then discard what the client still sends (bounded), so the kernel does not
    answer its unread upload with a reset that would destroy our 413 before it is read."""
    await stream.send_eof()
    discarded = 0
    with trio.move_on_after(LINGER_S):
        while discarded < LINGER_MAX_BYTES and (data := await stream.receive_some(65536)):
            discarded += len(data)


async def _serve_one(
    stream: trio.SocketStream, conn: h11.Connection, replica: str, today: Today
) -> bool:
    """Answer one request; True if the connection can carry another one."""
    try:
        with trio.fail_after(IDLE_TIMEOUT_S):
            event = await _next_event(stream, conn)
            if not isinstance(event, h11.Request):
                return False  # ConnectionClosed: the client is done
            target = event.target.decode("ascii", "replace")
            body = await _read_body(stream, conn, event)
    except _BodyTooLarge:
        reply = _error(413, f"request body over {MAX_BODY_BYTES} bytes")
        await stream.send_all(_encode(conn, reply, replica, head=False, close=True))
        await _linger(stream)
        return False
    except h11.RemoteProtocolError as exc:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            reply = _error(exc.error_status_hint, f"bad request: {exc}")
            await stream.send_all(_encode(conn, reply, replica, head=False, close=True))
        return False
    reply = respond(event.method.decode(), target, body, today())
    await stream.send_all(_encode(conn, reply, replica, head=event.method == b"HEAD", close=False))
    return conn.our_state is h11.DONE and conn.their_state is h11.DONE


async def _serve_connection(stream: trio.SocketStream, replica: str, today: Today) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
    async with stream:
        try:
            while await _serve_one(stream, conn, replica, today):
                conn.start_next_cycle()
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the client went away or idled out: nobody to answer


async def serve_greeter(
    host: str,
    port: int,
    replica: str,
    *,
    today: Today = wall_clock_today,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the greeter on host:port (0 = any free port) until cancelled.

    Calls `task_status.started(bound_port)` once the socket is listening.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_port: int = listeners[0].socket.getsockname()[1]
    limiter = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def handler(stream: trio.SocketStream) -> None:
        async with limiter:
            await _serve_connection(stream, replica, today)

    task_status.started(bound_port)
    await trio.serve_listeners(handler, listeners)


async def _run_standalone(host: str, port: int, replica: str) -> None:
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(partial(serve_greeter, host, port, replica))
        print(f"greeter replica {replica} listening on {host}:{bound}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m nodeproxy.demo.greeter --port 3000 --replica a`."""
    parser = argparse.ArgumentParser(description="The birthday greeter used by nodeproxy demo.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--replica", default="a")
    args = parser.parse_args(argv)
    try:
        trio.run(_run_standalone, args.host, args.port, args.replica)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
