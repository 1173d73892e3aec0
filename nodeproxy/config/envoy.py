"""An Envoy bootstrap (v2 or v3 field names, any spelling Envoy accepts) -> ``Config``.

Operators bring their existing envoy.yaml; nodeproxy runs the common subset
of it unchanged and as Envoy would: static listeners with one HTTP connection
manager (``envoy_hcm.py``), inline route tables (``envoy_routes.py``),
static clusters (``envoy_clusters.py``) and ``admin``. Each field is one of
three things: mapped onto nodeproxy's own setting; accepted with one warning
line because it changes nothing nodeproxy does (``envoy_ignored.py``,
``Config.warnings``); or refused by name, because running the file without it
would behave differently from Envoy. Clusters are read first, so every route
target is checked against them.
"""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from nodeproxy.config.checks import Binds, check_unique_binds
from nodeproxy.config.envoy_clusters import admin_config, clusters, socket_address
from nodeproxy.config.envoy_hcm import NETWORK_FILTERS, http_connection_manager
from nodeproxy.config.envoy_ignored import BOOTSTRAP, FILTER_CHAIN, LISTENER, NODE
from nodeproxy.config.envoy_values import UNSUPPORTED, EnvoyLoad, EnvoyNode, extension
from nodeproxy.config.model import AdminConfig, Config, Limits, ListenerConfig, LogConfig
from nodeproxy.config.yamlsrc import Node

_LISTENER_LIMIT = re.compile(r"envoy\.resource_limits\.listener\.([^.]+)\.connection_limit")
ENVOY_DOWNSTREAM_IDLE = 3600.0  # Envoy's connection manager idle_timeout default (1 h)
LISTENER_FILTERS = {
    "inspector": (
        ("envoy.filters.listener.tls_inspector", "envoy.filters.listener.http_inspector",
         "envoy.listener.tls_inspector", "envoy.listener.http_inspector"),
        ("envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
         "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"),
    )
}  # fmt: skip
_RAW = {
    "raw": (
        ("envoy.transport_sockets.raw_buffer", "raw_buffer"),
        ("envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",),
    )
}


def load_envoy(root: Node) -> Config:
    """Build a ``Config`` from the root node of an Envoy bootstrap document."""
    ctx = EnvoyLoad()
    root = EnvoyNode.of(root)
    f = ctx.fields(
        root, "static_resources", "admin", "node", "layered_runtime", "overload_manager",
        "runtime", ignored=BOOTSTRAP,
    )  # fmt: skip
    node_name = f.opt("node", lambda n: _node_id(ctx, n), "")
    if (om := f.get("overload_manager")) is not None:
        ctx.ignore(om, "resource-pressure actions: nodeproxy bounds its load with limits")
    binds: Binds = []
    admin = f.opt("admin", lambda n: admin_config(ctx, n, binds), AdminConfig())
    listeners: list[tuple[ListenerConfig, list[str], Node]] = []
    if (sr := f.get("static_resources")) is not None:
        s = sr.fields("listeners", "clusters", "secrets", unknown=UNSUPPORTED)
        if s.items("secrets"):
            raise s.need("secrets").error("TLS secrets are not supported (no TLS listeners)")
        if (cl := s.get("clusters")) is not None:
            clusters(ctx, cl)
        listeners = _listeners(ctx, s.items("listeners"), binds)
    check_unique_binds(binds)
    names = {lc.name for lc, _, _ in listeners}
    f.opt("layered_runtime", lambda n: _runtime(ctx, n, names), None)
    f.opt("runtime", lambda n: _disk_layer(ctx, n), None)
    logged = [fmts for _, fmts, _ in listeners if fmts]
    if logged and len(logged) < len(listeners):
        silent = next(n for _, fmts, n in listeners if not fmts)
        ctx.ignore(silent, "no access_log here, but nodeproxy's access line covers every listener")
    json = any("json" in fmts for fmts in logged)
    limits: dict[str, Any] = {name: value for name, (value, _) in ctx.limits.items()}
    return Config(
        listeners=tuple(lc for lc, _, _ in listeners),
        clusters=MappingProxyType(dict(ctx.clusters)),
        admin=admin,
        limits=replace(Limits(downstream_idle_timeout=ENVOY_DOWNSTREAM_IDLE), **limits),
        log=LogConfig(format="json" if json else "auto", access_log=bool(logged)),
        node_name=node_name,
        source_format="envoy",
        source_path=root.source.file,
        warnings=ctx.warnings(),
    )


def _node_id(ctx: EnvoyLoad, node: Node) -> str:
    f = ctx.fields(node, "id", ignored=NODE)
    return f.opt("id", Node.text, "")


def _runtime(ctx: EnvoyLoad, node: Node, listeners: Container[str]) -> None:
    """``layered_runtime``: layers that change nothing (an admin layer, an empty static
    layer, a connection limit for a listener that does not exist) load; a runtime key
    that would change what Envoy does is refused: nodeproxy has no runtime."""
    f = node.fields("layers", unknown=UNSUPPORTED)
    for layer in f.items("layers"):
        lf = layer.fields("name", "static_layer", "admin_layer", "disk_layer",
                          unknown=UNSUPPORTED)  # fmt: skip
        lf.opt("admin_layer", lambda n: n.fields(unknown=UNSUPPORTED), None)
        lf.opt("disk_layer", lambda n: _disk_layer(ctx, n), None)
        for key, value in _flatten(lf.get("static_layer"), ""):
            m = _LISTENER_LIMIT.fullmatch(key)
            if m is None or m.group(1) in listeners:
                raise value.error(f"runtime key {key!r}: nodeproxy has no runtime")
            ctx.ignore(value, "a runtime limit for a listener that does not exist "
                       "(Envoy ignores it too)")  # fmt: skip


def _disk_layer(ctx: EnvoyLoad, node: Node) -> None:
    """A runtime read from a directory (v2 top-level ``runtime``, a ``disk_layer``): the
    file names no key value, so it loads with a warning; nodeproxy reads no runtime keys."""
    node.fields(
        "symlink_root",
        "subdirectory",
        "override_subdirectory",
        "append_service_cluster",
        unknown=UNSUPPORTED,
    )
    ctx.ignore(node, "a runtime directory: nodeproxy has no runtime and reads no keys from it "
               "(the file gives no key values)")  # fmt: skip


def _flatten(node: Node | None, prefix: str) -> list[tuple[str, Node]]:
    """A runtime layer's nested mapping -> (dotted key, value), as Envoy reads it."""
    if node is None:
        return []
    if not node.is_map():
        return [(prefix, node)]
    out: list[tuple[str, Node]] = []
    for key, value in node.entries().items():
        out += _flatten(value, f"{prefix}.{key}" if prefix else key)
    return out


def _listeners(
    ctx: EnvoyLoad, items: list[Node], binds: Binds
) -> list[tuple[ListenerConfig, list[str], Node]]:
    out: list[tuple[ListenerConfig, list[str], Node]] = []
    names: dict[str, str] = {}
    for i, item in enumerate(items):
        f = ctx.fields(
            item, "name", "address", "filter_chains", "listener_filters", "bind_to_port",
            "use_original_dst", "transparent", "freebind", ignored=LISTENER,
        )  # fmt: skip
        name = f.opt("name", Node.text, f"listener_{i}")
        if name in names:
            raise item.error(f"duplicate listener name {name!r} (also {names[name]})")
        names[name] = item.path
        for key in ("use_original_dst", "transparent"):
            if f.opt(key, Node.flag, False):
                raise f.need(key).error(f"only false is supported for {key}")
        if f.opt("freebind", Node.flag, False):
            ctx.ignore(f.need("freebind"), "nodeproxy binds only addresses already on the host "
                       "(a missing one fails at start with a clear error)")  # fmt: skip
        if not f.opt("bind_to_port", Node.flag, True):
            raise f.need("bind_to_port").error("only true is supported (no original_dst)")
        for lf in f.items("listener_filters"):
            extension(lf, LISTENER_FILTERS, "listener filter")
            ctx.ignore(lf, "TLS/HTTP inspection: nodeproxy's one filter chain takes every "
                       "connection")  # fmt: skip
        addr = f.need("address")
        host, port = socket_address(addr, allow_zero_port=True)
        binds.append((addr, host, port))
        chains = f.need("filter_chains").items(non_empty=True)
        if len(chains) > 1:
            raise chains[1].error("only one filter chain per listener is supported")
        c = ctx.fields(
            chains[0], "filters", "filter_chain_match", "transport_socket", "use_proxy_proto",
            ignored=FILTER_CHAIN,
        )  # fmt: skip
        if (match := c.get("filter_chain_match")) is not None and match.entries():
            raise match.error("filter_chain_match is not supported (one chain takes everything)")
        if (ts := c.get("transport_socket")) is not None:
            extension(ts, _RAW, "listener transport socket")
        if c.opt("use_proxy_proto", Node.flag, False):
            raise c.need("use_proxy_proto").error("the PROXY protocol is not supported")
        filters = c.need("filters").items(non_empty=True)
        for extra in filters[:-1]:  # names what else is there (only the HCM is known)
            extension(extra, NETWORK_FILTERS, "network filter")
            raise extra.error("the http_connection_manager must be the only network filter")
        kw, formats = http_connection_manager(ctx, filters[-1], ctx.clusters)
        out.append((ListenerConfig(name=name, host=host, port=port, **kw), formats, item))
    return out
