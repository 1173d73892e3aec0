"""The upstream side of a node-to-node hop: an mTLS connection to a peer's inbound port.

When the balancer picks a pod on another node, the request is not sent to
the pod but to that node's inbound listener, over TLS, presenting the
*calling workload's* certificate. ``PeerEndpoint`` is that destination as
the pool sees it: the peer's inbound address plus the identity presented.
Its pool key is (peer node, identity), never the pod: connections to one
peer are shared by every destination pod and service (the pod is named per
request, in ``x-nodeproxy-destination``), and never by two identities, so a
connection opened for ``webserver`` can never carry a ``database`` request.

``open_peer_stream`` does the handshake and then checks that the server is
exactly ``spiffe://<td>/node/<peer>``: a valid mesh certificate for some
other node or workload is refused (``tls_peer_identity``), so a node cannot
be impersonated by another node's proxy. Every failure is counted in
``nodeproxy_tls_handshake_failures_total{listener="outbound", reason}``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import structlog
import trio

from nodeproxy.config.model import EndpointConfig
from nodeproxy.errors import PeerTLSFailure, UpstreamConnectTimeout
from nodeproxy.stats.names import TLS_HANDSHAKE_FAILURES, TLS_HANDSHAKES
from nodeproxy.stats.registry import Stats, labels
from nodeproxy.tls.context import PeerIdentityError, verify_peer
from nodeproxy.tls.identity import SpiffeId
from nodeproxy.tls.stream import TLSStream

log = structlog.get_logger("nodeproxy.tls")


@dataclass(frozen=True)
class PeerEndpoint(EndpointConfig):
    """A peer node's inbound listener, reached as ``identity`` (``node`` is the peer)."""

    identity: SpiffeId | None = None
    trust_domain: str = "cluster.local"

    @property
    def pool_key(self) -> tuple[str, str]:
        """(``mesh:<peer>``, ``<address> as <identity>``): also the stats labels."""
        return (f"mesh:{self.node}", f"{self.address} as {self.identity}")

    @property
    def expected_server(self) -> SpiffeId:
        """The identity the peer's inbound listener must present."""
        return SpiffeId.node(self.node or "", self.trust_domain)


@dataclass(frozen=True)
class TunnelEndpoint(PeerEndpoint):
    """A pod of a peer node reached through a CONNECT tunnel (nodeproxy/tunnel/).

    The peer only splices: one pooled connection is one HTTP/1.1 connection to
    ``destination`` (the pod), opened as ``identity``. Pooled per (peer, pod,
    identity): no byte of one workload's exchange can reach another's, and a
    connection never changes pods (the peer fixed it at CONNECT time).
    """

    destination: str = ""  # the pod's host:port
    service: str | None = None  # the svc.ns the source resolved (x-nodeproxy-service)

    @property
    def pool_key(self) -> tuple[str, str]:
        return (f"mesh:{self.node}", f"{self.destination} via tunnel as {self.identity}")


def handshake_failure_reason(exc: BaseException | None) -> str:
    """A short, stable label for why a TLS handshake failed (either side)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = (exc.verify_message or "").lower()
        if "expired" in message:
            return "certificate_expired"
        if "not yet valid" in message:
            return "certificate_not_yet_valid"
        if "issuer" in message or "self-signed" in message or "self signed" in message:
            return "unknown_ca"
        return "bad_certificate"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").upper()
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no_client_certificate"
        if reason in ("HTTP_REQUEST", "WRONG_VERSION_NUMBER", "UNSUPPORTED_PROTOCOL"):
            return "not_tls"
        if isinstance(exc, ssl.SSLEOFError) or "EOF" in reason:
            return "eof"
        if reason.startswith("TLSV1_ALERT_") or reason.startswith("SSLV3_ALERT_"):
            return "peer_alert"
        return reason.lower() or "ssl_error"
    if exc is None:
        return "eof"
    return type(exc).__name__.lower()


def count_failure(stats: Stats, listener: str, reason: str) -> None:
    stats.inc(TLS_HANDSHAKE_FAILURES, labels(listener=listener, reason=reason))


def count_handshake(stats: Stats, listener: str) -> None:
    stats.inc(TLS_HANDSHAKES, labels(listener=listener))


async def open_peer_stream(
    tcp: trio.SocketStream,
    ctx: ssl.SSLContext,
    peer: PeerEndpoint,
    timeout: float,
    stats: Stats,
) -> TLSStream:
    """Handshake over ``tcp`` and verify the peer node's identity, or raise (503)."""
    tls = trio.SSLStream(tcp, ctx)
    reason = ""
    with trio.move_on_after(timeout):
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError as exc:
            reason = handshake_failure_reason(exc.__cause__)
        else:
            try:
                verify_peer(tls, peer.expected_server)
            except PeerIdentityError as exc:
                count_failure(stats, "outbound", "peer_identity")
                log.warning("tls_peer_rejected", peer=peer.address, error=str(exc))
                await trio.aclose_forcefully(tcp)
                raise
            assert peer.identity is not None
            count_handshake(stats, "outbound")
            return TLSStream(tls, peer.expected_server)
        await trio.aclose_forcefully(tcp)  # trio does not flush our alert: close, or it waits
        count_failure(stats, "outbound", reason)
        log.warning("tls_handshake_failed", listener="outbound", peer=peer.address, reason=reason)
        raise PeerTLSFailure(f"{peer.address}: {reason}")
    await trio.aclose_forcefully(tcp)
    count_failure(stats, "outbound", "timeout")
    raise UpstreamConnectTimeout(f"{peer.address}: TLS handshake took over {timeout}s")
