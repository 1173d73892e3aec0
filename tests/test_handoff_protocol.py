"""The handoff protocol with bad input: the sans-I/O core, then its trio shell over a real
Unix socket against a scripted peer (garbage, a wrong version, names without sockets).

Every refusal or fallback says why; descriptors that came with bad input are closed.
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

from nodeproxy.handoff import (
    ADMIN,
    Acquired,
    HandoffRefused,
    HandoffServer,
    ListenAddress,
    acquire_listen_sockets,
    close_all,
    listener_key,
    wanted_listeners,
)
from nodeproxy.handoff import protocol as p
from nodeproxy.handoff.channel import Channel, PeerGone
from nodeproxy.handoff.sockets import MESH_INBOUND, serves
from nodeproxy.mesh.inbound import LISTENER as MESH_LISTENER
from tests.helpers.backends import simple_config

WANTED = {"listener/web": ListenAddress("127.0.0.1", 0)}


@contextmanager
def pipe_fds(n: int) -> Iterator[list[int]]:
    """``n`` open descriptors (pipe ends); whatever the code under test left open is closed."""
    ends = [fd for _ in range((n + 1) // 2) for fd in os.pipe()]
    fds = ends[:n]
    for spare in ends[n:]:
        os.close(spare)
    try:
        yield fds
    finally:
        for fd in fds:
            if is_open(fd):
                os.close(fd)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def frame(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


# --- the sans-I/O core ------------------------------------------------------------


def test_every_message_survives_a_byte_by_byte_round_trip() -> None:
    for message in (p.hello(42), p.refused("busy", "why"), p.serving(7), p.done()):
        decoder = p.Decoder()
        data = p.encode(message)
        for i in range(len(data) - 1):
            decoder.feed(data[i : i + 1])
            assert decoder.next_message() is None
        decoder.feed(data[-1:])
        assert decoder.next_message() == message
        assert decoder.next_message() is None


def test_a_sockets_message_takes_its_descriptors() -> None:
    with pipe_fds(2) as fds:
        decoder = p.Decoder()
        decoder.feed(p.encode(p.sockets(["a", "a"], fds)), fds)
        message = decoder.next_message()
        assert message is not None
        assert message.fields["names"] == ["a", "a"]
        assert message.fds == tuple(fds)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "frame of"),  # someone else's protocol: a huge "length"
        (struct.pack(">I", 5) + b"\xff\xfe{{{", "bad JSON"),
        (frame([1, 2]), "not a handoff message"),
        (frame({"type": "reboot"}), "not a handoff message"),
        (frame({"type": "hello", "version": 1}), "bad or missing 'pid'"),
        (frame({"type": "hello", "version": "1", "pid": 3}), "bad or missing 'version'"),
        (frame({"type": "hello", "version": True, "pid": 3}), "bad or missing 'version'"),
        (frame({"type": "sockets", "names": "admin"}), "bad or missing 'names'"),
        (frame({"type": "sockets", "names": [""]}), "bad or missing 'names'"),
        (frame({"type": "refused", "code": "nope", "reason": ""}), "bad or missing 'code'"),
    ],
)
def test_garbage_is_a_protocol_error_and_closes_what_came_with_it(data: bytes, error: str) -> None:
    with pipe_fds(1) as fds:
        decoder = p.Decoder()
        decoder.feed(data, fds)
        with pytest.raises(p.HandoffProtocolError, match=error):
            decoder.next_message()
        assert not is_open(fds[0])


def test_names_without_their_sockets_are_refused_and_closed() -> None:
    with pipe_fds(1) as fds:
        decoder = p.Decoder()
        decoder.feed(frame({"type": "sockets", "names": ["admin", "listener/web"]}), fds)
        with pytest.raises(p.HandoffProtocolError, match="2 sockets named, 1 received"):
            decoder.next_message()
        assert not is_open(fds[0])


def test_descriptors_nobody_named_are_refused_and_closed() -> None:
    with pipe_fds(2) as fds:
        decoder = p.Decoder()
        decoder.feed(p.encode(p.hello(1)), fds)
        with pytest.raises(p.HandoffProtocolError, match="2 descriptors nobody named"):
            decoder.next_message()
        assert not any(is_open(fd) for fd in fds)


def test_too_many_descriptors_at_once_are_closed() -> None:
    with pipe_fds(p.MAX_FDS + 1) as fds:
        with pytest.raises(p.HandoffProtocolError, match="more than"):
            p.Decoder().feed(b"", fds)
        assert not any(is_open(fd) for fd in fds)


def test_each_side_says_only_what_comes_next() -> None:
    old, new = p.Session(p.Role.OLD), p.Session(p.Role.NEW)
    with pytest.raises(p.HandoffProtocolError, match="cannot receive serving in state start"):
        old.receive(p.serving(1))
    with pytest.raises(p.HandoffProtocolError, match="never sends hello"):
        old.send(p.hello(1))
    with pytest.raises(p.HandoffProtocolError, match="unexpected done"):
        p.Session(p.Role.OLD).receive(p.done())
    new.send(p.hello(1))
    old.receive(p.hello(1))
    with pytest.raises(p.HandoffProtocolError, match="cannot send done in state wait_sockets"):
        old.send(p.done())
    new.receive(p.Message("sockets", {"names": []}))
    new.send(p.serving(2))
    with pytest.raises(p.HandoffProtocolError, match="cannot receive sockets in state draining"):
        new.receive(p.Message("sockets", {"names": []}))
    new.receive(p.done())
    assert new.state is p.State.CLOSED


def test_a_different_version_is_refused_with_both_numbers() -> None:
    assert p.version_refusal(p.hello(1)) is None
    answer = p.version_refusal(p.hello(1, version=2))
    assert answer is not None
    assert answer.fields == {
        "code": "version",
        "reason": "handoff protocol version 2; this process speaks 1",
    }


def test_listener_names_cover_admin_listeners_and_the_mesh_inbound() -> None:
    config = simple_config({"svc": [("127.0.0.1", 1)]})
    assert set(wanted_listeners(config)) == {ADMIN, listener_key("outbound")}
    assert MESH_INBOUND == MESH_LISTENER  # the mesh listener's name, spelled twice


def test_an_inherited_socket_serves_only_the_address_asked_for() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        assert not serves(ListenAddress("127.0.0.1", 0), sock)  # not listening
        sock.listen()
        port = sock.getsockname()[1]
        assert serves(ListenAddress("127.0.0.1", 0), sock)
        assert serves(ListenAddress("127.0.0.1", port), sock)
        assert serves(ListenAddress("localhost", port), sock)  # a name: trusted by port
        assert not serves(ListenAddress("127.0.0.1", port + 1), sock)
        assert not serves(ListenAddress("127.0.0.2", port), sock)
        assert not serves(ListenAddress("", port), sock)  # "" means every interface


# --- the trio shell against a scripted peer ------------------------------------------


@contextmanager
def unix_listener(path: Path) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        listener.setblocking(False)
        yield listener


async def scripted_peer(listener: socket.socket, answer: bytes, fds: list[int] | None) -> None:
    """Accept one connection, read the hello, send ``answer`` (with ``fds``), wait for EOF."""
    await trio.lowlevel.wait_readable(listener)
    conn, _ = listener.accept()
    with conn:
        conn.setblocking(True)
        conn.recv(4096)
        rights = array.array("i", fds or []).tobytes()
        conn.sendmsg([answer], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)] if fds else [])
        await trio.lowlevel.wait_readable(conn)
        conn.recv(4096)  # until the other side closes


async def acquire_against(
    tmp_path: Path, answer: bytes, fds: list[int] | None = None
) -> tuple[Acquired, str]:
    """Run ``acquire_listen_sockets`` against a peer answering ``answer``: what it got
    (sockets closed, the connection to the peer closed) and the log events."""
    path = tmp_path / "h.sock"
    with unix_listener(path) as listener, capture_logs() as logs, trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scripted_peer, listener, answer, fds)
            acquired = await acquire_listen_sockets(WANTED, str(path), 5.0)
            if acquired.predecessor is not None:
                acquired.predecessor.close()
    assert serves(WANTED["listener/web"], acquired.sockets["listener/web"][0])
    close_all(acquired.sockets)
    return acquired, " ".join(f"{log['event']}: {log.get('error', '')}" for log in logs)


async def fallback_events(tmp_path: Path, answer: bytes) -> str:
    """The log of an acquire that must have bound afresh."""
    acquired, events = await acquire_against(tmp_path, answer)
    assert acquired.predecessor is None
    assert acquired.inherited == frozenset()
    return events


async def test_garbage_on_the_socket_falls_back_to_binding_afresh(tmp_path: Path) -> None:
    events = await fallback_events(tmp_path, b"HTTP/1.1 400 Bad Request\r\n\r\n")
    assert "handoff_failed: frame of" in events


async def test_names_without_sockets_fall_back_to_binding_afresh(tmp_path: Path) -> None:
    events = await fallback_events(tmp_path, frame({"type": "sockets", "names": ["admin"]}))
    assert "handoff_failed: sockets: 1 sockets named, 0 received" in events


async def test_sockets_of_a_listener_not_wanted_are_closed(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        answer = frame({"type": "sockets", "names": ["listener/gone"]})
        acquired, events = await acquire_against(tmp_path, answer, [other.fileno()])
    assert acquired.inherited == frozenset()  # bound afresh: nobody handed "listener/web"
    assert "handoff_socket_unused" in events
    assert "handoff_received" in events


async def test_a_running_process_of_another_version_refuses_with_the_reason(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.sock"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = HandoffServer(str(path), {"listener/web": [sock]}, _never, timeout=5.0)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                conn = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                with conn:
                    await conn.connect(str(path))
                    await conn.send(p.encode(p.hello(1, version=9)))
                    answer = p.Decoder()
                    answer.feed(await conn.recv(4096))
                    message = answer.next_message()
                nursery.cancel_scope.cancel()
    assert message == p.refused("version", "handoff protocol version 9; this process speaks 1")
    assert not server.handed_off
    assert not path.exists()  # released when the server stopped


def _never(reason: str) -> None:
    raise AssertionError(f"handed off: {reason}")


async def test_the_new_side_raises_a_refusal_it_cannot_work_around(tmp_path: Path) -> None:
    answer = frame({"type": "refused", "code": "busy", "reason": "a handoff to pid 9 runs"})
    path = tmp_path / "h.sock"
    with unix_listener(path) as listener, trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scripted_peer, listener, answer, None)
            with pytest.raises(HandoffRefused, match="a handoff to pid 9 runs"):
                await acquire_listen_sockets(WANTED, str(path), 5.0)


class Successor:
    """A hand-driven new process: says hello over a real Unix socket, reads the answer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.channel = Channel(self.sock, p.Role.NEW)

    async def hello(self) -> p.Message:
        await self.sock.connect(str(self.path))
        await self.channel.send(p.hello(os.getpid()))
        answer = await self.channel.receive()
        p.close_fds(answer.fds)
        return answer


async def test_a_second_hello_while_one_handoff_runs_is_refused_and_an_unconfirmed_one_aborts(
    tmp_path: Path,
) -> None:
    """The first successor takes the sockets but never says "serving": a second one is
    refused meanwhile; after ``timeout`` the handoff aborts, nothing drained, and the next
    successor gets the sockets."""
    path = tmp_path / "h.sock"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = HandoffServer(str(path), {"listener/web": [sock]}, _never, timeout=0.5)
        with trio.fail_after(10), capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                first, second, third = Successor(path), Successor(path), Successor(path)
                assert (await first.hello()).type == "sockets"
                refusal = await second.hello()
                assert refusal.fields["code"] == "busy"
                assert refusal.fields["reason"] == (
                    f"a handoff to pid {os.getpid()} is already in progress"
                )
                with pytest.raises(PeerGone):  # the old side gave up waiting for "serving"
                    await first.channel.receive()
                assert (await third.hello()).type == "sockets"
                for successor in (first, second, third):
                    successor.channel.close()
                nursery.cancel_scope.cancel()
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)  # never closed here
    assert not server.handed_off
    assert "handoff_not_confirmed" in [log["event"] for log in logs]


async def test_a_draining_process_refuses_so_the_new_one_binds_afresh(tmp_path: Path) -> None:
    path = tmp_path / "h.sock"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        old_address = sock.getsockname()
        server = HandoffServer(
            str(path), {"listener/web": [sock]}, _never, timeout=5.0, draining=lambda: True
        )
        with trio.fail_after(10), capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                acquired = await acquire_listen_sockets(WANTED, str(path), 5.0)
                nursery.cancel_scope.cancel()
    assert acquired.predecessor is None
    assert acquired.sockets["listener/web"][0].getsockname() != old_address
    close_all(acquired.sockets)
    refused = [log for log in logs if log["event"] == "handoff_refused_draining"]
    assert refused[0]["reason"] == f"pid {os.getpid()} is draining"
