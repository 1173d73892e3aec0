"""Reaching the API: service account files, kubeconfig, and real TLS with client certificates."""

from __future__ import annotations

import base64
import random
import ssl
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme
import yaml

from nodeproxy.discovery.kubernetes import (
    ApiAccess,
    ApiClient,
    KubernetesDiscovery,
    KubernetesDiscoveryConfig,
    from_kubeconfig,
    in_cluster,
)
from nodeproxy.discovery.kubernetes.store import K8S_WATCH_RESTARTS
from nodeproxy.discovery.snapshot import EndpointRegistry
from nodeproxy.errors import ConfigError
from nodeproxy.stats.registry import Stats
from tests.fakes.apiserver import fake_apiserver
from tests.fakes.k8s_objects import endpoint, endpoint_slice, service


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.01)


def service_account(tmp_path: Path, token: str = "tok-1") -> Path:
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(token)
    (sa / "ca.crt").write_text("not used here")
    (sa / "namespace").write_text("nodeproxy\n")
    return sa


def test_in_cluster_reads_env_and_service_account_files(tmp_path: Path) -> None:
    sa = service_account(tmp_path)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    access = in_cluster(env, sa)
    assert access.server == "https://10.96.0.1:443"
    assert (access.host, access.port, access.tls) == ("10.96.0.1", 443, True)
    assert access.ca_file == str(sa / "ca.crt")
    assert access.namespace == "nodeproxy"
    assert access.bearer_token() == "tok-1"
    (sa / "token").write_text("tok-2\n")  # the kubelet rotates it in place
    assert access.bearer_token() == "tok-2"
    assert "tok-2" not in repr(access)
    v6 = in_cluster({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}, sa)
    assert (v6.server, v6.authority) == ("https://[fd00::1]:6443", "[fd00::1]:6443")


def test_in_cluster_errors_say_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST"):
        in_cluster({}, tmp_path)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(ConfigError, match="token"):
        in_cluster(env, tmp_path)


def kubeconfig(path: Path, cluster: dict[str, object], user: dict[str, object]) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "dev",
        "contexts": [
            {"name": "dev", "context": {"cluster": "c", "user": "u", "namespace": "shop"}},
            {"name": "other", "context": {"cluster": "c"}},
        ],
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_kubeconfig_contexts_files_and_refusals(tmp_path: Path) -> None:
    cfg = kubeconfig(
        tmp_path / "config",
        {"server": "https://api.example:6443/", "certificate-authority": "ca.pem"},
        {"token": "secret", "client-certificate": "/abs/cert.pem", "client-key": "key.pem"},
    )
    access = from_kubeconfig(cfg)
    assert access.server == "https://api.example:6443"
    assert access.ca_file == str(tmp_path / "ca.pem")  # relative to the kubeconfig
    assert access.client_cert_file == "/abs/cert.pem"
    assert access.client_key_file == str(tmp_path / "key.pem")
    assert (access.bearer_token(), access.namespace) == ("secret", "shop")
    assert "secret" not in repr(access)
    assert from_kubeconfig(cfg, context="other").token is None
    with pytest.raises(ConfigError, match="no context named 'missing'"):
        from_kubeconfig(cfg, context="missing")
    plugin = kubeconfig(tmp_path / "exec", {"server": "https://x"}, {"exec": {"command": "aws"}})
    with pytest.raises(ConfigError, match="exec plugins are unsupported"):
        from_kubeconfig(plugin)
    with pytest.raises(ConfigError, match="cannot read kubeconfig"):
        from_kubeconfig(tmp_path / "nope")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tls_server(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca.configure_trust(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED  # the client must present a certificate
    return ctx


async def sync_once(access: ApiAccess, seconds: float) -> KubernetesDiscovery:
    config = KubernetesDiscoveryConfig()
    disc = KubernetesDiscovery(
        ApiClient(access), EndpointRegistry(), Stats(), config, rng=random.Random(1)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(disc.run)
        with trio.move_on_after(seconds):
            while not disc.registry.synced:  # noqa: ASYNC110 -- registry state, not an event
                await trio.sleep(0.25)
        nursery.cancel_scope.cancel()
    return disc


async def test_kubeconfig_over_tls_with_ca_data_and_client_cert(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    ca = trustme.CA()
    client = ca.issue_cert("nodeproxy-dev")
    async with fake_apiserver(tls=tls_server(ca)) as api:
        api.add("services", service("bdgreeter", [("http", 80, 8080)]))
        api.add("endpointslices", endpoint_slice("bd-1", "bdgreeter", [endpoint("10.0.1.1")]))
        cfg = kubeconfig(
            tmp_path / "config",
            {"server": api.url, "certificate-authority-data": b64(ca.cert_pem.bytes())},
            {
                "client-certificate-data": b64(client.cert_chain_pems[0].bytes()),
                "client-key-data": b64(client.private_key_pem.bytes()),
            },
        )
        disc = await sync_once(from_kubeconfig(cfg), 30)
        assert [e.address for e in disc.registry.current().endpoints("bdgreeter")] == [
            "10.0.1.1:8080"
        ]
        # a server certificate from another CA is refused: never synced, counted as errors
        rogue = ApiAccess(server=api.url, ca_data=trustme.CA().cert_pem.bytes())
        disc = await sync_once(rogue, 30)
        assert not disc.registry.synced
        assert disc.stats.sum_counter(K8S_WATCH_RESTARTS, reason="error") >= 4
