"""The outbound side of a hop refuses a peer that is not the destination node."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import trio
import trustme

from nodeproxy.stats.names import TLS_HANDSHAKE_FAILURES
from nodeproxy.tls.ca import CertificateAuthority, init_ca, issue_workload_cert, utc_now
from nodeproxy.tls.context import server_context
from nodeproxy.tls.identity import SpiffeId
from tests.helpers.backends import free_port
from tests.helpers.mesh import CONFIG, REPORTING_IP, WEB_IP, Node, client_from, start_node


def _other_ca(ca: CertificateAuthority) -> ssl.SSLContext:
    stranger = trustme.CA()
    cert = stranger.issue_cert("node-b.example")
    return server_context(
        cert.cert_chain_pems[0].bytes(), cert.private_key_pem.bytes(), stranger.cert_pem.bytes()
    )


def _wrong_identity(ca: CertificateAuthority) -> ssl.SSLContext:
    """A valid mesh certificate, but for a workload, not for node-b."""
    cert, key = issue_workload_cert(ca, SpiffeId.workload("shop", "webserver"), now=utc_now())
    return server_context(cert, key, ca.cert_pem)


@pytest.mark.parametrize(
    ("make_ctx", "cause", "reason"),
    [
        (_other_ca, "tls_handshake_failure", "unknown_ca"),
        (_wrong_identity, "tls_peer_identity", "peer_identity"),
        (None, "connection_failure", None),
    ],
    ids=["other-ca", "wrong-identity", "down"],
)
async def test_a_peer_that_is_not_node_b_gets_nothing(
    tmp_path: Path,
    nursery: trio.Nursery,
    make_ctx: Callable[[CertificateAuthority], ssl.SSLContext] | None,
    cause: str,
    reason: str | None,
) -> None:
    ca = init_ca(tmp_path / "ca")
    received: list[bytes] = []

    async def rogue(tcp: trio.SocketStream) -> None:
        assert make_ctx is not None
        tls = trio.SSLStream(tcp, make_ctx(ca), server_side=True)
        try:
            await tls.do_handshake()
            received.append(bytes(await tls.receive_some(65536)))
        except trio.BrokenResourceError:
            pass
        await trio.aclose_forcefully(tls)

    port = free_port()
    if make_ctx is not None:
        listeners = await nursery.start(partial(trio.serve_tcp, rogue, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
    text = CONFIG.format(
        node="node-a", a_inbound=1, b_inbound=port, auth=1, database=2, cache=3,
        ca_dir=tmp_path / "ca", enforce_outbound="false", web_ip=WEB_IP,
        reporting_ip=REPORTING_IP,
    )  # fmt: skip
    node = Node("node-a", await start_node(nursery, text))
    async with client_from(WEB_IP) as client:
        r = await client.get(
            f"http://127.0.0.1:{node.outbound}/secret", headers={"host": "auth-api.shop"}
        )
    assert (r.status_code, r.headers["x-nodeproxy-error"]) == (503, cause)
    assert received in ([], [b""])  # the request never went to the impostor
    if reason is not None:
        assert node.counter(TLS_HANDSHAKE_FAILURES, listener="outbound", reason=reason) == 1
    node.handle.runtime.drain.start("test over")
