"""Pooled upstream connections never carry one client's leftovers to the next.

A pooled connection is reused only when the response ended exactly at a
message boundary with nothing more to read; the backend here breaks response
framing on purpose (``tests/helpers/raw_backend.py``) and every answer names
its request, so each test asserts that the next client, on another
connection (another pod), gets its own answer. Also here: the keep-alive-race
replay only for idempotent methods, and request bodies that trickle.
"""

from __future__ import annotations

import pytest
import trio

from nodeproxy.config.model import Limits
from tests.helpers.backends import ask, backend, run_proxy, simple_config
from tests.helpers.raw_backend import raw_backend


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        pytest.param(b"GET", b"/extra", 200, id="bytes-after-content-length-body"),
        pytest.param(b"HEAD", b"/head-body", 200, id="body-on-head"),
        pytest.param(b"GET", b"/204", 204, id="body-on-204"),
        pytest.param(b"GET", b"/304", 304, id="body-on-304"),
        pytest.param(b"GET", b"/late", 200, id="late-bytes-on-idle-connection"),
    ],
)
async def test_next_client_gets_its_own_answer_after_a_misframed_response(
    autojump_clock: object, method: bytes, target: bytes, status: int
) -> None:
    async with raw_backend() as b:
        config = simple_config({"svc": [b.address]}, max_connections_per_endpoint=1)
        async with run_proxy(config) as p:
            first = await ask(p.port, method, target)
            assert first[0] == status
            await trio.sleep(1)  # the /late stray bytes arrive while the connection idles
            for i in range(3):  # and no cascade along the pool
                victim = await ask(p.port, b"GET", b"/victim%d" % i)
                assert victim[:2] == (200, b"own:GET /victim%d" % i)
    assert b.connections >= 2


async def test_response_with_content_length_and_chunked_is_502_and_not_reused(
    autojump_clock: object,
) -> None:
    """Envoy and nginx both refuse such a response: 502, the connection closed."""
    async with raw_backend() as b:
        config = simple_config({"svc": [b.address]}, max_connections_per_endpoint=1)
        async with run_proxy(config) as p:
            status, _, headers = await ask(p.port, b"GET", b"/clte")
            assert status == 502
            assert headers[b"x-nodeproxy-error"] == b"upstream_protocol_error"
            assert (await ask(p.port, b"GET", b"/victim"))[:2] == (200, b"own:GET /victim")
    assert b.connections == 2


async def test_post_is_not_replayed_when_a_reused_connection_drops(autojump_clock: object) -> None:
    """RFC 9110 §9.2.2: only idempotent requests may be sent twice."""
    async with raw_backend() as b:
        config = simple_config({"svc": [b.address]}, max_connections_per_endpoint=1)
        async with run_proxy(config) as p, await trio.open_tcp_stream("127.0.0.1", p.port) as s:
            await s.send_all(b"GET /warm HTTP/1.1\r\nHost: svc\r\n\r\n")
            assert (await s.receive_some(65536)).startswith(b"HTTP/1.1 200")
            await s.send_all(b"POST /hang-up HTTP/1.1\r\nHost: svc\r\nContent-Length: 2\r\n\r\nhi")
            answer = await s.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 502"), answer
    assert b.targets.count(b"/hang-up") == 1


async def test_get_is_still_replayed_once_when_a_reused_connection_drops(
    autojump_clock: object,
) -> None:
    async with raw_backend() as b:
        config = simple_config({"svc": [b.address]}, max_connections_per_endpoint=1)
        async with run_proxy(config) as p, await trio.open_tcp_stream("127.0.0.1", p.port) as s:
            await s.send_all(b"GET /warm HTTP/1.1\r\nHost: svc\r\n\r\n")
            assert (await s.receive_some(65536)).startswith(b"HTTP/1.1 200")
            await s.send_all(b"GET /hang-up HTTP/1.1\r\nHost: svc\r\n\r\n")
            answer = await s.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 502"), answer
    assert b.targets.count(b"/hang-up") == 2  # the one replay on a fresh connection


async def _trickle(port: int, seconds: int, results: list[bytes]) -> None:
    """A POST whose 1000-byte body comes one byte per second."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"POST /slow HTTP/1.1\r\nHost: svc\r\nContent-Length: 1000\r\n\r\n")
        with trio.move_on_after(seconds):
            try:
                for _ in range(1000):
                    await stream.send_all(b"x")
                    await trio.sleep(1)
            except trio.BrokenResourceError:
                pass
        with trio.move_on_after(5):
            results.append(await stream.receive_some(65536))


async def test_trickling_bodies_do_not_hold_the_pool(autojump_clock: object) -> None:
    """Bodies at 1 byte/s lose their pooled connections after request_body_timeout (408)."""
    async with backend() as b:
        limits = Limits(request_body_timeout=10.0, request_body_min_rate=1024)
        config = simple_config({"svc": [b.address]}, limits=limits, max_connections_per_endpoint=4)
        async with run_proxy(config) as p:
            results: list[bytes] = []
            async with trio.open_nursery() as nursery:
                for _ in range(4):  # every pooled connection of the service
                    nursery.start_soon(_trickle, p.port, 120, results)
                await trio.sleep(12)
                start = trio.current_time()
                status, _, _ = await ask(p.port, b"GET", b"/polite")
                assert status == 200
                assert trio.current_time() - start < 1.0
    assert len(results) == 4
    for answer in results:
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"x-nodeproxy-error: request_body_timeout" in answer


async def test_a_fast_large_body_is_not_cut_by_the_rate_floor(autojump_clock: object) -> None:
    """The floor is an average after the grace: 2 MB sent quickly passes."""
    async with backend() as b:
        limits = Limits(request_body_timeout=1.0, request_body_min_rate=1024)
        async with run_proxy(simple_config({"svc": [b.address]}, limits=limits)) as p:
            size = 2 * 1024 * 1024
            async with await trio.open_tcp_stream("127.0.0.1", p.port) as stream:
                head = b"POST /big HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n" % size
                await stream.send_all(head)
                for _ in range(size // 65536):
                    await stream.send_all(b"y" * 65536)
                    await trio.sleep(0.01)
                answer = await stream.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert b.requests[-1].target == b"/big"


async def test_a_request_waiting_for_a_full_pool_gets_the_freed_connection(
    autojump_clock: object,
) -> None:
    """max_connections_per_endpoint reached: the next request waits for a slot and, once
    the first answer is relayed, is handed the connection that answered it (no new one)."""
    async with backend() as b:
        config = simple_config({"svc": [b.address]}, max_connections_per_endpoint=1)
        async with run_proxy(config) as p, trio.open_nursery() as nursery:
            answers: dict[bytes, int] = {}

            async def one(target: bytes) -> None:
                answers[target] = (await ask(p.port, b"GET", target))[0]

            nursery.start_soon(one, b"/wait")
            await b.arrived.wait()  # the pool's one connection is lent to /wait
            nursery.start_soon(one, b"/next")
            await trio.sleep(0.5)
            assert b"/next" not in answers  # parked for the slot, not on a second socket
            b.release.set()
    assert answers == {b"/wait": 200, b"/next": 200}
    assert b.connections == 1
    assert [r.target for r in b.requests] == [b"/wait", b"/next"]
