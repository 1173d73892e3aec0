"""Drain: stop accepting, finish what is in flight, close idle keep-alives, return."""

from __future__ import annotations

import h11
import pytest
import trio
import trio.testing

from nodeproxy.stats.names import DOWNSTREAM_CONNECTIONS_ACTIVE, POOL_CONNECTIONS
from nodeproxy.stats.registry import labels
from tests.helpers.backends import backend, read_all, read_response, run_proxy, simple_config


async def test_drain_finishes_in_flight_request_and_closes_idle_connections() -> None:
    async with backend() as b, run_proxy(simple_config({"svc": [b.address]})) as p:
        idle = await trio.open_tcp_stream("127.0.0.1", p.port)
        await idle.send_all(b"GET /first HTTP/1.1\r\nHost: svc\r\n\r\n")
        first = await read_response(idle)
        assert isinstance(first[0], h11.Response)
        assert first[0].status_code == 200

        in_flight: list[h11.Event] = []
        after: list[bytes] = []

        async def slow_client() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", p.port)
            async with stream:
                await stream.send_all(b"GET /wait HTTP/1.1\r\nHost: svc\r\n\r\n")
                in_flight.extend(await read_response(stream))
                after.append(await read_all(stream))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow_client)
                await b.arrived.wait()
                p.runtime.drain.start("test")
                # The idle keep-alive is closed now, not after its 60 s idle timeout.
                assert await read_all(idle) == b""
                with pytest.raises(OSError, match=r"refused|failed"):  # listener gone
                    await trio.open_tcp_stream("127.0.0.1", p.port)
                assert not p.done.is_set()  # the in-flight request holds the listener
                b.release.set()
            await p.done.wait()  # serve_listener returned on its own
        await idle.aclose()

    response = in_flight[0]
    assert isinstance(response, h11.Response)
    assert response.status_code == 200
    assert (b"connection", b"close") in list(response.headers)
    assert isinstance(in_flight[-1], h11.EndOfMessage)
    assert after == [b""]


async def test_drain_answers_the_first_request_of_a_connection_accepted_before_it() -> None:
    """Accepted, no byte read yet, then drain (a handoff's successor serves from here on):
    the client is sending its request, so it is answered with ``Connection: close``
    instead of being closed unanswered (a failure no client retries)."""
    async with backend() as b, run_proxy(simple_config({"svc": [b.address]})) as p:
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", p.port)
            active = labels(listener="outbound")
            while p.runtime.stats.gauge(DOWNSTREAM_CONNECTIONS_ACTIVE, active) == 0:  # accepted
                await trio.lowlevel.checkpoint()
            await trio.testing.wait_all_tasks_blocked()  # waiting for its first request
            p.runtime.drain.start("test")
            await trio.testing.wait_all_tasks_blocked()  # the drain closed what it closes
            async with stream:
                await stream.send_all(b"GET /late HTTP/1.1\r\nHost: svc\r\n\r\n")
                events = await read_response(stream)
                assert await read_all(stream) == b""
            await p.done.wait()
    response = events[0]
    assert isinstance(response, h11.Response)
    assert response.status_code == 200
    assert (b"connection", b"close") in list(response.headers)


async def test_cancelling_a_drain_closes_everything() -> None:
    """The app's drain deadline cancels serve_listener: sockets close, nothing leaks."""
    result: list[bytes] = []
    async with backend() as b:
        with trio.fail_after(10):
            async with trio.open_nursery() as clients:
                async with run_proxy(simple_config({"svc": [b.address]})) as p:

                    async def stuck_client() -> None:
                        stream = await trio.open_tcp_stream("127.0.0.1", p.port)
                        async with stream:
                            await stream.send_all(b"GET /wait HTTP/1.1\r\nHost: svc\r\n\r\n")
                            result.append(await read_all(stream))

                    clients.start_soon(stuck_client)
                    await b.arrived.wait()
                    p.runtime.drain.start("test")
                # run_proxy's exit cancelled the listener mid-request.
        b.release.set()
    assert result == [b""]  # closed, no half response
    lbls = labels(cluster="svc", endpoint=f"127.0.0.1:{b.port}", state="active")
    assert p.runtime.stats.gauge(POOL_CONNECTIONS, lbls) == 0
    assert "0 active, 0 idle" in repr(p.upstreams)
