"""Bad input against node-b's inbound mTLS port, with real clients.

curl, openssl s_client and Python ssl (trio.SSLStream) talk to the inbound
listener directly. Each refusal is checked three ways: the client gets
nothing useful, the failure is counted
(``nodeproxy_tls_handshake_failures_total{reason}`` or the error cause) and
logged, and no pod saw a request.
"""

from __future__ import annotations

import shutil
import ssl
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import structlog
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from nodeproxy.stats.names import TLS_HANDSHAKE_FAILURES
from nodeproxy.tls.ca import CertificateAuthority, generate_key, issue_workload_cert, utc_now
from nodeproxy.tls.ca import private_key_pem as key_pem
from nodeproxy.tls.context import client_context
from nodeproxy.tls.identity import SpiffeId
from tests.helpers.mesh import WEB, Mesh, pin, two_node_mesh

CURL, OPENSSL = shutil.which("curl"), shutil.which("openssl")
NOW = utc_now()


@pytest.fixture
async def mesh(tmp_path: Path) -> Iterator[Mesh]:  # type: ignore[misc]  # async generator fixture
    async with two_node_mesh(tmp_path) as m:
        yield m


async def eventually(check: Callable[[], bool]) -> None:
    """Wait (checkpoints only, bounded) until the server side has caught up."""
    with trio.fail_after(10):
        while not check():  # a counter, not an event: poll at checkpoints
            await trio.lowlevel.checkpoint()


def failures(mesh: Mesh, reason: str) -> float:
    return mesh.b.counter(TLS_HANDSHAKE_FAILURES, listener="inbound", reason=reason)


def _request(destination: str, host: str = "auth-api.shop", service: str | None = None) -> bytes:
    extra = f"x-nodeproxy-service: {service}\r\n" if service else ""
    return (
        f"GET /login HTTP/1.1\r\nHost: {host}\r\nx-nodeproxy-destination: {destination}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    ).encode()


async def tls_exchange(port: int, ctx: ssl.SSLContext, data: bytes) -> bytes:
    """Handshake, send ``data``, read to EOF; b"" when the server refused."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    tls = trio.SSLStream(tcp, ctx)
    out = bytearray()
    with trio.fail_after(10):
        try:
            await tls.do_handshake()
            await tls.send_all(data)
            while chunk := await tls.receive_some(65536):
                out += chunk
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(tls)
    return bytes(out)


def mint_ctx(ca: CertificateAuthority, **kw: object) -> ssl.SSLContext:
    cert, key = issue_workload_cert(ca, WEB, **{"now": NOW, **kw})  # type: ignore[arg-type]
    return client_context(cert, key, ca.cert_pem)


def _custom_cert(ca: CertificateAuthority, san: x509.GeneralName) -> ssl.SSLContext:
    """Signed by the mesh CA, but with ``san`` instead of a SPIFFE ID of our trust domain."""
    key = generate_key("ec-p256")
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "webserver")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([san]), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
        .sign(ca.key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    return client_context(pem, key_pem(key), ca.cert_pem)


def _other_ca(ca: CertificateAuthority) -> ssl.SSLContext:
    stranger = trustme.CA().issue_cert("webserver.shop.example")
    return client_context(
        stranger.cert_chain_pems[0].bytes(), stranger.private_key_pem.bytes(), ca.cert_pem
    )


def _no_cert(ca: CertificateAuthority) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    ctx.check_hostname = False
    return ctx


@pytest.mark.parametrize(
    ("make_ctx", "reason"),
    [
        (_no_cert, "no_client_certificate"),
        (_other_ca, "unknown_ca"),
        (lambda ca: mint_ctx(ca, now=NOW - timedelta(days=3)), "certificate_expired"),
        (lambda ca: mint_ctx(ca, now=NOW + timedelta(days=2)), "certificate_not_yet_valid"),
        (lambda ca: _custom_cert(ca, x509.DNSName("webserver.shop")), "peer_identity"),
        (
            lambda ca: _custom_cert(
                ca, x509.UniformResourceIdentifier("spiffe://evil.example/ns/shop/sa/webserver")
            ),
            "peer_identity",
        ),
    ],
    ids=["no-cert", "other-ca", "expired", "not-yet-valid", "no-spiffe-id", "other-trust-domain"],
)
async def test_bad_client_certificates_are_refused(
    mesh: Mesh, make_ctx: Callable[[CertificateAuthority], ssl.SSLContext], reason: str
) -> None:
    with structlog.testing.capture_logs() as logs:
        reply = await tls_exchange(
            mesh.b.inbound, make_ctx(mesh.ca), _request(f"127.0.0.1:{mesh.auth.port}")
        )
        await eventually(lambda: failures(mesh, reason) == 1)
    assert reply == b""
    assert mesh.auth.requests == []
    failed = [e for e in logs if e["event"] == "tls_handshake_failed"]
    assert [(e["listener"], e["reason"]) for e in failed] == [("inbound", reason)]


async def test_a_good_certificate_reaches_the_pod_and_policy_applies(mesh: Mesh) -> None:
    ctx = mint_ctx(mesh.ca)
    reply = await tls_exchange(mesh.b.inbound, ctx, _request(f"127.0.0.1:{mesh.auth.port}"))
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert len(mesh.auth.requests) == 1
    reply = await tls_exchange(
        mesh.b.inbound, ctx, _request(f"127.0.0.1:{mesh.database.port}", "database.shop")
    )
    assert reply.startswith(b"HTTP/1.1 403 ")
    assert b"x-nodeproxy-error: denied" in reply
    assert mesh.database.requests == []


@pytest.mark.parametrize(
    ("destination", "service", "status", "cause"),
    [
        ("cache", None, 421, "not_local_destination"),  # a pod of node-a: no relay
        ("admin", None, 421, "not_local_destination"),  # the proxy's own admin port
        ("8.8.8.8:53", None, 421, "not_local_destination"),
        ("auth", "database.shop", 421, "not_local_destination"),  # the pod is not that service
        ("", None, 400, "missing_destination"),
    ],
)
async def test_destinations_other_than_local_pods_are_refused(
    mesh: Mesh, destination: str, service: str | None, status: int, cause: str
) -> None:
    named = {
        "cache": f"127.0.0.1:{mesh.cache.port}",
        "admin": f"127.0.0.1:{mesh.b.handle.admin_port}",
        "auth": f"127.0.0.1:{mesh.auth.port}",
    }
    request = _request(named.get(destination, destination), service=service)
    if not destination:
        request = request.replace(b"x-nodeproxy-destination: \r\n", b"")
    reply = await tls_exchange(mesh.b.inbound, mint_ctx(mesh.ca), request)
    assert reply.startswith(f"HTTP/1.1 {status} ".encode()), reply[:200]
    assert f"x-nodeproxy-error: {cause}".encode() in reply
    assert mesh.pods_requests() == 0
    assert mesh.b.counter("nodeproxy_errors_total", cause=cause) == 1


async def test_plaintext_http_to_the_mtls_port(mesh: Mesh) -> None:
    tcp = await trio.open_tcp_stream("127.0.0.1", mesh.b.inbound)
    await tcp.send_all(_request(f"127.0.0.1:{mesh.auth.port}"))
    with trio.fail_after(10):
        try:
            reply = await tcp.receive_some(4096)
        except trio.BrokenResourceError:
            reply = b""
    await tcp.aclose()
    assert b"HTTP/1.1" not in reply
    await eventually(lambda: failures(mesh, "not_tls") == 1)
    assert mesh.auth.requests == []


# -- curl and openssl ------------------------------------------------------------


def _files(mesh: Mesh, tmp_path: Path) -> dict[str, Path]:
    cert, key = issue_workload_cert(mesh.ca, WEB, now=NOW)
    files = {"ca": mesh.ca.cert_pem, "crt": cert, "key": key}
    paths = {name: tmp_path / f"web.{name}" for name in files}
    for name, data in files.items():
        paths[name].write_bytes(data)
    return paths


async def run(argv: list[str], stdin: bytes = b"") -> tuple[int, str]:
    with trio.fail_after(20):
        done = await trio.run_process(
            argv, stdin=stdin, capture_stdout=True, capture_stderr=True, check=False
        )
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_curl_with_and_without_a_client_certificate(mesh: Mesh, tmp_path: Path) -> None:
    paths = _files(mesh, tmp_path)
    url = f"https://127.0.0.1:{mesh.b.inbound}/login"
    dest = f"x-nodeproxy-destination: 127.0.0.1:{mesh.auth.port}"
    base = [CURL or "curl", "-sS", "-o", "-", "-w", "\n%{http_code}", url, "-H", dest]
    base += ["-H", "Host: auth-api.shop"]
    # curl cannot check a SPIFFE ID: it skips name checks (-k) but pins node-b's key.
    server_pem = _node_cert(mesh)
    verified = [*base, "-k", "--pinnedpubkey", pin(server_pem)]
    code, out = await run([*verified, "--cert", str(paths["crt"]), "--key", str(paths["key"])])
    assert code == 0, out
    assert out.endswith("\n200")
    assert len(mesh.auth.requests) == 1
    code, out = await run(verified)  # no client certificate
    assert code != 0 or not out.endswith("\n200")
    code, out = await run([CURL or "curl", "-sS", f"http://127.0.0.1:{mesh.b.inbound}/"])
    assert code != 0  # plaintext to the TLS port: empty reply / reset
    await eventually(lambda: failures(mesh, "no_client_certificate") == 1)
    await eventually(lambda: failures(mesh, "not_tls") == 1)
    assert len(mesh.auth.requests) == 1


def _node_cert(mesh: Mesh) -> bytes:
    assert mesh.b.handle.mesh is not None
    issued = mesh.b.handle.mesh.certs.issued(SpiffeId.node("node-b"))
    assert issued is not None
    return issued.cert_pem


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
async def test_openssl_s_client(mesh: Mesh, tmp_path: Path) -> None:
    paths = _files(mesh, tmp_path)
    argv = [OPENSSL or "openssl", "s_client", "-connect", f"127.0.0.1:{mesh.b.inbound}"]
    argv += ["-CAfile", str(paths["ca"]), "-verify_return_error", "-quiet"]
    request = _request(f"127.0.0.1:{mesh.auth.port}")
    _, out = await run([*argv, "-cert", str(paths["crt"]), "-key", str(paths["key"])], request)
    assert "HTTP/1.1 200" in out, out
    _, out = await run(argv, request)
    assert "HTTP/1.1" not in out
    await eventually(lambda: failures(mesh, "no_client_certificate") == 1)
    assert len(mesh.auth.requests) == 1
