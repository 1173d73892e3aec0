"""The native ``mesh:`` section -> ``MeshConfig`` (node-to-node mTLS and policy).

Why a module of its own: the mesh section is the only part of the config that
names files holding key material (``ca_dir``, or ``ca_cert`` with a
``signer``) and the only one whose values
are cross-checked against the services (every endpoint ``node:`` needs an
inbound address). Both checks happen here, at load time, so ``check-config``
catches a missing CA or a typo in a node name instead of the first request.

The CA is opened once here only to prove it is usable; the running app loads
it again (the key never becomes part of ``Config``, which ``/config_dump``
serves).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from yaml.constructor import SafeConstructor

from nodeproxy.config.checks import Binds, dns_label
from nodeproxy.config.model import ClusterConfig, MeshConfig, SignerConfig, WorkloadConfig
from nodeproxy.config.yamlsrc import Fields, Node
from nodeproxy.errors import ConfigError
from nodeproxy.policy.parse import parse_policy
from nodeproxy.tls.ca import CAError, load_ca, load_ca_cert
from nodeproxy.tls.identity import InvalidSpiffeId, SpiffeId, validate_trust_domain

MESH_KEYS = (
    "trust_domain", "ca_dir", "ca_cert", "signer", "cert_lifetime", "renew_fraction", "inbound",
    "nodes", "workloads", "default_identity", "enforce_outbound", "policy", "http_tunnel",
)  # fmt: skip
DEFAULT_INBOUND = ("0.0.0.0", 4143)


def _http_tunnel(node: Node) -> Literal["auto", "off"]:
    return "off" if node.choice("auto", "off") == "off" else "auto"


def read_mesh(node: Node, *, default_ns: str, node_name: str, binds: Binds) -> MeshConfig:
    """Validate the ``mesh`` mapping; the inbound address joins ``binds``."""
    f = node.fields(*MESH_KEYS)
    if not node_name:
        raise node.error("a mesh needs node_name (this node's name, e.g. ${NODE_NAME})")
    td_node = f.get("trust_domain")
    trust_domain = "cluster.local"
    if td_node is not None:
        try:
            trust_domain = validate_trust_domain(td_node.text())
        except InvalidSpiffeId as exc:
            raise td_node.error(exc.reason) from None
    ca_dir, ca_cert, signer = _issuer(node, f, trust_domain)
    inbound = DEFAULT_INBOUND
    if (addr := f.get("inbound")) is not None:
        inbound = addr.address(allow_zero_port=True)
        binds.append((addr, *inbound))
    nodes: dict[str, tuple[str, int]] = f.opt("nodes", _nodes, {})
    workloads = tuple(_workload(w, default_ns, td=trust_domain) for w in f.items("workloads"))
    default_identity = f.opt("default_identity", lambda n: _sa(n, default_ns, trust_domain), None)
    policy_node = f.get("policy")
    try:
        policy = parse_policy(
            None if policy_node is None else _plain(policy_node),
            default_namespace=default_ns,
            field="mesh.policy",
        )
    except ConfigError as exc:
        assert policy_node is not None  # None parses to allow-all
        raise ConfigError(exc.field, exc.message, policy_node.line, node.source.file) from None
    lifetime = f.opt("cert_lifetime", Node.duration, 24 * 3600.0)
    if lifetime < 60:
        raise f.need("cert_lifetime").error("must be at least 1m")
    return MeshConfig(
        ca_dir=ca_dir,
        ca_cert=ca_cert,
        signer=signer,
        trust_domain=trust_domain,
        cert_lifetime=lifetime,
        renew_fraction=f.opt("renew_fraction", _fraction, 2 / 3),
        inbound_host=inbound[0],
        inbound_port=inbound[1],
        nodes=MappingProxyType(nodes),
        workloads=workloads,
        default_identity=default_identity,
        enforce_outbound=f.opt("enforce_outbound", Node.flag, False),
        http_tunnel=f.opt("http_tunnel", _http_tunnel, "auto"),
        policy=policy,
    )


def _issuer(
    node: Node, f: Fields, trust_domain: str
) -> tuple[str | None, str | None, SignerConfig | None]:
    """(ca_dir, ca_cert, signer): the local CA, or the signer and the CA certificate."""
    signer_node, cert_node, dir_node = f.get("signer"), f.get("ca_cert"), f.get("ca_dir")
    if signer_node is None:
        if cert_node is not None:
            raise cert_node.error(
                "ca_cert (the CA certificate alone) needs mesh.signer; "
                "without a signer use ca_dir (certificate and key)"
            )
        ca_node = f.need("ca_dir")
        ca_dir = ca_node.text()
        try:
            ca = load_ca(ca_dir)
        except CAError as exc:
            hint = f"create one with: nodeproxy ca init --dir {ca_dir}"
            raise ca_node.error(f"{exc} ({hint})") from None
        _same_domain(ca_node, ca.trust_domain, trust_domain)
        return ca_dir, None, None
    if dir_node is not None:
        raise dir_node.error("use either ca_dir (a local CA) or signer with ca_cert, not both")
    if cert_node is None:
        raise node.error("mesh.signer needs mesh.ca_cert (the CA certificate file)")
    try:
        _, ca_domain = load_ca_cert(cert_node.text())
    except CAError as exc:
        raise cert_node.error(str(exc)) from None
    _same_domain(cert_node, ca_domain, trust_domain)
    return None, cert_node.text(), _signer(signer_node)


def _same_domain(at: Node, ca_domain: str, trust_domain: str) -> None:
    if ca_domain != trust_domain:
        raise at.error(f"the CA is for trust domain {ca_domain!r}, not {trust_domain!r}")


def _signer(node: Node) -> SignerConfig:
    f = node.fields("url", "token_file", "timeout", "max_backoff")
    url_node = f.need("url")
    url = url_node.text()
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme != "https" or not parts.hostname or port == -1 or parts.path not in ("", "/"):
        raise url_node.error(f"expected https://host[:port] (the signer's Service), got {url!r}")
    return SignerConfig(
        url=url.rstrip("/"),
        token_file=f.need("token_file").text(),
        timeout=f.opt("timeout", Node.duration, 10.0),
        max_backoff=f.opt("max_backoff", Node.duration, 60.0),
    )


def check_endpoint_nodes(mesh: MeshConfig, node_name: str, clusters: Mapping[str, Any]) -> None:
    """Every endpoint on another node needs that node's inbound address in ``mesh.nodes``."""
    for cluster in clusters.values():
        assert isinstance(cluster, ClusterConfig)
        for ep in cluster.endpoints:
            if ep.node and ep.node != node_name and ep.node not in mesh.nodes:
                raise ConfigError(
                    "mesh.nodes",
                    f"no inbound address for node {ep.node!r} "
                    f"(endpoint {ep.address} of service {cluster.name})",
                )


def _nodes(node: Node) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for name, value in node.entries().items():
        try:
            SpiffeId.node(name)
        except InvalidSpiffeId:
            raise value.error(f"{name!r} is not a valid node name (DNS-1123 subdomain)") from None
        out[name] = value.address()
    return out


def _workload(node: Node, default_ns: str, *, td: str) -> WorkloadConfig:
    f = node.fields("source", "namespace", "service_account", "node")
    src = f.need("source")
    try:
        network = ipaddress.ip_network(src.text(), strict=True)
    except ValueError as exc:
        raise src.error(f"expected an IP or CIDR: {exc}") from None
    ns, sa = _sa(node, default_ns, td, extra=("source", "node"))
    return WorkloadConfig(
        source=str(network),
        namespace=ns,
        service_account=sa,
        node=f.opt("node", Node.text, None),
    )


def _sa(node: Node, default_ns: str, td: str, extra: tuple[str, ...] = ()) -> tuple[str, str]:
    f = node.fields("namespace", "service_account", *extra)
    ns = f.opt("namespace", dns_label, default_ns)
    sa_node = f.need("service_account")
    try:
        sid = SpiffeId.workload(ns, sa_node.text(), td)
    except InvalidSpiffeId as exc:
        raise sa_node.error(exc.reason) from None
    assert sid.service_account is not None
    return ns, sid.service_account


def _fraction(node: Node) -> float:
    try:
        value = float(node.text())
    except ValueError:
        raise node.error("expected a number between 0 and 1") from None
    if not 0.1 <= value <= 0.9:
        raise node.error(f"must be between 0.1 and 0.9, got {value}")
    return value


def _plain(node: Node) -> Any:
    """The Python value of a YAML subtree (the policy parser takes plain data)."""
    if not isinstance(node.node, yaml.Node):  # pragma: no cover - composed nodes only
        raise node.error("unexpected value")
    return SafeConstructor().construct_object(node.node, deep=True)  # type: ignore[no-untyped-call]  # PyYAML has no annotations
