"""HTTP to another node's pod through a CONNECT tunnel (mesh.http_tunnel: auto).

The seed's policy has no HTTP rules, so node-a sends webserver's requests to
auth-api through a pooled tunnel and node-b only splices: it decides once,
at CONNECT, and parses no request. The pod sees what the per-request hop
gave it.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
import trio

from nodeproxy.stats.names import POLICY_ALLOWED, POLICY_DENIED
from nodeproxy.stats.registry import labels
from tests.helpers.mesh import WEB, WEB_IP, client_from, two_node_mesh


async def test_requests_ride_one_pooled_tunnel_and_node_b_parses_none(tmp_path: Path) -> None:
    async with two_node_mesh(tmp_path) as mesh, client_from(WEB_IP) as client:
        url = f"http://127.0.0.1:{mesh.a.outbound}"
        with structlog.testing.capture_logs() as logs:
            r = await client.get(f"{url}/login?x=1", headers={"host": "auth-api.shop"})
            r2 = await client.post(f"{url}/again", headers={"host": "auth-api.shop"}, content=b"hi")
        assert (r.status_code, r2.status_code) == (200, 200)
        seen = r.json()
        assert seen["target"] == "/login?x=1"
        headers = dict(seen["headers"])
        assert headers["host"] == "auth-api.shop"
        assert headers["x-forwarded-client-cert"] == (
            f"By=spiffe://cluster.local/node/node-b;URI={WEB}"
        )
        assert not any(k.startswith("x-nodeproxy-") for k in headers)
        assert len(mesh.auth.requests) == 2
        opened = mesh.a.counter(
            "nodeproxy_upstream_connections_opened_total", cluster="mesh:node-b"
        )
        assert opened == 1
        # node-b: one decision for the tunnel, no HTTP request parsed while it is open
        assert mesh.b.counter(POLICY_ALLOWED, listener="inbound", rule="webserver-to-auth") == 1
        assert mesh.b.counter("nodeproxy_requests_total", listener="inbound") == 0
        outbound = [e for e in logs if e.get("event") == "access" and e["listener"] == "outbound"]
        assert [e["upstream"] for e in outbound] == [f"127.0.0.1:{mesh.auth.port}"] * 2


async def test_a_denied_tunnel_is_the_same_403(tmp_path: Path) -> None:
    async with two_node_mesh(tmp_path) as mesh, client_from(WEB_IP) as client:
        r = await client.get(
            f"http://127.0.0.1:{mesh.a.outbound}/users", headers={"host": "database.shop"}
        )
        assert r.status_code == 403
        assert r.headers["x-nodeproxy-error"] == "denied"
        assert r.text == "RBAC: access denied\n"
        assert mesh.database.requests == []
        assert mesh.b.counter(POLICY_DENIED, listener="inbound", rule="(default)") == 1


async def test_tunnels_are_never_shared_between_identities(tmp_path: Path) -> None:
    async with two_node_mesh(tmp_path) as mesh:
        url = f"http://127.0.0.1:{mesh.a.outbound}/"
        async with client_from(WEB_IP) as web:
            assert (await web.get(url, headers={"host": "auth-api.shop"})).status_code == 200
        async with client_from("127.0.0.3") as reporting:  # an idle tunnel to auth-api exists
            r = await reporting.get(url, headers={"host": "auth-api.shop"})
        assert (r.status_code, r.headers["x-nodeproxy-error"]) == (403, "denied")
        assert len(mesh.auth.requests) == 1


async def test_http_rules_keep_the_per_request_hop(tmp_path: Path) -> None:
    """With http_tunnel: off (and likewise for a service whose policy has methods or
    paths) node-b parses and decides every request."""
    async with two_node_mesh(tmp_path, http_tunnel="off") as mesh, client_from(WEB_IP) as c:
        url = f"http://127.0.0.1:{mesh.a.outbound}/"
        for _ in range(2):
            assert (await c.get(url, headers={"host": "auth-api.shop"})).status_code == 200
        assert mesh.b.counter("nodeproxy_requests_total", listener="inbound") == 2
        assert mesh.b.counter(POLICY_ALLOWED, listener="inbound") == 2


async def test_bodies_downloads_websockets_and_closes_through_a_tunnel(tmp_path: Path) -> None:
    """What the per-request hop carried, the tunnel carries: a streamed upload, a large
    download, a pod that closes after its answer (the next request opens a new tunnel),
    and an upgrade to a raw byte stream inside the tunnel."""
    async with two_node_mesh(tmp_path) as mesh, client_from(WEB_IP) as client:
        url = f"http://127.0.0.1:{mesh.a.outbound}"
        host = {"host": "auth-api.shop"}
        body = bytes(range(256)) * 4096  # 1 MiB, streamed

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(body), 65536):
                yield body[i : i + 65536]

        r = await client.post(f"{url}/upload", headers=host, content=chunks())
        assert r.json()["body_bytes"] == len(body)
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        r = await client.get(f"{url}/download?size=3000000", headers=host)
        assert (r.status_code, len(r.content)) == (200, 3_000_000)
        assert (await client.get(f"{url}/then-close", headers=host)).status_code == 200
        assert (await client.get(f"{url}/after", headers=host)).status_code == 200
        opened = mesh.a.counter(
            "nodeproxy_upstream_connections_opened_total", cluster="mesh:node-b"
        )
        assert opened == 2  # the pod closed one tunnel; the next request opened another
    async with two_node_mesh(tmp_path / "ws") as mesh:
        tcp = await trio.open_tcp_stream("127.0.0.1", mesh.a.outbound, local_address=WEB_IP)
        await tcp.send_all(
            b"GET /ws HTTP/1.1\r\nhost: auth-api.shop\r\nupgrade: websocket\r\n"
            b"connection: upgrade\r\nsec-websocket-key: x\r\nsec-websocket-version: 13\r\n\r\n"
        )
        with trio.fail_after(10):
            head = b""
            while b"\r\n\r\n" not in head:
                head += await tcp.receive_some(4096)
            assert head.startswith(b"HTTP/1.1 101 ")
            await tcp.send_all(b"ping")
            got = head.partition(b"\r\n\r\n")[2]
            while len(got) < len(b"echo:ping"):
                got += await tcp.receive_some(4096)
        assert got == b"echo:ping"
        await tcp.aclose()


async def test_a_draining_node_closes_idle_http_tunnels_at_once(tmp_path: Path) -> None:
    """node-b's tunnels carrying a pool's HTTP close between exchanges when it drains,
    instead of holding it until limits.drain_timeout (20 s)."""
    async with two_node_mesh(tmp_path) as mesh, client_from(WEB_IP) as client:
        url = f"http://127.0.0.1:{mesh.a.outbound}/"
        assert (await client.get(url, headers={"host": "auth-api.shop"})).status_code == 200
        b = mesh.b.handle.runtime.stats

        def open_inbound() -> float:
            return b.gauge("nodeproxy_downstream_connections_active", labels(listener="inbound"))

        assert open_inbound() == 1
        mesh.b.handle.runtime.drain.start("test")
        with trio.fail_after(5):  # quiet 1 s after the answer, then closed
            while open_inbound():  # noqa: ASYNC110  # a gauge to poll, no event to wait on
                await trio.sleep(0.05)
        assert b.sum_counter("nodeproxy_requests_total", listener="inbound") == 1  # the CONNECT
