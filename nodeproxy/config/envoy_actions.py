"""What an Envoy route does: ``route`` (cluster, split, rewrites, timeout, retries),
``redirect``, ``direct_response``, and header mutations -> ``RouteRule`` fields.

Why apart from ``envoy_routes.py``: that module walks the route table; this
one reads one route's action, field by field, onto the rule the route actions
engineer's code executes (``routing/actions.py``). Envoy's defaults hold: no
retries without ``retry_policy`` (and then 1 retry, 25 ms back-off base),
route timeout 15 s (the cluster's ``response_timeout``), ``0s`` for no
timeout; retries are limited by the cluster's ``max_retries`` threshold and,
only when the cluster sets one, its ``retry_budget``.
"""

from __future__ import annotations

import math
from collections.abc import Container
from typing import Any

from nodeproxy.config import envoy_cors
from nodeproxy.config.checks import checked, upgrade_token
from nodeproxy.config.envoy_ignored import ROUTE_ACTION
from nodeproxy.config.envoy_values import (
    UNSUPPORTED,
    EnvoyLoad,
    duration,
    enum,
    integer,
    regex,
)
from nodeproxy.config.model import (
    DirectResponse,
    HeaderMutation,
    Redirect,
    RetryConfig,
    WeightedCluster,
)
from nodeproxy.config.yamlsrc import Node
from nodeproxy.routing.actions import (
    MAX_BODY,
    check_host_value,
    check_local_status,
    check_redirect,
    check_substitution,
)
from nodeproxy.routing.header_edits import check_header_name, check_header_value

ACTION_KEYS = (
    "cluster", "weighted_clusters", "timeout", "retry_policy", "upgrade_configs",
    "prefix_rewrite", "regex_rewrite", "host_rewrite_literal", "host_rewrite",
    "auto_host_rewrite", "priority", "append_x_forwarded_host", "internal_redirect_action",
)  # fmt: skip
REDIRECT_CODES = {
    "MOVED_PERMANENTLY": 301, "FOUND": 302, "SEE_OTHER": 303, "TEMPORARY_REDIRECT": 307,
    "PERMANENT_REDIRECT": 308,
}  # fmt: skip
# retry_on conditions nodeproxy implements, and those that can never fire on HTTP/1.1
RETRY_ON = ("5xx", "gateway-error", "reset", "connect-failure", "retriable-status-codes",
            "retriable-4xx")  # fmt: skip
RETRY_ON_NOOP = ("refused-stream", "http3-post-connect-failure", "reset-before-request")
SUBSETS = ROUTE_ACTION["metadata_match"]
NO_BUDGET = (1.0, 3)  # retries <= requests in flight: always true, i.e. no budget


def route_action(ctx: EnvoyLoad, node: Node, cluster_names: Container[str]) -> dict[str, Any]:
    """``RouteRule`` keyword arguments from a route's ``route:``."""
    r = ctx.fields(node, *ACTION_KEYS, ignored=envoy_cors.ignored(ctx, ROUTE_ACTION))
    out_cors = envoy_cors.policy(ctx, r.get("cors"))  # None without the CORS filter
    out: dict[str, Any] = {}
    kind, target = r.one_of("cluster", "weighted_clusters")
    if kind == "cluster":
        out["cluster"] = cluster_ref(target, cluster_names)
        targets = [out["cluster"]]
    else:
        out["weighted"] = _weighted(ctx, target, cluster_names)
        targets = [w.cluster for w in out["weighted"]]
    timeout = r.opt("timeout", lambda n: duration(n, allow_zero=True), None)
    out["timeout"] = math.inf if timeout == 0 else timeout  # Envoy: 0s disables it
    if (rp := r.get("retry_policy")) is not None:
        out["retries"] = retry_policy(ctx, rp, targets)
    if "upgrade_configs" in r:  # resolved against the listener's by envoy_routes.py
        out["upgrades"] = tuple(upgrade_override(u) for u in r.items("upgrade_configs"))
    out["prefix_rewrite"] = r.opt("prefix_rewrite", lambda n: n.text(non_empty=False), None)
    out["regex_rewrite"] = r.opt("regex_rewrite", regex_rewrite, None)
    if "host_rewrite_literal" in r and "host_rewrite" in r:
        raise r.need("host_rewrite").error("use host_rewrite_literal or host_rewrite, not both")
    host = r.get("host_rewrite_literal") or r.get("host_rewrite")
    out["host_rewrite"] = None if host is None else checked(host, check_host_value, host.text())
    if r.opt("auto_host_rewrite", Node.flag, False):
        if host is not None:
            raise r.need("auto_host_rewrite").error("conflicts with host_rewrite_literal")
        if all(t in ctx.dns_clusters for t in targets):
            out["auto_host_rewrite"] = True
        else:  # Envoy: "has no effect" unless the cluster is STRICT_DNS or LOGICAL_DNS
            ctx.ignore(r.need("auto_host_rewrite"), "only STRICT_DNS/LOGICAL_DNS clusters "
                       "have a host name to rewrite to (Envoy ignores it too)")  # fmt: skip
    if out_cors is not None:
        out["cors"] = out_cors
    r.opt("priority", lambda n: enum(n, "DEFAULT"), "DEFAULT")
    if r.opt("append_x_forwarded_host", Node.flag, False):
        raise r.need("append_x_forwarded_host").error("only false is supported")
    r.opt("internal_redirect_action", lambda n: enum(n, "PASS_THROUGH_INTERNAL_REDIRECT"), "")
    return out


def cluster_ref(node: Node, cluster_names: Container[str]) -> str:
    name = node.text()
    if name not in cluster_names:
        raise node.error(f"unknown cluster {name!r} (not in static_resources.clusters)")
    return name


def _weighted(
    ctx: EnvoyLoad, node: Node, cluster_names: Container[str]
) -> tuple[WeightedCluster, ...]:
    w = ctx.fields(node, "clusters", "total_weight", ignored={"runtime_key_prefix": "no runtime"})
    weighted: list[WeightedCluster] = []
    for item in w.need("clusters").items(non_empty=True):
        c = ctx.fields(item, "name", "weight", ignored={"metadata_match": SUBSETS})
        weight = integer(c.need("weight"), 0)
        weighted.append(WeightedCluster(cluster_ref(c.need("name"), cluster_names), weight))
    total = sum(x.weight for x in weighted)
    if total == 0:
        raise node.error("the weights add up to 0")
    if (tw := w.get("total_weight")) is not None and integer(tw, 1) != total:
        raise tw.error(f"total_weight {integer(tw, 1)} != sum of the weights ({total})")
    return tuple(weighted)


def upgrade_override(node: Node) -> tuple[str, bool]:
    """An ``upgrade_configs`` entry -> (token, enabled); a route's entry overrides the
    connection manager's for that token (Envoy's table: the route's ``enabled`` wins)."""
    f = node.fields("upgrade_type", "enabled", unknown=UNSUPPORTED)
    return upgrade_token(f.need("upgrade_type")), f.opt("enabled", Node.flag, True)


def regex_rewrite(node: Node) -> tuple[str, str]:
    """``{pattern: {regex}, substitution}``: RE2's ``\\1`` groups, on the path only."""
    f = node.fields("pattern", "substitution", unknown=UNSUPPORTED)
    pattern = regex(f.need("pattern"))
    sub = f.need("substitution")
    checked(sub, check_substitution, pattern, sub.text(non_empty=False))
    return pattern, sub.text(non_empty=False)


def retry_policy(ctx: EnvoyLoad, node: Node, targets: list[str]) -> RetryConfig:
    f = ctx.fields(
        node, "retry_on", "num_retries", "per_try_timeout", "retriable_status_codes",
        "retry_back_off", "retry_host_predicate", "host_selection_retry_max_attempts",
        ignored={"per_try_idle_timeout": "nodeproxy's stream_idle_timeout covers a silent try"},
    )  # fmt: skip
    on: list[str] = []
    for part in (p.strip() for p in f.opt("retry_on", Node.text, "").split(",")):
        if part in RETRY_ON:
            on.append(part)
        elif part and part not in RETRY_ON_NOOP:
            raise f.need("retry_on").error(
                f"unsupported retry_on {part!r} (supported: {', '.join(RETRY_ON)})"
            )
    base, top = f.opt("retry_back_off", _back_off, (0.025, 0.25))
    for p in f.items("retry_host_predicate"):  # nodeproxy always prefers untried hosts
        if p.fields("name", "typed_config", unknown=UNSUPPORTED).need("name").text() not in (
            "envoy.retry_host_predicates.previous_hosts",
        ):
            raise p.error("only envoy.retry_host_predicates.previous_hosts is supported")
    f.opt("host_selection_retry_max_attempts", integer, 0)
    budgets = {ctx.retry_budgets.get(t, NO_BUDGET) for t in targets}
    if len(budgets) > 1:
        raise node.error("the split's clusters have different retry budgets")
    ratio, floor = budgets.pop()
    return RetryConfig(
        retry_on=tuple(dict.fromkeys(on)),
        num_retries=f.opt("num_retries", lambda n: integer(n, 0, 10), 1),
        per_try_timeout=f.opt("per_try_timeout", duration, None),
        backoff_base=base,
        backoff_max=top,
        budget_ratio=ratio,
        budget_min_concurrency=floor,
        retriable_status_codes=tuple(
            integer(c, 100, 599) for c in f.items("retriable_status_codes")
        ),
    )


def _back_off(node: Node) -> tuple[float, float]:
    f = node.fields("base_interval", "max_interval", unknown=UNSUPPORTED)
    base = duration(f.need("base_interval"))
    top = f.opt("max_interval", duration, base * 10)
    if top < base:
        raise f.need("max_interval").error("must be >= base_interval")
    return base, top


def redirect(node: Node) -> Redirect:
    f = node.fields(
        "scheme_redirect", "https_redirect", "host_redirect", "port_redirect", "path_redirect",
        "prefix_rewrite", "response_code", "strip_query", unknown=UNSUPPORTED,
    )  # fmt: skip
    if "scheme_redirect" in f and "https_redirect" in f:
        raise node.error("use scheme_redirect or https_redirect, not both")
    if "path_redirect" in f and "prefix_rewrite" in f:
        raise node.error("use path_redirect or prefix_rewrite, not both")
    scheme = f.opt("scheme_redirect", lambda n: n.text().lower(), None)
    if f.opt("https_redirect", Node.flag, False):
        scheme = "https"
    code = f.opt("response_code", lambda n: enum(n, *REDIRECT_CODES), "MOVED_PERMANENTLY")
    out = Redirect(
        scheme=scheme,
        host=f.opt("host_redirect", Node.text, None),
        port=f.opt("port_redirect", lambda n: integer(n, 1, 65535), None),
        path=f.opt("path_redirect", Node.text, None),
        prefix_rewrite=f.opt("prefix_rewrite", lambda n: n.text(non_empty=False), None),
        response_code=REDIRECT_CODES[code],
        strip_query=f.opt("strip_query", Node.flag, False),
    )
    checked(node, check_redirect, out)
    return out


def direct_response(node: Node) -> DirectResponse:
    f = node.fields("status", "body", unknown=UNSUPPORTED)
    status = integer(f.need("status"), 100, 999)
    body = ""
    if (b := f.get("body")) is not None:
        bf = b.fields("inline_string", "filename", unknown=UNSUPPORTED)
        if (fn := bf.get("filename")) is not None:
            if bf.get("inline_string") is not None:
                raise b.error("use one of inline_string or filename")
            body = _body_file(fn)
        else:
            body = bf.need("inline_string").text(non_empty=False)
    checked(f.get("body") or f.need("status"), check_local_status, status, body)
    return DirectResponse(status=status, body=body)


def _body_file(node: Node) -> str:
    """``body.filename``: read once at load, as Envoy does (relative to the working
    directory), bounded by Envoy's default 4096-byte limit on a direct response body."""
    path = node.text()
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BODY + 1)
    except OSError as exc:
        raise node.error(f"cannot read {path!r}: {exc.strerror or exc}") from None
    if len(data) > MAX_BODY:
        raise node.error(f"{path!r} is over {MAX_BODY} bytes (Envoy's default limit)")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise node.error(f"{path!r} is not UTF-8 text") from None


def headers_to_add(node: Node) -> tuple[HeaderMutation, ...]:
    """``[{header: {key, value}, append | append_action}]`` -> mutations."""
    out: list[HeaderMutation] = []
    for item in node.items():
        f = item.fields("header", "append", "append_action", "keep_empty_value",
                        unknown=UNSUPPORTED)  # fmt: skip
        h = f.need("header").fields("key", "value", unknown=UNSUPPORTED)
        name = checked(h.need("key"), check_header_name, h.need("key").text())
        value = h.opt(
            "value", lambda n: checked(n, check_header_value, n.text(non_empty=False)), ""
        )
        append = f.opt("append", Node.flag, True)
        if (aa := f.get("append_action")) is not None:
            action = enum(aa, "APPEND_IF_EXISTS_OR_ADD", "OVERWRITE_IF_EXISTS_OR_ADD")
            append = action == "APPEND_IF_EXISTS_OR_ADD"
        if not f.opt("keep_empty_value", Node.flag, False) and not value:
            continue  # Envoy drops a header whose value is empty
        out.append(HeaderMutation(name=name, value=value, append=append))
    return tuple(out)


def headers_to_remove(node: Node) -> tuple[str, ...]:
    return tuple(checked(item, check_header_name, item.text()) for item in node.items())
