"""An Envoy bootstrap (v2 or v3 field names) -> ``Config``.

Operators bring their existing envoy.yaml; nodeproxy runs the common subset
of it unchanged: static listeners with one HTTP connection manager, inline
``route_config`` (virtual hosts, prefix/path/header matches, ``cluster`` and
``weighted_clusters``), static clusters, and ``admin``. Anything outside that
subset is a ``ConfigError`` naming the field, never silently ignored: an
Envoy feature quietly dropped would change what the proxy does. Clusters,
addresses and ``admin`` live in ``envoy_clusters.py``; this module reads the
listener side and resolves every route target against the cluster names.
"""

from __future__ import annotations

import math
from collections.abc import Container
from types import MappingProxyType

from nodeproxy.config.checks import (
    Binds,
    check_regex,
    check_unique_binds,
    header_name,
    upgrade_token,
    url_path,
)
from nodeproxy.config.envoy_clusters import (
    UNSUPPORTED,
    admin_config,
    clusters,
    envoy_duration,
    socket_address,
)
from nodeproxy.config.model import (
    AdminConfig,
    ClusterConfig,
    Config,
    HeaderMatch,
    ListenerConfig,
    RouteMatch,
    RouteRule,
    VirtualHost,
    WeightedCluster,
)
from nodeproxy.config.yamlsrc import Node

_TYPE = "type.googleapis.com/envoy."
HCM_NAMES = ("envoy.http_connection_manager", "envoy.filters.network.http_connection_manager")
HCM_TYPES = (
    _TYPE + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    _TYPE + "config.filter.network.http_connection_manager.v2.HttpConnectionManager",
)
ROUTER_NAMES = ("envoy.router", "envoy.filters.http.router")
ROUTER_TYPES = (
    _TYPE + "extensions.filters.http.router.v3.Router",
    _TYPE + "config.filter.http.router.v2.Router",
)


def load_envoy(root: Node) -> Config:
    """Build a ``Config`` from the root node of an Envoy bootstrap document."""
    f = root.fields("static_resources", "admin", "node", unknown=UNSUPPORTED)
    node_name = f.opt("node", _node_id, "")
    binds: Binds = []
    admin = f.opt("admin", lambda n: admin_config(n, binds), AdminConfig())
    listeners: tuple[ListenerConfig, ...] = ()
    by_name: dict[str, ClusterConfig] = {}
    if (sr := f.get("static_resources")) is not None:
        s = sr.fields("listeners", "clusters", unknown=UNSUPPORTED)
        by_name = s.opt("clusters", clusters, {})
        listeners = s.opt("listeners", lambda n: _listeners(n, by_name, binds), ())
    check_unique_binds(binds)
    return Config(
        listeners=listeners,
        clusters=MappingProxyType(by_name),
        admin=admin,
        node_name=node_name,
        source_format="envoy",
        source_path=root.source.file,
    )


def _node_id(node: Node) -> str:
    f = node.fields("id", "cluster", unknown=UNSUPPORTED)  # node.cluster is only a label
    return f.opt("id", Node.text, "")


def _listeners(
    node: Node, cluster_names: Container[str], binds: Binds
) -> tuple[ListenerConfig, ...]:
    out: list[ListenerConfig] = []
    names: dict[str, str] = {}
    for i, item in enumerate(node.items()):
        f = item.fields("name", "address", "filter_chains", unknown=UNSUPPORTED)
        name = f.opt("name", Node.text, f"listener_{i}")
        if name in names:
            raise item.error(f"duplicate listener name {name!r} (also {names[name]})")
        names[name] = item.path
        addr = f.need("address")
        host, port = socket_address(addr, allow_zero_port=True)
        binds.append((addr, host, port))
        chains = f.need("filter_chains").items(non_empty=True)
        if len(chains) > 1:
            raise chains[1].error("only one filter chain per listener is supported")
        filters = chains[0].fields("filters", unknown=UNSUPPORTED).need("filters").items()
        if len(filters) != 1:
            raise chains[0].error("needs exactly one filter: the http_connection_manager")
        vhosts, upgrades = _http_connection_manager(filters[0], cluster_names)
        out.append(
            ListenerConfig(name=name, host=host, port=port, virtual_hosts=vhosts, upgrades=upgrades)
        )
    return tuple(out)


def _http_connection_manager(
    node: Node, cluster_names: Container[str]
) -> tuple[tuple[VirtualHost, ...], tuple[str, ...]]:
    """(virtual hosts, upgrade types): Envoy relays only the ``upgrade_configs`` it lists."""
    f = node.fields("name", "config", "typed_config", unknown=UNSUPPORTED)
    kind, cfg = f.one_of("config", "typed_config")
    keys = ("stat_prefix", "codec_type", "route_config", "http_filters", "upgrade_configs")
    h = cfg.fields("@type", *keys, unknown=UNSUPPORTED)
    type_url = h.opt("@type", Node.text, None)
    if kind == "config" and type_url is not None:
        raise h.need("@type").error("@type belongs in typed_config, not config")
    if kind == "typed_config" and type_url not in HCM_TYPES:
        raise (h.get("@type") or cfg).error(
            f"typed_config must have @type {HCM_TYPES[0]} (v3) or {HCM_TYPES[1]} (v2)"
        )
    name = f.opt("name", Node.text, None)
    if name not in HCM_NAMES and type_url is None:
        where = f.get("name") or node
        raise where.error(f"unsupported network filter {name!r} (supported: {HCM_NAMES[1]})")
    h.opt("stat_prefix", Node.text, "")  # stats are labelled by listener name instead
    h.opt("codec_type", lambda n: n.choice("AUTO", "HTTP1", "auto", "http1"), "AUTO")
    h.opt("http_filters", _http_filters, None)
    upgrades = tuple(_upgrade_config(u) for u in h.items("upgrade_configs"))
    rc = h.need("route_config").fields("name", "virtual_hosts", unknown=UNSUPPORTED)
    vhosts: list[VirtualHost] = []
    domains: dict[str, str] = {}
    for item in rc.need("virtual_hosts").items():
        vh = _virtual_host(item, cluster_names)
        if vh.name in (v.name for v in vhosts):
            raise item.error(f"duplicate virtual host name {vh.name!r}")
        for d in vh.domains:
            if d in domains:
                raise item.error(f"domain {d!r} is also in {domains[d]}")
            domains[d] = item.path
        vhosts.append(vh)
    return tuple(vhosts), tuple(u for u in upgrades if u)


def _upgrade_config(node: Node) -> str:
    """One ``upgrade_configs`` entry: its type (lowercased), or "" when ``enabled: false``."""
    f = node.fields("upgrade_type", "enabled", unknown=UNSUPPORTED)
    kind = upgrade_token(f.need("upgrade_type"))
    return kind if f.opt("enabled", Node.flag, True) else ""


def _http_filters(node: Node) -> None:
    for item in node.items():
        f = item.fields("name", "typed_config", "config", unknown=UNSUPPORTED)
        name = f.need("name").text()
        if name not in ROUTER_NAMES:
            raise f.need("name").error(
                f"unsupported HTTP filter {name!r} (only the router, {ROUTER_NAMES[1]}, is)"
            )
        for key in ("typed_config", "config"):
            if (cfg := f.get(key)) is not None:
                c = cfg.fields("@type", unknown=UNSUPPORTED)  # router options are unsupported
                if key == "typed_config" and c.opt("@type", Node.text, None) not in ROUTER_TYPES:
                    raise cfg.error(f"typed_config must have @type {ROUTER_TYPES[0]}")


def _virtual_host(node: Node, cluster_names: Container[str]) -> VirtualHost:
    f = node.fields("name", "domains", "routes", unknown=UNSUPPORTED)
    domains = tuple(_domain(d) for d in f.need("domains").items(non_empty=True))
    routes = tuple(_route(r, cluster_names) for r in f.items("routes"))
    return VirtualHost(name=f.need("name").text(), domains=domains, routes=routes)


def _domain(node: Node) -> str:
    value = node.text().lower()
    stars = value.count("*")
    if value != "*" and (stars > 1 or (stars == 1 and value[0] != "*" and value[-1] != "*")):
        raise node.error(f"invalid domain {value!r}: '*' only as the first or last character")
    return value


def _route(node: Node, cluster_names: Container[str]) -> RouteRule:
    f = node.fields("name", "match", "route", unknown=UNSUPPORTED)
    m = f.need("match").fields("prefix", "path", "headers", unknown=UNSUPPORTED)
    kind, value = m.one_of("prefix", "path")
    headers = tuple(_header(h) for h in m.items("headers"))
    path = url_path(value)
    match = RouteMatch(
        prefix=path if kind == "prefix" else None,
        path=path if kind == "path" else None,
        headers=headers,
    )
    r = f.need("route").fields("cluster", "weighted_clusters", "timeout", unknown=UNSUPPORTED)
    timeout = r.opt("timeout", lambda n: envoy_duration(n, allow_zero=True), None)
    if timeout == 0:
        timeout = math.inf  # Envoy: 0s disables the route timeout
    name = f.opt("name", Node.text, "")
    kind, target = r.one_of("cluster", "weighted_clusters")
    if kind == "cluster":
        cluster = _cluster_ref(target, cluster_names)
        return RouteRule(match=match, cluster=cluster, timeout=timeout, name=name)
    w = target.fields("clusters", "total_weight", unknown=UNSUPPORTED)
    weighted: list[WeightedCluster] = []
    for item in w.need("clusters").items(non_empty=True):
        c = item.fields("name", "weight", unknown=UNSUPPORTED)
        weight = c.need("weight").integer(1)
        weighted.append(WeightedCluster(_cluster_ref(c.need("name"), cluster_names), weight))
    total = sum(x.weight for x in weighted)
    if (tw := w.get("total_weight")) is not None and tw.integer(1) != total:
        raise tw.error(f"total_weight {tw.integer(1)} != sum of the weights ({total})")
    return RouteRule(match=match, weighted=tuple(weighted), timeout=timeout, name=name)


def _cluster_ref(node: Node, cluster_names: Container[str]) -> str:
    name = node.text()
    if name not in cluster_names:
        raise node.error(f"unknown cluster {name!r} (not in static_resources.clusters)")
    return name


def _header(node: Node) -> HeaderMatch:
    keys = ("exact_match", "prefix_match", "safe_regex_match", "present_match", "string_match")
    f = node.fields("name", "invert_match", *keys, unknown=UNSUPPORTED)
    name = header_name(f.need("name"))
    invert = f.opt("invert_match", Node.flag, False)
    kind, value = f.one_of(*keys)
    if kind == "present_match":
        return HeaderMatch(name=name, present=value.flag(), invert=invert)
    if kind == "string_match":
        s = value.fields("exact", "prefix", "safe_regex", unknown=UNSUPPORTED)
        kind, value = s.one_of("exact", "prefix", "safe_regex")
    if kind in ("safe_regex_match", "safe_regex"):
        r = value.fields("regex", "google_re2", unknown=UNSUPPORTED)
        r.opt("google_re2", lambda n: n.fields(unknown=UNSUPPORTED), None)  # options: none
        regex = r.need("regex")
        return HeaderMatch(name=name, regex=check_regex(regex, regex.text()), invert=invert)
    text = value.text(non_empty=False)
    if kind in ("exact_match", "exact"):
        return HeaderMatch(name=name, exact=text, invert=invert)
    return HeaderMatch(name=name, prefix=text, invert=invert)
