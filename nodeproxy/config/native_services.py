"""The native format's ``services:`` entries: a cluster, a virtual host and its routes each.

Split from ``loader.py`` (the top level, listeners, admin, limits, log);
here one service entry is read into its cluster (endpoints, upstream
settings, traffic policy) and, once every service is known, its virtual host
with route rules whose targets (``name`` or ``name.namespace``) are resolved
against all services, so order in the file does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from nodeproxy.config.checks import check_regex, dns_label, header_name, upgrade_tokens, url_path
from nodeproxy.config.model import (
    ClusterConfig,
    EndpointConfig,
    HeaderMatch,
    QueryMatch,
    RouteMatch,
    RouteRule,
    VirtualHost,
    WeightedCluster,
)
from nodeproxy.config.resilience import read_rate_limit, read_retries
from nodeproxy.config.route_actions import ACTION_KEYS, LOCAL_KINDS, read_actions
from nodeproxy.config.traffic import (
    TRAFFIC_KEYS,
    cluster_traffic,
    opt_subset,
    read_labels,
    read_weight,
)
from nodeproxy.config.yamlsrc import Node

SERVICE_KEYS = (
    "name", "namespace", "connect_timeout", "response_timeout", *TRAFFIC_KEYS,
    "max_connections_per_endpoint", "idle_timeout", "endpoints", "routes", "cluster_ip",
)  # fmt: skip


@dataclass
class Service:
    node: Node
    key: tuple[str, str]  # (name, namespace)
    cluster: ClusterConfig
    routes: Node | None

    @classmethod
    def read(cls, node: Node, default_ns: str) -> Service:
        f = node.fields(*SERVICE_KEYS)
        name = dns_label(f.need("name"))
        ns = f.opt("namespace", dns_label, default_ns)
        d = ClusterConfig(name="")
        cluster = ClusterConfig(
            name=name if ns == default_ns else f"{name}.{ns}",
            endpoints=f.opt("endpoints", _endpoints, ()),
            namespace=ns,
            connect_timeout=f.opt("connect_timeout", Node.duration, d.connect_timeout),
            response_timeout=f.opt("response_timeout", Node.duration, d.response_timeout),
            max_connections_per_endpoint=f.opt(
                "max_connections_per_endpoint", Node.integer, d.max_connections_per_endpoint
            ),
            idle_timeout=f.opt("idle_timeout", Node.duration, d.idle_timeout),
            vips=f.opt("cluster_ip", _vips, ()),
            **cluster_traffic(f),
        )
        return cls(node, (name, ns), cluster, f.get("routes"))

    def virtual_host(self, targets: dict[tuple[str, str], str]) -> VirtualHost:
        name, ns = self.key
        if self.routes is None:
            default = RouteRule(match=RouteMatch(prefix="/"), cluster=self.cluster.name)
            routes: tuple[RouteRule, ...] = (default,)
        else:
            routes = tuple(self._rule(r, targets) for r in self.routes.items(non_empty=True))
        return VirtualHost(name=self.cluster.name, domains=(f"{name}.{ns}",), routes=routes)

    def _rule(self, node: Node, targets: dict[tuple[str, str], str]) -> RouteRule:
        f = node.fields(
            "name", "match", "service", "weighted", "timeout", "retries", "rate_limit", "subset",
            "upgrades", *ACTION_KEYS,
        )  # fmt: skip
        kind, target = f.one_of("service", "weighted", *LOCAL_KINDS)
        match = f.opt("match", route_match, RouteMatch(prefix="/"))
        actions = read_actions(f, kind, target)  # rewrites, header edits, a local answer
        timeout = f.opt("timeout", Node.duration, None)
        name = f.opt("name", Node.text, "")
        retries = f.opt("retries", read_retries, None)
        limit = f.opt("rate_limit", read_rate_limit, None)
        subset = opt_subset(f)
        upgrades = f.opt("upgrades", upgrade_tokens, None)
        if kind in LOCAL_KINDS:  # answered by the proxy: no service
            return RouteRule(match=match, name=name, rate_limit=limit, **actions)
        if kind == "service":
            cluster = self._resolve(target, targets)
            return RouteRule(
                match=match, cluster=cluster, timeout=timeout, name=name, retries=retries,
                rate_limit=limit, subset=subset, upgrades=upgrades, **actions,
            )  # fmt: skip
        weighted: list[WeightedCluster] = []
        for item in target.items(non_empty=True):
            w = item.fields("service", "weight", "subset")
            cluster = self._resolve(w.need("service"), targets)
            weight = w.need("weight").integer(1)
            weighted.append(WeightedCluster(cluster, weight, opt_subset(w)))
        return RouteRule(
            match=match, weighted=tuple(weighted), timeout=timeout, name=name, retries=retries,
            rate_limit=limit, subset=subset, upgrades=upgrades, **actions,
        )  # fmt: skip

    def _resolve(self, node: Node, targets: dict[tuple[str, str], str]) -> str:
        text = node.text()
        name, _, ns = text.partition(".")
        key = (name, ns or self.key[1])
        if key not in targets:
            known = ", ".join(sorted(f"{n}.{s}" for n, s in targets))
            raise node.error(f"unknown service {text!r} (known: {known or 'none'})")
        return targets[key]


def _vips(node: Node) -> tuple[tuple[str, int], ...]:
    """``cluster_ip``: one ``ip:port`` or a list of them (intercepted TCP, nodeproxy/tunnel)."""
    items = [node] if node.is_scalar() else node.items(non_empty=True)
    return tuple(item.address() for item in items)


def _endpoints(node: Node) -> tuple[EndpointConfig, ...]:
    seen: dict[str, str] = {}
    out: list[EndpointConfig] = []
    for item in node.items():
        ep = _endpoint(item)
        if ep.address in seen:
            raise item.error(f"duplicate endpoint {ep.address} (also {seen[ep.address]})")
        seen[ep.address] = item.path
        out.append(ep)
    return tuple(out)


def _endpoint(node: Node) -> EndpointConfig:
    if not node.is_map():
        host, port = node.address()
        return EndpointConfig(host=host, port=port)
    f = node.fields("address", "labels", "node", "weight")
    host, port = f.need("address").address()
    labels: dict[str, str] = f.opt("labels", read_labels, {})
    where = f.opt("node", Node.text, None)
    weight = f.opt("weight", read_weight, None)
    return EndpointConfig(host, port, MappingProxyType(labels), where, weight)


def route_match(node: Node) -> RouteMatch:
    """``{prefix | path | regex, headers, query}``; none of the three matches every path."""
    f = node.fields("prefix", "path", "regex", "headers", "query")
    if len(given := [k for k in ("prefix", "path", "regex") if k in f]) > 1:
        raise node.error(f"use one of {given[0]} or {given[1]}, not both")
    return RouteMatch(
        prefix=f.opt("prefix", url_path, None),
        path=f.opt("path", url_path, None),
        regex=f.opt("regex", lambda n: check_regex(n, n.text()), None),
        headers=f.opt("headers", lambda n: tuple(_header(h) for h in n.items()), ()),
        query=f.opt("query", lambda n: tuple(_query(q) for q in n.items()), ()),
    )


def _query(node: Node) -> QueryMatch:
    """``{name, exact | prefix | regex | present}``: the parameter's first value."""
    f = node.fields("name", "exact", "prefix", "regex", "present")
    name = f.need("name").text()
    kind, value = f.one_of("exact", "prefix", "regex", "present")
    if kind == "present":
        return QueryMatch(name=name, present=value.flag())
    text = value.text(non_empty=False)
    if kind == "regex":
        return QueryMatch(name=name, regex=check_regex(value, text))
    return QueryMatch(name=name, exact=text) if kind == "exact" else QueryMatch(name, prefix=text)


def _header(node: Node) -> HeaderMatch:
    f = node.fields("name", "exact", "prefix", "regex", "present", "invert")
    name = header_name(f.need("name"))
    kind, value = f.one_of("exact", "prefix", "regex", "present")
    invert = f.opt("invert", Node.flag, False)
    if kind == "present":
        return HeaderMatch(name=name, present=value.flag(), invert=invert)
    text = value.text(non_empty=False)
    if kind == "exact":
        return HeaderMatch(name=name, exact=text, invert=invert)
    if kind == "prefix":
        return HeaderMatch(name=name, prefix=text, invert=invert)
    return HeaderMatch(name=name, regex=check_regex(value, text), invert=invert)
