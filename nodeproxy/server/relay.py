"""Relaying the upstream's answer down: interim responses, the response, upgrades.

The response body is copied one upstream read at a time and everything parsed
from that read (head, data, end of message) leaves in one downstream write, so
a small response costs exactly one ``send_all``. A route's response header
edits apply to the relayed head; a route's own answer (``answer_local``)
goes out the same way, without any upstream. Once the response head has
been written ``ex.response_started`` is set: from then on any failure can only
be reported by closing the client connection, which the caller does.

After a ``101 Switching Protocols`` (to a protocol the request asked for and
the config allows, checked in ``exchange.py``) the two sockets are spliced as
raw bytes, one task per direction: the only place the data path starts tasks,
and the upstream connection is never returned to the pool afterwards. A
tunnel with no byte either way for ``stream_idle_timeout`` is closed.
"""

from __future__ import annotations

from contextlib import suppress
from http import HTTPStatus

import trio

from nodeproxy.errors import UpstreamProtocolError
from nodeproxy.http1.codec import NEED_DATA, informational_event, response_event
from nodeproxy.http1.forwarding import VIA
from nodeproxy.http1.headers import clean_trailers, downstream_response_headers, protocol_names
from nodeproxy.http1.impl import h11
from nodeproxy.netio import receive_some
from nodeproxy.routing.cors import apply as cors_apply
from nodeproxy.routing.header_edits import client_source
from nodeproxy.server.downstream import Downstream, Exchange
from nodeproxy.upstream.pool import UpstreamConnection

_END = h11.EndOfMessage()  # end of a body without trailers
_KNOWN = frozenset(s.value for s in HTTPStatus)
Header = tuple[bytes, bytes]


async def relay_informational(down: Downstream, event: h11.InformationalResponse) -> None:
    """Pass a 1xx on (HTTP/1.0 clients never get one, RFC 9110 §15.2)."""
    if not down.codec.client_http11:
        return
    via = VIA if down.exchange is None else down.exchange.via
    interim = informational_event(
        event.status_code, event.reason, downstream_response_headers(event.headers, via=via)
    )
    await down.send(down.codec.send(interim))


async def relay_response(
    down: Downstream, conn: UpstreamConnection, response: h11.Response, ex: Exchange, *, close: bool
) -> None:
    """Write the response head and stream its body down until its end."""
    dc, uc = down.codec, conn.codec
    ex.status = response.status_code
    try:
        headers = downstream_response_headers(response.headers, close=close, via=ex.via)
        if ex.response_edits is not None:  # the route's response_headers_to_add/remove
            source = client_source(ex.source, ex.client)
            headers = ex.response_edits.apply(headers, source, response.status_code)
        if ex.cors is not None:  # the route's CORS policy allowed the request's Origin
            headers = cors_apply(headers, ex.cors)
        head = dc.send(response_event(response.status_code, response.reason, headers))
    except h11.LocalProtocolError as exc:
        raise UpstreamProtocolError(f"cannot relay response head: {exc}") from None
    ex.response_started = True
    out = [head]
    while True:
        event = uc.next_event()
        if type(event) is h11.Data:
            out.append(dc.send(event))
        elif type(event) is h11.EndOfMessage:
            # The parsed event is immutable and its trailers already validated;
            # they only go to a client that can take them (chunked, HTTP/1.1).
            if event.headers:
                trailers = clean_trailers(event.headers)
                ok = trailers and dc.client_http11 and _chunked(response)
                event = h11.EndOfMessage(headers=trailers) if ok else _END
            out.append(dc.send(event))
            await down.send(b"".join(out))
            return
        elif event is NEED_DATA:
            await down.send(b"".join(out))
            out = []
            try:
                data = await receive_some(conn.stream, down.chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise UpstreamProtocolError(f"{conn.endpoint} reset mid-response: {exc}") from None
            uc.receive(data)  # b"" at EOF: the codec decides if the body was complete
        else:
            raise UpstreamProtocolError(f"unexpected {event!r} in the response body")


async def answer_local(
    down: Downstream, ex: Exchange, status: int, headers: list[Header], body: bytes, *, drain: bool
) -> bool:
    """Answer from the proxy itself (a route's direct response or redirect).

    The request body already buffered is skipped; a body still on its way closes
    the connection after the answer, as the error answers do. True: keep-alive.
    """
    codec = down.codec
    close = drain or not down.skip_buffered_body()
    if close:
        headers.append((b"connection", b"close"))
    reason = HTTPStatus(status).phrase.encode() if status in _KNOWN else b""
    data = codec.send(response_event(status, reason, headers))
    if body and codec.method != b"HEAD":
        data += codec.send(h11.Data(data=body))
    data += codec.send(_END)
    ex.status = status
    ex.response_started = True
    await down.send(data)
    if close:
        await down.linger()
        return False
    return codec.keep_alive


def _chunked(response: h11.Response) -> bool:
    return any(name == b"transfer-encoding" for name, _ in response.headers)


async def splice(
    down: Downstream, conn: UpstreamConnection, response: h11.InformationalResponse, ex: Exchange
) -> None:
    """Complete the upgrade downstream, then copy raw bytes both ways until both end."""
    offered = protocol_names((ex.upgrade or "").encode())
    chosen = [p for n, v in response.headers if n == b"upgrade" for p in protocol_names(v)]
    if len(chosen) != 1 or chosen[0] not in offered:
        raise UpstreamProtocolError(f"101 to {chosen!r}, which the request did not offer")
    ex.status = 101
    headers = downstream_response_headers(response.headers, upgrade=True, via=ex.via)
    switch = informational_event(101, response.reason, headers)
    await down.send(down.codec.send(switch))
    ex.response_started = True
    to_upstream, to_downstream = down.codec.trailing_data(), conn.codec.trailing_data()
    idle = down.limits.stream_idle_timeout
    async with trio.open_nursery() as nursery:
        nursery.cancel_scope.deadline = trio.current_time() + idle
        nursery.start_soon(_pipe, down, down.stream, conn.stream, to_upstream, False, nursery)
        nursery.start_soon(_pipe, down, conn.stream, down.stream, to_downstream, True, nursery)


async def _pipe(
    down: Downstream,
    src: trio.SocketStream,
    dst: trio.SocketStream,
    pending: bytes,
    downward: bool,
    nursery: trio.Nursery,
) -> None:
    """Copy src -> dst; half-close dst at EOF; on a broken socket end both directions."""
    scope, idle = nursery.cancel_scope, down.limits.stream_idle_timeout
    try:
        data = pending
        while True:
            if data:
                scope.deadline = trio.current_time() + idle  # a byte either way: not idle
                await dst.send_all(data)
                if downward:
                    down.bytes_out += len(data)
                else:
                    down.bytes_in += len(data)
            data = await src.receive_some(down.chunk)
            if not data:
                break
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await dst.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        nursery.cancel_scope.cancel()
