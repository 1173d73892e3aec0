"""A streamed request body going up: bounded in time and rate, its trailers cleaned.

Once the part of a request already in hand has gone upstream, the rest of
the body is copied one client read at a time. A slow client must not hold a
pooled upstream connection (shared by every pod of the node) for long: each
read must come within the idle bound, and after ``request_body_timeout`` the
body must have averaged ``request_body_min_rate`` bytes/s (Apache
``mod_reqtimeout``'s shape); time spent waiting for the upstream to take a
write is not the client's. Trailers lose the fields a trailer must not carry.
"""

from __future__ import annotations

import trio

from nodeproxy.errors import RequestBodyTimeout, UpstreamResetBeforeHeaders
from nodeproxy.http1.codec import NEED_DATA, Event
from nodeproxy.http1.events import body_chunk
from nodeproxy.http1.headers import clean_trailers
from nodeproxy.http1.impl import h11
from nodeproxy.server.downstream import Downstream
from nodeproxy.upstream.pool import UpstreamConnection


def end_of_body(event: h11.EndOfMessage) -> h11.EndOfMessage:
    """The end of a request body, its trailers cleaned (the parser validated them)."""
    if not event.headers:
        return event
    return h11.EndOfMessage(headers=clean_trailers(event.headers))


async def stream_body(down: Downstream, conn: UpstreamConnection, idle_timeout: float) -> None:
    """Copy the rest of the request body up, one read at a time, until its end.

    Each read from the client must come within ``idle`` and before the rate
    deadline: ``request_body_timeout`` after the body started, plus a second
    for every ``request_body_min_rate`` bytes received. Time spent waiting for
    the upstream to take a write is not the client's and moves the deadline.
    """
    client, upstream = down.codec, conn.codec
    limits = down.limits
    idle = min(idle_timeout, limits.stream_idle_timeout)
    rate = limits.request_body_min_rate
    start = trio.current_time() + limits.request_body_timeout
    received = 0
    with trio.CancelScope() as scope:
        while True:
            now = trio.current_time()
            scope.deadline = min(now + idle, start + received / rate) if rate else now + idle
            event: Event = await down.next_event()
            out: list[bytes] = []
            done = False
            while event is not NEED_DATA:
                if type(event) is h11.Data:
                    received += len(body_chunk(event))
                    out.append(upstream.send(event))
                elif type(event) is h11.EndOfMessage:
                    out.append(upstream.send(end_of_body(event)))
                    done = True
                    break
                event = client.next_event()
            sending = trio.current_time()
            scope.deadline = sending + idle
            try:
                await conn.stream.send_all(b"".join(out))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise UpstreamResetBeforeHeaders(f"{conn.endpoint}: {exc}") from None
            if done:
                return
            start += trio.current_time() - sending
    raise RequestBodyTimeout(
        f"request body stalled or under {rate} B/s after {limits.request_body_timeout}s"
    )
