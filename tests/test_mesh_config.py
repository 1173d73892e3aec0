"""The ``mesh:`` config section, source identities and the pure mesh decisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeproxy.config import load_config_text
from nodeproxy.config.model import ClusterConfig, EndpointConfig, WorkloadConfig
from nodeproxy.errors import ConfigError, MissingDestination, NotLocalDestination
from nodeproxy.mesh.inbound import local_destinations, pick_destination
from nodeproxy.mesh.state import is_mesh_header, service_of
from nodeproxy.policy.model import Action
from nodeproxy.tls.ca import init_ca
from nodeproxy.tls.identity import SpiffeId
from nodeproxy.tls.sources import SourceIdentities

BASE = """
node_name: node-a
services:
  - name: auth-api
    namespace: shop
    endpoints:
      - {{address: "10.0.1.5:8080", node: node-b}}
      - {{address: "10.0.0.5:8080", node: node-a}}
mesh:
  ca_dir: {ca}
{mesh}
"""


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca")
    init_ca(path)
    return path


def load(ca_dir: Path, mesh: str, base: str = BASE) -> object:
    base = 'listeners: [{{address: "0.0.0.0:4140"}}]\n' + base
    return load_config_text(base.format(ca=ca_dir, mesh=mesh), env={})


def test_defaults_and_full_section(ca_dir: Path) -> None:
    cfg = load_config_text(
        BASE.format(
            ca=ca_dir,
            mesh="""  nodes: {node-b: "10.0.1.1:4143"}
  cert_lifetime: 12h
  renew_fraction: 0.5
  inbound: "127.0.0.1:4243"
  enforce_outbound: true
  workloads:
    - {source: 10.0.0.0/24, namespace: shop, service_account: shop-default}
    - {source: 10.0.0.7, namespace: shop, service_account: webserver}
  default_identity: {service_account: anonymous}
  policy:
    default_action: allow
    rules: [{name: r1, action: deny, from: ["*"], to: ["auth-api.shop"], methods: [DELETE]}]
""",
        ),
        env={},
    )
    mesh = cfg.mesh
    assert mesh is not None
    assert (mesh.trust_domain, mesh.cert_lifetime, mesh.renew_fraction) == (
        "cluster.local",
        12 * 3600.0,
        0.5,
    )
    assert (mesh.inbound_host, mesh.inbound_port, mesh.enforce_outbound) == (
        "127.0.0.1",
        4243,
        True,
    )
    assert dict(mesh.nodes) == {"node-b": ("10.0.1.1", 4143)}
    assert [w.source for w in mesh.workloads] == ["10.0.0.0/24", "10.0.0.7/32"]
    assert mesh.default_identity == ("default", "anonymous")
    assert mesh.policy.default_action is Action.ALLOW
    assert [r.name for r in mesh.policy.rules] == ["r1"]
    minimal = load_config_text(
        BASE.format(ca=ca_dir, mesh='  nodes: {node-b: "10.0.1.1:4143"}'), env={}
    ).mesh
    assert minimal is not None
    assert (minimal.inbound_host, minimal.inbound_port) == ("0.0.0.0", 4143)
    assert (minimal.cert_lifetime, minimal.default_identity) == (86400.0, None)
    assert minimal.policy.default_action is Action.ALLOW  # no policy section: allow all
    assert minimal.enforce_outbound is False


@pytest.mark.parametrize(
    ("mesh", "field", "message"),
    [
        ("", "mesh.nodes", "no inbound address for node 'node-b'"),
        ('  nodes: {node-b: "nope"}', "mesh.nodes.node-b", "host:port"),
        ('  nodes: {node-b: "1.2.3.4:1", Node_B: "1.2.3.4:1"}', "Node_B", "not a valid node"),
        ("  workloads: [{source: 10.0.0.1/8, service_account: a}]", "source", "host bits"),
        ("  workloads: [{source: x, service_account: a}]", "mesh.workloads[0].source", "IP"),
        ("  workloads: [{source: 10.0.0.1}]", "mesh.workloads[0]", "service_account"),
        ("  workloads: [{source: 10.0.0.1, service_account: A_B}]", "service_account", "name"),
        ("  default_identity: {namespace: shop}", "mesh.default_identity", "service_account"),
        ("  cert_lifetime: 10s", "mesh.cert_lifetime", "at least 1m"),
        ("  renew_fraction: 2", "mesh.renew_fraction", "between"),
        ("  trust_domain: Cluster.Local", "mesh.trust_domain", "lowercase"),
        ("  trust_domain: other.td", "mesh.ca_dir", "trust domain 'cluster.local'"),
        ("  bogus: 1", "mesh.bogus", "unknown field"),
        ("  policy: {rules: [{name: a, action: allow, from: [x], to: [y]}]}", "from[0]", ""),
        ("  policy: {default_action: maybe}", "mesh.policy.default_action", "allow"),
        ('  inbound: "127.0.0.1:4140"', "mesh.inbound", "also used by listeners[0]"),
    ],
)
def test_field_named_errors(ca_dir: Path, mesh: str, field: str, message: str) -> None:
    nodes = '  nodes: {node-b: "10.0.1.1:4143"}\n' if "node-b" not in mesh and mesh else ""
    with pytest.raises(ConfigError) as info:
        load(ca_dir, nodes + mesh)
    assert field in info.value.field
    assert message in info.value.message


def test_missing_ca_and_missing_node_name(tmp_path: Path, ca_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"mesh.ca_dir.*nodeproxy ca init") as info:
        load(tmp_path / "none", '  nodes: {node-b: "10.0.1.1:4143"}')
    assert info.value.line is not None
    with pytest.raises(ConfigError, match="node_name"):
        load(ca_dir, '  nodes: {node-b: "10.0.1.1:4143"}', BASE.replace("node_name: node-a", ""))


def test_source_identities_most_specific_wins_and_default() -> None:
    cfg_default = SpiffeId.workload("shop", "anonymous")
    workloads = [
        WorkloadConfig("10.0.0.0/24", "shop", "shop-default"),
        WorkloadConfig("10.0.0.7/32", "shop", "webserver"),
        WorkloadConfig("fd00::/64", "ops", "v6"),
    ]
    table = SourceIdentities(workloads, "cluster.local")
    assert table.lookup("10.0.0.7") == SpiffeId.workload("shop", "webserver")
    assert table.lookup("10.0.0.8") == SpiffeId.workload("shop", "shop-default")
    assert table.lookup("fd00::1") == SpiffeId.workload("ops", "v6")
    assert table.lookup("10.0.1.1") is None
    assert table.lookup("not-an-ip") is None
    with_default = SourceIdentities(workloads, "cluster.local", cfg_default)
    assert with_default.lookup("10.0.1.1") == cfg_default
    assert cfg_default in with_default.identities
    assert "default spiffe://cluster.local/ns/shop/sa/anonymous" in repr(with_default)


def test_destination_table() -> None:
    here = EndpointConfig("10.0.0.5", 8080, node="node-a")
    there = EndpointConfig("10.0.1.5", 8080, node="node-b")
    auth = ClusterConfig("auth-api.shop", (here, there), namespace="shop")
    login = ClusterConfig("login", (here,), namespace="shop")
    clusters = {"auth-api.shop": auth, "login": login}
    local = local_destinations(clusters, {k: c.endpoints for k, c in clusters.items()}, "node-a")
    assert set(local) == {"10.0.0.5:8080"}
    with pytest.raises(NotLocalDestination):
        pick_destination(local, "10.0.1.5:8080", None)
    with pytest.raises(MissingDestination, match="several services"):
        pick_destination(local, "10.0.0.5:8080", None)
    assert pick_destination(local, "10.0.0.5:8080", "login.shop")[2] == "login.shop"
    with pytest.raises(NotLocalDestination):
        pick_destination(local, "10.0.0.5:8080", "database.shop")
    assert service_of(auth) == "auth-api.shop"
    assert service_of(login) == "login.shop"
    assert is_mesh_header(b"x-nodeproxy-destination")
    assert is_mesh_header(b"x-forwarded-client-cert")
    assert not is_mesh_header(b"x-request-id")
