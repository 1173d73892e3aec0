"""An Envoy ``route_config`` -> virtual hosts of ``RouteRule``s.

Walks the table (route configuration -> virtual hosts -> routes) and merges
what Envoy lets each level set for the levels below it: header mutations
(route, then virtual host, then route configuration: the outer level is
applied last and wins, unless ``most_specific_header_mutations_wins``),
the virtual host's ``retry_policy`` and per-filter ``local_ratelimit`` for
routes without their own, and a route's ``upgrade_configs`` over the
connection manager's. A ``route_config`` without ``virtual_hosts`` is valid
(every request answers 404, as in Envoy). The action of one route is
``envoy_actions.py``, its match ``envoy_match.py``.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from nodeproxy.config import envoy_cors
from nodeproxy.config.checks import checked
from nodeproxy.config.envoy_actions import (
    direct_response,
    headers_to_add,
    headers_to_remove,
    redirect,
    retry_policy,
    route_action,
)
from nodeproxy.config.envoy_filters import per_filter_rate_limit
from nodeproxy.config.envoy_ignored import ROUTE, ROUTE_CONFIG, VIRTUAL_HOST
from nodeproxy.config.envoy_match import route_match
from nodeproxy.config.envoy_values import EnvoyLoad, enum
from nodeproxy.config.model import RateLimitConfig, RouteRule, VirtualHost
from nodeproxy.config.yamlsrc import Fields, Node
from nodeproxy.routing.actions import compile_actions

MUTATION_KEYS = (
    "request_headers_to_add", "request_headers_to_remove",
    "response_headers_to_add", "response_headers_to_remove",
)  # fmt: skip
Mutations = dict[str, tuple[Any, ...]]


@dataclass
class _Outer:
    """What the enclosing levels hand a route."""

    upgrades: tuple[str, ...]  # the connection manager's
    mutations: list[Mutations]  # outer levels, innermost first
    most_specific_wins: bool
    retry: Node | None = None  # the virtual host's retry_policy
    rate_limit: RateLimitConfig | None = None


def route_config(
    ctx: EnvoyLoad, node: Node, cluster_names: Container[str], upgrades: tuple[str, ...]
) -> tuple[VirtualHost, ...]:
    f = ctx.fields(
        node, "virtual_hosts", "most_specific_header_mutations_wins", "internal_only_headers",
        *MUTATION_KEYS, ignored=ROUTE_CONFIG,
    )  # fmt: skip
    if f.items("internal_only_headers"):
        raise f.need("internal_only_headers").error("not supported (nodeproxy never strips them)")
    outer = _Outer(
        upgrades=upgrades,
        mutations=[_mutations(f)],
        most_specific_wins=f.opt("most_specific_header_mutations_wins", Node.flag, False),
    )
    vhosts: list[VirtualHost] = []
    domains: dict[str, str] = {}
    for item in f.items("virtual_hosts"):
        vh = _virtual_host(ctx, item, cluster_names, outer)
        if vh.name in (v.name for v in vhosts):
            raise item.error(f"duplicate virtual host name {vh.name!r}")
        for d in vh.domains:
            if d in domains:
                raise item.error(f"domain {d!r} is also in {domains[d]}")
            domains[d] = item.path
        vhosts.append(vh)
    return tuple(vhosts)


def _virtual_host(
    ctx: EnvoyLoad, node: Node, cluster_names: Container[str], outer: _Outer
) -> VirtualHost:
    f = ctx.fields(
        node, "name", "domains", "routes", "require_tls", "retry_policy",
        "typed_per_filter_config", "include_request_attempt_count",
        "include_attempt_count_in_response", *MUTATION_KEYS,
        ignored=envoy_cors.ignored(ctx, VIRTUAL_HOST),
    )  # fmt: skip
    f.opt("require_tls", lambda n: enum(n, "NONE"), "NONE")
    for key in ("include_request_attempt_count", "include_attempt_count_in_response"):
        if f.opt(key, Node.flag, False):
            raise f.need(key).error("only false is supported (nodeproxy adds no attempt count)")
    domains = tuple(_domain(d) for d in f.need("domains").items(non_empty=True))
    inner = _Outer(
        upgrades=outer.upgrades,
        mutations=[_mutations(f), *outer.mutations],
        most_specific_wins=outer.most_specific_wins,
        retry=f.get("retry_policy"),
        rate_limit=f.opt("typed_per_filter_config", lambda n: per_filter_rate_limit(ctx, n), None),
    )
    routes = tuple(_route(ctx, r, cluster_names, inner) for r in f.items("routes"))
    routes = envoy_cors.with_virtual_host(ctx, routes, f)  # the route's fields first
    return VirtualHost(name=f.need("name").text(), domains=domains, routes=routes)


def _domain(node: Node) -> str:
    value = node.text().lower()
    stars = value.count("*")
    if value != "*" and (stars > 1 or (stars == 1 and value[0] != "*" and value[-1] != "*")):
        raise node.error(f"invalid domain {value!r}: '*' only as the first or last character")
    return value


def _route(ctx: EnvoyLoad, node: Node, cluster_names: Container[str], outer: _Outer) -> RouteRule:
    ignored = {k: v for k, v in ROUTE.items() if k != "name"}
    f = ctx.fields(
        node, "name", "match", "route", "redirect", "direct_response", "typed_per_filter_config",
        *MUTATION_KEYS, ignored=ignored,
    )  # fmt: skip
    match = route_match(ctx, f.need("match"))
    kw: dict[str, Any] = {"name": f.opt("name", Node.text, "")}
    levels = [_mutations(f), *outer.mutations]
    if outer.most_specific_wins:
        levels.reverse()
    for key in MUTATION_KEYS:
        kw[key] = tuple(x for level in levels for x in level.get(key, ()))
    limit = f.opt("typed_per_filter_config", lambda n: per_filter_rate_limit(ctx, n), None)
    kw["rate_limit"] = limit or outer.rate_limit
    kw["cors"] = typed_cors = envoy_cors.typed_policy(ctx, f)  # over the action's ``cors``
    kind, action = f.one_of("route", "redirect", "direct_response")
    if kind != "route":  # answered here: nothing goes upstream, request edits do not apply
        for key in ("request_headers_to_add", "request_headers_to_remove"):
            del kw[key]
        if kind == "redirect":
            kw["redirect"] = redirect(action)
        else:
            kw["direct_response"] = direct_response(action)
        return _checked(node, RouteRule(match=match, **kw))
    kw.update(route_action(ctx, action, cluster_names))
    kw["cors"] = typed_cors or kw["cors"]
    if "retries" not in kw and outer.retry is not None:
        targets = [kw["cluster"]] if "cluster" in kw else [w.cluster for w in kw["weighted"]]
        kw["retries"] = retry_policy(ctx, outer.retry, targets)
    if "upgrades" in kw:
        allowed = list(outer.upgrades)
        for token, enabled in kw["upgrades"]:
            if enabled and token not in allowed:
                allowed.append(token)
            elif not enabled and token in allowed:
                allowed.remove(token)
        kw["upgrades"] = tuple(allowed)
    return _checked(node, RouteRule(match=match, **kw))


def _checked(node: Node, rule: RouteRule) -> RouteRule:
    """The rule as the router will compile it (``routing/actions.py``), checked now."""
    checked(node, compile_actions, rule)
    return rule


def _mutations(f: Fields) -> Mutations:
    out: Mutations = {}
    for key in MUTATION_KEYS:
        if (node := f.get(key)) is not None:
            out[key] = headers_to_add(node) if key.endswith("_add") else headers_to_remove(node)
    return out
