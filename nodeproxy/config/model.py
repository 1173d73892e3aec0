"""The validated, immutable configuration every other module reads.

Both front ends (our native YAML in ``loader.py`` and an Envoy bootstrap in
``envoy.py``) produce exactly these objects, so nothing past the loader knows
which format the operator wrote. All durations are float seconds; all objects
are frozen, so a config can be shared by every task without an owner.

Route rules, matches and their actions live in ``model_routes.py`` and are
re-exported here. Vocabulary follows Envoy: a *listener* holds *virtual hosts* (matched by the
request authority), each with ordered *routes* that send to a *cluster*
(a set of endpoints). In the native format one ``services:`` entry yields
both a virtual host and a cluster of the same name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from nodeproxy.config.model_routes import EMPTY_LABELS as EMPTY_LABELS
from nodeproxy.config.model_routes import BucketConfig as BucketConfig
from nodeproxy.config.model_routes import CorsPolicy as CorsPolicy
from nodeproxy.config.model_routes import DirectResponse as DirectResponse
from nodeproxy.config.model_routes import FairnessConfig as FairnessConfig
from nodeproxy.config.model_routes import HeaderMatch as HeaderMatch
from nodeproxy.config.model_routes import HeaderMutation as HeaderMutation
from nodeproxy.config.model_routes import QueryMatch as QueryMatch
from nodeproxy.config.model_routes import RateLimitConfig as RateLimitConfig
from nodeproxy.config.model_routes import Redirect as Redirect
from nodeproxy.config.model_routes import RetryConfig as RetryConfig
from nodeproxy.config.model_routes import RouteMatch as RouteMatch
from nodeproxy.config.model_routes import RouteRule as RouteRule
from nodeproxy.config.model_routes import VirtualHost as VirtualHost
from nodeproxy.config.model_routes import WeightedCluster as WeightedCluster
from nodeproxy.policy.model import Policy

if TYPE_CHECKING:  # the resilience cores import this module: annotations only
    from nodeproxy.resilience.health import HealthCheckConfig
    from nodeproxy.resilience.outlier import OutlierConfig
    from nodeproxy.resilience.overload import OverloadLimits


# The HTTP/1.1 codecs (nodeproxy/http1/impl.py picks one per process, at import, from
# the environment variable; cli.py sets it from ``Config.codec`` before that import).
CodecName = Literal["auto", "h11", "h11-mypyc"]
CODEC_NAMES: tuple[CodecName, ...] = ("auto", "h11", "h11-mypyc")
CODEC_ENV = "NODEPROXY_CODEC"

# The balancer names a config may use (balancing/policies.py builds them). Kept here, not
# there, so that loading a config never imports the balancers (an import cycle otherwise).
LB_POLICIES = ("p2c_ewma", "least_request", "round_robin", "weighted_round_robin", "random")
DEFAULT_LB_POLICY = "p2c_ewma"


@dataclass(frozen=True)
class EndpointConfig:
    host: str
    port: int
    # mappingproxy is unhashable on 3.11: default via factory, and left out of hash()
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_LABELS, hash=False)
    node: str | None = None  # which node the endpoint lives on (the mesh: same node or mTLS)
    weight: float | None = None  # relative share for the balancer (None: 1, or the label)

    @cached_property  # read on every request (pool key, stats labels); computed once
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    endpoints: tuple[EndpointConfig, ...] = ()
    namespace: str = "default"
    connect_timeout: float = 1.0
    response_timeout: float = 15.0  # whole response headers deadline (Envoy route default)
    lb_policy: str = DEFAULT_LB_POLICY  # one of LB_POLICIES
    max_connections_per_endpoint: int = 64
    idle_timeout: float = 60.0  # upstream keep-alive connections closed after this
    outlier: OutlierConfig | None = None  # None: Envoy's defaults (docs/traffic.md)
    circuit_breaker: BreakerConfig | None = None  # None: no consecutive-failure breaker
    overload: OverloadLimits | None = None  # None: Envoy's thresholds (1024 / 1024 / 1024 / 3)
    health_check: HealthCheckConfig | None = None  # None: no active HTTP health checks
    # The Service's ClusterIP:port addresses: an intercepted connection to one is carried
    # to a backend of this cluster (nodeproxy/tunnel/); discovery fills its own.
    vips: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class BreakerConfig:
    """A service's circuit breaker (``resilience/breaker.py``); the issue's 3 failures."""

    failure_threshold: int = 3
    open_interval: float = 5.0
    max_open_interval: float | None = None  # None: fixed at open_interval


@dataclass(frozen=True)
class ListenerConfig:
    name: str
    host: str = "0.0.0.0"
    port: int = 4140
    virtual_hosts: tuple[VirtualHost, ...] = ()
    rate_limit: RateLimitConfig | None = None  # before routing, for every request
    # Upgrade tokens relayed (lowercase; Envoy's upgrade_configs); any other -> 403.
    # ``h2c`` is never relayed: its Upgrade is removed (RFC 9113 §3.1 dropped it).
    upgrades: tuple[str, ...] = ("websocket",)
    # Forwarding and host matching (Envoy HCM semantics; defaults are the native format's).
    use_remote_address: bool = True  # Envoy HCM use_remote_address (Envoy default False)
    xff_num_trusted_hops: int = 0  # Envoy HCM xff_num_trusted_hops
    via: str | None = "1.1 nodeproxy"  # Envoy HCM via (Envoy default: unset = None)
    # How an authority's port takes part in virtual-host matching; Envoy default "exact"
    # (strip_any_host_port / strip_matching_host_port set the other two).
    host_port_match: Literal["strip_any", "strip_matching", "exact"] = "strip_any"
    # Keep an incoming x-forwarded-proto (the native rule). False: Envoy's rule, where
    # use_remote_address with xff_num_trusted_hops 0 replaces it with the connection's scheme.
    trust_forwarded_proto: bool = True
    # Also remove the port host_port_match strips from the Host sent upstream, as Envoy's
    # strip_*_host_port do (the native format forwards the Host as the client wrote it).
    strip_port_upstream: bool = False


@dataclass(frozen=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 9901
    # Host names (lowercase, ``name`` or ``name:port``) answered besides the bind
    # address and localhost; any other Host gets 421 (docs/admin.md, DNS rebinding).
    allowed_hosts: tuple[str, ...] = ()
    # A second listener for the kubelet's probes, answering /ready and /healthz only
    # (admin/probes.py); None = no probe listener.
    probe_host: str = "127.0.0.1"
    probe_port: int | None = None


@dataclass(frozen=True)
class Limits:
    """Bounds on what one downstream client can make the proxy hold."""

    max_request_header_bytes: int = 60 * 1024  # Envoy's default; over it -> 431
    max_downstream_connections: int = 1024  # per listener; the oldest idle is closed first
    header_read_timeout: float = 10.0  # slowloris guard: time to receive request headers
    downstream_idle_timeout: float = 60.0  # keep-alive idle between requests
    drain_timeout: float = 20.0  # SIGTERM: in-flight requests get this long
    stream_chunk_bytes: int = 64 * 1024  # read size for bodies; bounds per-stream memory
    # A request body must average request_body_min_rate bytes/s once request_body_timeout
    # has passed (Apache mod_reqtimeout's body=20,MinRate=500 shape); 0 = no rate floor.
    request_body_timeout: float = 10.0
    request_body_min_rate: int = 1024
    stream_idle_timeout: float = 300.0  # Envoy's name and default: a silent body or tunnel
    # A TCP tunnel (nodeproxy/tunnel/) with no byte either way: Envoy's tcp_proxy default.
    # Longer than stream_idle_timeout: database and broker connections sit idle in pools.
    tcp_idle_timeout: float = 3600.0
    max_connections_per_source: int = 256  # per listener and client IP; 0 = no cap


@dataclass(frozen=True)
class LogConfig:
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True


@dataclass(frozen=True)
class WorkloadConfig:
    """A static source identity: pods at ``source`` (an IP or CIDR) run as this SA."""

    source: str  # normalised network, e.g. "127.0.0.2/32"
    namespace: str
    service_account: str
    node: str | None = None  # None: a pod of this node


@dataclass(frozen=True)
class SignerConfig:
    """``mesh.signer``: certificates come from ``nodeproxy signer``, not a local CA key."""

    url: str  # https://host:port; the host must be a DNS name in the signer's certificate
    token_file: str  # projected service-account token, audience nodeproxy-signer
    timeout: float = 10.0  # per request: connect, TLS, answer
    max_backoff: float = 60.0  # retries after a failure: 1 s, 2 s, ... up to this


@dataclass(frozen=True)
class MeshConfig:
    """Node-to-node mTLS, workload identities and authorization (docs/security.md).

    Exactly one issuer: ``ca_dir`` (CA certificate and key on this node) or
    ``signer`` with ``ca_cert`` (only the CA certificate here).
    """

    ca_dir: str | None
    trust_domain: str = "cluster.local"
    cert_lifetime: float = 24 * 3600.0
    renew_fraction: float = 2 / 3
    inbound_host: str = "0.0.0.0"
    inbound_port: int = 4143
    nodes: Mapping[str, tuple[str, int]] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )  # node name -> (host, port) of its inbound listener
    workloads: tuple[WorkloadConfig, ...] = ()
    default_identity: tuple[str, str] | None = None  # (namespace, service account)
    enforce_outbound: bool = False  # also check cross-node requests before they leave
    # HTTP to another node's pod: "auto" sends it through a CONNECT tunnel when the
    # destination's policy has no HTTP rules (that node only splices); "off": always
    # the per-request hop, which the destination node parses (nodeproxy/tunnel/).
    http_tunnel: Literal["auto", "off"] = "auto"
    policy: Policy = field(default_factory=Policy.allow_all)
    ca_cert: str | None = None  # with signer: the CA certificate file
    signer: SignerConfig | None = None


@dataclass(frozen=True)
class KubernetesConfig:
    """``discovery.kubernetes``: where the API is and what to watch (docs/kubernetes.md).

    The node name is the top-level ``node_name`` (``${NODE_NAME}``); this
    mirrors ``discovery.kubernetes.KubernetesDiscoveryConfig``, which app.py
    builds from it (the config model must not import the discovery code).
    """

    endpoints_api: Literal["endpointslices", "endpoints"] = "endpointslices"
    kubeconfig: str | None = None  # None: the in-cluster service account
    context: str | None = None  # kubeconfig context; None: its current-context
    watch_timeout: float = 300.0  # server-side timeoutSeconds, jittered to [T, 2T)
    node_proxy_port: int = 4143  # every node's inbound mTLS port (node -> InternalIP:port)
    endpoint_grace: float = 60.0  # a pool whose endpoint left discovery is forgotten after this


@dataclass(frozen=True)
class DiscoveryConfig:
    """Where endpoints come from: the config's own ``services`` (static) or Kubernetes."""

    kubernetes: KubernetesConfig | None = None

    @property
    def mode(self) -> Literal["static", "kubernetes"]:
        return "static" if self.kubernetes is None else "kubernetes"


@dataclass(frozen=True)
class InterceptConfig:
    """Transparent interception (docs/interception.md): the listener the node's rules
    redirect pod traffic to, and what ``nodeproxy intercept install`` writes."""

    host: str = "0.0.0.0"
    port: int = 15001
    # Wait this long for a client's first bytes; none by then: TCP (server-first protocols).
    detect_timeout: float = 0.1
    pod_cidrs: tuple[str, ...] = ()  # this node's pod ranges; () = the Node's spec.podCIDRs
    destinations: tuple[str, ...] = ()  # the Service range and the cluster's pod ranges
    mark: int = 0x4E50  # packets with this mark are never redirected
    backend: Literal["auto", "nft", "iptables"] = "auto"


AfterHandoff = Literal["exit", "wait"]
AFTER_HANDOFF: tuple[AfterHandoff, ...] = ("exit", "wait")


@dataclass(frozen=True)
class Config:
    listeners: tuple[ListenerConfig, ...]
    # The configured clusters. With Kubernetes discovery app.py swaps in a read-only
    # view that also holds every discovered cluster (discovery/catalog.py).
    clusters: Mapping[str, ClusterConfig]
    admin: AdminConfig = field(default_factory=AdminConfig)
    limits: Limits = field(default_factory=Limits)
    log: LogConfig = field(default_factory=LogConfig)
    default_namespace: str = "default"
    cluster_domain: str = "cluster.local"
    node_name: str = ""
    source_format: Literal["native", "envoy"] = "native"
    source_path: str = ""
    mesh: MeshConfig | None = None  # None: no mTLS, every endpoint reached directly
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    fairness: FairnessConfig | None = None  # None: no per-source caps or queueing
    intercept: InterceptConfig | None = None  # None: no transparent listener
    # The HTTP/1.1 codec: "auto" (compiled h11-mypyc when installed, else h11), or one
    # forced; NODEPROXY_CODEC wins over it (nodeproxy/http1/impl.py).
    codec: CodecName = "auto"
    # Worker processes: 1 (one process, as always), a number, or "auto" (the CPUs this
    # process may use, resolved at start by workers/count.py); see docs/architecture.md.
    workers: int | Literal["auto"] = 1
    # Hitless restarts (nodeproxy/handoff/): the Unix socket where a new process finds
    # this one and takes over its listening sockets; None: bind afresh, hand nothing over.
    handoff_socket: str | None = None
    handoff_timeout: float = 10.0  # each handoff step: hello -> sockets, sockets -> serving
    # After handing off and draining: "exit" 0 at once, or "wait" for SIGTERM/SIGINT
    # first (a container that must not restart and take the sockets back).
    after_handoff: AfterHandoff = "exit"
    # Strings that came from ${VAR} expansion: /config_dump prints them as [redacted].
    env_values: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    # Fields the file set that change nothing nodeproxy does (Envoy files): one line each,
    # printed by check-config and logged once at start.
    warnings: tuple[str, ...] = field(default=(), repr=False, compare=False)
