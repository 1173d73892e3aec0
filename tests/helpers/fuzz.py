"""The mutation engine of the data-path fuzz: seed requests in, hostile bytes out.

Pure and deterministic: case ``i`` of seed ``s`` is built from its own
``random.Random(f"{s}:{i}")``, so one case is reproduced without replaying the
ones before it, whatever the concurrency of the run that found it. A ``Case``
says what to send (``data``), how to cut it into writes with small pauses,
and how the client ends: half-close after the last write, keep the connection
open until the read times out, or reset it (RST) after some of the writes.

The mutations are the ones request smuggling and parser bugs are made of:
byte flips, stray CR/LF/NUL/SP/HTAB/colon, duplicated and dropped header lines,
Content-Length with Transfer-Encoding (both orders, ``CL: 0``, a tab, obs-fold,
odd codings), huge values, over-long request lines, truncated bodies, bad chunk
sizes and requests hidden after a body. ``parse_responses`` reads back what the
proxy answered (status and headers of each response) without trusting it.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

HOST = b"fuzz.default"
_H = b"Host: " + HOST + b"\r\n"

SEEDS: tuple[tuple[str, bytes], ...] = (
    ("get", b"GET /a?x=1 HTTP/1.1\r\n" + _H + b"Accept: */*\r\n\r\n"),
    ("head", b"HEAD /h HTTP/1.1\r\n" + _H + b"\r\n"),
    ("post", b"POST /p HTTP/1.1\r\n" + _H + b"Content-Length: 11\r\n\r\nhello world"),
    (
        "chunked",
        b"POST /c HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\r\nTrailer: x-t\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-t: done\r\n\r\n",
    ),
    ("absolute", b"GET http://fuzz.default/abs HTTP/1.1\r\n" + _H + b"\r\n"),
    (
        "expect",
        b"PUT /e HTTP/1.1\r\n" + _H + b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\nbody",
    ),
    (
        "pipelined",
        b"GET /1 HTTP/1.1\r\n" + _H + b"\r\n"
        b"POST /2 HTTP/1.1\r\n" + _H + b"Content-Length: 3\r\n\r\nabc",
    ),
    (
        "websocket",
        b"GET /ws HTTP/1.1\r\n" + _H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        b"frame-bytes",
    ),
    ("http10", b"GET /old HTTP/1.0\r\n" + _H + b"Connection: keep-alive\r\n\r\n"),
)

_STRAY = (b"\r", b"\n", b"\x00", b" ", b"\t", b":", b"\r\n", b"\x7f", b"\xff")
_FRAMING = (
    b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
    b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
    b"Content-Length: 5\r\nTransfer-Encoding:\tchunked\r\n",
    b"Content-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n",
    b"Transfer-Encoding: chunked, identity\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Transfer-Encoding: xchunked\r\n",
    b"Transfer-Encoding : chunked\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    b"Content-Length: 3\r\nContent-Length: 4\r\n",
    b"Content-Length: 3, 3\r\n",
    b"Content-Length: +3\r\n",
    b"Content-Length: 0x3\r\n",
    b"Content-Length: 99999999999999999999\r\n",
)
_CHUNK_SIZES = (b"zz", b"-1", b"f" * 20, b"5;x=\x00", b" 5", b"5 ", b"", b"0x5", b"5\n")
_HIDDEN = b"GET /hidden HTTP/1.1\r\nHost: fuzz.default\r\n\r\n"


def _split_head(data: bytes) -> tuple[list[bytes], bytes]:
    """(request line and header lines, everything after the blank line)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return data.split(b"\r\n"), b""
    return head.split(b"\r\n"), rest


def _join_head(lines: list[bytes], rest: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + rest


def _pos(rng: random.Random, data: bytes) -> int:
    return rng.randrange(len(data) + 1)


def flip(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]


def stray(rng: random.Random, data: bytes) -> bytes:
    i = _pos(rng, data)
    return data[:i] + rng.choice(_STRAY) + data[i:]


def cut(rng: random.Random, data: bytes) -> bytes:
    i = _pos(rng, data)
    return data[:i] + data[i + rng.randint(1, 8) :]


def dup_header(rng: random.Random, data: bytes) -> bytes:
    lines, rest = _split_head(data)
    if len(lines) > 1:
        lines.insert(rng.randrange(1, len(lines) + 1), lines[rng.randrange(1, len(lines))])
    return _join_head(lines, rest)


def drop_header(rng: random.Random, data: bytes) -> bytes:
    lines, rest = _split_head(data)
    if len(lines) > 1:
        del lines[rng.randrange(1, len(lines))]
    return _join_head(lines, rest)


def framing(rng: random.Random, data: bytes) -> bytes:
    """Content-Length and Transfer-Encoding combinations, body left as it was."""
    lines, rest = _split_head(data)
    extra = rng.choice(_FRAMING).rstrip(b"\r\n").split(b"\r\n")
    at = rng.randrange(1, len(lines) + 1)
    lines[at:at] = extra
    if rng.random() < 0.5:  # sometimes a chunked body that could frame either way
        rest = b"0\r\n\r\n" + _HIDDEN if rng.random() < 0.5 else b"3\r\nabc\r\n0\r\n\r\n"
    return _join_head(lines, rest)


def huge_value(rng: random.Random, data: bytes) -> bytes:
    lines, rest = _split_head(data)
    size = rng.choice((1000, 8000, 30000, 70000))
    lines.insert(rng.randrange(1, len(lines) + 1), b"X-Huge: " + b"v" * size)
    return _join_head(lines, rest)


def long_target(rng: random.Random, data: bytes) -> bytes:
    lines, rest = _split_head(data)
    parts = lines[0].split(b" ")
    if len(parts) >= 2:
        parts[1] += b"/" + b"a" * rng.choice((2000, 9000, 65000))
        lines[0] = b" ".join(parts)
    return _join_head(lines, rest)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: _pos(rng, data)]


def bad_chunk(rng: random.Random, data: bytes) -> bytes:
    lines, _ = _split_head(data)
    if not any(line.lower().startswith(b"transfer-encoding") for line in lines):
        lines.insert(1, b"Transfer-Encoding: chunked")
    body = rng.choice(_CHUNK_SIZES) + b"\r\nhello\r\n0\r\n\r\n"
    return _join_head(lines, body)


def hide_request(rng: random.Random, data: bytes) -> bytes:
    """A second request right after the first one's body (pipelined or smuggled)."""
    return data + _HIDDEN


def version(rng: random.Random, data: bytes) -> bytes:
    lines, rest = _split_head(data)
    parts = lines[0].rsplit(b" ", 1)
    v = rng.choice((b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x", b"HTTP/0.9", b"http/1.1", b""))
    lines[0] = parts[0] + b" " + v
    return _join_head(lines, rest)


def method(rng: random.Random, data: bytes) -> bytes:
    lines, rest = _split_head(data)
    m = rng.choice((b"CONNECT", b"OPTIONS", b"TRACE", b"DELETE", b"G\x00T", b"", b"get", b"PRI"))
    lines[0] = m + b" " + lines[0].partition(b" ")[2]
    return _join_head(lines, rest)


Mutation = Callable[[random.Random, bytes], bytes]
_ALL = (flip, stray, cut, dup_header, drop_header, framing, huge_value, long_target,
        truncate, bad_chunk, hide_request, version, method)  # fmt: skip
MUTATIONS: dict[str, Mutation] = {f.__name__: f for f in _ALL}


@dataclass(frozen=True)
class Case:
    seed: int
    index: int
    origin: str
    mutations: tuple[str, ...]
    writes: tuple[tuple[float, bytes], ...]  # (pause before, bytes)
    ending: str  # "half_close" | "keep_open" | "reset"

    @property
    def data(self) -> bytes:
        return b"".join(chunk for _, chunk in self.writes)

    def describe(self) -> str:
        """What a failure report prints: enough to replay the case by hand."""
        return (
            f"case seed={self.seed} index={self.index} from {self.origin!r} "
            f"mutations={list(self.mutations)} ending={self.ending}\n"
            f"  writes={[(round(p, 3), c) for p, c in self.writes]!r}"
        )


def make_case(seed: int, index: int) -> Case:
    """Case ``index`` of run ``seed``: a seed request, 0..3 mutations, writes, ending."""
    rng = random.Random(f"{seed}:{index}")
    origin, data = rng.choice(SEEDS)
    names = tuple(rng.choice(list(MUTATIONS)) for _ in range(rng.choice((0, 1, 1, 2, 3))))
    for name in names:
        data = MUTATIONS[name](rng, data)
    cuts = sorted(rng.sample(range(1, len(data)), min(rng.randint(0, 4), max(len(data) - 1, 0))))
    bounds = [0, *cuts, len(data)]
    writes = tuple(
        (rng.choice((0.0, 0.0, 0.001, 0.01)) if i else 0.0, data[a:b])
        for i, (a, b) in enumerate(itertools.pairwise(bounds))
    )
    ending = rng.choices(("half_close", "keep_open", "reset"), weights=(6, 3, 1))[0]
    if ending == "reset":  # an early close: after some of the writes only
        writes = writes[: rng.randint(1, len(writes))]
    return Case(seed, index, origin, names, writes, ending)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[bytes, bytes]  # lowercased names; the last value wins


def parse_responses(raw: bytes) -> tuple[list[Answer], bytes]:
    """The responses in ``raw`` and any bytes that are not a response (b"" if none).

    Bodies are skipped by Content-Length or chunked framing. The backend's
    bodies never start with ``HTTP/``, so a head followed by one is taken as
    bodiless (a HEAD, 204 or 304 answer). Parsing stops after a 101: the rest
    is the tunnel's.
    """
    answers: list[Answer] = []
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\r\n\r\n", pos)
        lines = raw[pos:end].split(b"\r\n") if end >= 0 else []
        parts = lines[0].split(b" ", 2) if lines else []
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            return answers, raw[pos:]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        answers.append(Answer(int(parts[1]), headers))
        pos = end + 4
        status = int(parts[1])
        if status == 101:
            return answers, b""
        if status < 200 or raw.startswith(b"HTTP/1.", pos):
            continue
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            pos = _skip_chunked(raw, pos)
        elif (length := headers.get(b"content-length", b"")).isdigit():
            pos += int(length)
        else:
            return answers, b""  # delimited by close
    return answers, b""


def _skip_chunked(raw: bytes, pos: int) -> int:
    while True:
        eol = raw.find(b"\r\n", pos)
        if eol < 0:
            return len(raw)
        size = int(raw[pos:eol].split(b";")[0] or b"0", 16)
        pos = eol + 2
        if size == 0:
            trailer_end = raw.find(b"\r\n\r\n", pos - 2)
            return len(raw) if trailer_end < 0 else trailer_end + 4
        pos += size + 2
