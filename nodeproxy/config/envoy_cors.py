"""Envoy's CORS filter and policies -> ``RouteRule.cors`` (matching: routing/cors.py).

As in Envoy, a ``cors`` policy (on a virtual host, or on a route's ``route:``
action) or a ``typed_per_filter_config`` ``CorsPolicy`` does something only
when ``envoy.filters.http.cors`` is in the connection manager's
``http_filters``; without it they load with a warning
(``envoy_ignored.py``). A route's policy is merged with its virtual host's
field by field, the route's first. Once any level has a per-filter
``CorsPolicy``, Envoy reads those only and ignores the ``cors`` fields, and
so does this loader. ``filter_enabled`` must be 100 % (its default) or 0 %
(off), as v2's ``enabled: false``; ``shadow_enabled`` only feeds stats.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from nodeproxy.config.envoy_ignored import NO_WARNING
from nodeproxy.config.envoy_values import (
    UNSUPPORTED,
    EnvoyLoad,
    fraction,
    string_matcher,
    type_name,
)
from nodeproxy.config.model import CorsPolicy, RouteRule
from nodeproxy.config.yamlsrc import Fields, Node
from nodeproxy.routing.cors import check_policy, merge

_E = "envoy.extensions.filters.http.cors.v3."
NAMES = ("envoy.cors", "envoy.filters.http.cors")
FILTER = (NAMES, (_E + "Cors", "envoy.config.filter.http.cors.v2.Cors"))
POLICY_TYPES = (_E + "CorsPolicy",)
_POLICY_KEYS = (
    "@type", "allow_origin", "allow_origin_regex", "allow_origin_string_match", "allow_methods",
    "allow_headers", "expose_headers", "max_age", "allow_credentials", "enabled",
    "filter_enabled", "shadow_enabled", "allow_private_network_access",
    "forward_not_matching_preflights",
)  # fmt: skip


def cors_filter(cfg: Node | None) -> bool:
    """The filter's own config (``Cors``: nothing but its ``@type``); True: it is on."""
    if cfg is not None:
        cfg.fields("@type", unknown=UNSUPPORTED)
    return True


def ignored(ctx: EnvoyLoad, table: Mapping[str, str]) -> Mapping[str, str]:
    """``table`` (keys loaded with a warning) with ``cors`` read silently when the filter
    is on: the caller then reads it with ``policy``."""
    if not ctx.cors_filter:
        return table
    return {**table, "cors": NO_WARNING + "read by envoy_cors.py"}


def policy(ctx: EnvoyLoad, node: Node | None, *, per_filter: bool = False) -> CorsPolicy | None:
    """A ``CorsPolicy`` (v2 or v3) -> the model's; None without one or without the filter."""
    if node is None or not ctx.cors_filter:
        return None
    f = ctx.fields(node, *_POLICY_KEYS)
    origins = [("exact", o.text()) for o in f.items("allow_origin")]
    origins += [("regex", o.text()) for o in f.items("allow_origin_regex")]
    origins += [string_matcher(o) for o in f.items("allow_origin_string_match")]
    if f.opt("allow_private_network_access", Node.flag, False):
        raise f.need("allow_private_network_access").error("only false is supported")
    enabled = f.opt("enabled", Node.flag, True)
    if (fe := f.get("filter_enabled")) is not None:
        share = fraction(fe)
        if share not in (0.0, 1.0):
            raise fe.error("only 0 % (off) or 100 % (on, the default) are supported")
        enabled = share == 1.0
    if (se := f.get("shadow_enabled")) is not None:
        ctx.ignore(se, "shadow mode only feeds Envoy's stats")
    cors = CorsPolicy(
        origins=tuple(origins),
        allow_methods=f.opt("allow_methods", Node.text, ""),
        allow_headers=f.opt("allow_headers", Node.text, ""),
        expose_headers=f.opt("expose_headers", Node.text, ""),
        max_age=f.opt("max_age", Node.text, ""),
        allow_credentials=f.opt("allow_credentials", Node.flag, None),
        enabled=enabled,
        forward_not_matching_preflights=f.opt("forward_not_matching_preflights", Node.flag, True),
        per_filter=per_filter,
    )
    try:
        return check_policy(cors)
    except ValueError as exc:
        raise node.error(str(exc)) from None


def per_filter(ctx: EnvoyLoad, name: str, cfg: Node) -> bool:
    """Whether a ``typed_per_filter_config`` entry is the CORS filter's."""
    type_url = cfg.entries().get("@type") if cfg.is_map() else None
    if type_url is None:
        return name in NAMES
    return type_name(type_url.text()) in POLICY_TYPES


def typed_policy(ctx: EnvoyLoad, f: Fields) -> CorsPolicy | None:
    """The CORS entry of a level's ``typed_per_filter_config``, if any."""
    if (node := f.get("typed_per_filter_config")) is None:
        return None
    for name, cfg in node.entries().items():
        if per_filter(ctx, name, cfg):
            if not ctx.cors_filter:
                ctx.ignore(cfg, "needs envoy.filters.http.cors in http_filters (Envoy ignores it)")
            return policy(ctx, cfg, per_filter=True)
    return None


def with_virtual_host(
    ctx: EnvoyLoad, routes: tuple[RouteRule, ...], f: Fields
) -> tuple[RouteRule, ...]:
    """Routes with the virtual host's policy (``cors`` or per-filter) merged in."""
    typed = typed_policy(ctx, f)
    if not ctx.cors_filter:
        return routes
    plain = policy(ctx, f.get("cors"))
    if typed is None and plain is None:
        return routes
    out = []
    for rule in routes:
        own = rule.cors
        if typed is not None or (own is not None and own.per_filter):
            own = own if own is not None and own.per_filter else None
            merged = merge(own, typed)
        else:
            merged = merge(own, plain)
        out.append(rule if merged is rule.cors else replace(rule, cors=merged))
    return tuple(out)
