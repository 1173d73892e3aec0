"""Pure header rewriting for a forward hop: what a proxy must drop and add.

Hop-by-hop headers describe one connection, not the message, so they never
cross the proxy (RFC 9110 §7.6.1): ``Connection`` and every header it names,
``Keep-Alive``, ``Proxy-Connection``, ``TE`` (except ``trailers``),
``Upgrade`` (kept only on an upgrade exchange), ``Proxy-Authorization`` and
``Proxy-Authenticate``. Framing headers (``Content-Length``,
``Transfer-Encoding``) are never copied: the request's framing is written
here from what the codec parsed (one Content-Length, or chunked; the codec
already refused a head carrying both), so no byte of the client's framing
reaches a shared upstream connection. Trailers lose framing, hop-by-hop,
routing and mesh fields (RFC 9110 §6.5.1). We add ``Via``,
``X-Forwarded-For``/``-Proto`` as the listener's ``Forwarding`` says
(``forwarding.py``: Envoy's rules) and an ``x-request-id`` when the client
sent none.

Also here: turning the request target into (authority, origin-form target),
for both ``http_proxy`` style absolute-form and ``Host``-header requests.
No I/O, no clock; every function is a table-testable input -> output.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable

from nodeproxy.errors import BadRequest
from nodeproxy.http1.forwarding import NATIVE, VIA, Forwarding

Header = tuple[bytes, bytes]

_ALWAYS_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"upgrade",
    }
)
# Never dropped even when a Connection header names them: the codec needs them.
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})

# Request headers the proxy replaces or merges (Host, X-Forwarded-*, framing) or reads.
_REWRITTEN = frozenset(
    {
        b"host",
        b"x-forwarded-proto",
        b"x-forwarded-for",
        b"x-request-id",
        b"content-length",
        b"transfer-encoding",
    }
)
# Never in a forwarded trailer section: framing, hop-by-hop, routing, and what only
# a node proxy may say (a trailer must not smuggle an identity past the head's checks).
_NOT_IN_TRAILERS = _ALWAYS_HOP | _FRAMING | {b"trailer", b"x-forwarded-client-cert"}
_MESH_PREFIX = b"x-nodeproxy-"

# Request ids: a random 64-bit prefix drawn once per process + a counter, as 32
# hex digits (a uuid4's length). Unique without a getrandom() syscall and a
# UUID object per request, which showed in the profile.
_ID_PREFIX = os.urandom(8).hex().encode()
_ID_COUNTER = itertools.count()


def new_request_id() -> bytes:
    """A fresh ``x-request-id``: 32 hex digits; the random prefix keeps processes apart."""
    return b"%s%016x" % (_ID_PREFIX, next(_ID_COUNTER) & 0xFFFF_FFFF_FFFF_FFFF)


def connection_tokens(headers: Iterable[Header]) -> set[bytes]:
    """Lowercased tokens of every ``Connection`` header."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


# Connection values that name nothing beyond the always hop-by-hop headers, as servers
# and clients write them: nearly every message carries one of these, and splitting and
# lowercasing it (a generator, four method calls) cost more than the rest of the rewrite.
# Exact bytes only; anything else takes the general path below.
_PLAIN_CONNECTION = frozenset(
    {b"keep-alive", b"Keep-Alive", b"upgrade", b"Upgrade", b"keep-alive, Upgrade"}
)


def _dropped(connection_values: list[bytes]) -> frozenset[bytes]:
    """Names that must not cross: the always hop-by-hop ones and those ``Connection`` lists."""
    if len(connection_values) == 1 and connection_values[0] in _PLAIN_CONNECTION:
        return _ALWAYS_HOP
    tokens = connection_tokens((b"connection", value) for value in connection_values)
    extra = tokens - _FRAMING - _ALWAYS_HOP
    return _ALWAYS_HOP | extra if extra else _ALWAYS_HOP


# Both rewrites below make one pass assuming that Connection names nothing
# beyond the usual hop-by-hop headers (true of nearly every message: it says
# keep-alive, close or upgrade), noting its values on the way; only when it
# names more is the pass redone with those names dropped too.


def protocol_names(value: bytes) -> list[bytes]:
    """The protocol names of an ``Upgrade`` value, lowercased, versions dropped.

    >>> protocol_names(b"WebSocket, foo/2")
    [b'websocket', b'foo']
    """
    names = (token.strip().lower().partition(b"/")[0] for token in value.split(b","))
    return [name for name in names if name]


def requested_upgrade(headers: Iterable[Header]) -> list[bytes]:
    """Protocols a request asks to switch to (``Connection: upgrade`` + ``Upgrade``), lowercased.

    Only the protocol name counts (``websocket``, ``h2c``): a version
    (``foo/2``) is dropped. Empty when the request is no upgrade.
    """
    # The Upgrade header first: rare, and cheaper to look for than to parse Connection.
    headers = list(headers)
    for name, _ in headers:
        if name == b"upgrade":
            break
    else:
        return []
    protocols: list[bytes] = []
    for name, value in headers:
        if name == b"upgrade":
            protocols += protocol_names(value)
    if protocols and b"upgrade" in connection_tokens(headers):
        return protocols
    return []


def is_upgrade(headers: Iterable[Header]) -> bool:
    """A request asking to switch protocols (``Connection: upgrade`` + ``Upgrade``)."""
    return bool(requested_upgrade(headers))


def clean_trailers(headers: Iterable[Header]) -> list[Header]:
    """A trailer section without fields a trailer must not carry (RFC 9110 §6.5.1)."""
    return [
        (name, value)
        for name, value in headers
        if name not in _NOT_IN_TRAILERS and not name.startswith(_MESH_PREFIX)
    ]


def split_target(target: bytes) -> tuple[bytes | None, bytes]:
    """(authority from an absolute-form target or None, origin-form target).

    >>> split_target(b"http://bdgreeter/hello?x=1")
    (b'bdgreeter', b'/hello?x=1')
    >>> split_target(b"/hello")
    (None, b'/hello')
    """
    if target[:1] == b"/" or target == b"*":
        return None, target
    if target[:7].lower() != b"http://":
        raise BadRequest("only origin-form or http:// absolute-form targets are supported")
    rest = target[7:]
    cut = len(rest)
    for sep in (b"/", b"?"):
        i = rest.find(sep)
        if 0 <= i < cut:
            cut = i
    authority, path = rest[:cut], rest[cut:]
    if not authority:
        raise BadRequest("absolute-form target without authority")
    if not path.startswith(b"/"):
        path = b"/" + path
    return authority, path


def request_authority(target: bytes, headers: Iterable[Header]) -> tuple[bytes, bytes]:
    """(authority, origin-form target): from the URI when absolute, else ``Host``."""
    authority, path = split_target(target)
    if authority is None:
        for name, value in headers:
            if name == b"host":
                authority = value
                break
        else:
            raise BadRequest("missing Host header")
    return authority, path


def upstream_request_headers(
    headers: Iterable[Header],
    *,
    host: bytes,
    client_ip: str,
    upgrade: bool,
    forwarding: Forwarding = NATIVE,
) -> tuple[list[Header], str]:
    """Headers to send upstream, and the request id (the client's or a new one).

    ``host`` replaces any ``Host`` the client sent (absolute-form wins, RFC 9112 §3.2.2).
    ``forwarding``: the listener's rules for X-Forwarded-For/-Proto and Via.
    """
    headers = list(headers)
    out, xff, proto, request_id, connection = _request_pass(headers, _ALWAYS_HOP, host, upgrade)
    if connection and (drop := _dropped(connection)) is not _ALWAYS_HOP:
        out, xff, proto, request_id, _ = _request_pass(headers, drop, host, upgrade)
    if upgrade:
        out.append((b"connection", b"upgrade"))
    if forwarding.append_xff:
        ip = client_ip.encode()
        out.append((b"x-forwarded-for", ip if xff is None else xff + b", " + ip))
    elif xff is not None:
        out.append((b"x-forwarded-for", xff))
    if proto is None or not forwarding.keep_proto:
        proto = forwarding.scheme
    out.append((b"x-forwarded-proto", proto))
    if forwarding.via is not None:
        out.append((b"via", forwarding.via))
    if request_id is None:
        request_id = new_request_id()
        out.append((b"x-request-id", request_id))
    return out, request_id.decode("latin-1")


def _request_pass(
    headers: list[Header], drop: frozenset[bytes], host: bytes, upgrade: bool
) -> tuple[list[Header], bytes | None, bytes | None, bytes | None, list[bytes]]:
    """(headers kept, client X-Forwarded-For, its first X-Forwarded-Proto, client request
    id, Connection values)."""
    out: list[Header] = [(b"host", host)]
    xff: bytes | None = None
    proto: bytes | None = None
    request_id: bytes | None = None
    connection: list[bytes] = []
    framing: Header | None = None
    for name, value in headers:
        if name in drop:
            if name == b"connection":
                connection.append(value)
            elif name == b"te" and value.strip().lower() == b"trailers":
                out.append((name, b"trailers"))
            elif name == b"upgrade" and upgrade:
                out.append((name, value))
        elif name not in _REWRITTEN:  # one set probe for the common case
            out.append((name, value))
        elif name == b"x-forwarded-for":
            xff = value if xff is None else xff + b", " + value
        elif name == b"x-request-id":
            request_id = value
            out.append((name, value))
        elif name == b"x-forwarded-proto":
            if proto is None:
                proto = value
        elif name == b"content-length":  # validated digits (the codec parsed it)
            if framing is None:
                framing = (b"content-length", value)
        elif name == b"transfer-encoding":  # the codec accepts exactly "chunked"
            framing = (b"transfer-encoding", b"chunked")
    if framing is not None:
        out.append(framing)
    return out, xff, proto, request_id, connection


def downstream_response_headers(
    headers: Iterable[Header],
    *,
    upgrade: bool = False,
    close: bool = False,
    via: bytes | None = VIA,
) -> list[Header]:
    """Response headers to send downstream: hop-by-hop removed, ``via`` added when set.

    ``close`` asks the client to drop the connection after this response
    (draining, or a request body we did not read).
    """
    headers = list(headers)
    out, connection = _response_pass(headers, _ALWAYS_HOP, upgrade)
    if connection and (drop := _dropped(connection)) is not _ALWAYS_HOP:
        out, _ = _response_pass(headers, drop, upgrade)
    if upgrade:
        out.append((b"connection", b"upgrade"))
    elif close:
        out.append((b"connection", b"close"))
    if via is not None:
        out.append((b"via", via))
    return out


def _response_pass(
    headers: list[Header], drop: frozenset[bytes], upgrade: bool
) -> tuple[list[Header], list[bytes]]:
    """(headers kept, Connection values)."""
    out: list[Header] = []
    connection: list[bytes] = []
    for name, value in headers:
        if name not in drop:
            out.append((name, value))
        elif name == b"connection":
            connection.append(value)
        elif name == b"upgrade" and upgrade:
            out.append((name, value))
    return out, connection
