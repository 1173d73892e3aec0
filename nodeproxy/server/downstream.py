"""One client connection's socket, codec and counters, and one request's record.

``Downstream`` is owned by the connection task that accepted it; the exchange
code borrows it for the length of a request. It is the only place that reads
from or writes to the client socket, so byte counts are exact and a client
that vanished shows up as one exception type (``ClientGone``) instead of the
zoo of trio/OS errors.

``Exchange`` is the per-request record the access log and the stats are built
from; the data path fills it in as the request progresses.
"""

from __future__ import annotations

import math

import trio

from nodeproxy.config.model import Limits
from nodeproxy.http1.codec import NEED_DATA, Event, H11ServerCodec
from nodeproxy.http1.forwarding import VIA
from nodeproxy.http1.impl import h11
from nodeproxy.netio import IdleReads, receive_between_requests, receive_some, send_all
from nodeproxy.routing.header_edits import HeaderEdits
from nodeproxy.tls.identity import SpiffeId


class ClientGone(Exception):
    """The downstream client closed or reset its connection."""


class Downstream:
    """The client side of one connection: its socket and its ``H11ServerCodec``."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "caller",
        "chunk",
        "client_ip",
        "codec",
        "deadline",
        "exchange",
        "idle_reads",
        "limits",
        "peer_identity",
        "pin",
        "response_timeout",
        "route_authority",
        "scope",
        "source",
        "stream",
    )

    def __init__(
        self, stream: trio.SocketStream, limits: Limits, caller: SpiffeId | None = None
    ) -> None:
        self.stream = stream
        self.caller = caller  # the verified mTLS peer (inbound listener)
        self.peer_identity = None if caller is None else str(caller)  # for its access lines
        self.limits = limits  # the process's bounds on what one client can make it hold
        self.codec = H11ServerCodec(limits.max_request_header_bytes)
        self.chunk = limits.stream_chunk_bytes
        self.bytes_in = 0
        self.bytes_out = 0
        self.idle_reads = IdleReads()  # whether reads between requests should park first
        # The connection loop's cancel scope (see ``arm``), and what a firing means.
        self.scope: trio.CancelScope | None = None
        self.response_timeout: float | None = None  # set: a response head is overdue
        self.deadline = math.inf  # when the sweeper fires ``scope`` (see ``arm``)
        self.exchange: Exchange | None = None  # the request being served
        # An intercepted connection (intercept/listener.py): the authority its original
        # destination names, routed on instead of Host, and the one endpoint ("ip:port")
        # it may reach when the pod dialled a pod IP. None: a proxy client's request.
        self.route_authority: str | None = None
        self.pin: str | None = None
        try:
            peer = stream.socket.getpeername()
            self.client_ip = str(peer[0])
            self.source = f"{peer[0]}:{peer[1]}"
        except OSError:  # already reset by the peer
            self.client_ip, self.source = "0.0.0.0", "0.0.0.0:0"

    def __repr__(self) -> str:
        return f"<Downstream {self.source} [in {self.bytes_in} B, out {self.bytes_out} B]>"

    def prime(self, data: bytes) -> None:
        """Feed bytes already read from the client (protocol detection's) to the codec."""
        self.bytes_in += len(data)
        self.codec.receive(data)

    def arm(self, deadline: float, *, response_timeout: float | None = None) -> None:
        """Let the connection's cancel scope fire at ``deadline``, until ``disarm``.

        For the two waits that have one: the idle wait for a next request
        (firing closes the connection) and the wait for a response head
        (``response_timeout`` given: firing answers 504, see
        ``ConnectionLoop.serve``). Arming only writes a float: the listener's
        sweeper (``ConnectionLoop.sweep``) cancels the scope of a connection
        past its deadline, a few times a second. Moving a trio deadline per
        wait (four per request) cost more than the rest of the proxy's own
        per-request bookkeeping.
        """
        assert self.scope is not None, "only inside ConnectionLoop.serve"
        self.response_timeout = response_timeout
        self.deadline = deadline

    def disarm(self) -> None:
        """No deadline until the next ``arm``."""
        self.deadline = math.inf

    async def receive(self, *, next_request: bool = False) -> bytes:
        """Read up to one chunk into the codec; b"" at EOF. ``next_request``: the first
        bytes of a next request (parks first while the client keeps idling between
        requests: ``netio.IdleReads``)."""
        try:
            if next_request:
                data = await receive_between_requests(self.stream, self.chunk, self.idle_reads)
            else:
                data = await receive_some(self.stream, self.chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ClientGone(str(exc)) from exc
        self.bytes_in += len(data)
        self.codec.receive(data)
        return data

    async def next_event(self) -> Event:
        """The next parsed event, reading from the socket as needed."""
        event = self.codec.next_event()
        while event is NEED_DATA:
            await self.receive()
            event = self.codec.next_event()
        return event

    def skip_buffered_body(self) -> bool:
        """Consume the request body already received; True when the request is complete
        (the connection can frame a next one)."""
        codec = self.codec
        while not codec.request_complete:
            event = codec.next_event()
            if type(event) is not h11.Data and type(event) is not h11.EndOfMessage:
                return False
        return True

    async def send(self, data: bytes) -> None:
        if not data:
            return
        try:
            await send_all(self.stream, data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ClientGone(str(exc)) from exc
        self.bytes_out += len(data)

    async def linger(self, budget_bytes: int = 1 << 20, seconds: float = 1.0) -> None:
        """Half-close, then discard what the client still sends, briefly.

        Closing with unread input makes the kernel send a reset, which can
        destroy the error answer we just wrote before the client reads it
        (e.g. a 431 while the client is still sending headers). Bounded in
        bytes and time.
        """
        try:
            await self.stream.send_eof()
            with trio.move_on_after(seconds):
                while budget_bytes > 0:
                    data = await self.stream.receive_some(self.chunk)
                    if not data:
                        return
                    budget_bytes -= len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return

    def close(self) -> None:
        self.stream.socket.close()


class Exchange:
    """What happened to one request, for the access log and the stats.

    A plain class, not a dataclass: mypyc compiles an explicit ``__init__``, while a
    dataclass's is generated at import and runs interpreted, once per request.
    """

    __slots__ = (
        "authority",
        "bytes_received",
        "bytes_sent",
        "caller",
        "cause",
        "client",
        "cluster",
        "cors",
        "finished",
        "listener",
        "method",
        "path",
        "peer_identity",
        "policy_rule",
        "protocol",
        "request_id",
        "response_edits",
        "response_started",
        "route",
        "source",
        "started",
        "status",
        "upgrade",
        "upstream",
        "via",
    )

    def __init__(self, listener: str, source: str, started: float) -> None:
        self.listener = listener
        self.source = source
        self.started = started
        # When the proxying ended (pipeline.py sets it, reading the clock for the balancer):
        # the stats and the access line's duration reuse that read. 0.0: not set.
        self.finished = 0.0
        self.method = "-"
        self.authority = "-"
        self.path = "-"
        self.protocol = "HTTP/1.1"
        self.status = 0
        self.cluster: str | None = None
        self.route = ""  # the route rule's name, else its virtual host's (the metrics' route label)
        self.upstream: str | None = None
        self.request_id = ""
        self.cause: str | None = None
        self.bytes_received = 0
        self.bytes_sent = 0
        self.response_started = False  # response headers went out: errors now mean "close"
        self.upgrade: str | None = None  # the protocol(s) of an upgrade request relayed upstream
        # The client's address when the listener reads it from x-forwarded-for (Envoy's
        # downstream remote address, http1/forwarding.py); None: the source's.
        self.client: str | None = None
        self.via: bytes | None = VIA  # the listener's Via for the response (None: none)
        self.response_edits: HeaderEdits | None = None  # the route's response header edits
        self.cors: list[tuple[bytes, bytes]] | None = None  # CORS headers (routing/cors.py)
        self.peer_identity: str | None = None  # the mTLS caller's SPIFFE ID (inbound listener)
        # The calling workload when known (the metrics' caller labels): the mTLS peer on the
        # inbound listener, the source pod's identity on a mesh's outbound listener.
        self.caller: SpiffeId | None = None
        self.policy_rule: str | None = None  # the mesh policy rule that decided (mesh/state.py)

    def __repr__(self) -> str:
        return f"<Exchange {self.method} {self.authority}{self.path} -> {self.status}>"
