"""The native YAML format (docs/configuration.md) -> ``Config``.

One ``services:`` entry becomes both a cluster (its endpoints and upstream
settings) and a virtual host (its routes), and every virtual host is put on
every listener: a node proxy answers for every service on every port it
listens on. Service names are Kubernetes DNS labels, so a route target
``name`` or ``name.namespace`` is unambiguous; targets are resolved only
after every service has been read, so order in the file does not matter.
"""

from __future__ import annotations

import dataclasses
import re
from types import MappingProxyType
from typing import Literal, cast

from nodeproxy.config.checks import (
    Binds,
    check_host,
    check_unique_binds,
    dns_label,
    handoff_path,
    upgrade_tokens,
)
from nodeproxy.config.discovery import KUBERNETES_VHOST, read_discovery
from nodeproxy.config.intercept import read_intercept
from nodeproxy.config.mesh import check_endpoint_nodes, read_mesh
from nodeproxy.config.model import (
    AFTER_HANDOFF,
    CODEC_NAMES,
    AdminConfig,
    AfterHandoff,
    CodecName,
    Config,
    DiscoveryConfig,
    Limits,
    ListenerConfig,
    LogConfig,
    VirtualHost,
)
from nodeproxy.config.native_services import Service
from nodeproxy.config.resilience import read_fairness, read_rate_limit
from nodeproxy.config.yamlsrc import Fields, Node
from nodeproxy.errors import ConfigError
from nodeproxy.workers.count import MAX_WORKERS

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]
HostPortMatch = Literal["strip_any", "strip_matching", "exact"]
HOST_PORT_MATCHES = ("strip_any", "strip_matching", "exact")
NATIVE_KEYS = (
    "node_name", "default_namespace", "cluster_domain", "listeners", "admin", "limits", "log",
    "services", "mesh", "discovery", "fairness", "codec", "workers", "handoff_socket",
    "handoff_timeout", "after_handoff", "intercept",
)  # fmt: skip


def load_native(root: Node) -> Config:
    """Build a ``Config`` from the root node of a native document."""
    f = root.fields(*NATIVE_KEYS)
    default_ns = f.opt("default_namespace", dns_label, "default")
    discovery = f.opt("discovery", read_discovery, DiscoveryConfig())
    # With Kubernetes discovery the services come from the API: the list may be absent.
    services_node = f.get("services") if discovery.kubernetes else f.need("services")
    services_items = services_node.items() if services_node is not None else []
    services = [Service.read(s, default_ns) for s in services_items]
    by_key: dict[tuple[str, str], Service] = {}
    for svc in services:
        if (other := by_key.get(svc.key)) is not None:
            where = f"{svc.key[0]}.{svc.key[1]}"
            raise svc.node.error(f"duplicate service {where} (also {other.node.path})")
        by_key[svc.key] = svc
    targets = {key: svc.cluster.name for key, svc in by_key.items()}
    vhosts = tuple(svc.virtual_host(targets) for svc in services)
    if discovery.kubernetes is not None:
        vhosts += (KUBERNETES_VHOST,)
    binds: Binds = []
    listeners = _listeners(f.get("listeners"), vhosts, binds)
    admin = f.opt("admin", lambda n: _admin(n, binds), AdminConfig())
    node_name = f.opt("node_name", lambda n: n.text(non_empty=False), "")
    mesh_node = f.get("mesh")
    mesh = None
    if mesh_node is not None:
        mesh = read_mesh(mesh_node, default_ns=default_ns, node_name=node_name, binds=binds)
    intercept = f.opt("intercept", lambda n: read_intercept(n, binds), None)
    check_unique_binds(binds)
    workers: int | Literal["auto"] = f.opt("workers", read_workers, 1)
    clusters = MappingProxyType({s.cluster.name: s.cluster for s in services})
    if mesh is not None:
        check_endpoint_nodes(mesh, node_name, clusters)
    return Config(
        listeners=listeners,
        clusters=clusters,
        admin=admin,
        limits=f.opt("limits", _limits, Limits()),
        log=f.opt("log", _log, LogConfig()),
        default_namespace=default_ns,
        cluster_domain=f.opt("cluster_domain", Node.host, "cluster.local"),
        node_name=node_name,
        source_format="native",
        source_path=root.source.file,
        mesh=mesh,
        discovery=discovery,
        fairness=f.opt("fairness", read_fairness, None),
        codec=cast(CodecName, f.opt("codec", lambda n: n.choice(*CODEC_NAMES), "auto")),
        workers=workers,
        intercept=intercept,
        handoff_socket=f.opt("handoff_socket", handoff_path, None),
        handoff_timeout=f.opt("handoff_timeout", Node.duration, 10.0),
        after_handoff=cast(
            AfterHandoff, f.opt("after_handoff", lambda n: n.choice(*AFTER_HANDOFF), "exit")
        ),
    )


def read_workers(node: Node) -> int | Literal["auto"]:
    """``workers``: a count from 1 to ``MAX_WORKERS``, or ``auto``."""
    if node.text() == "auto":
        return "auto"
    try:
        return node.integer(1, MAX_WORKERS)
    except ConfigError as exc:
        raise node.error(f"{exc.message} (a worker count, or auto)") from None


def _admin(node: Node, binds: Binds) -> AdminConfig:
    f = node.fields("address", "allowed_hosts", "probe_address")
    cfg = AdminConfig(allowed_hosts=tuple(_allowed_host(n) for n in f.items("allowed_hosts")))
    if (addr := f.get("address")) is not None:
        host, port = addr.address(allow_zero_port=True)
        binds.append((addr, host, port))
        cfg = dataclasses.replace(cfg, host=host, port=port)
    if (probe := f.get("probe_address")) is not None:
        host, port = probe.address(allow_zero_port=True)
        binds.append((probe, host, port))
        cfg = dataclasses.replace(cfg, probe_host=host, probe_port=port)
    return cfg


def _allowed_host(node: Node) -> str:
    """``name``, ``name:port`` or ``[v6]:port`` -> the lowercase form the admin compares."""
    if re.fullmatch(r"\[[^\]]*\]:[0-9]+|[^:]*:[0-9]+", node.text()):
        host, port = node.address()
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    host = check_host(node, node.text().removeprefix("[").removesuffix("]"))
    return f"[{host}]" if ":" in host else host


def _listeners(
    node: Node | None, vhosts: tuple[VirtualHost, ...], binds: Binds
) -> tuple[ListenerConfig, ...]:
    if node is None:
        return (ListenerConfig(name="outbound", host="0.0.0.0", port=4140, virtual_hosts=vhosts),)
    out: list[ListenerConfig] = []
    names: dict[str, str] = {}
    for i, item in enumerate(node.items(non_empty=True)):
        f = item.fields("name", "address", "rate_limit", "upgrades", *_FORWARDING)
        name = f.opt("name", Node.text, "outbound" if i == 0 else f"outbound_{i}")
        if name in names:
            raise item.error(f"duplicate listener name {name!r} (also {names[name]})")
        names[name] = item.path
        addr = f.need("address")
        host, port = addr.address(allow_zero_port=True)
        binds.append((addr, host, port))
        limit = f.opt("rate_limit", read_rate_limit, None)
        upgrades = f.opt("upgrades", upgrade_tokens, ListenerConfig.upgrades)
        listener = ListenerConfig(
            name=name,
            host=host,
            port=port,
            virtual_hosts=vhosts,
            rate_limit=limit,
            upgrades=upgrades,
        )
        out.append(_forwarding(f, listener))
    return tuple(out)


# A listener's forwarding and host matching fields (Envoy's HCM names; docs/configuration.md).
_FORWARDING = (
    "use_remote_address",
    "xff_num_trusted_hops",
    "via",
    "host_port_match",
    "trust_forwarded_proto",
    "strip_port_upstream",
)


def _forwarding(f: Fields, d: ListenerConfig) -> ListenerConfig:
    """``d`` with the forwarding fields the listener sets (absent: the native defaults)."""
    match: str = f.opt("host_port_match", lambda n: n.choice(*HOST_PORT_MATCHES), "strip_any")
    return dataclasses.replace(
        d,
        use_remote_address=f.opt("use_remote_address", Node.flag, d.use_remote_address),
        xff_num_trusted_hops=f.opt(
            "xff_num_trusted_hops", lambda n: n.integer(0, 64), d.xff_num_trusted_hops
        ),
        via=f.opt("via", via_value, d.via),
        host_port_match=cast(HostPortMatch, match),  # choice() checked the value
        trust_forwarded_proto=f.opt("trust_forwarded_proto", Node.flag, d.trust_forwarded_proto),
        strip_port_upstream=f.opt("strip_port_upstream", Node.flag, d.strip_port_upstream),
    )


def via_value(node: Node) -> str | None:
    """A ``Via`` value (``1.1 edge``); ``""`` adds none. Printable ASCII, no edge spaces."""
    value = node.text(non_empty=False)
    if value and not re.fullmatch(r"[!-~]([ -~]*[!-~])?", value):
        raise node.error(f"not a valid Via header value: {value!r}")
    return value or None


def _limits(node: Node) -> Limits:
    f = node.fields(*(fl.name for fl in dataclasses.fields(Limits)))
    d = Limits()
    return Limits(
        max_request_header_bytes=f.opt(
            "max_request_header_bytes", lambda n: n.integer(1024), d.max_request_header_bytes
        ),
        max_downstream_connections=f.opt(
            "max_downstream_connections", Node.integer, d.max_downstream_connections
        ),
        max_connections_per_source=f.opt(
            "max_connections_per_source", lambda n: n.integer(0), d.max_connections_per_source
        ),
        header_read_timeout=f.opt("header_read_timeout", Node.duration, d.header_read_timeout),
        downstream_idle_timeout=f.opt(
            "downstream_idle_timeout", Node.duration, d.downstream_idle_timeout
        ),
        drain_timeout=f.opt("drain_timeout", Node.duration, d.drain_timeout),
        stream_chunk_bytes=f.opt(
            "stream_chunk_bytes", lambda n: n.integer(1, 16 * 1024 * 1024), d.stream_chunk_bytes
        ),
        request_body_timeout=f.opt("request_body_timeout", Node.duration, d.request_body_timeout),
        request_body_min_rate=f.opt(
            "request_body_min_rate", lambda n: n.integer(0), d.request_body_min_rate
        ),
        stream_idle_timeout=f.opt("stream_idle_timeout", Node.duration, d.stream_idle_timeout),
        tcp_idle_timeout=f.opt("tcp_idle_timeout", Node.duration, d.tcp_idle_timeout),
    )


def _log(node: Node) -> LogConfig:
    f = node.fields("format", "level", "access_log")
    d = LogConfig()
    fmt: str = f.opt("format", lambda n: n.choice("auto", "json", "console"), str(d.format))
    level: str = f.opt(
        "level", lambda n: n.choice("debug", "info", "warning", "error"), str(d.level)
    )
    return LogConfig(
        format=cast(LogFormat, fmt),  # choice() checked the value
        level=cast(LogLevel, level),
        access_log=f.opt("access_log", Node.flag, d.access_log),
    )
