"""HTTP to another node's pod through a CONNECT tunnel (mesh.http_tunnel: auto).

The seed's policy has no HTTP rules, so node-a sends webserver's requests to
auth-api through a pooled tunnel and node-b only splices: it decides once,
at CONNECT, and parses no request. The pod sees what the per-request hop
gave it.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from nodeproxy.stats.names import POLICY_ALLOWED, POLICY_DENIED
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
