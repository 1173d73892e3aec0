"""A bare trio + h11 relay: the calibration peer for nodeproxy's CPU per request.

Why it exists: CPU per request depends on the machine (a slower VM makes everything dearer), so
nodeproxy's cost is read against the cheapest thing that does the same job with the same tools.
This relay is that floor: one h11 connection per side, one upstream connection per downstream
connection (opened on accept, reused for every request), no routing, no header rewriting, no
stats, no logs, no timeouts, bodyless requests only (the bench sends GETs). What nodeproxy costs
above it is the price of its features and of its own overhead.

    python bench/bare_relay.py LISTEN_PORT UPSTREAM_PORT

It frames with the same h11 build as nodeproxy (``NODEPROXY_CODEC``: h11 or
the compiled h11-mypyc), so the ratio compares the two on the same codec.
"""

from __future__ import annotations

import sys
from functools import partial

import trio

from nodeproxy.http1.impl import h11  # the build NODEPROXY_CODEC names, as nodeproxy's


async def relay(upstream_port: int, down: trio.SocketStream) -> None:
    """Serve one client connection until it closes (errors end only this connection)."""
    try:
        async with down, await trio.open_tcp_stream("127.0.0.1", upstream_port) as up:
            await _relay(down, up)
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, OSError):
        pass


async def _relay(down: trio.SocketStream, up: trio.SocketStream) -> None:
    dc, uc = h11.Connection(h11.SERVER), h11.Connection(h11.CLIENT)
    while True:
        event = dc.next_event()
        while event is h11.NEED_DATA:
            data = await down.receive_some(65536)
            if not data:
                return
            dc.receive_data(data)
            event = dc.next_event()
        if not isinstance(event, h11.Request):
            return
        out = uc.send(h11.Request(method=event.method, target=event.target, headers=event.headers))
        while not isinstance(dc.next_event(), h11.EndOfMessage):
            pass
        out += uc.send(h11.EndOfMessage())
        await up.send_all(out)
        response: h11.Response | None = None
        body: list[bytes] = []
        while True:
            event = uc.next_event()
            if event is h11.NEED_DATA:
                uc.receive_data(await up.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return
        assert response is not None
        head = h11.Response(status_code=response.status_code, headers=response.headers)
        down_out = dc.send(head) or b""
        for chunk in body:
            down_out += dc.send(h11.Data(data=chunk)) or b""
        down_out += dc.send(h11.EndOfMessage()) or b""
        await down.send_all(down_out)
        if dc.our_state is not h11.DONE or uc.our_state is not h11.DONE:
            return
        dc.start_next_cycle()
        uc.start_next_cycle()


def main(argv: list[str]) -> None:
    listen_port, upstream_port = int(argv[0]), int(argv[1])
    trio.run(partial(trio.serve_tcp, partial(relay, upstream_port), listen_port, host="127.0.0.1"))


if __name__ == "__main__":
    main(sys.argv[1:])
