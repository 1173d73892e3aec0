"""Envoy's HTTP connection manager -> one listener's routes, forwarding and limits.

The connection manager holds most of what a listener does: the route table
(``envoy_routes.py``), the HTTP filters and access logs
(``envoy_filters.py``), which upgrades are relayed (``upgrade_configs``;
none without it, Envoy answers 403), how ``x-forwarded-for``/``Via`` are
written and how the Host's port takes part in virtual-host matching (Envoy's
defaults: ``use_remote_address: false``, no ``Via``, the port compared as
part of the name), and timeouts. nodeproxy keeps timeouts and header limits
per process (``Limits``), so a value set here applies to every listener, and
two listeners setting different values is refused rather than half-applied.
"""

from __future__ import annotations

import math
from collections.abc import Container
from typing import Any

from nodeproxy.config.envoy_actions import upgrade_override
from nodeproxy.config.envoy_filters import access_log, http_filters
from nodeproxy.config.envoy_ignored import HCM
from nodeproxy.config.envoy_routes import route_config
from nodeproxy.config.envoy_values import (
    EnvoyLoad,
    common_http_protocol_options,
    duration,
    enum,
    extension,
    integer,
)
from nodeproxy.config.yamlsrc import Fields, Node

HCM_NAMES = ("envoy.http_connection_manager", "envoy.filters.network.http_connection_manager")
HCM_TYPES = (
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "envoy.config.filter.network.http_connection_manager.v2.HttpConnectionManager",
)
NETWORK_FILTERS = {"hcm": (HCM_NAMES, HCM_TYPES)}
HCM_KEYS = (
    "@type", "codec_type", "route_config", "rds", "scoped_routes", "http_filters",
    "upgrade_configs", "access_log", "use_remote_address", "xff_num_trusted_hops", "via",
    "strip_any_host_port", "strip_matching_host_port", "skip_xff_append",
    "common_http_protocol_options", "http_protocol_options", "stream_idle_timeout",
    "request_timeout", "request_headers_timeout", "max_request_headers_kb", "normalize_path",
    "merge_slashes", "path_with_escaped_slashes_action", "generate_request_id",
    "strip_trailing_host_dot", "append_x_forwarded_port",
)  # fmt: skip
_OFF_ONLY = (
    "normalize_path", "merge_slashes", "strip_trailing_host_dot", "append_x_forwarded_port",
)  # fmt: skip


def http_connection_manager(
    ctx: EnvoyLoad, node: Node, cluster_names: Container[str]
) -> tuple[dict[str, Any], list[str]]:
    """(``ListenerConfig`` keyword arguments, the access log formats it asks for)."""
    _, cfg, _ = extension(node, NETWORK_FILTERS, "network filter")
    if cfg is None:
        raise node.error("the http_connection_manager needs its typed_config")
    h = ctx.fields(cfg, *HCM_KEYS, ignored=HCM)
    for key in ("rds", "scoped_routes"):
        if (xds := h.get(key)) is not None:
            raise xds.error(f"{key} (xDS) is not supported: write the routes in route_config")
    for key in _OFF_ONLY:
        if h.opt(key, Node.flag, False):
            raise h.need(key).error(f"only false (Envoy's default) is supported for {key}")
    h.opt("codec_type", lambda n: enum(n, "AUTO", "HTTP1"), "AUTO")
    h.opt(
        "path_with_escaped_slashes_action",
        lambda n: enum(n, "IMPLEMENTATION_SPECIFIC_DEFAULT", "KEEP_UNCHANGED"),
        "",
    )
    if not h.opt("generate_request_id", Node.flag, True):
        ctx.ignore(h.need("generate_request_id"), "nodeproxy adds an x-request-id when the "
                   "client sent none (its access line needs one)")  # fmt: skip
    _limits(ctx, h)
    out: dict[str, Any] = _forwarding(h)
    out["rate_limit"] = h.opt("http_filters", lambda n: http_filters(ctx, n), None)
    if "http_filters" not in h:
        ctx.local_ratelimit_filter = ctx.cors_filter = False
    overrides = [upgrade_override(u) for u in h.items("upgrade_configs")]
    for u in h.items("upgrade_configs"):
        if (filters := u.entries().get("filters")) is not None:
            raise filters.error("upgrade filters are not supported")
    out["upgrades"] = tuple(token for token, enabled in overrides if enabled)
    out["virtual_hosts"] = route_config(ctx, h.need("route_config"), cluster_names, out["upgrades"])
    formats = [fmt for a in h.items("access_log") if (fmt := access_log(ctx, a)) is not None]
    return out, formats


def _forwarding(h: Fields) -> dict[str, Any]:
    """``x-forwarded-for``, ``Via`` and Host port matching, with Envoy's defaults."""
    use_remote = h.opt("use_remote_address", Node.flag, False)
    if h.opt("skip_xff_append", Node.flag, False) and use_remote:
        raise h.need("skip_xff_append").error(
            "not supported with use_remote_address: true (nodeproxy then appends the client)"
        )
    via = h.opt("via", lambda n: n.text(non_empty=False), "")
    any_port = h.opt("strip_any_host_port", Node.flag, False)
    matching_port = h.opt("strip_matching_host_port", Node.flag, False)
    if any_port and matching_port:
        raise h.need("strip_matching_host_port").error("conflicts with strip_any_host_port")
    port_match = "strip_any" if any_port else "strip_matching" if matching_port else "exact"
    return {
        "use_remote_address": use_remote,
        "xff_num_trusted_hops": h.opt("xff_num_trusted_hops", integer, 0),
        "via": via or None,
        "host_port_match": port_match,
        # Envoy's x-forwarded-proto rule, and its strip_*_host_port also strip the upstream Host
        "trust_forwarded_proto": False,
        "strip_port_upstream": any_port or matching_port,
    }


def _limits(ctx: EnvoyLoad, h: Fields) -> None:
    """Timeouts and header limits -> ``ctx.limits`` (process-wide ``Limits``)."""
    if (rt := h.get("request_timeout")) is not None and duration(rt, allow_zero=True):
        raise rt.error("not supported: nodeproxy bounds request bodies with "
                       "limits.request_body_timeout and request_body_min_rate")  # fmt: skip
    for key, field in (
        ("stream_idle_timeout", "stream_idle_timeout"),
        ("request_headers_timeout", "header_read_timeout"),
    ):
        if (n := h.get(key)) is not None:
            ctx.limit(field, duration(n, allow_zero=True) or math.inf, n)
    if (kb := h.get("max_request_headers_kb")) is not None:
        ctx.limit("max_request_header_bytes", integer(kb, 1, 8192) * 1024, kb)
    if (cp := h.get("common_http_protocol_options")) is not None:
        idle = common_http_protocol_options(ctx, cp)
        if idle is not None:
            ctx.limit("downstream_idle_timeout", idle, cp)
    if (hp := h.get("http_protocol_options")) is not None:
        p = ctx.fields(
            hp, "accept_http_10", ignored={"header_key_format": "header name case on the wire "
                                           "(nodeproxy writes lower case)"},
        )  # fmt: skip
        p.opt("accept_http_10", Node.flag, False)  # nodeproxy answers HTTP/1.0 either way
