"""Certificate rotation: the task renews at two thirds of life; connections survive it."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import trio
from cryptography import x509

from nodeproxy.tls.ca import build_ca, utc_now
from nodeproxy.tls.context import client_context
from nodeproxy.tls.identity import SpiffeId
from nodeproxy.tls.node_certs import MeshCertificates
from tests.helpers.mesh import WEB, WEB_IP, client_from, two_node_mesh

NOW = utc_now()


async def test_rotation_task_renews_at_two_thirds_of_life(autojump_clock: trio.abc.Clock) -> None:
    ca = build_ca(now=NOW - timedelta(days=1))
    certs = MeshCertificates(ca, "node-a", [WEB], lifetime=timedelta(hours=3))
    t0 = trio.current_time()

    def clock() -> datetime:
        return NOW + timedelta(seconds=trio.current_time() - t0)

    def serial(sid: SpiffeId) -> int:
        issued = certs.issued(sid)
        assert issued is not None
        return issued.serial

    certs.refresh(NOW)
    serials = {sid: serial(sid) for sid in certs.wanted}
    assert set(serials) == {SpiffeId.node("node-a"), WEB}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(certs.run, clock)
        # valid from NOW-5m for 3h05m: due at NOW-5m + 2/3 * 3h05m = NOW + 1h58m20s
        await trio.sleep(timedelta(hours=1, minutes=58).total_seconds())
        assert {sid: serial(sid) for sid in serials} == serials
        await trio.sleep(60)
        renewed = {sid: serial(sid) for sid in serials}
        assert all(renewed[sid] != serials[sid] for sid in serials)
        assert certs.rotations == 2
        assert certs.server_context() is not None
        nursery.cancel_scope.cancel()
    assert "2 rotations" in repr(certs)


async def test_rotation_keeps_pooled_connections_and_new_ones_get_new_certs(
    tmp_path: Path,
) -> None:
    async with two_node_mesh(tmp_path) as mesh, client_from(WEB_IP) as client:
        url = f"http://127.0.0.1:{mesh.a.outbound}/"
        assert (await client.get(url, headers={"host": "auth-api.shop"})).status_code == 200
        assert mesh.a.handle.mesh is not None
        assert mesh.b.handle.mesh is not None
        b_certs, a_certs = mesh.b.handle.mesh.certs, mesh.a.handle.mesh.certs
        old_node = b_certs.issued(b_certs.node_id)
        assert old_node is not None
        old_node_serial = old_node.serial
        a_certs.renew_all(utc_now())
        b_certs.renew_all(utc_now())
        new_node = b_certs.issued(b_certs.node_id)
        assert new_node is not None
        assert new_node.serial != old_node_serial
        # the pooled node-a -> node-b connection (old certificates) carries on
        assert (await client.get(url, headers={"host": "auth-api.shop"})).status_code == 200
        opened = "nodeproxy_upstream_connections_opened_total"
        assert mesh.a.counter(opened, cluster="mesh:node-b") == 1
        # a new connection to node-b is served with the new node certificate
        web = a_certs.issued(WEB)
        assert web is not None
        tcp = await trio.open_tcp_stream("127.0.0.1", mesh.b.inbound)
        tls = trio.SSLStream(tcp, client_context(web.cert_pem, web.key_pem, mesh.ca.cert_pem))
        await tls.do_handshake()
        seen = x509.load_der_x509_certificate(tls.getpeercert(True)).serial_number
        assert seen == new_node.serial
        await trio.aclose_forcefully(tls)
        assert len(mesh.auth.requests) == 2
