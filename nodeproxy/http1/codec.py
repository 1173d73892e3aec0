"""HTTP/1.1 framing for both sides of the proxy, behind two small classes.

The data path never touches ``h11.Connection`` directly: it talks to an
``H11ServerCodec`` (downstream, we are the server) or an ``H11ClientCodec``
(upstream, we are the client). The vocabulary is h11's event classes
(``Request``, ``Response``, ``Data``, ``EndOfMessage``...), which are plain
value objects, so a faster parser could take either class's place and
produce the same events without the rest of the proxy noticing.

Parse errors are mapped here, once, to the proxy's typed errors: a request
line over ``limits.max_request_header_bytes`` becomes ``UriTooLong`` (414), a
head over it ``HeadersTooLarge`` (431), any other malformed request
``BadRequest`` (400); a malformed upstream response becomes
``UpstreamProtocolError`` (502).

Framing is where one client's bytes could become another's request on a
shared upstream connection (request smuggling), so the codec refuses every
head whose body length two parsers could read differently (RFC 9112
§6.1-6.3, and Envoy's default, which rejects ``chunked`` with
``Content-Length`` unless ``allow_chunked_length`` is set): Content-Length
with Transfer-Encoding (either direction), a Transfer-Encoding whose final
coding is not ``chunked`` (400) or that names another coding first (501),
Transfer-Encoding on an HTTP/1.0 request. h11 already refuses conflicting
Content-Lengths, bad chunk sizes and obs-fold tricks it cannot parse.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

from nodeproxy.errors import (
    BadFraming,
    BadRequest,
    HeadersTooLarge,
    UnsupportedTransferCoding,
    UpstreamProtocolError,
    UriTooLong,
)
from nodeproxy.http1.events import NEED_DATA as NEED_DATA
from nodeproxy.http1.events import PAUSED as PAUSED
from nodeproxy.http1.events import Event as Event
from nodeproxy.http1.events import informational_event as informational_event
from nodeproxy.http1.events import parsed_head
from nodeproxy.http1.events import request_event as request_event
from nodeproxy.http1.events import response_event as response_event
from nodeproxy.http1.fast_headers import FastHeaders as FastHeaders
from nodeproxy.http1.impl import h11

if TYPE_CHECKING:  # annotations only: either build's Headers (never checked at run time)
    from h11._headers import Headers as _H11Headers

MIGHT_SWITCH_PROTOCOL = h11._state.MIGHT_SWITCH_PROTOCOL  # the running build's, not exported
# What the per-request checks compare with, bound once: in the compiled data path a Final
# name is a C static, where ``h11.DONE`` is a dict lookup and a module getattr each time.
_DONE: Final = h11.DONE
_IDLE: Final = h11.IDLE
_SEND_RESPONSE: Final = h11.SEND_RESPONSE
_REQUEST: Final = h11.Request
_RESPONSE: Final = h11.Response
_INFORMATIONAL: Final = h11.InformationalResponse
# BOUND_METHODS: each codec binds its h11 connection's next_event, send and receive_data
# once. Compiled code calls a method of another extension's class (h11-mypyc's) by name,
# a type lookup per call (interpreted code has an inline cache for it); a bound method
# kept on the codec is one direct call. The connection is never replaced (Final).


# Content-Length values past 2^63 - 1 overflow a 64-bit parser downstream of us
# (one reading of the length for us, another for the pod): refused, as Envoy does.
_MAX_CONTENT_LENGTH_DIGITS = 18


def _measure(headers: _H11Headers) -> tuple[int, bool, bool]:
    """(bytes of the header block, has Content-Length, has Transfer-Encoding): one pass."""
    items = headers._full_items
    size = 4 * len(items)
    has_cl = has_te = False
    for _, name, value in items:
        size += len(name) + len(value)
        if name == b"content-length":
            has_cl = True
            if len(value) > _MAX_CONTENT_LENGTH_DIGITS:
                raise BadFraming(f"content-length of {len(value)} digits")
        elif name == b"transfer-encoding":
            has_te = True
    return size, has_cl, has_te


def transfer_coding_error(values: list[bytes]) -> BadRequest:
    """The error for a Transfer-Encoding h11 refused: 400 unless ``chunked`` is final (501).

    RFC 9112 §6.3: a request whose final transfer coding is not ``chunked``
    cannot be framed (400, close); a known-final ``chunked`` after a coding we
    do not implement is 501 (§6.1).
    """
    codings = [c.strip().lower() for v in values for c in v.split(b",")]
    codings = [c for c in codings if c]
    if not codings or codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
        return BadFraming(f"transfer-encoding {b', '.join(codings)!r}: chunked must be final")
    return UnsupportedTransferCoding(f"transfer-encoding {b', '.join(codings)!r}")


_TE_LINE = re.compile(rb"(?im)^transfer-encoding:(.*(?:\r?\n[ \t].*)*)")


class H11ServerCodec:
    """The downstream codec on h11; bounds the request head at ``max_header_bytes``.

    While a head is incomplete the codec keeps references to the reads that
    carry it (no copy): only an error needs them, to tell a request line too
    long (414) from headers too large (431), and which Transfer-Encoding h11
    refused.
    """

    __slots__ = (
        "_head_reads",
        "_in_head",
        "_max",
        "_next_event",
        "_receive_data",
        "_send",
        "allow_connect",
        "conn",
        "method",
    )

    def __init__(self, max_header_bytes: int) -> None:
        self._max = max_header_bytes
        # CONNECT is refused (400) except where a listener takes tunnels: the mesh
        # inbound port (tunnel/inbound.py), which sets this on each connection.
        self.allow_connect = False
        self.conn: Final = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        # Bound once (see BOUND_METHODS above): the three calls a request makes most.
        self._next_event: Final = self.conn.next_event
        self._send: Final = self.conn.send
        self._receive_data: Final = self.conn.receive_data
        self._head_reads: list[bytes] = []
        self._in_head = True  # the next bytes belong to a request head
        # The last request head's method, even one refused after parsing (an
        # error answer to HEAD carries no body).
        self.method = b""

    def __repr__(self) -> str:
        return f"<H11ServerCodec [us {self.conn.our_state}, client {self.conn.their_state}]>"

    def receive(self, data: bytes) -> None:
        if self._in_head:
            self._head_reads.append(data)
        self._receive_data(data)

    def next_event(self) -> Event:
        try:
            event = self._next_event()
        except h11.RemoteProtocolError as exc:
            raise self._head_error(exc) from exc
        if type(event) is _REQUEST:
            self._head_reads.clear()
            self._in_head = False
            self.method = event.method
            # h11 only bounds an *incomplete* head; a complete one that arrived
            # in a single read can exceed the limit, so measure it too.
            line = len(event.method) + len(event.target) + 11
            if line > self._max:
                raise UriTooLong(f"request line of {line} bytes")
            size, has_cl, has_te = _measure(event.headers)
            if line + size > self._max:
                raise HeadersTooLarge("request head over the limit")
            if has_te and (has_cl or event.http_version != b"1.1"):
                raise BadFraming("transfer-encoding with content-length or on HTTP/1.0")
            if event.method == b"CONNECT" and not self.allow_connect:  # no tunnels here
                raise BadRequest("CONNECT is not supported")
            parsed_head(event)
        return event

    def _head_error(self, exc: h11.RemoteProtocolError) -> BadRequest | HeadersTooLarge:
        head = b"".join(self._head_reads)[: self._max + 1024]
        self._head_reads.clear()
        if exc.error_status_hint == 431:
            first_line = head.lstrip(b"\r\n").split(b"\n", 1)
            if head and (len(first_line) == 1 or len(first_line[0]) > self._max):
                return UriTooLong(str(exc))
            return HeadersTooLarge(str(exc))
        if exc.error_status_hint == 501:  # h11: "Only Transfer-Encoding: chunked is supported"
            values = [re.sub(rb"\r?\n[ \t]", b" ", m) for m in _TE_LINE.findall(head)]
            return transfer_coding_error(values)
        return BadRequest(str(exc))

    def send(self, event: h11.Event) -> bytes:
        return self._send(event) or b""

    @property
    def request_complete(self) -> bool:
        """The client finished sending its request (body included)."""
        state = self.conn.their_state
        return state is _DONE or state is MIGHT_SWITCH_PROTOCOL

    @property
    def can_send_response(self) -> bool:
        return self.conn.our_state in (_IDLE, _SEND_RESPONSE)

    @property
    def keep_alive(self) -> bool:
        """Both sides finished the exchange and agreed to reuse the connection."""
        conn = self.conn
        return conn.our_state is _DONE and conn.their_state is _DONE

    @property
    def client_http11(self) -> bool:
        """The client speaks HTTP/1.1 (may get 1xx responses and chunked trailers)."""
        return self.conn.their_http_version == b"1.1"

    @property
    def waiting_for_100_continue(self) -> bool:
        return self.conn.they_are_waiting_for_100_continue

    def start_next_cycle(self) -> None:
        self.conn.start_next_cycle()
        self.method = b""
        self._in_head = True

    def trailing_data(self) -> bytes:
        return self.conn.trailing_data[0]


class H11ClientCodec:
    """The upstream codec on h11; one per upstream connection, reused across requests."""

    __slots__ = ("_next_event", "_receive_data", "_send", "conn")

    def __init__(self, max_header_bytes: int) -> None:
        self.conn: Final = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_bytes)
        self._next_event: Final = self.conn.next_event  # see BOUND_METHODS
        self._send: Final = self.conn.send
        self._receive_data: Final = self.conn.receive_data

    def __repr__(self) -> str:
        return f"<H11ClientCodec [us {self.conn.our_state}, server {self.conn.their_state}]>"

    def receive(self, data: bytes) -> None:
        self._receive_data(data)

    def next_event(self) -> Event:
        try:
            event = self._next_event()
        except h11.RemoteProtocolError as exc:
            raise UpstreamProtocolError(str(exc)) from exc
        if type(event) is _RESPONSE:
            try:
                _, has_cl, has_te = _measure(event.headers)
            except BadFraming as exc:  # a length no 64-bit parser reads the same
                raise UpstreamProtocolError(str(exc)) from exc
            if has_cl and has_te:  # nginx and Envoy refuse this too: 502, close
                raise UpstreamProtocolError("response with content-length and transfer-encoding")
            parsed_head(event)
        elif type(event) is _INFORMATIONAL:
            parsed_head(event)
        return event

    def send(self, event: h11.Event) -> bytes:
        return self._send(event) or b""

    @property
    def reusable(self) -> bool:
        """The exchange ended cleanly, exactly at the message's end, and keep-alive holds.

        Any byte already read past the end of the response (extra bytes after
        a Content-Length body, a body sent with a HEAD/204/304 answer) would
        become the next request's answer on this connection: it is not reused.
        """
        conn = self.conn
        return (
            conn.our_state is _DONE
            and conn.their_state is _DONE
            and not conn.trailing_data[0]  # bytes past the response: once a request
        )

    def start_next_cycle(self) -> None:
        self.conn.start_next_cycle()

    def trailing_data(self) -> bytes:
        return self.conn.trailing_data[0]
