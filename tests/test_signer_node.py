"""Node proxies with ``mesh.signer``: certificates from the signer, and what an outage does.

No node here holds the CA key: each gets only ``ca.crt`` (in a directory
without ``ca.key``) and a token file. The signer runs in-process against the
fake API server (tests/helpers/signer.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
import trio

from nodeproxy.app import run_app
from nodeproxy.cli import main
from nodeproxy.config import load_config_text
from nodeproxy.errors import ConfigError
from nodeproxy.stats.names import EARLIEST_EXPIRY, SIGNER_REQUESTS, SIGNER_UP
from nodeproxy.stats.registry import Stats, labels
from nodeproxy.tls.ca import build_ca, init_ca, utc_now
from nodeproxy.tls.identity import SpiffeId
from nodeproxy.tls.node_certs import MeshCertificates
from nodeproxy.tls.renewal import Backoff
from nodeproxy.tls.signer_client import SignerClient
from tests.fakes.apiserver import fake_apiserver
from tests.fakes.k8s_objects import node, pod
from tests.helpers.mesh import WEB, WEB_IP, client_from, two_node_mesh
from tests.helpers.proc import STARTUP_DEADLINE, RunningProxy
from tests.helpers.signer import running_signer, seed_cluster, write_token
from tests.test_k8s_wiring import (
    POD_A,
    POD_B,
    app,
    backends,
    free_port,
    greeter_objects,
    kubeconfig,
    until,
)

NOW = utc_now()
NODE_A = SpiffeId.node("node-a")


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.01)  # jumps only when sockets are idle


def ca_cert_only(ca_dir: Path, into: Path) -> Path:
    """What a node gets: the CA certificate, no key."""
    into.mkdir()
    shutil.copy(ca_dir / "ca.crt", into / "ca.crt")
    assert not (into / "ca.key").exists()
    return into / "ca.crt"


def signer_lines(ca_crt: Path, url: str, token_file: str) -> str:
    return (
        f"ca_cert: {ca_crt}\n  signer: {{url: {url!r}, token_file: {token_file}, "
        "timeout: 5s, max_backoff: 60s}"
    )


async def test_two_node_proxies_with_signer_certificates_talk_mtls(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "mesh-ca", now=utc_now() - timedelta(days=30))
    ca_crt = ca_cert_only(tmp_path / "mesh-ca", tmp_path / "node-ca")
    async with fake_apiserver() as api:
        seed_cluster(api)
        async with running_signer(ca, api) as signer:
            tokens = {
                node: write_token(
                    tmp_path, node, api.token_reviews.issue(f"nodeproxy-{node[-1]}", "nodeproxy")
                )
                for node in ("node-a", "node-b")
            }

            def issuer(node: str) -> str:
                return signer_lines(ca_crt, signer.url, tokens[node])

            async with (
                two_node_mesh(tmp_path, issuer=issuer, ca=ca) as mesh,
                client_from(WEB_IP) as client,
            ):
                r = await client.get(
                    f"http://127.0.0.1:{mesh.a.outbound}/login", headers={"host": "auth-api.shop"}
                )
                assert r.status_code == 200, r.text
                headers = dict(r.json()["headers"])
                assert headers["x-forwarded-client-cert"] == (
                    f"By=spiffe://cluster.local/node/node-b;URI={WEB}"
                )
                a = mesh.a.handle.mesh
                assert a is not None
                assert a.certs.ca is None  # node-a never loaded a CA key
                assert a.certs.issued(WEB) is not None
                # node-a's static workload shop/reporting has a pod on node-a: signed too;
                # the signer signed for both nodes, nothing was refused
                assert signer.signer.counts == {"signed": 2}
                assert mesh.a.handle.runtime.stats.gauge(SIGNER_UP) == 1
                async with httpx.AsyncClient() as admin:
                    ready = await admin.get(f"http://127.0.0.1:{mesh.a.handle.admin_port}/ready")
                assert (ready.status_code, ready.text) == (200, "LIVE\n")


async def test_signer_outage_keeps_certificates_serving_and_retries_with_backoff(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    ca = build_ca(now=NOW - timedelta(days=1))
    t0 = trio.current_time()

    def wall() -> datetime:
        return NOW + timedelta(seconds=trio.current_time() - t0)

    async with fake_apiserver() as api:
        seed_cluster(api)
        token = write_token(
            tmp_path, "a", api.token_reviews.issue("nodeproxy-a", "nodeproxy", lifetime=1e6)
        )
        async with trio.open_nursery() as nursery:
            async with running_signer(ca, api, clock=wall) as signer:
                port = signer.port
                stats = Stats()
                client = SignerClient(signer.url, token, ca.cert_pem, "cluster.local", timeout=5)
                certs = MeshCertificates(
                    client, "node-a", [WEB], lifetime=timedelta(hours=1),
                    backoff=Backoff(maximum=60.0, jitter=0.0), stats=stats,
                )  # fmt: skip
                await nursery.start(certs.run, wall)
                first = {sid: certs.issued(sid) for sid in (NODE_A, WEB)}
                assert all(first.values())
                assert certs.readiness(wall()) is None
                assert stats.gauge(SIGNER_UP) == 1
                node_cert = first[NODE_A]
                assert node_cert is not None
                assert stats.gauge(EARLIEST_EXPIRY) == node_cert.not_after.timestamp()
            # the signer is gone. Valid NOW-5m .. NOW+1h: renewal is due at NOW+38m20s
            await trio.sleep(38 * 60 + 15)
            assert stats.counter(SIGNER_REQUESTS, labels(result="error")) == 0

            def errors() -> float:
                return stats.counter(SIGNER_REQUESTS, labels(result="error"))

            with trio.fail_after(60):
                while errors() == 0:  # noqa: ASYNC110 -- polls a counter on the mock clock
                    await trio.sleep(0.1)
            first_failure = trio.current_time()
            # retries after 1, 2, 4, ... 60 s: failures at +0, 1, 3, 7, 15, 31, 63, 123 s
            await trio.sleep_until(first_failure + 122)
            assert errors() == 7
            await trio.sleep_until(first_failure + 124)
            assert errors() == 8
            assert certs.status.failures == 8
            assert stats.gauge(SIGNER_UP) == 0
            # what we hold keeps serving: same certificates, same contexts for new connections
            assert {sid: certs.issued(sid) for sid in first} == first
            assert certs.client_context(WEB) is not None
            ready = certs.readiness(wall())
            assert ready is not None
            assert ready[0] is True
            assert ready[1].startswith("certificates: renewal failing since ")
            assert "(8 attempts): cannot reach https://localhost" in ready[1]
            # ...until they expire: then /ready turns 503 with the reason
            await trio.sleep(25 * 60)
            ready = certs.readiness(wall())
            assert ready is not None
            assert ready[0] is False
            assert ready[1].startswith("certificates: node certificate expired: cannot reach")
            # the signer returns on the same address: the next retry (<= 60 s) renews everything
            async with running_signer(ca, api, port=port, clock=wall):
                await trio.sleep(61)
                assert certs.readiness(wall()) is None
                renewed = certs.issued(NODE_A)
                assert renewed is not None
                assert renewed.serial != node_cert.serial
                assert stats.gauge(SIGNER_UP) == 1
                assert certs.status.failures == 0
                nursery.cancel_scope.cancel()


async def test_a_node_started_while_the_signer_is_down_is_not_ready_until_it_answers(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    ca = init_ca(tmp_path / "mesh-ca", now=utc_now() - timedelta(days=1))
    ca_crt = ca_cert_only(tmp_path / "mesh-ca", tmp_path / "node-ca")
    async with fake_apiserver() as api:
        seed_cluster(api)
        token = write_token(
            tmp_path, "a", api.token_reviews.issue("nodeproxy-a", "nodeproxy", lifetime=1e6)
        )
        async with running_signer(ca, api) as probe:
            port = probe.port  # a free port, closed again before the node starts
        config = load_config_text(
            f"""
node_name: node-a
listeners: [{{address: "127.0.0.1:0"}}]
admin: {{address: "127.0.0.1:0"}}
services: []
mesh:
  {signer_lines(ca_crt, f"https://localhost:{port}", token)}
  inbound: "127.0.0.1:0"
""",
            env={},
        )
        async with trio.open_nursery() as nursery, httpx.AsyncClient() as admin:
            handle = await nursery.start(
                lambda task_status: run_app(config, handle_signals=False, task_status=task_status)
            )
            url = f"http://127.0.0.1:{handle.admin_port}/ready"
            r = await admin.get(url)
            assert r.status_code == 503
            assert r.text.startswith(
                "certificates: no node certificate yet: cannot reach https://localhost"
            )
            async with running_signer(ca, api, port=port):
                await trio.sleep(8)  # retries at +1, +3, +7 s
                r = await admin.get(url)
                assert (r.status_code, r.text) == (200, "LIVE\n")
            handle.runtime.drain.start("test over")


def test_config_with_a_signer_needs_only_the_ca_certificate(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    ca_crt = ca_cert_only(tmp_path / "ca", tmp_path / "node-ca")
    base = 'node_name: node-a\nlisteners: [{address: "127.0.0.1:0"}]\nservices: []\nmesh:\n  '
    config = load_config_text(
        base + signer_lines(ca_crt, "https://nodeproxy-signer.nodeproxy.svc:8443", "/t"), env={}
    )
    assert config.mesh is not None
    assert config.mesh.signer is not None
    assert (config.mesh.ca_dir, config.mesh.ca_cert) == (None, str(ca_crt))
    assert config.mesh.signer.url == "https://nodeproxy-signer.nodeproxy.svc:8443"
    assert (config.mesh.signer.timeout, config.mesh.signer.max_backoff) == (5.0, 60.0)
    bad = {
        f"ca_cert: {ca_crt}": "ca_cert (the CA certificate alone) needs mesh.signer",
        f"ca_dir: {tmp_path / 'ca'}\n  " + signer_lines(ca_crt, "https://s:1", "/t"): "not both",
        "signer: {url: 'https://s:1', token_file: /t}": "mesh.signer needs mesh.ca_cert",
        signer_lines(ca_crt, "http://s:1", "/t"): "expected https://host[:port]",
        signer_lines(tmp_path / "nope.crt", "https://s:1", "/t"): "cannot read the CA",
        signer_lines(tmp_path / "ca" / "ca.key", "https://s:1", "/t"): "cannot parse the CA",
    }
    for lines, message in bad.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config_text(base + lines, env={})


async def test_pods_discovered_on_the_node_get_certificates_from_the_signer(
    tmp_path: Path,
) -> None:
    """Kubernetes discovery + signer: a pod that appears on node-1 later gets its identity
    without waiting for the next renewal, and traffic between the nodes works."""
    ca = init_ca(tmp_path / "mesh-ca", now=utc_now() - timedelta(days=1))
    ca_crt = ca_cert_only(tmp_path / "mesh-ca", tmp_path / "node-ca")
    inbound_port = free_port("127.0.0.12")
    async with fake_apiserver() as api, backends(POD_A, POD_B) as (a, _):
        greeter_objects(api, a.port, ("node-2", "node-2"))
        api.add("pods", pod("web", "127.0.0.4", node="node-1", service_account="web"))
        for name, where in (("nodeproxy-1", "node-1"), ("nodeproxy-2", "node-2")):
            api.add("pods", pod(name, "10.9.9.9", node=where, ns="nodeproxy",
                                service_account="nodeproxy"))  # fmt: skip
        api.add("nodes", node("node-1", "127.0.0.11"))
        api.add("nodes", node("node-2", "127.0.0.12"))
        kc = kubeconfig(tmp_path / "kc", api)
        async with running_signer(ca, api) as signer:

            def config(name: str, ip: str) -> str:
                token = api.token_reviews.issue(f"nodeproxy-{name[-1]}", "nodeproxy")
                issuer = signer_lines(ca_crt, signer.url, write_token(tmp_path, name, token))
                return f"""
node_name: {name}
listeners: [{{address: "127.0.0.1:0"}}]
admin: {{address: "127.0.0.1:0"}}
discovery:
  kubernetes: {{kubeconfig: {kc}, node_proxy_port: {inbound_port}}}
mesh:
  {issuer}
  inbound: "{ip}:{inbound_port}"
"""

            async with (
                app(config("node-1", "127.0.0.11")) as n1,
                app(config("node-2", "127.0.0.12")),
            ):
                assert n1.mesh is not None
                certs = n1.mesh.certs
                # The app starts before discovery's first list: "web" is wanted, and asked
                # of the signer, only once its pod is known (under load, after "started").
                web_id = SpiffeId.workload("default", "web")
                await until(lambda: certs.issued(web_id) is not None)
                url = f"http://127.0.0.1:{n1.listener_ports['outbound']}/hi"
                async with client_from("127.0.0.4") as web:
                    r = await web.get(url, headers={"host": "bdgreeter.default"})
                    assert r.status_code == 200, r.text
                api.add("pods", pod("late", "127.0.0.5", node="node-1", service_account="late"))
                late = SpiffeId.workload("default", "late")
                await until(lambda: certs.issued(late) is not None)
                assert certs.status.refused == {}


async def test_the_signer_command_runs_from_a_kubeconfig_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    ca = init_ca(tmp_path / "ca", now=utc_now() - timedelta(days=1))
    port = free_port("127.0.0.1")
    async with fake_apiserver() as api:
        seed_cluster(api)
        args = [
            sys.executable, "-m", "nodeproxy", "signer", "--ca-dir", str(tmp_path / "ca"),
            "--listen", f"127.0.0.1:{port}", "--dns-name", "localhost",
            "--kubeconfig", str(kubeconfig(tmp_path / "kc", api)), "--log-format", "json",
        ]  # fmt: skip
        process = await trio.lowlevel.open_process(args, stdout=subprocess.PIPE)
        try:
            proc = RunningProxy(process, {}, 0)
            with trio.fail_after(STARTUP_DEADLINE):
                started = await proc.read_event("signer_started")
            assert started["address"] == f"127.0.0.1:{port}"
            token = write_token(tmp_path, "a", api.token_reviews.issue("nodeproxy-a", "nodeproxy"))
            client = SignerClient(
                f"https://localhost:{port}", token, ca.cert_pem, "cluster.local", timeout=10
            )
            out = await client.sign([NODE_A, WEB], lifetime=timedelta(hours=1), client=None)
            assert sorted(i.spiffe_id for i in out.issued) == sorted([NODE_A, WEB])
            proc.signal()
            assert await proc.wait_exit() == 0
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()


def test_the_signer_command_refuses_a_missing_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["signer", "--ca-dir", str(tmp_path / "none"), "--dns-name", "x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nodeproxy signer: cannot read the CA in ")
    init_ca(tmp_path / "ca")
    code = main(["signer", "--ca-dir", str(tmp_path / "ca"), "--dns-name", "x"])
    assert code == 1  # not in a cluster and no --kubeconfig
    assert "KUBERNETES_SERVICE_HOST/PORT are unset" in capsys.readouterr().err


async def test_a_node_whose_token_the_signer_refuses_says_why_in_readiness(
    tmp_path: Path,
) -> None:
    ca = build_ca(now=NOW - timedelta(days=1))
    async with fake_apiserver() as api, running_signer(ca, api) as signer:
        seed_cluster(api)
        # a workload's token (shop/webserver) mounted by mistake instead of the proxy's
        token = write_token(tmp_path, "web", api.token_reviews.issue("web-1", "shop"))
        stats = Stats()
        client = SignerClient(signer.url, token, ca.cert_pem, "cluster.local", timeout=5)
        certs = MeshCertificates(client, "node-a", [WEB], stats=stats)
        async with trio.open_nursery() as nursery:
            await nursery.start(certs.run)
            assert certs.readiness() == (
                False,
                "certificates: no node certificate yet: service account shop/webserver "
                "may not request certificates (only nodeproxy/nodeproxy)",
            )
            assert stats.counter(SIGNER_REQUESTS, labels(result="refused")) == 1
            assert certs.seconds_until_renewal(utc_now()) == 60.0  # asks again in a minute
            nursery.cancel_scope.cancel()
