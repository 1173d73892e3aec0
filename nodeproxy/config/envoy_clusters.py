"""Envoy bootstrap: clusters, their endpoints, socket addresses and ``admin``.

Static clusters: ``STATIC`` (IP endpoints), ``STRICT_DNS`` and
``LOGICAL_DNS`` (a hostname endpoint is kept as written and resolved by the
upstream client at connect time), endpoints from ``load_assignment`` (v2/v3)
or the older v2 ``hosts`` list, each with its ``load_balancing_weight``.
``lb_policy`` ROUND_ROBIN (weighted when the weights differ, as Envoy's),
LEAST_REQUEST and RANDOM. Envoy's defaults replace nodeproxy's: connect
timeout 5 s, upstream idle timeout 1 h, no per-endpoint connection cap below
the cluster's ``max_connections``, and no outlier ejection unless the cluster
asks for it (``envoy_upstream.py``).
"""

from __future__ import annotations

from nodeproxy.config.checks import Binds, check_host, check_port
from nodeproxy.config.envoy_ignored import ADMIN, CLUSTER, ENDPOINTS
from nodeproxy.config.envoy_upstream import circuit_breakers, health_checks, outlier_detection
from nodeproxy.config.envoy_values import (
    UNSUPPORTED,
    EnvoyLoad,
    common_http_protocol_options,
    duration,
    enum,
    extension,
    integer,
)
from nodeproxy.config.model import AdminConfig, ClusterConfig, EndpointConfig
from nodeproxy.config.yamlsrc import Node
from nodeproxy.resilience.outlier import DISABLED
from nodeproxy.resilience.overload import OverloadLimits
from nodeproxy.routing.authority import is_ip

ENVOY_CONNECT_TIMEOUT = 5.0  # Envoy's default when connect_timeout is omitted
ENVOY_IDLE_TIMEOUT = 3600.0  # Envoy's common_http_protocol_options.idle_timeout default
CLUSTER_TYPES = ("STATIC", "STRICT_DNS", "LOGICAL_DNS")
LB_POLICIES = {"ROUND_ROBIN": "round_robin", "LEAST_REQUEST": "least_request", "RANDOM": "random"}
DNS_FAMILIES = ("AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL")
_H2 = CLUSTER["http2_protocol_options"]
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_RAW = {
    "raw": (
        ("envoy.transport_sockets.raw_buffer", "raw_buffer"),
        ("envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",),
    )
}
CLUSTER_KEYS = (
    "name", "connect_timeout", "type", "lb_policy", "dns_lookup_family", "load_assignment",
    "hosts", "outlier_detection", "circuit_breakers", "health_checks",
    "common_http_protocol_options", "typed_extension_protocol_options",
    "least_request_lb_config", "round_robin_lb_config", "transport_socket",
)  # fmt: skip


def socket_address(node: Node, *, allow_zero_port: bool = False) -> tuple[str, int]:
    """``{socket_address: {address, port_value}}`` -> (host, port)."""
    sa = node.fields("socket_address", unknown=UNSUPPORTED).need("socket_address")
    f = sa.fields("address", "port_value", "protocol", "ipv4_compat", unknown=UNSUPPORTED)
    f.opt("protocol", lambda n: enum(n, "TCP"), "TCP")
    f.opt("ipv4_compat", Node.flag, False)  # a v6 wildcard also taking v4: the OS decides
    host = f.need("address").host()
    port_node = f.need("port_value")
    port = check_port(port_node, integer(port_node), allow_zero=allow_zero_port)
    return host, port


def admin_config(ctx: EnvoyLoad, node: Node, binds: Binds) -> AdminConfig:
    """``admin.address``; logs and profiles go elsewhere in nodeproxy (warnings)."""
    f = ctx.fields(node, "address", ignored=ADMIN)
    addr = f.get("address")
    if addr is None:
        return AdminConfig()
    host, port = socket_address(addr, allow_zero_port=True)
    binds.append((addr, host, port))
    return AdminConfig(host=host, port=port)


def clusters(ctx: EnvoyLoad, node: Node) -> dict[str, ClusterConfig]:
    """``static_resources.clusters`` -> clusters by (unique) name (also in ``ctx``)."""
    where: dict[str, str] = {}
    for item in node.items():
        cluster = _cluster(ctx, item)
        if cluster.name in ctx.clusters:
            raise item.error(
                f"duplicate cluster name {cluster.name!r} (also {where[cluster.name]})"
            )
        ctx.clusters[cluster.name] = cluster
        where[cluster.name] = item.path
    return ctx.clusters


def _cluster(ctx: EnvoyLoad, node: Node) -> ClusterConfig:
    f = ctx.fields(node, *CLUSTER_KEYS, ignored=CLUSTER)
    name = f.need("name").text()
    kind = f.opt("type", lambda n: enum(n, *CLUSTER_TYPES), "STATIC")
    if kind != "STATIC":
        ctx.dns_clusters.add(name)
    policy = f.opt("lb_policy", lambda n: enum(n, *LB_POLICIES), "ROUND_ROBIN")
    f.opt("dns_lookup_family", lambda n: enum(n, *DNS_FAMILIES), "AUTO")  # resolver's order
    if "load_assignment" in f and "hosts" in f:
        raise f.need("hosts").error("use load_assignment or hosts, not both")
    addresses: list[tuple[Node, float | None, Node | None]] = []
    if (la := f.get("load_assignment")) is not None:
        addresses = _load_assignment(ctx, la)
    elif (hosts := f.get("hosts")) is not None:
        addresses = [(h, None, None) for h in hosts.items()]
    endpoints: list[EndpointConfig] = []
    seen: dict[str, str] = {}
    checked_ports: list[tuple[Node, int]] = []
    for addr, weight, hc in addresses:
        host, port = socket_address(addr)
        if kind == "STATIC" and not is_ip(host):
            raise addr.error(f"STATIC clusters need IP addresses, got {host!r} (use STRICT_DNS)")
        ep = EndpointConfig(host=check_host(addr, host), port=port, weight=weight)
        if ep.address in seen:
            raise addr.error(f"duplicate endpoint {ep.address} (also {seen[ep.address]})")
        seen[ep.address] = addr.path
        endpoints.append(ep)
        if hc is not None:
            checked_ports.append((hc, port))
    lb = _lb_policy(ctx, f.get("lb_policy") or node, policy, endpoints)
    if (cfg := f.get("least_request_lb_config")) is not None:
        c = cfg.fields("choice_count", unknown=UNSUPPORTED)
        c.opt("choice_count", lambda n: integer(n, 2, 2), 2)  # least_request is P2C only
    if (cfg := f.get("round_robin_lb_config")) is not None:
        cfg.fields(unknown=UNSUPPORTED)  # slow start, locality: none of its fields is run
    if (ts := f.get("transport_socket")) is not None:
        extension(ts, _RAW, "upstream transport socket")
    overload, per_host = None, None
    if (cb := f.get("circuit_breakers")) is not None:
        overload, per_host = circuit_breakers(ctx, cb, name)
    cap = per_host or (overload or OverloadLimits()).max_connections
    outlier = f.opt("outlier_detection", lambda n: outlier_detection(ctx, n, len(endpoints)), None)
    health = f.opt("health_checks", lambda n: health_checks(ctx, n), None)
    for hc, port in checked_ports:
        _health_check_config(ctx, hc, port, checked=health is not None)
    return ClusterConfig(
        name=name,
        endpoints=tuple(endpoints),
        connect_timeout=f.opt("connect_timeout", duration, ENVOY_CONNECT_TIMEOUT),
        lb_policy=lb,
        max_connections_per_endpoint=cap,
        idle_timeout=_idle_timeout(
            ctx, f.get("common_http_protocol_options"), f.get("typed_extension_protocol_options")
        ),
        outlier=DISABLED if outlier is None else outlier,  # Envoy: no detector, no ejection
        overload=overload,
        health_check=health,
    )


def _health_check_config(ctx: EnvoyLoad, node: Node, port: int, *, checked: bool) -> None:
    """An endpoint's ``health_check_config``: where Envoy would probe it."""
    f = node.fields(
        "port_value", "hostname", "address", "disable_active_health_check", unknown=UNSUPPORTED
    )
    if not checked:
        ctx.ignore(node, "the cluster has no health_checks (Envoy ignores it too)")
        return
    if f.opt("port_value", integer, port) not in (0, port) or "address" in f:
        where = f.get("address") or f.need("port_value")
        raise where.error("nodeproxy probes the endpoint's own address and port")
    if f.opt("disable_active_health_check", Node.flag, False):
        raise f.need("disable_active_health_check").error("only false is supported")
    if (h := f.get("hostname")) is not None:
        ctx.ignore(h, "the probe's Host is the endpoint's address")


def _lb_policy(ctx: EnvoyLoad, node: Node, policy: str, endpoints: list[EndpointConfig]) -> str:
    weighted = len({ep.weight or 1.0 for ep in endpoints}) > 1
    if policy == "ROUND_ROBIN" and weighted:
        return "weighted_round_robin"  # Envoy's round robin honours weights
    if policy == "RANDOM" and weighted:
        ctx.ignore(node, "RANDOM ignores load_balancing_weight (in Envoy too)")
        for i, ep in enumerate(endpoints):
            endpoints[i] = EndpointConfig(host=ep.host, port=ep.port)
    return LB_POLICIES[policy]


def _idle_timeout(ctx: EnvoyLoad, common: Node | None, typed: Node | None) -> float:
    """Envoy's upstream idle timeout (1 h unless set; 0 is none): the cluster's
    ``common_http_protocol_options`` or the v3 ``HttpProtocolOptions`` extension's."""
    idle = None if common is None else common_http_protocol_options(ctx, common)
    for name, cfg in (typed.entries() if typed is not None else {}).items():
        if name != HTTP_OPTIONS:
            raise cfg.error(f"unsupported protocol options {name!r} (supported: {HTTP_OPTIONS})")
        p = ctx.fields(
            cfg, "@type", "explicit_http_config", "common_http_protocol_options",
            ignored={"upstream_http_protocol_options": CLUSTER["upstream_http_protocol_options"]},
        )  # fmt: skip
        if (explicit := p.get("explicit_http_config")) is not None:
            e = ctx.fields(
                explicit, "http_protocol_options", ignored={"http2_protocol_options": _H2}
            )
            if (h1 := e.get("http_protocol_options")) is not None and h1.entries():
                ctx.ignore(h1, CLUSTER["http_protocol_options"])
        if (c := p.get("common_http_protocol_options")) is not None:
            idle = common_http_protocol_options(ctx, c)
    return ENVOY_IDLE_TIMEOUT if idle is None else idle


def _load_assignment(ctx: EnvoyLoad, node: Node) -> list[tuple[Node, float | None, Node | None]]:
    f = ctx.fields(
        node,
        "cluster_name",
        "endpoints",
        ignored={"policy": "overprovisioning and drops only act across localities and priorities"},
    )
    f.opt("cluster_name", Node.text, "")  # required by Envoy, only meaningful for EDS
    out: list[tuple[Node, float | None, Node | None]] = []
    for locality in f.items("endpoints"):
        lf = ctx.fields(locality, "lb_endpoints", "priority", "load_balancing_weight",
                        ignored=ENDPOINTS)  # fmt: skip
        if lf.opt("priority", integer, 0) != 0:
            raise lf.need("priority").error("only priority 0 is supported (no failover levels)")
        if (lw := lf.get("load_balancing_weight")) is not None:
            ctx.ignore(lw, "locality weights need locality_weighted_lb_config (Envoy ignores "
                       "them too)")  # fmt: skip
        for lb_endpoint in lf.items("lb_endpoints"):
            e = ctx.fields(lb_endpoint, "endpoint", "load_balancing_weight", "health_status",
                           ignored=ENDPOINTS)  # fmt: skip
            e.opt("health_status", lambda n: enum(n, "UNKNOWN", "HEALTHY"), "UNKNOWN")
            weight = e.opt("load_balancing_weight", lambda n: float(integer(n, 1)), None)
            ep = ctx.fields(
                e.need("endpoint"),
                "address",
                "health_check_config",
                ignored={"hostname": "the endpoint's name is only shown in Envoy's admin"},
            )
            out.append((ep.need("address"), weight, ep.get("health_check_config")))
    return out
