"""The error tree, and the one place where an error becomes a client-visible answer.

Every failure the data path can hit is a ``ProxyError`` subclass carrying the
HTTP status it should become, a short machine-readable ``cause`` (sent as the
``x-nodeproxy-error`` header, used as a stats label and logged), and a body in
Envoy's wording where Envoy has one, so that users' runbooks keep working.
Errors are raised deep down (router, pool, upstream client) and mapped to a
response exactly once, at the downstream connection boundary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from nodeproxy.routing.header_edits import HeaderEdits

ERROR_HEADER = "x-nodeproxy-error"


class ProxyError(Exception):
    """A failure that becomes an HTTP answer to the downstream client."""

    status: ClassVar[int] = 500
    cause: ClassVar[str] = "internal_error"
    body: ClassVar[str] = "internal proxy error"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.body)
        self.detail = detail

    def response_body(self) -> bytes:
        return (self.body + "\n").encode()


# -- the client's fault -------------------------------------------------------


class BadRequest(ProxyError):
    status = 400
    cause = "bad_request"
    body = "bad request"


class BadFraming(BadRequest):
    """Ambiguous or faulty message framing (RFC 9112 §6.1-6.3): a smuggling attempt or a bug.

    Content-Length together with Transfer-Encoding, a Transfer-Encoding whose
    final coding is not ``chunked``, Transfer-Encoding on HTTP/1.0. Answered
    400 and the connection closed: nothing after it can be framed safely.
    """

    cause = "bad_framing"


class UnsupportedTransferCoding(BadRequest):
    """A transfer coding other than ``chunked`` before the final ``chunked`` (RFC 9112 §6.1)."""

    status = 501
    cause = "unsupported_transfer_coding"
    body = "not implemented"


class UriTooLong(BadRequest):
    """The request line alone is over ``limits.max_request_header_bytes``."""

    status = 414
    cause = "uri_too_long"
    body = "uri too long"


class HeadersTooLarge(ProxyError):
    status = 431
    cause = "headers_too_large"
    body = "request header fields too large"


class RequestHeaderTimeout(ProxyError):
    status = 408
    cause = "request_header_timeout"
    body = "request timeout"


class RequestBodyTimeout(RequestHeaderTimeout):
    """The request body stalled or fell below ``limits.request_body_min_rate``."""

    cause = "request_body_timeout"


class UpgradeNotAllowed(ProxyError):
    """An ``Upgrade`` token the listener's or route's ``upgrades`` does not list (Envoy: 403)."""

    status = 403
    cause = "upgrade_not_allowed"
    body = "upgrade not allowed"


# -- routing ------------------------------------------------------------------


class UnknownService(ProxyError):
    status = 404
    cause = "unknown_service"
    body = "unknown service"


class NotSynced(ProxyError):
    """Discovery has not listed the cluster once yet: the service may exist (retry)."""

    status = 503
    cause = "not_synced"
    body = "service discovery not synced yet"


class NoRoute(ProxyError):
    status = 404
    cause = "no_route"
    body = "no route"


# -- upstream -----------------------------------------------------------------

_ENVOY_RESET = "upstream connect error or disconnect/reset before headers. reset reason: "


class NoHealthyUpstream(ProxyError):
    status = 503
    cause = "no_healthy_upstream"
    body = "no healthy upstream"


class UpstreamConnectFailure(ProxyError):
    status = 503
    cause = "connection_failure"
    body = _ENVOY_RESET + "connection failure"


class UpstreamConnectTimeout(ProxyError):
    status = 503
    cause = "connect_timeout"
    body = _ENVOY_RESET + "connection timeout"


class UpstreamResetBeforeHeaders(ProxyError):
    status = 502
    cause = "upstream_reset"
    body = _ENVOY_RESET + "connection termination"


class UpstreamProtocolError(ProxyError):
    status = 502
    cause = "upstream_protocol_error"
    body = _ENVOY_RESET + "protocol error"


class UpstreamResponseTimeout(ProxyError):
    status = 504
    cause = "upstream_timeout"
    body = "upstream request timeout"


class Overloaded(ProxyError):
    status = 503
    cause = "overloaded"
    body = "overloaded"


# -- traffic policy: breakers, overload, retries, rate limits ------------------


class CircuitOpen(ProxyError):
    """The service's circuit breaker is open (or half-open with its probe in flight)."""

    status = 503
    cause = "circuit_open"
    body = "upstream circuit open"


class SourceOverloaded(Overloaded):
    """Per-source fairness: the calling source's queue is full, or it waited too long."""

    cause = "source_overloaded"


class RateLimited(ProxyError):
    """A local token bucket is empty; ``retry_after`` (seconds) feeds ``Retry-After``."""

    status = 429
    cause = "rate_limited"
    body = "local_rate_limited"  # Envoy's local rate limit body

    def __init__(
        self, detail: str = "", retry_after: float | None = None, headers: HeaderEdits | None = None
    ) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.headers = headers  # the limit's response_headers_to_add, applied to the 429


# -- mesh (node-to-node mTLS, docs/security.md) -------------------------------


class MissingDestination(ProxyError):
    """An inbound (mTLS) request without a usable ``x-nodeproxy-destination``."""

    status = 400
    cause = "missing_destination"
    body = "missing or malformed x-nodeproxy-destination"


class NotLocalDestination(ProxyError):
    """The inbound port forwards only to pods of its own node: it is no open relay."""

    status = 421
    cause = "not_local_destination"
    body = "misdirected request: destination is not a pod of this node"


class UnknownSource(ProxyError):
    """A cross-node call from a source with no workload identity (and no default)."""

    status = 403
    cause = "unknown_source"
    body = "RBAC: access denied"


class PeerTLSFailure(ProxyError):
    """The mTLS handshake with the destination node's inbound listener failed."""

    status = 503
    cause = "tls_handshake_failure"
    body = _ENVOY_RESET + "connection failure, transport failure reason: TLS error"


class ConfigError(Exception):
    """A configuration problem, naming the field and (when known) the line.

    Raised only while loading; nothing starts when one is raised.
    """

    def __init__(self, field: str, message: str, line: int | None = None, file: str = "") -> None:
        self.field = field
        self.message = message
        self.line = line
        self.file = file
        where = f"{file}:" if file else ""
        where += f"{line}: " if line is not None else (" " if file else "")
        super().__init__(f"{where}{field}: {message}".strip())
