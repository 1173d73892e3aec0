"""A minimal HTTP/1.1 GET client for the Kubernetes API, on trio + h11.

Why not httpx or a Kubernetes client library: the reflector needs only
``GET`` with a bearer token over TLS, and it needs tight control of two
things libraries hide: bounds (the response head is capped by h11's
``max_incomplete_event_size``, bodies arrive as bounded chunks that the caller
consumes as a stream, never read whole) and time (every read has a deadline
from ``trio.current_time()``, so a half-dead watch connection is noticed and a
mock clock moves it). h11 and trio are already runtime dependencies, so this
adds none. One connection per request, closed afterwards: lists and watches
are long-lived or rare, and a fresh connection re-reads the rotating token.

Failures are mapped once, here: anything network- or protocol-shaped becomes
``ApiUnavailable`` (reconnect with backoff); an HTTP error status becomes
``ApiStatusError`` carrying the API's ``Status`` message, ``Gone`` for 410 and
``TooLargeResourceVersion`` for 504 "Too large resource version" (both: list again).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import h11
import trio

from nodeproxy.discovery.kubernetes.access import ApiAccess
from nodeproxy.discovery.kubernetes.store import too_large_status

MAX_HEAD_BYTES = 64 * 1024
READ_CHUNK_BYTES = 64 * 1024
MAX_ERROR_BODY_BYTES = 16 * 1024


class ApiUnavailable(Exception):
    """The API server could not be reached or broke the connection / the protocol."""


class ApiStatusError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class Gone(ApiStatusError):
    """410: the requested resourceVersion (or continue token) is too old; list again."""


class TooLargeResourceVersion(ApiStatusError):
    """504 "Too large resource version": the API is behind the version asked for
    (an etcd restore rolled it back); list again, as client-go does."""


@dataclass
class ApiResponse:
    """An open response whose body is read as a stream of bounded chunks."""

    status: int
    headers: dict[str, str]
    _stream: trio.abc.Stream
    _conn: h11.Connection
    _read_timeout: float
    _ended: bool = False

    async def next_chunk(self) -> bytes:
        """The next piece of the body as it arrives; b"" once the message has ended."""
        if self._ended:
            return b""
        while True:
            event = await _next_event(self._conn, self._stream, self._read_timeout)
            if isinstance(event, h11.Data):
                if event.data:
                    return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._ended = True
                return b""
            else:
                raise ApiUnavailable(f"unexpected {type(event).__name__} in the body")

    async def read_all(self, limit: int) -> bytes:
        """The whole body, refusing (``ApiUnavailable``) one longer than ``limit``."""
        parts: list[bytes] = []
        size = 0
        while chunk := await self.next_chunk():
            size += len(chunk)
            if size > limit:
                raise ApiUnavailable(f"response body larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)


class ApiClient:
    """Opens one GET at a time against the server described by ``ApiAccess``."""

    def __init__(
        self, access: ApiAccess, *, connect_timeout: float = 5.0, read_timeout: float = 30.0
    ) -> None:
        self.access = access
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._ssl: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        return f"<ApiClient {self.access!r}>"

    @asynccontextmanager
    async def get(
        self, target: str, read_timeout: float | None = None
    ) -> AsyncIterator[ApiResponse]:
        """``GET target``; yields the 2xx response, raises for anything else."""
        timeout = self.read_timeout if read_timeout is None else read_timeout
        try:
            token = self.access.bearer_token()
        except (OSError, ValueError) as exc:
            raise ApiUnavailable(f"cannot read the token: {exc}") from exc
        headers = [
            ("Host", self.access.authority),
            ("Accept", "application/json"),
            ("User-Agent", "nodeproxy"),
        ]
        if token:
            headers.append(("Authorization", f"Bearer {token}"))
        stream = await self._connect()
        try:
            conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
            request = h11.Request(method="GET", target=target, headers=headers)
            out = conn.send(request) + (conn.send(h11.EndOfMessage()) or b"")
            try:
                with trio.fail_after(timeout):
                    await stream.send_all(out)
            except (trio.BrokenResourceError, trio.TooSlowError, OSError) as exc:
                raise ApiUnavailable(f"sending {target}: {exc!r}") from exc
            head = await _next_event(conn, stream, timeout)
            if not isinstance(head, h11.Response):
                raise ApiUnavailable(f"expected a response, got {type(head).__name__}")
            response = ApiResponse(
                status=head.status_code,
                headers={k.decode().lower(): v.decode("latin-1") for k, v in head.headers},
                _stream=stream,
                _conn=conn,
                _read_timeout=timeout,
            )
            if head.status_code >= 300:
                body = await response.read_all(MAX_ERROR_BODY_BYTES)
                raise _status_error(head.status_code, body, head.reason.decode())
            yield response
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await stream.aclose()

    async def _connect(self) -> trio.abc.Stream:
        access = self.access
        if self._ssl is None and access.tls:
            self._ssl = access.ssl_context()
        try:
            with trio.fail_after(self.connect_timeout):
                return await open_api_stream(access, self._ssl)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, ssl.SSLError) as exc:
            raise ApiUnavailable(f"connecting to {access.server}: {exc!r}") from exc


async def open_api_stream(access: ApiAccess, context: ssl.SSLContext | None) -> trio.abc.Stream:
    """A connection to the API server: TCP, then TLS with ``context`` (the API's CA) when
    ``access`` is https; the handshake done. Shared with the signer's API client."""
    tcp = await trio.open_tcp_stream(access.host, access.port)
    if context is None:
        return tcp
    tls = trio.SSLStream(tcp, context, server_hostname=access.host)
    try:
        await tls.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return tls


def status_message(body: bytes) -> str:
    """The ``message`` of a Kubernetes ``Status`` body, or '' when it is not one."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace").strip()
    return str(doc.get("message", "")) if isinstance(doc, dict) else ""


def _status_error(status: int, body: bytes, reason: str) -> ApiStatusError:
    message = status_message(body) or reason
    if status == 410:
        return Gone(status, message)
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if too_large_status(doc) or (status == 504 and "Too large resource version" in message):
        return TooLargeResourceVersion(status, message)
    return ApiStatusError(status, message)


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream, timeout: float) -> h11.Event:
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise ApiUnavailable(f"bad HTTP from the API server: {exc}") from exc
        if event is h11.NEED_DATA:
            try:
                with trio.fail_after(timeout):
                    data = await stream.receive_some(READ_CHUNK_BYTES)
            except trio.TooSlowError as exc:
                raise ApiUnavailable(f"no data from the API server for {timeout:g}s") from exc
            except (trio.BrokenResourceError, OSError, ssl.SSLError) as exc:
                raise ApiUnavailable(f"reading from the API server: {exc!r}") from exc
            conn.receive_data(bytes(data))
            if not data and conn.their_state is h11.SEND_RESPONSE:
                raise ApiUnavailable("the API server closed the connection without answering")
            continue
        if isinstance(event, h11.ConnectionClosed):
            raise ApiUnavailable("the API server closed the connection")
        assert not isinstance(event, type), event  # PAUSED cannot happen for one request
        return event
