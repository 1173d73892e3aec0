"""The signer's HTTPS shell: TLS, one bounded request per connection, JSON out.

Everything that can be slow or large has a limit: connections at once
(``max_connections``; more are closed on accept), the TLS handshake and the
request (``request_timeout`` for handshake + head + body), the head (16 KiB)
and the body (``MAX_REQUEST_BYTES``, 413 above it). The signing itself is
bounded by the Kubernetes API's timeout. One request per connection: a node
asks a few times a day, so keep-alive would only hold sockets open.

The serving certificate is minted here from the CA the signer holds, for the
Service's DNS names, and renewed at two thirds of its life; connections read
the current context once, at accept.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import h11
import structlog
import trio
from cryptography.hazmat.primitives import serialization

from nodeproxy.signer.protocol import (
    ERROR_HEADER,
    HEALTH_PATH,
    MAX_HEAD_BYTES,
    MAX_REQUEST_BYTES,
    SIGN_PATH,
    SignerRefused,
)
from nodeproxy.signer.service import Signer
from nodeproxy.tls.ca import certify, generate_key, private_key_pem, renew_at, utc_now
from nodeproxy.tls.context import PeerIdentityError, peer_identity, signer_context
from nodeproxy.tls.identity import SpiffeId

log = structlog.get_logger("nodeproxy.signer")
METRICS_PATH = "/metrics"


@dataclass
class ServingCert:
    """The signer's own certificate (DNS names) and the context new connections use."""

    signer: Signer
    dns_names: Sequence[str]
    lifetime: timedelta = timedelta(hours=24)
    context: ssl.SSLContext | None = None
    renew_at: datetime | None = None

    def refresh(self, now: datetime) -> None:
        ca = self.signer.ca
        key = generate_key("ec-p256")
        cert = certify(ca, key.public_key(), list(self.dns_names), now=now, lifetime=self.lifetime)
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self.context = signer_context("server", ca.cert_pem, cert_pem, private_key_pem(key))
        self.renew_at = renew_at(cert)
        log.info(
            "serving_certificate", dns_names=list(self.dns_names), serial=f"{cert.serial_number:x}"
        )

    async def run(self, clock: Callable[[], datetime] = utc_now) -> None:
        while True:
            assert self.renew_at is not None
            await trio.sleep(min(max((self.renew_at - clock()).total_seconds(), 1.0), 3600.0))
            if clock() >= self.renew_at:
                self.refresh(clock())


@dataclass(frozen=True)
class Limits:
    max_connections: int = 256
    request_timeout: float = 10.0
    max_body: int = MAX_REQUEST_BYTES


DEFAULT_LIMITS = Limits()


async def serve_signer(
    signer: Signer,
    dns_names: Sequence[str],
    host: str = "0.0.0.0",
    port: int = 8443,
    limits: Limits = DEFAULT_LIMITS,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``POST /v1/sign`` and ``GET /healthz`` over TLS until cancelled."""
    serving = ServingCert(signer, dns_names)
    serving.refresh(utc_now())
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    slots = trio.CapacityLimiter(limits.max_connections)

    async def handle(tcp: trio.SocketStream) -> None:
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            await trio.aclose_forcefully(tcp)
            return
        try:
            assert serving.context is not None
            tls = trio.SSLStream(tcp, serving.context, server_side=True)
            try:
                await _one(tls, signer, limits)
            except (trio.BrokenResourceError, trio.TooSlowError, h11.ProtocolError, OSError):
                pass  # the client went away, was too slow or spoke nonsense
            finally:
                await trio.aclose_forcefully(tls)
        finally:
            slots.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serving.run)
        log.info("signer_started", address=f"{host}:{bound}", dns_names=list(dns_names))
        task_status.started(bound)
        await trio.serve_listeners(handle, listeners, handler_nursery=nursery)


async def _one(tls: trio.SSLStream[trio.SocketStream], signer: Signer, limits: Limits) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    with trio.fail_after(limits.request_timeout):
        await tls.do_handshake()
        request, body = await _read(tls, conn, limits.max_body)
    content_type = "application/json"
    if request is None:
        status, cause = 413, "too_large"
        doc = {"error": cause, "reason": f"the body is larger than {limits.max_body} bytes"}
        payload = json.dumps(doc).encode() + b"\n"
    elif request.target == METRICS_PATH.encode() and request.method == b"GET":
        status, cause, payload = 200, "", signer.metrics().encode()
        content_type = "text/plain; version=0.0.4; charset=utf-8"
    else:
        status, cause, answer = await _route(tls, request, body, signer)
        payload = json.dumps(answer).encode() + b"\n"
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(payload))),
        ("Connection", "close"),
    ]
    if cause:
        headers.append((ERROR_HEADER, cause))
    out = conn.send(h11.Response(status_code=status, headers=headers)) or b""
    out += (conn.send(h11.Data(data=payload)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
    with trio.fail_after(limits.request_timeout):
        await tls.send_all(out)


async def _read(
    tls: trio.abc.Stream, conn: h11.Connection, max_body: int
) -> tuple[h11.Request | None, bytes]:
    """The request and its body; (None, b"") when the body is over ``max_body``."""
    request: h11.Request | None = None
    parts, size = [], 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await tls.receive_some(64 * 1024)))
        elif isinstance(event, h11.Request):
            request = event
            length = dict(event.headers).get(b"content-length")
            if length is not None and int(length) > max_body:
                return None, b""
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > max_body:
                return None, b""
            parts.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, b"".join(parts)
        elif isinstance(event, h11.ConnectionClosed):
            raise trio.BrokenResourceError("closed mid-request")


async def _route(
    tls: trio.SSLStream[trio.SocketStream], request: h11.Request, body: bytes, signer: Signer
) -> tuple[int, str, dict[str, object]]:
    path = request.target.decode("ascii", "replace").split("?")[0]
    if path == HEALTH_PATH and request.method in (b"GET", b"HEAD"):
        return 200, "", {"status": "ok"}
    if path != SIGN_PATH:
        return 404, "not_found", {"error": "not_found", "reason": f"no route {path}"}
    if request.method != b"POST":
        return 405, "method_not_allowed", {"error": "method_not_allowed", "reason": "use POST"}
    auth = dict(request.headers).get(b"authorization", b"").decode("latin-1")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
    try:
        client = _client_identity(tls, signer.ca.trust_domain)
        response = await signer.sign(token, body, client)
    except SignerRefused as exc:
        return exc.status, exc.cause, exc.body()
    return 200, "", json.loads(response.to_json())


def _client_identity(tls: trio.SSLStream[trio.SocketStream], trust_domain: str) -> SpiffeId | None:
    """The SPIFFE ID of a verified client certificate, None when the client sent none."""
    if tls.getpeercert(True) is None:
        return None
    try:
        return peer_identity(tls, trust_domain=trust_domain)
    except PeerIdentityError as exc:
        raise SignerRefused(403, "forbidden", f"client certificate: {exc}") from None
