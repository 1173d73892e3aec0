"""The per-process mesh state, built once at start from ``config.mesh``.

``Mesh`` bundles what both mesh steps read: this node's name, the
certificates (``MeshCertificates``, owned by its rotation task), the
source -> identity table, the peers' inbound addresses and the policy. All of
it is immutable except the certificates, whose only writer is the rotation
task; the data path reads contexts once per connection.

Also here: the policy counters and the access-log binding of the rule that
decided a request (``policy_rule``), shared by the inbound and outbound
steps, so both answer a refusal the same way.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from datetime import timedelta

import structlog

from nodeproxy.admin.stats import Stats, labels
from nodeproxy.config.model import ClusterConfig, Config, EndpointConfig, MeshConfig
from nodeproxy.policy.model import Decision, Denied, Policy
from nodeproxy.tls.ca import load_ca, utc_now
from nodeproxy.tls.identity import SpiffeId
from nodeproxy.tls.node_certs import MeshCertificates
from nodeproxy.tls.sources import SourceIdentities

POLICY_DENIED = "nodeproxy_policy_denied_total"  # {listener, rule}
POLICY_ALLOWED = "nodeproxy_policy_allowed_total"  # {listener, rule}
DEFAULT_RULE = "(default)"  # the rule name logged when default_action decided

DESTINATION_HEADER = b"x-nodeproxy-destination"
SERVICE_HEADER = b"x-nodeproxy-service"
XFCC_HEADER = b"x-forwarded-client-cert"

log = structlog.get_logger("nodeproxy.policy")
_rule_bound: contextvars.ContextVar[bool] = contextvars.ContextVar("np_rule_bound", default=False)


def is_mesh_header(name: bytes) -> bool:
    """Headers only a node proxy may set: never trusted from a plaintext client."""
    return name.startswith(b"x-nodeproxy-") or name == XFCC_HEADER


def service_of(cluster: ClusterConfig) -> str:
    """The ``svc.ns`` name policies use for ``cluster``."""
    return cluster.name if "." in cluster.name else f"{cluster.name}.{cluster.namespace}"


@dataclass
class Mesh:
    """Everything the mesh steps of the data path need, for one node."""

    config: MeshConfig
    node_name: str
    certs: MeshCertificates
    sources: SourceIdentities
    stats: Stats

    @classmethod
    def create(cls, config: Config, stats: Stats) -> Mesh:
        """Load the CA and mint this node's certificates (raises CAError if unusable)."""
        assert config.mesh is not None
        mesh = config.mesh
        sources = SourceIdentities.from_config(mesh, config.node_name)
        certs = MeshCertificates(
            load_ca(mesh.ca_dir),
            config.node_name,
            sources.identities,
            lifetime=timedelta(seconds=mesh.cert_lifetime),
            renew_fraction=mesh.renew_fraction,
        )
        certs.refresh(utc_now())
        return cls(mesh, config.node_name, certs, sources, stats)

    def __repr__(self) -> str:
        return (
            f"<Mesh {self.node_name} [{len(self.config.nodes)} peers | {self.sources!r} "
            f"| {self.config.policy!r}]>"
        )

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
        self, listener: str, caller: SpiffeId | None, service: str, method: str, path: str
    ) -> Decision:
        """Decide, count, bind ``policy_rule`` for the access log; raise ``Denied`` (403)."""
        decision = self.policy.decide(caller, service, method, path)
        rule = decision.rule or DEFAULT_RULE
        structlog.contextvars.bind_contextvars(policy_rule=rule)
        _rule_bound.set(True)
        if decision.allowed:
            self.stats.inc(POLICY_ALLOWED, labels(listener=listener, rule=rule))
            return decision
        self.stats.inc(POLICY_DENIED, labels(listener=listener, rule=rule))
        log.info(
            "policy_denied",
            listener=listener,
            caller=str(caller) if caller else None,
            service=service,
            method=method,
            path=path,
            rule=rule,
        )
        raise Denied(decision.rule)


def forget_rule() -> None:
    """Start of a request: the previous request's ``policy_rule`` must not leak into it."""
    if _rule_bound.get():
        structlog.contextvars.unbind_contextvars("policy_rule")
        _rule_bound.set(False)
