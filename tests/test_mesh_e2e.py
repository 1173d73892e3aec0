"""A two-node mesh on loopback: real proxies, real certificates, real clients.

node-a runs the callers (webserver at 127.0.0.2, reporting at 127.0.0.3) and
the ``cache`` pod; node-b runs ``auth-api`` and ``database``. A request to a
node-b pod leaves node-a over mTLS as the calling workload and is checked by
node-b's policy; the seed's example: webserver -> auth-api is allowed,
webserver -> database is denied and the database never sees the request.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog
import trio

from nodeproxy.mesh.state import POLICY_DENIED
from nodeproxy.upstream.peer import TLS_HANDSHAKE_FAILURES
from tests.helpers.mesh import REPORTING, WEB, WEB_IP, client_from, two_node_mesh


def _captured() -> structlog.testing.LogCapture:
    return structlog.testing.LogCapture()


async def test_webserver_reaches_auth_api_on_the_other_node_over_mtls(tmp_path: Path) -> None:
    async with two_node_mesh(tmp_path) as mesh, client_from(WEB_IP) as client:
        with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as logs:
            r = await client.get(
                f"http://127.0.0.1:{mesh.a.outbound}/login?x=1",
                headers={"host": "auth-api.shop"},
            )
            r2 = await client.get(
                f"http://127.0.0.1:{mesh.a.outbound}/again", headers={"host": "auth-api.shop"}
            )
        assert r.status_code == 200, r.text
        assert r2.status_code == 200
        seen = r.json()
        assert seen["target"] == "/login?x=1"
        headers = dict(seen["headers"])
        assert headers["host"] == "auth-api.shop"
        assert headers["x-forwarded-client-cert"] == (
            f"By=spiffe://cluster.local/node/node-b;URI={WEB}"
        )
        assert not any(k.startswith("x-nodeproxy-") for k in headers)  # stripped before the pod
        assert len(mesh.auth.requests) == 2
        # one pooled mTLS connection node-a -> node-b carried both requests
        upstreams = mesh.a.counter(
            "nodeproxy_upstream_connections_opened_total", cluster="mesh:node-b"
        )
        assert upstreams == 1
        inbound = [e for e in logs if e.get("event") == "access" and e["listener"] == "inbound"]
        assert [e["status"] for e in inbound] == [200, 200]
        assert inbound[0]["peer_identity"] == str(WEB)
        assert inbound[0]["policy_rule"] == "webserver-to-auth"
        assert inbound[0]["upstream"] == f"127.0.0.1:{mesh.auth.port}"
        outbound = [e for e in logs if e.get("event") == "access" and e["listener"] == "outbound"]
        assert outbound[0]["upstream"] == f"127.0.0.1:{mesh.auth.port}"


async def test_webserver_calling_the_database_is_denied(tmp_path: Path) -> None:
    async with two_node_mesh(tmp_path) as mesh, client_from(WEB_IP) as client:
        with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as logs:
            r = await client.get(
                f"http://127.0.0.1:{mesh.a.outbound}/users", headers={"host": "database.shop"}
            )
        assert r.status_code == 403
        assert r.headers["x-nodeproxy-error"] == "denied"
        assert r.text == "RBAC: access denied\n"
        assert mesh.database.requests == []  # the pod never saw it
        assert mesh.b.counter(POLICY_DENIED, listener="inbound", rule="(default)") == 1
        denied = [e for e in logs if e.get("event") == "access" and e["listener"] == "inbound"]
        assert denied[0]["cause"] == "denied"
        assert denied[0]["policy_rule"] == "(default)"
        assert denied[0]["peer_identity"] == str(WEB)


async def test_other_workloads_and_unknown_sources(tmp_path: Path) -> None:
    async with two_node_mesh(tmp_path) as mesh:
        async with client_from("127.0.0.3") as reporting:  # a known workload, no allow rule
            r = await reporting.get(
                f"http://127.0.0.1:{mesh.a.outbound}/", headers={"host": "auth-api.shop"}
            )
        assert (r.status_code, r.headers["x-nodeproxy-error"]) == (403, "denied")
        async with client_from("127.0.0.1") as stranger:  # no identity, no default: refused
            r = await stranger.get(
                f"http://127.0.0.1:{mesh.a.outbound}/", headers={"host": "auth-api.shop"}
            )
        assert (r.status_code, r.headers["x-nodeproxy-error"]) == (403, "unknown_source")
        assert mesh.auth.requests == []
        assert mesh.b.counter(POLICY_DENIED, rule="(default)") == 1  # reporting, seen by node-b
        assert REPORTING != WEB


async def test_same_node_pod_is_reached_directly_and_still_checked(tmp_path: Path) -> None:
    async with two_node_mesh(tmp_path) as mesh:
        async with client_from(WEB_IP) as web:
            r = await web.get(
                f"http://127.0.0.1:{mesh.a.outbound}/", headers={"host": "cache.shop"}
            )
        assert r.status_code == 200
        assert "x-forwarded-client-cert" not in dict(r.json()["headers"])  # plaintext, direct
        async with client_from("127.0.0.3") as reporting:
            r = await reporting.get(
                f"http://127.0.0.1:{mesh.a.outbound}/", headers={"host": "cache.shop"}
            )
        assert (r.status_code, r.headers["x-nodeproxy-error"]) == (403, "denied")
        assert len(mesh.cache.requests) == 1
        assert mesh.a.counter(POLICY_DENIED, listener="outbound") == 1
        assert mesh.b.counter("nodeproxy_downstream_connections_total", listener="inbound") == 0


async def test_enforce_outbound_denies_before_any_connection(tmp_path: Path) -> None:
    async with two_node_mesh(tmp_path, enforce_outbound=True) as mesh, client_from(WEB_IP) as c:
        r = await c.get(f"http://127.0.0.1:{mesh.a.outbound}/", headers={"host": "database.shop"})
        assert (r.status_code, r.headers["x-nodeproxy-error"]) == (403, "denied")
        assert mesh.a.counter(POLICY_DENIED, listener="outbound", rule="(default)") == 1
        assert mesh.b.counter("nodeproxy_downstream_connections_total", listener="inbound") == 0
        r = await c.get(f"http://127.0.0.1:{mesh.a.outbound}/", headers={"host": "auth-api.shop"})
        assert r.status_code == 200


@pytest.mark.parametrize("header", ["x-nodeproxy-destination", "x-forwarded-client-cert"])
async def test_plaintext_client_cannot_name_the_destination(tmp_path: Path, header: str) -> None:
    async with two_node_mesh(tmp_path) as mesh, client_from(WEB_IP) as client:
        # webserver may call auth-api; it tries to smuggle the request to the database pod
        r = await client.get(
            f"http://127.0.0.1:{mesh.a.outbound}/",
            headers={
                "host": "auth-api.shop",
                header: f"127.0.0.1:{mesh.database.port}",
                "x-nodeproxy-service": "database.shop",
            },
        )
        assert r.status_code == 200  # normal routing applied: auth-api got it
        assert mesh.database.requests == []
        headers = dict(json.loads(r.text)["headers"])
        assert headers.get(header, "") != f"127.0.0.1:{mesh.database.port}"
        assert len(mesh.auth.requests) == 1
        assert mesh.a.counter(TLS_HANDSHAKE_FAILURES) == 0
        await trio.lowlevel.checkpoint()
