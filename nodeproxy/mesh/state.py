"""The per-process mesh state, built once at start from ``config.mesh``.

``Mesh`` bundles what both mesh steps read: this node's name, the
certificates (``MeshCertificates``, owned by its rotation task), the
source -> identity table, the peers' inbound addresses and the policy. All of
it is immutable except the certificates, whose only writer is the rotation
task; the data path reads contexts once per connection.

Also here: the policy counters and the rule that decided a request, noted in
its ``Exchange`` (``policy_rule``, for the access line), shared by the
inbound and outbound steps, so both answer a refusal the same way.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

import structlog
from cryptography.hazmat.primitives import serialization

from nodeproxy.config.model import (
    ClusterConfig,
    Config,
    EndpointConfig,
    MeshConfig,
    WorkloadConfig,
)
from nodeproxy.policy.model import Decision, Denied, Policy
from nodeproxy.stats.names import POLICY_ALLOWED, POLICY_DENIED
from nodeproxy.stats.registry import Stats, labels
from nodeproxy.tls.ca import CAError, CertificateAuthority, load_ca, load_ca_cert, utc_now
from nodeproxy.tls.context import TLSConfigError
from nodeproxy.tls.identity import SpiffeId
from nodeproxy.tls.node_certs import MeshCertificates
from nodeproxy.tls.renewal import Backoff
from nodeproxy.tls.signer_client import SignerClient
from nodeproxy.tls.sources import SourceIdentities

if TYPE_CHECKING:
    from nodeproxy.server.downstream import Exchange
    from nodeproxy.upstream.peer import TunnelEndpoint

DEFAULT_RULE = "(default)"  # the rule name logged when default_action decided

DESTINATION_HEADER = b"x-nodeproxy-destination"
SERVICE_HEADER = b"x-nodeproxy-service"
XFCC_HEADER = b"x-forwarded-client-cert"

log = structlog.get_logger("nodeproxy.policy")


def is_mesh_header(name: bytes) -> bool:
    """Headers only a node proxy may set: never trusted from a plaintext client."""
    return name.startswith(b"x-nodeproxy-") or name == XFCC_HEADER


def service_of(cluster: ClusterConfig) -> str:
    """The ``svc.ns`` name policies use for ``cluster`` (a Service port's cluster,
    ``svc[.ns]:<port>``, is its Service's)."""
    name = cluster.name.partition(":")[0]
    return name if "." in name else f"{name}.{cluster.namespace}"


class PodIdentity(Protocol):
    """Who a discovered pod runs as (discovery/kubernetes/translate.py's PodIdentity)."""

    @property
    def namespace(self) -> str: ...
    @property
    def service_account(self) -> str: ...


@dataclass
class Mesh:
    """Everything the mesh steps of the data path need, for one node.

    ``nodes`` (peer inbound addresses) and ``sources`` are replaced whole by
    ``update`` when discovery runs; request tasks read each once per request.
    """

    config: MeshConfig
    node_name: str
    certs: MeshCertificates
    sources: SourceIdentities
    stats: Stats
    nodes: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    _inputs: tuple[object, object] | None = field(default=None, repr=False)
    # HTTP through tunnels: (peer, address, caller, pod, service) -> (TunnelEndpoint,
    # x-forwarded-client-cert), made once (mesh/outbound.py; bounded there)
    tunnels: dict[tuple[object, ...], tuple[TunnelEndpoint, bytes]] = field(
        default_factory=dict, repr=False
    )

    @classmethod
    def create(cls, config: Config, stats: Stats) -> Mesh:
        """Load the CA (or its certificate, with a signer); a local CA mints at once.

        Raises CAError if unusable. With a signer the first certificates come
        from the rotation task (``certs.run``), which the app starts.
        """
        assert config.mesh is not None
        mesh = config.mesh
        sources = SourceIdentities.from_config(mesh, config.node_name)
        issuer: CertificateAuthority | SignerClient
        if mesh.signer is not None:
            assert mesh.ca_cert is not None  # the loader requires it with a signer
            cert, trust_domain = load_ca_cert(mesh.ca_cert)
            pem = cert.public_bytes(serialization.Encoding.PEM)
            s = mesh.signer
            issuer = SignerClient(s.url, s.token_file, pem, trust_domain, timeout=s.timeout)
        else:
            assert mesh.ca_dir is not None
            issuer = load_ca(mesh.ca_dir)
        certs = MeshCertificates(
            issuer,
            config.node_name,
            sources.identities,
            lifetime=timedelta(seconds=mesh.cert_lifetime),
            renew_fraction=mesh.renew_fraction,
            backoff=Backoff(maximum=mesh.signer.max_backoff) if mesh.signer else None,
            stats=stats,
        )
        if certs.ca is not None:
            certs.refresh(utc_now())
        return cls(mesh, config.node_name, certs, sources, stats, nodes=mesh.nodes)

    def __repr__(self) -> str:
        return (
            f"<Mesh {self.node_name} [{len(self.nodes)} peers | {self.sources!r} "
            f"| {self.config.policy!r}]>"
        )

    def update(self, node_proxies: Mapping[str, str], pods: Mapping[str, PodIdentity]) -> None:
        """Take peers and local pods from discovery; mint certificates for new identities.

        ``node_proxies``: node name -> ``host:port`` of its inbound listener;
        ``pods``: pod IP -> identity, for this node's pods. Configured
        ``mesh.nodes`` and ``mesh.workloads`` still apply and win on a tie.
        Synchronous, like the certificate rotation task it shares ``certs`` with.
        """
        if self._inputs == (node_proxies, pods):
            return
        self._inputs = (dict(node_proxies), dict(pods))
        nodes = {name: _split_address(addr) for name, addr in node_proxies.items()}
        self.nodes = MappingProxyType({**nodes, **self.config.nodes})
        static = SourceIdentities.from_config(self.config, self.node_name)
        discovered = [
            WorkloadConfig(str(ipaddress.ip_network(ip)), p.namespace, p.service_account)
            for ip, p in pods.items()
        ]
        local = [w for w in self.config.workloads if w.node in (None, self.node_name)]
        self.sources = SourceIdentities(
            [*local, *discovered], self.config.trust_domain, static.default
        )
        wanted = frozenset({self.certs.node_id, *self.sources.identities})
        if wanted != self.certs.wanted:
            self.certs.want(wanted)  # wakes the rotation task: a signer is asked from there
            if self.certs.ca is not None:  # a local CA mints now, before the next request
                try:
                    self.certs.refresh(utc_now())
                except (CAError, TLSConfigError) as exc:  # the rotation task retries
                    log.error("certificate_issue_failed", error=str(exc))
        log.info("mesh_updated", peers=len(self.nodes), pods=len(pods))

    @property
    def policy(self) -> Policy:
        return self.config.policy

    @property
    def node_id(self) -> SpiffeId:
        return self.certs.node_id

    def is_local(self, endpoint: EndpointConfig) -> bool:
        """A pod of this node (reached directly, in plaintext)."""
        return endpoint.node == self.node_name

    def authorize(
        self,
        listener: str,
        caller: SpiffeId | None,
        service: str,
        ex: Exchange,
        port: int | None = None,
    ) -> Decision:
        """Decide on ``ex`` (method, path) to pod ``port``, count, note the rule in ``ex``
        for its access line; raise ``Denied`` (403)."""
        method, path = ex.method, ex.path
        decision = self.policy.decide(caller, service, method, path, port)
        ex.policy_rule = decision.rule or DEFAULT_RULE
        return self._enforce(decision, listener, caller, service, method=method, path=path)

    def authorize_tcp(
        self, listener: str, caller: SpiffeId | None, service: str, port: int
    ) -> Decision:
        """A connection (no HTTP to see): decide, count, log a refusal; raise ``Denied``."""
        decision = self.policy.decide_tcp(caller, service, port)
        return self._enforce(decision, listener, caller, service, port=port, tcp=True)

    def _enforce(
        self,
        decision: Decision,
        listener: str,
        caller: SpiffeId | None,
        service: str,
        **request: object,
    ) -> Decision:
        """Count ``decision`` under its rule; a refusal is logged (with ``request``'s
        fields) and raised as ``Denied``."""
        rule = decision.rule or DEFAULT_RULE
        if decision.allowed:
            self.stats.inc(POLICY_ALLOWED, labels(listener=listener, rule=rule))
            return decision
        self.stats.inc(POLICY_DENIED, labels(listener=listener, rule=rule))
        caller_text = str(caller) if caller else None
        log.info(
            "policy_denied", listener=listener, caller=caller_text, service=service, rule=rule,
            **request,
        )  # fmt: skip
        raise Denied(decision.rule)


def _split_address(address: str) -> tuple[str, int]:
    """``"10.0.0.1:4143"`` / ``"[fd00::1]:4143"`` -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)
