"""h11 and h11-mypyc must frame every byte stream the same way.

The compiled build is only a faster copy of the reference: the data path may
run on either, so both are fed identical bytes, whole and in random splits,
in both roles, and must yield the same events and the same errors (type and
status hint). The inputs are valid messages, every malformed and smuggling
case of the conformance tests, and the fuzz's mutated requests.
"""

from __future__ import annotations

import itertools
import random
from types import ModuleType
from typing import Any

import h11
import pytest

from tests.helpers.fuzz import SEEDS, make_case

h11_mypyc = pytest.importorskip("h11_mypyc", reason="the compiled codec: pip install '.[fast]'")

REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /x?y=1 HTTP/1.0\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nraw",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
    # malformed and smuggling cases (tests/test_conformance_framing.py)
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nX: b\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"G\x00T / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
]
RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: y\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\nclose-delimited",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 999 Weird\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    b"HTTX/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw",
]


def _normal(event: Any) -> Any:
    """An event as plain data (class name and fields), comparable across the two builds."""
    if isinstance(event, type):  # NEED_DATA, PAUSED
        return event.__name__
    fields: dict[str, Any] = {}
    for name in ("method", "target", "http_version", "status_code", "reason", "data"):
        if hasattr(event, name):
            fields[name] = bytes(getattr(event, name)) if name == "data" else getattr(event, name)
    if hasattr(event, "headers"):
        fields["headers"] = [tuple(pair) for pair in event.headers]
    return type(event).__name__, fields


def _run(mod: ModuleType, role: str, chunks: list[bytes], method: bytes = b"GET") -> list[Any]:
    """Feed ``chunks`` (then EOF) to a connection of ``mod``; every event and the error."""
    conn = mod.Connection(mod.SERVER if role == "server" else mod.CLIENT)
    if role == "client":
        conn.send(mod.Request(method=method, target=b"/", headers=[(b"host", b"a")]))
        conn.send(mod.EndOfMessage())
    out: list[Any] = []
    pending = [*chunks, b""]
    for _ in range(10_000):
        try:
            event = conn.next_event()
        except mod.RemoteProtocolError as exc:
            out.append(("RemoteProtocolError", exc.error_status_hint))
            return out
        out.append(_normal(event))
        if event is mod.NEED_DATA:
            if not pending:
                return out
            conn.receive_data(pending.pop(0))
        elif event is mod.PAUSED or type(event) is mod.ConnectionClosed:
            return out
        elif type(event) is mod.EndOfMessage and role == "server":
            if conn.their_state is not mod.DONE or conn.our_state is not mod.SEND_RESPONSE:
                return out
            conn.send(mod.Response(status_code=200, headers=[(b"content-length", b"0")]))
            conn.send(mod.EndOfMessage())
            conn.start_next_cycle()
    raise AssertionError("no end")


def _splits(data: bytes, rng: random.Random) -> list[list[bytes]]:
    """The whole stream, byte by byte, and a few random splits."""
    out = [[data], [data[i : i + 1] for i in range(len(data))] if len(data) < 4096 else [data]]
    for _ in range(3):
        cuts = sorted(rng.sample(range(1, len(data)), min(4, len(data) - 1)))
        bounds = [0, *cuts, len(data)]
        out.append([data[a:b] for a, b in itertools.pairwise(bounds)])
    return out


def _same(role: str, data: bytes, rng: random.Random, method: bytes = b"GET") -> None:
    for chunks in _splits(data, rng):
        ref = _run(h11, role, chunks, method)
        fast = _run(h11_mypyc, role, chunks, method)
        assert fast == ref, (role, [len(c) for c in chunks], data[:200])


@pytest.mark.parametrize("data", REQUESTS)
def test_requests_frame_the_same(data: bytes) -> None:
    _same("server", data, random.Random(data))


@pytest.mark.parametrize("data", RESPONSES)
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_responses_frame_the_same(data: bytes, method: bytes) -> None:
    _same("client", data, random.Random(data), method)


def test_fuzzed_requests_frame_the_same() -> None:
    """500 mutated requests of the fuzz (fixed seed), each whole and split."""
    rng = random.Random(11)
    for index in range(500):
        case = make_case(20261202, index)
        if case.data:
            _same("server", case.data, rng)
    assert len(SEEDS) >= 9  # the fuzz's seed requests were all in play
