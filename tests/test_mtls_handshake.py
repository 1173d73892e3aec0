"""Real mutual-TLS handshakes on loopback: trio.SSLStream both sides, and openssl s_client.

The server below is a stand-in for the inbound listener: it handshakes with
``server_context``, reads the caller's SPIFFE ID with ``peer_identity``,
reports the outcome on a channel and answers ``hello <caller> from <serial>``
(the serial of the certificate it presented) to every chunk, closing after a
chunk containing ``bye``. Certificates are checked by OpenSSL against the real
clock, so "expired" and "not yet valid" are minted with ``now`` days away.
"""

from __future__ import annotations

import contextlib
import shutil
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from nodeproxy.tls.ca import (
    CertificateAuthority,
    build_ca,
    generate_key,
    issue_workload_cert,
    private_key_pem,
    utc_now,
)
from nodeproxy.tls.context import (
    PeerIdentityError,
    RotatingContext,
    TLSConfigError,
    client_context,
    peer_identity,
    server_context,
    verify_peer,
)
from nodeproxy.tls.identity import SpiffeId
from nodeproxy.tls.store import IssuedCert

NOW = utc_now()
NODE_A = SpiffeId.node("node-a")
WEB = SpiffeId.workload("shop", "webserver")


@dataclass
class Outcome:
    identity: SpiffeId | None
    error: str | None
    version: str | None = None


@dataclass
class Server:
    port: int
    outcomes: trio.MemoryReceiveChannel[Outcome]
    rotating: RotatingContext


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return build_ca("cluster.local", now=NOW - timedelta(days=30))


def mint(ca: CertificateAuthority, sid: SpiffeId, **kw: object) -> IssuedCert:
    now = kw.pop("now", NOW)
    return IssuedCert.from_pem(*issue_workload_cert(ca, sid, now=now, **kw))  # type: ignore[arg-type]


def client_ctx(ca: CertificateAuthority, issued: IssuedCert) -> ssl.SSLContext:
    return client_context(issued.cert_pem, issued.key_pem, ca.cert_pem)


async def _close(stream: trio.abc.AsyncResource) -> None:
    with contextlib.suppress(trio.BrokenResourceError):  # the peer went first
        await stream.aclose()


async def _handle(
    rotating: RotatingContext, report: Callable[[Outcome], None], tcp: trio.SocketStream
) -> None:
    ctx, presented = rotating.current, rotating.issued  # read once: this connection keeps them
    tls = trio.SSLStream(tcp, ctx, server_side=True)
    try:
        await tls.do_handshake()
    except trio.BrokenResourceError as exc:
        report(Outcome(None, repr(exc.__cause__)))
        await trio.aclose_forcefully(tcp)
        return
    try:
        caller = peer_identity(tls, trust_domain="cluster.local")
    except PeerIdentityError as exc:
        report(Outcome(None, str(exc), tls.version()))
        await trio.aclose_forcefully(tls)
        return
    report(Outcome(caller, None, tls.version()))
    try:
        while data := await tls.receive_some(4096):
            await tls.send_all(f"hello {caller} from {presented.serial:x}\n".encode())
            if b"bye" in data:
                break
    except trio.BrokenResourceError:
        pass
    await _close(tls)


async def start_server(nursery: trio.Nursery, rotating: RotatingContext) -> Server:
    send, receive = trio.open_memory_channel[Outcome](32)
    handler = partial(_handle, rotating, send.send_nowait)
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return Server(listeners[0].socket.getsockname()[1], receive, rotating)


@pytest.fixture
async def server(nursery: trio.Nursery, ca: CertificateAuthority) -> Server:
    return await start_server(nursery, RotatingContext("server", mint(ca, NODE_A), ca.cert_pem))


async def connect(port: int, ctx: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    tls = trio.SSLStream(tcp, ctx)
    try:
        await tls.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(tcp)  # trio does not flush our alert: close, or the peer waits
        raise
    return tls


async def ask(tls: trio.SSLStream[trio.SocketStream], line: bytes = b"ping\n") -> str:
    await tls.send_all(line)
    return (await tls.receive_some(4096)).decode()


async def refused(port: int, ctx: ssl.SSLContext) -> None:
    """The caller gets no answer: its handshake fails, or (TLS 1.3) the first read does."""
    with trio.fail_after(10):
        try:
            tls = await connect(port, ctx)
        except trio.BrokenResourceError:
            return
        try:
            reply = await ask(tls)
        except trio.BrokenResourceError:
            reply = ""
        finally:
            await trio.aclose_forcefully(tls)
    assert reply == ""  # EOF, never a hello


async def test_mutual_tls_server_reads_the_caller_identity(
    server: Server, ca: CertificateAuthority
) -> None:
    tls = await connect(server.port, client_ctx(ca, mint(ca, WEB)))
    assert verify_peer(tls, NODE_A) == NODE_A  # the client checks the server's identity too
    assert tls.selected_alpn_protocol() == "http/1.1"
    assert await ask(tls) == f"hello {WEB} from {server.rotating.issued.serial:x}\n"
    outcome = await server.outcomes.receive()
    assert outcome == Outcome(WEB, None, "TLSv1.3")
    with pytest.raises(PeerIdentityError, match=r"expected spiffe://cluster\.local/node/node-b"):
        verify_peer(tls, SpiffeId.node("node-b"))
    await _close(tls)


async def test_tls12_is_still_accepted(server: Server, ca: CertificateAuthority) -> None:
    ctx = client_ctx(ca, mint(ca, WEB))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    tls = await connect(server.port, ctx)
    assert "hello" in await ask(tls)
    assert (await server.outcomes.receive()).version == "TLSv1.2"
    await _close(tls)


def _no_cert(ca: CertificateAuthority) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    ctx.check_hostname = False
    return ctx


def _other_ca(ca: CertificateAuthority) -> ssl.SSLContext:
    stranger = trustme.CA().issue_cert("webserver.shop.example")
    return client_context(
        stranger.cert_chain_pems[0].bytes(), stranger.private_key_pem.bytes(), ca.cert_pem
    )


def _expired(ca: CertificateAuthority) -> ssl.SSLContext:
    return client_ctx(ca, mint(ca, WEB, now=NOW - timedelta(days=3)))


def _not_yet_valid(ca: CertificateAuthority) -> ssl.SSLContext:
    return client_ctx(ca, mint(ca, WEB, now=NOW + timedelta(days=2)))


@pytest.mark.parametrize(
    ("make_ctx", "reason"),
    [
        (_no_cert, "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
        (_other_ca, "certificate verify failed"),
        (_expired, "certificate has expired"),
        (_not_yet_valid, "certificate is not yet valid"),
    ],
)
async def test_bad_client_certificates_fail_the_handshake(
    server: Server,
    ca: CertificateAuthority,
    make_ctx: Callable[[CertificateAuthority], ssl.SSLContext],
    reason: str,
) -> None:
    await refused(server.port, make_ctx(ca))
    outcome = await server.outcomes.receive()
    assert outcome.identity is None
    assert reason in (outcome.error or "")


async def test_valid_chain_without_a_spiffe_id_is_refused(
    server: Server, ca: CertificateAuthority
) -> None:
    key = generate_key("ec-p256")
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "webserver")])
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("webserver.shop")]), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
        .sign(ca.key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    await refused(server.port, client_context(pem, private_key_pem(key), ca.cert_pem))
    outcome = await server.outcomes.receive()
    assert outcome.identity is None
    assert "0 URI SANs" in (outcome.error or "")


async def test_plaintext_to_the_mtls_port_is_refused(server: Server) -> None:
    tcp = await trio.open_tcp_stream("127.0.0.1", server.port)
    await tcp.send_all(b"GET / HTTP/1.1\r\nHost: database\r\n\r\n")
    with trio.fail_after(10):
        try:
            reply = await tcp.receive_some(4096)
        except trio.BrokenResourceError:
            reply = b""
    assert b"hello" not in reply
    outcome = await server.outcomes.receive()
    assert outcome.identity is None
    assert "SSLError" in (outcome.error or "")
    await tcp.aclose()


async def test_client_refuses_a_server_from_another_ca(
    nursery: trio.Nursery, ca: CertificateAuthority
) -> None:
    stranger = trustme.CA()
    rogue = stranger.issue_cert("node-a.example")
    rogue_ctx = server_context(
        rogue.cert_chain_pems[0].bytes(), rogue.private_key_pem.bytes(), stranger.cert_pem.bytes()
    )
    send, receive = trio.open_memory_channel[str](4)

    async def rogue_handler(tcp: trio.SocketStream) -> None:
        tls = trio.SSLStream(tcp, rogue_ctx, server_side=True)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError as exc:
            send.send_nowait(repr(exc.__cause__))
        await trio.aclose_forcefully(tls)

    listeners = await nursery.start(partial(trio.serve_tcp, rogue_handler, 0, host="127.0.0.1"))
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError) as info:
        await connect(listeners[0].socket.getsockname()[1], client_ctx(ca, mint(ca, WEB)))
    assert "certificate verify failed" in str(info.value.__cause__)
    with trio.fail_after(5):
        assert "EOF" in await receive.receive()  # the rogue server learns nothing more


async def test_rotation_keeps_old_connections_and_serves_new_ones(
    server: Server, ca: CertificateAuthority
) -> None:
    ctx = client_ctx(ca, mint(ca, WEB))
    old_serial = server.rotating.issued.serial
    first = await connect(server.port, ctx)
    assert await ask(first) == f"hello {WEB} from {old_serial:x}\n"
    server.rotating.rotate(mint(ca, NODE_A))
    new_serial = server.rotating.issued.serial
    assert new_serial != old_serial
    assert "generation=1" in repr(server.rotating)
    second = await connect(server.port, ctx)
    assert await ask(second) == f"hello {WEB} from {new_serial:x}\n"
    assert await ask(first) == f"hello {WEB} from {old_serial:x}\n"  # still up, old cert
    seen = x509.load_der_x509_certificate(second.getpeercert(True)).serial_number
    assert seen == new_serial
    with pytest.raises(TLSConfigError):
        server.rotating.rotate(IssuedCert.from_pem(mint(ca, NODE_A).cert_pem, b"garbage"))
    assert server.rotating.issued.serial == new_serial  # a bad rotation keeps the working one
    for tls in (first, second):
        await _close(tls)


async def test_ed25519_mesh(nursery: trio.Nursery) -> None:
    ed_ca = build_ca(key_type="ed25519", now=NOW - timedelta(days=1))
    node = mint(ed_ca, NODE_A, key_type="ed25519")
    server = await start_server(nursery, RotatingContext("server", node, ed_ca.cert_pem))
    tls = await connect(server.port, client_ctx(ed_ca, mint(ed_ca, WEB, key_type="ed25519")))
    assert verify_peer(tls, NODE_A) == NODE_A
    assert (await server.outcomes.receive()).identity == WEB
    await _close(tls)


# -- openssl s_client ----------------------------------------------------------

OPENSSL = shutil.which("openssl")


async def s_client(port: int, ca_file: Path, *extra: str) -> str:
    argv = [OPENSSL or "openssl", "s_client", "-connect", f"127.0.0.1:{port}"]
    argv += ["-CAfile", str(ca_file), "-verify_return_error", "-quiet", *extra]
    with trio.fail_after(15):
        done = await trio.run_process(
            argv, stdin=b"ping bye\n", capture_stdout=True, capture_stderr=True, check=False
        )
    return done.stdout.decode(errors="replace")


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
async def test_openssl_s_client_with_and_without_a_client_cert(
    server: Server, ca: CertificateAuthority, tmp_path: Path
) -> None:
    web = mint(ca, WEB)
    files = {"ca.pem": ca.cert_pem, "web.crt": web.cert_pem, "web.key": web.key_pem}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    out = await s_client(
        server.port,
        tmp_path / "ca.pem",
        "-cert",
        str(tmp_path / "web.crt"),
        "-key",
        str(tmp_path / "web.key"),
    )
    assert f"hello {WEB} from" in out
    assert (await server.outcomes.receive()).identity == WEB
    out = await s_client(server.port, tmp_path / "ca.pem")
    assert "hello" not in out
    outcome = await server.outcomes.receive()
    assert outcome.identity is None
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in (outcome.error or "")
