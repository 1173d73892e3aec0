"""Forwarding one request: send it upstream, then relay the response down.

The request side lives here; the response side and the WebSocket splice are in
``relay.py``. Everything is sequential in the connection's own task (no
per-request tasks): read a chunk, frame it, write it, so at most one chunk per
direction is ever held. When the whole request (head and any small body) is
already in hand it goes out in a single write, and that same buffer is what
makes the one transparent retry safe: if a *reused* keep-alive connection turns
out to be dead before a single response byte arrives (the upstream closed it
while it sat idle), the request is replayed once on a fresh connection, but
only for a method RFC 9110 §9.2.2 calls idempotent: a POST the upstream may
have acted on is never sent twice.

A streamed request body is bounded in time and rate (``request_body.py``).

Upgrades: only the protocols the route (or listener) lists are relayed; any
other is refused 403 before a byte goes upstream; ``h2c`` is dropped from the
request and it is forwarded as a plain one (RFC 9113 removed that upgrade).

``Expect: 100-continue`` is forwarded; the upstream's 100 is relayed. If the
upstream says nothing for ``CONTINUE_WAIT`` the proxy sends the 100 itself (as
curl would stop waiting), so neither side can deadlock on the other.
"""

from __future__ import annotations

import trio

from nodeproxy.errors import (
    UpgradeNotAllowed,
    UpstreamProtocolError,
    UpstreamResetBeforeHeaders,
)
from nodeproxy.http1.codec import NEED_DATA, Event, request_event
from nodeproxy.http1.events import body_chunk
from nodeproxy.http1.forwarding import NATIVE, Forwarding
from nodeproxy.http1.headers import requested_upgrade, upstream_request_headers
from nodeproxy.http1.impl import h11
from nodeproxy.netio import receive_some, send_all, yield_before_shared_write
from nodeproxy.resilience.retry import IDEMPOTENT_METHODS
from nodeproxy.routing.actions import RouteActions
from nodeproxy.routing.header_edits import client_source
from nodeproxy.runtime import DrainState
from nodeproxy.server.downstream import Downstream, Exchange
from nodeproxy.server.relay import relay_informational, relay_response, splice
from nodeproxy.server.request_body import end_of_body, stream_body
from nodeproxy.upstream.pool import Target, UpstreamConnection, Upstreams

CONTINUE_WAIT = 1.0  # seconds to wait for an upstream 100 before sending our own


class _DeadBeforeResponse(Exception):
    """The upstream connection closed or reset before any response byte."""


class Outgoing:
    """The request as it goes upstream: what is in hand, and whether that is all of it.

    ``in_hand[0]`` is the upstream request head; a retry may swap it (a mesh
    hop adds headers). While ``complete`` the whole request can be sent again.
    (A plain class: mypyc compiles its ``__init__``; a dataclass's runs interpreted.)
    """

    __slots__ = ("complete", "in_hand", "upgrade")

    def __init__(self, in_hand: list[h11.Event], complete: bool, upgrade: bool) -> None:
        self.in_hand = in_hand
        self.complete = complete
        self.upgrade = upgrade


DEFAULT_UPGRADES = ("websocket",)


def prepare(
    down: Downstream,
    request: h11.Request,
    ex: Exchange,
    *,
    host: bytes,
    path: bytes,
    upgrades: tuple[str, ...] = DEFAULT_UPGRADES,
    forwarding: Forwarding = NATIVE,
    actions: RouteActions | None = None,
) -> Outgoing:
    """Rewrite the head for upstream and take any body already buffered from the client.

    ``upgrades``: the protocols this request may switch to (the route's or listener's).
    ``forwarding``: the listener's X-Forwarded-*/Via rules (``http1/forwarding.py``).
    ``actions``: the route's rewrites and header edits, applied after the proxy's own
    header rewriting (``auto_host_rewrite`` waits for the endpoint: the pipeline's pick).
    """
    upgrade = _upgrade(request, ex, upgrades)
    if actions is not None:
        if actions.rewrites:
            path = actions.path(path.decode("latin-1")).encode("latin-1")
        host = actions.host or host
    headers, ex.request_id = upstream_request_headers(
        request.headers,
        host=host,
        client_ip=down.client_ip,
        upgrade=upgrade,
        forwarding=forwarding,
    )
    if actions is not None:
        if actions.request is not None:
            headers = actions.request.apply(headers, client_source(ex.source, ex.client))
        if actions.response is not None:  # %REQ()% reads the request as sent upstream
            ex.response_edits = actions.response.for_request(headers)
    in_hand: list[h11.Event] = [request_event(request.method, path, headers)]
    return Outgoing(in_hand, _take_buffered_body(down, in_hand), upgrade)


def _upgrade(request: h11.Request, ex: Exchange, allowed: tuple[str, ...]) -> bool:
    """Whether to forward the request's Upgrade (403 for a protocol not allowed)."""
    protocols = requested_upgrade(request.headers)
    if not protocols:
        return False
    wanted = [p.decode("latin-1") for p in protocols if p != b"h2c"]
    if not wanted:
        return False  # h2c alone: forwarded as a plain request, Upgrade removed
    refused = [p for p in wanted if p not in allowed]
    if refused or b"h2c" in protocols:
        raise UpgradeNotAllowed(f"upgrade to {', '.join(refused or ['h2c'])} is not allowed")
    ex.upgrade = ", ".join(wanted)
    return True


async def forward(
    down: Downstream,
    request: h11.Request,
    ex: Exchange,
    target: Target,
    upstreams: Upstreams,
    *,
    host: bytes,
    path: bytes,
    body_timeout: float,
    drain: DrainState,
) -> bool:
    """Proxy one request to ``target``; True when the client connection may be reused."""
    out = prepare(down, request, ex, host=host, path=path)
    conn, first = await send(upstreams, target, down, out, body_timeout)
    return await relay(down, conn, first, ex, upstreams, out.upgrade, drain)


async def relay(
    down: Downstream,
    conn: UpstreamConnection,
    first: h11.Response | h11.InformationalResponse,
    ex: Exchange,
    upstreams: Upstreams,
    upgrade: bool,
    drain: DrainState,
) -> bool:
    """Relay the response whose head is ``first``, then give ``conn`` back."""
    reusable = False
    try:
        upstreams.record_response(conn, first.status_code)
        if isinstance(first, h11.InformationalResponse):  # only a 101 gets here
            if not upgrade:
                raise UpstreamProtocolError("101 Switching Protocols without an upgrade request")
            await splice(down, conn, first, ex)
            return False
        close = drain.draining or not down.codec.request_complete
        await relay_response(down, conn, first, ex, close=close)
        reusable = conn.codec.reusable and not upgrade
        return down.codec.keep_alive
    finally:
        upstreams.release(conn, reusable=reusable)


async def send(
    upstreams: Upstreams, target: Target, down: Downstream, out: Outgoing, body_timeout: float
) -> tuple[UpstreamConnection, h11.Response | h11.InformationalResponse]:
    """One try: a lent connection that took the request, and the response head it gave.

    On failure nothing stays lent. A reused connection found dead before any
    response byte is replayed once on a fresh one (the classic keep-alive race),
    if the whole request was in hand.
    """
    in_hand, complete = out.in_hand, out.complete
    for attempt in (1, 2):
        conn = await upstreams.acquire(target.cluster, target.endpoint, fresh=attempt > 1)
        try:
            return conn, await _send(conn, down, in_hand, complete, target, body_timeout)
        except _DeadBeforeResponse:
            upstreams.release(conn, reusable=False)
            if attempt > 1 or not (conn.reused and complete and _idempotent(in_hand)):
                msg = f"{conn.endpoint} closed before answering"
                raise UpstreamResetBeforeHeaders(msg) from None
        except BaseException:
            upstreams.release(conn, reusable=False)
            raise
    raise AssertionError("unreachable")


def _idempotent(in_hand: list[h11.Event]) -> bool:
    head = in_hand[0]
    return type(head) is h11.Request and head.method.decode("latin-1") in IDEMPOTENT_METHODS


def _take_buffered_body(down: Downstream, events: list[h11.Event]) -> bool:
    """Move body events already parsed from the client into ``events``; True at end."""
    codec = down.codec
    while True:
        event = codec.next_event()
        if type(event) is h11.Data:
            events.append(h11.Data(data=bytes(body_chunk(event))))
        elif type(event) is h11.EndOfMessage:
            events.append(end_of_body(event) if event.headers else event)
            return True
        else:
            return False


async def _send(
    conn: UpstreamConnection,
    down: Downstream,
    in_hand: list[h11.Event],
    complete: bool,
    target: Target,
    body_timeout: float,
) -> h11.Response | h11.InformationalResponse:
    """Send the request (streaming any rest of the body); return the response head."""
    conn.bytes_in = 0
    payload = b"".join([conn.codec.send(e) for e in in_hand])
    await yield_before_shared_write()  # batches the writes to a shared upstream (netio.py)
    try:
        await send_all(conn.stream, payload)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise _DeadBeforeResponse from None
    if not complete:
        if down.codec.waiting_for_100_continue:
            early = await _await_continue(conn, down, target.timeout)
            if early is not None:
                return early
        await stream_body(down, conn, body_timeout)
    # Past the deadline the connection loop answers 504 (UpstreamResponseTimeout).
    down.arm(trio.current_time() + target.timeout, response_timeout=target.timeout)
    try:
        while True:
            event = await _head_event(conn)
            if type(event) is h11.InformationalResponse and event.status_code != 101:
                await relay_informational(down, event)
                continue
            return _expect_head(event)
    finally:
        down.disarm()


async def _await_continue(
    conn: UpstreamConnection, down: Downstream, timeout: float
) -> h11.Response | h11.InformationalResponse | None:
    """Wait briefly for the upstream's 100; a final answer instead is returned."""
    with trio.move_on_after(min(CONTINUE_WAIT, timeout)):
        while True:
            event = await _head_event(conn)
            if type(event) is h11.InformationalResponse and event.status_code == 100:
                break
            if type(event) is h11.InformationalResponse and event.status_code != 101:
                await relay_informational(down, event)
                continue
            return _expect_head(event)
    if down.codec.waiting_for_100_continue:
        await relay_informational(down, h11.InformationalResponse(status_code=100, headers=[]))
    return None


async def _head_event(conn: UpstreamConnection) -> Event:
    """Next upstream event while waiting for the response head."""
    codec = conn.codec
    event = codec.next_event()
    while event is NEED_DATA:
        try:
            data = await receive_some(conn.stream, 65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            if conn.bytes_in == 0:
                raise _DeadBeforeResponse
            raise UpstreamResetBeforeHeaders(f"{conn.endpoint} closed mid-headers")
        conn.bytes_in += len(data)
        codec.receive(data)
        event = codec.next_event()
    return event


def _expect_head(event: Event) -> h11.Response | h11.InformationalResponse:
    if type(event) is h11.Response or type(event) is h11.InformationalResponse:
        return event
    raise UpstreamProtocolError(f"unexpected {event!r} before response headers")
