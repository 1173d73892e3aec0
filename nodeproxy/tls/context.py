"""ssl.SSLContext for both ends of a node-to-node hop, and who the peer is.

Both sides present a certificate and require one chaining to the mesh CA
(mutual TLS), TLS 1.2 at least (1.3 is what OpenSSL negotiates between two
node proxies), forward-secret AEAD suites only for 1.2. Hostname checking is
off on purpose: peers are named by the SPIFFE ID in their URI SAN, which
``peer_identity`` reads after the handshake and the caller compares with what
it expected (the inbound side feeds it to the policy; the outbound side
checks the destination node's identity with ``verify_peer``).

Certificates live in memory, but ``ssl`` only loads a cert chain from files.
``load_cert_chain`` is therefore fed from a private temp directory (0700,
files 0600, on the /dev/shm tmpfs when there is one so nothing reaches a
disk) that is deleted as soon as OpenSSL has read it, and the key written
there is encrypted with a one-time random password held only in memory: a
reader racing the few microseconds of the file's life gets ciphertext. The
CA goes through ``cadata=``, which takes PEM from memory directly.

Rotation: an SSLContext is immutable once connections use it. Rotating
builds a new context; new connections take the new one from
``RotatingContext.current`` while established SSLStreams keep a reference to
the context they were made with, so nothing is dropped.
"""

from __future__ import annotations

import os
import secrets
import ssl
import tempfile
from typing import Any, Literal, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from nodeproxy.errors import ProxyError
from nodeproxy.tls.identity import InvalidSpiffeId, SpiffeId, parse_spiffe_id
from nodeproxy.tls.store import IssuedCert

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
ALPN = ["http/1.1"]
_TMPFS = "/dev/shm"

Side = Literal["server", "client"]


class TLSConfigError(Exception):
    """The certificate, key or CA given to a context builder is unusable."""


class PeerIdentityError(ProxyError):
    """The peer's certificate carries no acceptable SPIFFE ID (or not the expected one).

    On the outbound side this is an upstream failure (503, like Envoy's TLS
    transport failures); on the inbound side the connection is just closed.
    """

    status = 503
    cause = "tls_peer_identity"
    body = (
        "upstream connect error or disconnect/reset before headers. reset reason: "
        "connection failure, transport failure reason: TLS error: peer identity"
    )


class SupportsPeerCert(Protocol):
    """ssl.SSLObject, ssl.SSLSocket, or anything delegating to one."""

    def getpeercert(self, binary_form: bool) -> Any: ...  # DER bytes when binary_form


def _base_context(side: Side, cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> ssl.SSLContext:
    protocol = ssl.PROTOCOL_TLS_SERVER if side == "server" else ssl.PROTOCOL_TLS_CLIENT
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.check_hostname = False  # peers are named by SPIFFE ID, checked after the handshake
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.set_alpn_protocols(ALPN)
    try:
        ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
        raise TLSConfigError(f"cannot load the CA certificate: {exc}") from None
    _load_cert_chain(ctx, cert_pem, key_pem)
    return ctx


def server_context(cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> ssl.SSLContext:
    """The inbound listener's context: presents ``cert_pem``, requires a client cert."""
    return _base_context("server", cert_pem, key_pem, ca_pem)


def client_context(cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> ssl.SSLContext:
    """An outbound context presenting the calling workload's certificate.

    Verifies the server's chain against ``ca_pem``; the server's SPIFFE ID is
    checked by the caller (``verify_peer``), not by hostname.
    """
    return _base_context("client", cert_pem, key_pem, ca_pem)


def signer_context(
    side: Side, ca_pem: bytes, cert_pem: bytes | None = None, key_pem: bytes | None = None
) -> ssl.SSLContext:
    """TLS between node proxies and the signer (named by DNS, unlike mesh peers).

    Client: the signer's certificate must chain to the CA *and* carry the
    host name of the signer URL (node certificates carry only SPIFFE URIs, so
    no node can pose as the signer); presents the node certificate when it has
    one. Server: asks for a client certificate but lets the token alone in
    (a new node has no certificate yet).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if side == "server" else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.set_alpn_protocols(ALPN)
    if side == "server":
        ctx.verify_mode = ssl.CERT_OPTIONAL
    try:
        ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
        raise TLSConfigError(f"cannot load the CA certificate: {exc}") from None
    if cert_pem is not None and key_pem is not None:
        _load_cert_chain(ctx, cert_pem, key_pem)
    return ctx


def _private_dir() -> str | None:
    if os.path.isdir(_TMPFS) and os.access(_TMPFS, os.W_OK | os.X_OK):
        return _TMPFS
    return None  # the platform temp dir; the key is still encrypted there


def _load_cert_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TLSConfigError(f"cannot parse the private key: {exc}") from None
    password = secrets.token_bytes(32)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    with tempfile.TemporaryDirectory(prefix="nodeproxy-tls-", dir=_private_dir()) as tmp:
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        for path, data in ((cert_path, cert_pem), (key_path, encrypted)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        try:
            ctx.load_cert_chain(cert_path, key_path, password=password)
        except ssl.SSLError as exc:
            raise TLSConfigError(f"cannot load the certificate/key pair: {exc}") from None


def peer_identity(ssl_object: SupportsPeerCert, *, trust_domain: str | None = None) -> SpiffeId:
    """The SPIFFE ID in the verified peer certificate's single URI SAN.

    Call after the handshake. Raises PeerIdentityError when there is no peer
    certificate, no or several URI SANs, a malformed ID, or (when
    ``trust_domain`` is given) an ID from another trust domain.
    """
    der = ssl_object.getpeercert(True)
    if not der:
        raise PeerIdentityError("peer presented no certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PeerIdentityError("peer certificate has no subject alternative name") from None
    except ValueError as exc:
        raise PeerIdentityError(f"unparsable peer certificate: {exc}") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise PeerIdentityError(f"peer certificate has {len(uris)} URI SANs, expected exactly 1")
    try:
        identity = parse_spiffe_id(uris[0])
    except InvalidSpiffeId as exc:
        raise PeerIdentityError(str(exc)) from None
    if trust_domain is not None and identity.trust_domain != trust_domain:
        raise PeerIdentityError(f"peer {identity} is outside trust domain {trust_domain!r}")
    return identity


def verify_peer(ssl_object: SupportsPeerCert, expected: SpiffeId) -> SpiffeId:
    """``peer_identity``, and PeerIdentityError unless it is exactly ``expected``."""
    identity = peer_identity(ssl_object, trust_domain=expected.trust_domain)
    if identity != expected:
        raise PeerIdentityError(f"peer is {identity}, expected {expected}")
    return identity


class RotatingContext:
    """The context new connections of one side/identity use; ``rotate`` replaces it.

    Owned by the rotation task (the only caller of ``rotate``); connection
    setup reads ``current`` once per connection and keeps that context.
    """

    def __init__(self, side: Side, issued: IssuedCert, ca_pem: bytes) -> None:
        self.side: Side = side
        self._ca_pem = ca_pem
        self.generation = 0
        self._issued = issued
        self._current = _base_context(side, issued.cert_pem, issued.key_pem, ca_pem)

    @property
    def current(self) -> ssl.SSLContext:
        """The context to hand to a new SSLStream."""
        return self._current

    @property
    def issued(self) -> IssuedCert:
        """The certificate the current context presents."""
        return self._issued

    def rotate(self, issued: IssuedCert, ca_pem: bytes | None = None) -> None:
        """Build a context for ``issued`` (and a new CA bundle, if given) and make it current.

        Built first, swapped second: a bad certificate raises TLSConfigError
        and leaves the working context in place.
        """
        ca = ca_pem if ca_pem is not None else self._ca_pem
        new = _base_context(self.side, issued.cert_pem, issued.key_pem, ca)
        self._current, self._issued, self._ca_pem = new, issued, ca
        self.generation += 1

    def __repr__(self) -> str:
        return (
            f"<RotatingContext {self.side} {self._issued.spiffe_id} "
            f"serial={self._issued.serial:x} generation={self.generation} "
            f"not_after={self._issued.not_after:%Y-%m-%dT%H:%M:%SZ}>"
        )
