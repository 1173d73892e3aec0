"""Envoy bootstrap: clusters, socket addresses, durations and ``admin``.

Static clusters only: ``STATIC`` (IP endpoints), ``STRICT_DNS`` and
``LOGICAL_DNS`` (a hostname endpoint is kept as written and resolved by the
upstream client at connect time), round robin balancing, endpoints from
``load_assignment`` (v2/v3) or the older v2 ``hosts`` list. Every field we do
not implement is rejected by name through ``UNSUPPORTED``.
"""

from __future__ import annotations

import ipaddress
from types import MappingProxyType

from nodeproxy.config.checks import Binds, check_host, check_port
from nodeproxy.config.model import AdminConfig, ClusterConfig, EndpointConfig
from nodeproxy.config.yamlsrc import Node

UNSUPPORTED = "unsupported field (nodeproxy does not implement it; remove it or see docs)"
ENVOY_CONNECT_TIMEOUT = 5.0  # Envoy's default when connect_timeout is omitted
CLUSTER_TYPES = ("STATIC", "STRICT_DNS", "LOGICAL_DNS")
LB_POLICIES = ("ROUND_ROBIN",)
DNS_FAMILIES = ("AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL")
_NO_LABELS: MappingProxyType[str, str] = MappingProxyType({})


def envoy_duration(node: Node, *, allow_zero: bool = False) -> float:
    """A protobuf Duration: ``"0.25s"`` or ``{seconds: N, nanos: N}``."""
    if not node.is_map():
        return node.duration(allow_zero=allow_zero)
    f = node.fields("seconds", "nanos", unknown=UNSUPPORTED)
    seconds = f.opt("seconds", lambda n: n.integer(0), 0)
    nanos = f.opt("nanos", lambda n: n.integer(0, 999_999_999), 0)
    total = seconds + nanos / 1e9
    if total == 0 and not allow_zero:
        raise node.error("must be > 0")
    return total


def socket_address(node: Node, *, allow_zero_port: bool = False) -> tuple[str, int]:
    """``{socket_address: {address, port_value}}`` -> (host, port)."""
    sa = node.fields("socket_address", unknown=UNSUPPORTED).need("socket_address")
    f = sa.fields("address", "port_value", "protocol", unknown=UNSUPPORTED)
    f.opt("protocol", lambda n: n.choice("TCP"), "TCP")
    host = f.need("address").host()
    port_node = f.need("port_value")
    port = check_port(port_node, port_node.integer(0), allow_zero=allow_zero_port)
    return host, port


def admin_config(node: Node, binds: Binds) -> AdminConfig:
    """``admin.address``; ``access_log_path`` is accepted (admin requests are logged anyway)."""
    f = node.fields("address", "access_log_path", unknown=UNSUPPORTED)
    f.opt("access_log_path", lambda n: n.text(non_empty=False), "")
    addr = f.get("address")
    if addr is None:
        return AdminConfig()
    host, port = socket_address(addr, allow_zero_port=True)
    binds.append((addr, host, port))
    return AdminConfig(host=host, port=port)


def clusters(node: Node) -> dict[str, ClusterConfig]:
    """``static_resources.clusters`` -> clusters by (unique) name."""
    out: dict[str, ClusterConfig] = {}
    where: dict[str, str] = {}
    for item in node.items():
        cluster = _cluster(item)
        if cluster.name in out:
            raise item.error(
                f"duplicate cluster name {cluster.name!r} (also {where[cluster.name]})"
            )
        out[cluster.name] = cluster
        where[cluster.name] = item.path
    return out


def _cluster(node: Node) -> ClusterConfig:
    f = node.fields(
        "name", "connect_timeout", "type", "lb_policy", "dns_lookup_family", "load_assignment",
        "hosts", unknown=UNSUPPORTED,
    )  # fmt: skip
    name = f.need("name").text()
    kind = f.opt("type", lambda n: n.choice(*CLUSTER_TYPES), "STATIC")
    f.opt("lb_policy", lambda n: n.choice(*LB_POLICIES), "ROUND_ROBIN")  # the only one, for now
    f.opt("dns_lookup_family", lambda n: n.choice(*DNS_FAMILIES), "AUTO")  # resolver's order
    if "load_assignment" in f and "hosts" in f:
        raise f.need("hosts").error("use load_assignment or hosts, not both")
    addresses: list[Node] = []
    if (la := f.get("load_assignment")) is not None:
        addresses = _load_assignment(la)
    elif (hosts := f.get("hosts")) is not None:
        addresses = hosts.items()
    endpoints: list[EndpointConfig] = []
    seen: dict[str, str] = {}
    for addr in addresses:
        host, port = socket_address(addr)
        if kind == "STATIC" and not _is_ip(host):
            raise addr.error(f"STATIC clusters need IP addresses, got {host!r} (use STRICT_DNS)")
        ep = EndpointConfig(host=check_host(addr, host), port=port, labels=_NO_LABELS)
        if ep.address in seen:
            raise addr.error(f"duplicate endpoint {ep.address} (also {seen[ep.address]})")
        seen[ep.address] = addr.path
        endpoints.append(ep)
    return ClusterConfig(
        name=name,
        endpoints=tuple(endpoints),
        connect_timeout=f.opt("connect_timeout", envoy_duration, ENVOY_CONNECT_TIMEOUT),
        lb_policy="round_robin",
    )


def _load_assignment(node: Node) -> list[Node]:
    f = node.fields("cluster_name", "endpoints", unknown=UNSUPPORTED)
    f.opt("cluster_name", Node.text, "")  # required by Envoy, only meaningful for EDS
    out: list[Node] = []
    for locality in f.items("endpoints"):
        lf = locality.fields("lb_endpoints", unknown=UNSUPPORTED)
        for lb_endpoint in lf.items("lb_endpoints"):
            ep = lb_endpoint.fields("endpoint", unknown=UNSUPPORTED).need("endpoint")
            out.append(ep.fields("address", unknown=UNSUPPORTED).need("address"))
    return out


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
