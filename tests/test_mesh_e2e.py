"""A two-node mesh on loopback: real proxies, real certificates, real clients.

node-a runs the callers (webserver at 127.0.0.2, reporting at 127.0.0.3) and
the ``cache`` pod; node-b runs ``auth-api`` and ``database``. A request to a
node-b pod leaves node-a over mTLS as the calling workload and is checked by
node-b's policy; the seed's example: webserver -> auth-api is allowed,
webserver -> database is denied and the database never sees the request.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import structlog
import trio

from nodeproxy.stats.names import POLICY_DENIED, TLS_HANDSHAKE_FAILURES
from nodeproxy.tls.ca import init_ca
from tests.helpers.backends import backend
from tests.helpers.mesh import REPORTING, WEB, WEB_IP, client_from, two_node_mesh
from tests.helpers.proc import running_nodeproxy


async def test_webserver_reaches_auth_api_on_the_other_node_over_mtls(tmp_path: Path) -> None:
    """The per-request hop (http_tunnel: off); the tunnel: tests/test_tunnel_http.py."""
    async with two_node_mesh(tmp_path, http_tunnel="off") as mesh, client_from(WEB_IP) as client:
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
        with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as logs:
            async with client_from("127.0.0.3") as reporting:
                r = await reporting.get(
                    f"http://127.0.0.1:{mesh.a.outbound}/", headers={"host": "cache.shop"}
                )
                again = await reporting.get(  # same keep-alive connection
                    f"http://127.0.0.1:{mesh.a.outbound}/", headers={"host": "nosuch.shop"}
                )
        assert (r.status_code, r.headers["x-nodeproxy-error"]) == (403, "denied")
        assert again.status_code == 404
        lines = [e for e in logs if e.get("event") == "access"]
        assert [(e["status"], e.get("policy_rule")) for e in lines] == [
            (403, "(default)"),
            (404, None),  # the rule of the previous request does not leak into this line
        ]
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


async def _curl(*args: str) -> tuple[int, str]:
    with trio.fail_after(20):
        done = await trio.run_process(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, done.stdout.decode()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_the_example_as_two_nodeproxy_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/mesh/mesh.yaml, run as the operator would: two processes, curl as the pods."""
    init_ca(tmp_path / "ca")
    example = str(Path(__file__).parent.parent / "examples" / "mesh" / "mesh.yaml")
    async with backend() as auth, backend() as database:
        for name, value in {
            "CA_DIR": str(tmp_path / "ca"),
            "AUTH_PORT": str(auth.port),
            "DATABASE_PORT": str(database.port),
            "OUTBOUND": "127.0.0.1:0",
            "ADMIN": "127.0.0.1:0",
            "INBOUND": "127.0.0.1:0",
            "NODE_NAME": "node-b",
        }.items():
            monkeypatch.setenv(name, value)
        async with running_nodeproxy("run", "-c", example) as node_b:
            monkeypatch.setenv("NODE_NAME", "node-a")
            monkeypatch.setenv("NODE_B_INBOUND", f"127.0.0.1:{node_b.listener_ports['inbound']}")
            async with running_nodeproxy("run", "-c", example) as node_a:
                url = f"http://127.0.0.1:{node_a.listener_ports['outbound']}/"
                web = ("--interface", WEB_IP)
                reporting = ("--interface", "127.0.0.3")
                assert await _curl(*web, "-H", "Host: auth-api.shop", url) == (0, "200")
                assert await _curl(*web, "-H", "Host: database.shop", url) == (0, "403")
                assert await _curl(*reporting, "-H", "Host: database.shop", url) == (0, "200")
                post = ("-X", "POST", "-H", "Host: database.shop", url)
                assert await _curl(*reporting, *post) == (0, "403")
                assert len(auth.requests) == 1
                assert [r.method for r in database.requests] == [b"GET"]
                node_b.signal()
                with trio.fail_after(20):
                    await node_b.read_event("stopped")  # collects every log line before it
                assert await node_b.wait_exit() == 0
                denied = [
                    line
                    for line in node_b.lines
                    if line.get("event") == "access" and line.get("status") == 403
                ]
                assert [d.get("policy_rule") for d in denied] == ["(default)", "(default)"]
