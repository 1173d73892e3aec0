"""Body chunks cross from h11 into the data path as whatever h11 made of them.

h11 (both builds) hands out ``Data.data`` as ``bytearray`` slices of its receive
buffer, though the field is annotated ``bytes``. The compiled data path (mypyc, which
forces strict bytes) checks annotations when it reads an attribute, so a typed read
of a body chunk failed there with "bytes object expected; got bytearray": every
request with a body answered 500 (found when the build moved to mypy 2.4.1). These
tests run on whichever build is installed; the suite's compiled pass is the one
that would catch a typed read coming back.
"""

from __future__ import annotations

import pytest

from nodeproxy.http1.codec import H11ServerCodec
from nodeproxy.http1.events import body_chunk
from nodeproxy.http1.impl import h11

BODIES = [
    pytest.param(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", id="length"),
    pytest.param(
        b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
        id="chunked",
    ),
]


@pytest.mark.parametrize("raw", BODIES)
def test_a_parsed_body_reads_back_whole(raw: bytes) -> None:
    codec = H11ServerCodec(max_header_bytes=8192)
    codec.receive(raw)
    assert type(codec.next_event()) is h11.Request
    chunks = []
    while type(event := codec.next_event()) is h11.Data:
        chunks.append(bytes(body_chunk(event)))
    assert type(event) is h11.EndOfMessage
    assert b"".join(chunks) == b"hello"


def test_body_chunk_keeps_what_h11_holds() -> None:
    """No copy and no conversion: the caller decides (the exchange copies, the
    request-body pump only counts)."""
    data = bytearray(b"xyz")
    event = h11.Data(data=data)  # type: ignore[arg-type]  # as h11's parser builds it
    assert body_chunk(event) is event.data
    assert len(body_chunk(event)) == 3
