"""The tunnel's wire format: ``CONNECT pod-ip:port HTTP/1.1`` over mTLS (sans-I/O).

The shape of ztunnel's HBONE, over HTTP/1.1: the source node opens an mTLS
connection to the destination node's inbound port presenting the *calling
workload's* certificate, sends

    CONNECT 10.0.1.7:5432 HTTP/1.1
    host: 10.0.1.7:5432
    x-nodeproxy-service: db.shop         (the Service the source resolved, when known)
    x-nodeproxy-tunnel: http             (only for HTTP/1.1 of a source's pool: drain)

and after ``200`` both sides carry raw bytes. A refusal is an ordinary HTTP
answer with the cause in ``x-nodeproxy-error`` (403 denied, 421
not_local_destination, 503 connection_failure...), which ``ConnectHandshake``
turns back into the same typed error on the source side, so a client of an
HTTP request carried through a tunnel sees the destination's answer.

Both sides parse with h11 (``http1/impl.py``'s build): h11 knows CONNECT; a
2xx switches the connection, and whatever arrived after the head
(``trailing_data``) belongs to the tunnel, never dropped. No I/O here.
"""

from __future__ import annotations

from nodeproxy.errors import (
    ERROR_HEADER,
    MissingDestination,
    NotLocalDestination,
    ProxyError,
    UnknownSource,
    UpstreamConnectFailure,
    UpstreamProtocolError,
)
from nodeproxy.http1.impl import h11
from nodeproxy.mesh.state import SERVICE_HEADER
from nodeproxy.policy.model import Denied

TUNNEL_HEADER = b"x-nodeproxy-tunnel"  # "http": one HTTP/1.1 connection of a source's pool
MAX_HEAD = 16 * 1024  # a CONNECT answer is a few hundred bytes
MAX_BODY = 4 * 1024  # of a refusal, read for nothing but completeness


def authority(host: str, port: int) -> str:
    """``host:port``, IPv6 in brackets: the CONNECT target and pod address form."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_authority(target: bytes) -> tuple[str, int]:
    """``b"10.0.0.1:80"`` / ``b"[fd00::1]:80"`` -> (host, port); MissingDestination if bad."""
    text = target.decode("latin-1").strip().lower()
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MissingDestination(f"CONNECT target {text!r} is not host:port")
    if host.startswith("["):
        if not host.endswith("]"):
            raise MissingDestination(f"CONNECT target {text!r} is not host:port")
        host = host[1:-1]
    elif ":" in host:
        raise MissingDestination(f"CONNECT target {text!r}: IPv6 needs brackets")
    return host, int(port)


def refusal(status: int, cause: str, detail: str) -> ProxyError:
    """The typed error for a peer's non-2xx answer to CONNECT."""
    if status == 403 and cause == "denied":
        return Denied(None, f"peer: {detail}")
    if status == 403 and cause == "unknown_source":
        return UnknownSource(f"peer: {detail}")
    if status == 421:
        return NotLocalDestination(f"peer: {detail}")
    if status == 400:
        return MissingDestination(f"peer: {detail}")
    if 500 <= status < 600 or status == 403:
        return UpstreamConnectFailure(f"peer answered CONNECT with {status} {cause}: {detail}")
    return UpstreamProtocolError(f"peer answered CONNECT with {status} {cause}")


class ConnectHandshake:
    """The source side: the request bytes, then the answer fed in as it arrives."""

    def __init__(self, destination: str) -> None:
        self.destination = destination
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self._status = 0
        self._cause = ""
        self._body = 0

    def __repr__(self) -> str:
        return f"<ConnectHandshake {self.destination} [{self._conn.their_state}]>"

    def request(self, service: str | None, *, http: bool = False) -> bytes:
        headers = [(b"host", self.destination.encode())]
        if service:
            headers.append((SERVICE_HEADER, service.encode()))
        if http:
            headers.append((TUNNEL_HEADER, b"http"))
        event = h11.Request(method=b"CONNECT", target=self.destination.encode(), headers=headers)
        return (self._conn.send(event) or b"") + (self._conn.send(h11.EndOfMessage()) or b"")

    def receive(self, data: bytes) -> bytes | None:
        """Feed the peer's bytes (b"" at EOF). None: need more. Bytes: the tunnel is
        open and these arrived after the head (the destination's first bytes).
        Raises the refusal's typed error, or ``UpstreamProtocolError``."""
        try:
            self._conn.receive_data(data)
            while True:
                event = self._conn.next_event()
                if event is h11.NEED_DATA:
                    return None
                if type(event) is h11.Response:
                    if 200 <= event.status_code < 300:
                        trailing, _closed = self._conn.trailing_data
                        return bytes(trailing)
                    self._status = event.status_code
                    for name, value in event.headers:
                        if name == ERROR_HEADER.encode():
                            self._cause = value.decode("latin-1")
                elif type(event) is h11.Data:
                    self._body += len(event.data)
                    if self._body > MAX_BODY:
                        break
                elif type(event) is h11.EndOfMessage or type(event) is h11.ConnectionClosed:
                    break
                elif type(event) is not h11.InformationalResponse:
                    raise UpstreamProtocolError(f"unexpected {event!r} answering CONNECT")
        except h11.RemoteProtocolError as exc:
            raise UpstreamProtocolError(f"bad answer to CONNECT: {exc}") from exc
        if self._status:
            raise refusal(self._status, self._cause, f"{self.destination}")
        raise UpstreamProtocolError(f"connection closed before answering CONNECT {self}")
