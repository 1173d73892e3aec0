"""The seed lab's birthday greeter, rebuilt as a tiny trio + h11 app for the embedded demo.

Why it exists: `nodeproxy demo` needs real upstream replicas to route to, and the seed lab's
greeter is what users know. It is deliberately small but well behaved, so the demo exercises the
proxy the way a real service would: HTTP/1.1 keep-alive, content-length bodies, a bounded request
body (64 KiB -> 413), and a header `x-greeter-replica` so round robin is visible from curl.

The decision (`respond`) is plain synchronous code that takes the request and `today`; the
server shell (`http1/small_server.py`, shared with the admin listener) only moves bytes. Run
one standalone with `python -m nodeproxy.demo.greeter --port 3000 --replica a`.
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
from urllib.parse import unquote

import trio

from nodeproxy.http1.small_server import (
    Request,
    Response,
    ServerLimits,
    SmallServer,
    reason_phrase,
)

MAX_BODY_BYTES = 64 * 1024
LIMITS = ServerLimits(
    max_connections=256,
    max_header_bytes=16 * 1024,
    max_body_bytes=MAX_BODY_BYTES,
    header_timeout=60.0,
    idle_timeout=60.0,
    body_timeout=60.0,
    send_timeout=60.0,
)
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")

Today = Callable[[], datetime.date]


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


def _response(reply: Reply, replica: str) -> Response:
    body = json.dumps(reply.doc).encode() + b"\n"
    headers = (
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("x-greeter-replica", replica),
        *reply.headers,
    )
    return Response(reply.status, headers, body)


def greeter_server(replica: str, today: Today = wall_clock_today) -> SmallServer:
    """The greeter's connections (``http1/small_server.py`` frames them)."""

    async def app(request: Request) -> Response:
        return _response(respond(request.method, request.target, request.body, today()), replica)

    def error_page(status: int, detail: str) -> Response:
        return _response(_error(status, f"{reason_phrase(status).lower()}: {detail}"), replica)

    return SmallServer("greeter", app, error_page, LIMITS)


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
    task_status.started(bound_port)
    await trio.serve_listeners(greeter_server(replica, today).handle_connection, listeners)


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
