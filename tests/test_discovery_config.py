"""The ``discovery:`` config section and the pieces that put discovered services in front of
the data path: the catch-all route, the cluster catalog, the overlay registry, ``--kubeconfig``,
the mesh's peers and pod identities from discovery, and the shipped DaemonSet's config."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio
import yaml

from nodeproxy.cli import main, with_kubeconfig
from nodeproxy.config import load_config_text
from nodeproxy.config.discovery import KUBERNETES_VHOST
from nodeproxy.config.model import ClusterConfig, Config, EndpointConfig, KubernetesConfig
from nodeproxy.discovery.catalog import ClusterCatalog, OverlayRegistry
from nodeproxy.discovery.kubernetes.translate import PodIdentity
from nodeproxy.errors import ConfigError, UnknownService
from nodeproxy.mesh.state import Mesh
from nodeproxy.routing.authority import parse_authority
from nodeproxy.routing.router import Router
from nodeproxy.stats.registry import Stats
from nodeproxy.tls.ca import init_ca
from nodeproxy.tls.identity import SpiffeId

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca")
    init_ca(path)
    return path


def test_defaults_no_services_and_the_catch_all_route_comes_last() -> None:
    config = load_config_text("discovery: {kubernetes: {}}\n")
    assert config.discovery.mode == "kubernetes"
    assert config.discovery.kubernetes == KubernetesConfig()
    assert config.clusters == {}
    assert config.listeners[0].virtual_hosts == (KUBERNETES_VHOST,)
    config = load_config_text(
        "discovery: {kubernetes: }\nservices: [{name: db, endpoints: ['10.0.0.9:5432']}]\n"
    )
    assert [vh.name for vh in config.listeners[0].virtual_hosts] == ["db", "kubernetes"]


def test_full_section() -> None:
    config = load_config_text(
        """
node_name: ${NODE_NAME}
discovery:
  kubernetes:
    endpoints_api: endpoints
    kubeconfig: /home/dev/.kube/config
    context: kind-dev
    watch_timeout: 2m
    node_proxy_port: 5143
services: []
""",
        env={"NODE_NAME": "node-7"},
    )
    assert config.node_name == "node-7"
    assert config.discovery.kubernetes == KubernetesConfig(
        endpoints_api="endpoints",
        kubeconfig="/home/dev/.kube/config",
        context="kind-dev",
        watch_timeout=120.0,
        node_proxy_port=5143,
    )


def test_static_is_the_default_and_needs_services() -> None:
    config = load_config_text("discovery: {static: {}}\nservices: []\n")
    assert config.discovery.mode == "static"
    assert config.listeners[0].virtual_hosts == ()
    with pytest.raises(ConfigError, match="missing required field 'services'"):
        load_config_text("discovery: {static: {}}\n")
    assert load_config_text("services: []\n").discovery.kubernetes is None


@pytest.mark.parametrize(
    ("section", "field", "line", "message"),
    [
        ("kubernetes: {endpoints_api: slices}", "discovery.kubernetes.endpoints_api", 3,
         "unsupported value 'slices'"),
        ("kubernetes:\n    watch_timeout: 1s", "discovery.kubernetes.watch_timeout", 4,
         "at least 10s"),
        ("kubernetes: {node_proxy_port: 0}", "discovery.kubernetes.node_proxy_port", 3, ">= 1"),
        ("kubernetes: {kubeconfg: x}", "discovery.kubernetes.kubeconfg", 3, "unknown field"),
        ("kubernetes: {}\n  static: {}", "discovery", 3, "exactly one of static, kubernetes"),
        ("consul: {}", "discovery.consul", 3, "unknown field"),
        ("static: {x: 1}", "discovery.static.x", 3, "unknown field"),
    ],
)  # fmt: skip
def test_field_named_errors_with_lines(section: str, field: str, line: int, message: str) -> None:
    text = f"services: []\ndiscovery:\n  {section}\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text, source="np.yaml")
    assert (info.value.field, info.value.line, info.value.file) == (field, line, "np.yaml")
    assert message in info.value.message


@pytest.mark.parametrize(
    ("authority", "cluster"),
    [
        ("bdgreeter", "bdgreeter"),
        ("bdgreeter.default", "bdgreeter"),
        ("bdgreeter.default.svc.cluster.local", "bdgreeter"),
        ("bdgreeter:8080", "bdgreeter:8080"),
        ("db.prod", "db.prod"),
        ("db.prod.svc:5432", "db.prod:5432"),
    ],
)
def test_catch_all_route_names_the_discovered_cluster(authority: str, cluster: str) -> None:
    config = load_config_text(
        "discovery: {kubernetes: {}}\n"
        "services: [{name: pinned, endpoints: ['10.0.0.9:80'], routes: [{service: pinned}]}]\n"
    )
    router = Router(config.listeners[0])
    decision = router.route(parse_authority(authority), authority, "/x", [])
    assert decision.cluster == cluster
    assert decision.virtual_host.name == "kubernetes"
    pinned = router.route(parse_authority("pinned"), "pinned", "/", [])
    assert (pinned.virtual_host.name, pinned.cluster) == ("pinned", "pinned")  # configured wins
    with pytest.raises(UnknownService):
        router.route(parse_authority("10.1.2.3:80"), "10.1.2.3:80", "/", [])


def test_catalog_follows_snapshots_and_overlay_keeps_configured_endpoints() -> None:
    db = EndpointConfig("10.0.0.9", 5432)
    configured = {
        "db": ClusterConfig("db", endpoints=(db,)),
        "web": ClusterConfig("web", response_timeout=3.0),
    }
    registry = OverlayRegistry({n: c.endpoints for n, c in configured.items()})
    catalog = ClusterCatalog(configured, registry, "default")
    assert list(catalog) == ["db", "web"]
    assert "api.shop:8080" not in catalog
    a = EndpointConfig("10.1.0.1", 8080, node="node-2")
    registry.publish({"api.shop:8080": (a,), "web": (a,), "db": ()})
    assert registry.current().endpoints("db") == (db,)  # configured endpoints survive
    assert registry.current().endpoints("web") == (a,)  # discovered, configured settings
    assert catalog["web"].response_timeout == 3.0
    api = catalog["api.shop:8080"]
    assert (api.name, api.namespace, api.response_timeout) == ("api.shop:8080", "shop", 15.0)
    assert len(catalog) == 3
    assert catalog.get("nosuch") is None
    registry.publish({})
    assert "api.shop:8080" not in catalog
    assert list(catalog) == ["db", "web"]
    assert repr(catalog) == "<ClusterCatalog [2 configured, 0 discovered, 0 in use]>"
    registry.publish({f"s{i}": (a,) for i in range(100)})
    assert len(catalog) == 102
    assert catalog["s7"] is catalog["s7"]  # made once, on first use
    assert repr(catalog) == "<ClusterCatalog [2 configured, 100 discovered, 1 in use]>"


def test_kubeconfig_flag_turns_discovery_on_and_overrides(tmp_path: Path) -> None:
    static = load_config_text("services: [{name: db, endpoints: ['10.0.0.9:5432']}]\n")
    config = with_kubeconfig(static, "/tmp/kc", "dev")
    assert config.discovery.kubernetes == KubernetesConfig(kubeconfig="/tmp/kc", context="dev")
    assert config.listeners[0].virtual_hosts[-1] == KUBERNETES_VHOST
    k8s = load_config_text("discovery: {kubernetes: {endpoints_api: endpoints, context: a}}\n")
    config = with_kubeconfig(k8s, "/tmp/kc")
    assert config.discovery.kubernetes == KubernetesConfig(
        endpoints_api="endpoints", kubeconfig="/tmp/kc", context="a"
    )
    assert config.listeners == k8s.listeners  # the catch-all route is not added twice


async def test_an_unreadable_kubeconfig_stops_run_with_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("discovery: {kubernetes: {}}\nlisteners: [{address: '127.0.0.1:0'}]\n")
    nope = tmp_path / "nope"
    result = await trio.run_process(
        [sys.executable, "-m", "nodeproxy", "run", "-c", str(path), "--kubeconfig", str(nope)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.decode().startswith(
        f"nodeproxy: config error: discovery.kubernetes.kubeconfig: cannot read kubeconfig {nope}"
    )


def test_mesh_takes_peers_and_pod_identities_from_discovery(ca_dir: Path) -> None:
    config: Config = load_config_text(
        f"node_name: node-1\ndiscovery: {{kubernetes: {{}}}}\nmesh: {{ca_dir: {ca_dir}}}\n"
    )
    mesh = Mesh.create(config, Stats())
    assert dict(mesh.nodes) == {}
    assert mesh.sources.lookup("10.0.1.5") is None
    web = SpiffeId.workload("shop", "web")
    mesh.update(
        {"node-2": "10.77.0.12:4143", "node-6": "[fd00::6]:4143"},
        {"10.0.1.5": PodIdentity("web-1", "shop", "web")},
    )
    assert dict(mesh.nodes) == {"node-2": ("10.77.0.12", 4143), "node-6": ("fd00::6", 4143)}
    assert mesh.sources.lookup("10.0.1.5") == web
    assert mesh.sources.lookup("10.0.1.6") is None
    assert mesh.certs.client_context(web) is not None  # minted for the new local workload
    mesh.update({}, {})
    assert mesh.certs.client_context(web) is None
    assert dict(mesh.nodes) == {}


def test_the_daemonset_config_passes_check_config(
    tmp_path: Path,
    ca_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "daemonset.yaml").read_text()))
    [cm] = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("config")
    ]
    text = cm["data"]["config.yaml"]
    # the mounts (CA certificate ConfigMap, projected signer token): test files stand in
    token = tmp_path / "token"
    token.write_text("header.payload.signature\n")
    for mounted, local in {
        "ca_cert: /etc/nodeproxy/ca/ca.crt ": f"ca_cert: {ca_dir / 'ca.crt'} ",
        "token_file: /var/run/secrets/nodeproxy-signer/token ": f"token_file: {token} ",
    }.items():
        assert mounted in text
        text = text.replace(mounted, local)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    for name, value in {"NODE_NAME": "node-1", "HOST_IP": "10.0.0.1"}.items():
        monkeypatch.setenv(name, value)
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: native config")
    assert out.endswith("admin 127.0.0.1:9901, discovery kubernetes\n")
    config = load_config_text(path.read_text(), source=str(path))
    assert config.discovery.kubernetes is not None
    assert config.discovery.kubernetes.watch_timeout == 300.0
    assert config.node_name == "node-1"
    assert (config.admin.host, config.admin.probe_host, config.admin.probe_port) == (
        "127.0.0.1",
        "127.0.0.1",
        9902,
    )
    assert (config.listeners[0].host, config.listeners[0].port) == ("169.254.20.41", 4140)
    assert (config.handoff_socket, config.after_handoff) == ("/run/nodeproxy/handoff.sock", "wait")
    assert config.listeners[0].virtual_hosts[-1] == KUBERNETES_VHOST
