"""The connection manager's HTTP filters and access logs -> nodeproxy's rate limits and log.

HTTP filters: the router (any of its names, or any name with its ``@type``;
its options only feed stats and tracing) must come last; before it, the one
other filter nodeproxy runs is ``envoy.filters.http.local_ratelimit``. Its
token bucket becomes the listener's ``rate_limit`` (``max_tokens`` is the
burst, ``tokens_per_fill / fill_interval`` the rate; nodeproxy refills
continuously where Envoy adds ``tokens_per_fill`` at each interval), and a
route's or virtual host's ``typed_per_filter_config`` the route's. As in
Envoy, the limit applies only where ``filter_enabled`` and ``filter_enforced``
are 100 % (their default, 0 %, only counts). Any other filter changes what
Envoy does with a request, so it is refused by name.

Access logs: a file logger writing to ``/dev/stdout`` or ``/dev/stderr`` (or
the stdout/stderr loggers) turns on nodeproxy's access line, on its log
stream; ``json_format`` selects JSON output. nodeproxy writes its own fields
(docs/admin.md), not Envoy's format string; other paths are refused: the
access line cannot go to a file yet. Without any ``access_log``, as in
Envoy, no access line is written.
"""

from __future__ import annotations

from nodeproxy.config import envoy_cors
from nodeproxy.config.envoy_actions import headers_to_add
from nodeproxy.config.envoy_ignored import ROUTER_FILTER
from nodeproxy.config.envoy_values import (
    UNSUPPORTED,
    EnvoyLoad,
    duration,
    extension,
    fraction,
    integer,
    type_name,
)
from nodeproxy.config.model import BucketConfig, HeaderMutation, RateLimitConfig
from nodeproxy.config.yamlsrc import Node
from nodeproxy.routing.header_edits import HeaderEdits

_E = "envoy.extensions."
HTTP_FILTERS = {
    "router": (
        ("router", "envoy.router", "envoy.filters.http.router"),
        (_E + "filters.http.router.v3.Router", "envoy.config.filter.http.router.v2.Router"),
    ),
    "local_ratelimit": (
        ("envoy.local_rate_limit", "envoy.filters.http.local_ratelimit"),
        (_E + "filters.http.local_ratelimit.v3.LocalRateLimit",),
    ),
    "cors": envoy_cors.FILTER,
}
ACCESS_LOGGERS = {
    "file": (
        ("envoy.file_access_log", "envoy.access_loggers.file"),
        (_E + "access_loggers.file.v3.FileAccessLog", "envoy.config.accesslog.v2.FileAccessLog"),
    ),
    "stdout": (
        ("envoy.access_loggers.stdout",),
        (_E + "access_loggers.stream.v3.StdoutAccessLog",),
    ),
    "stderr": (
        ("envoy.access_loggers.stderr",),
        (_E + "access_loggers.stream.v3.StderrAccessLog",),
    ),
}
_STREAMS = ("/dev/stdout", "/dev/stderr", "/proc/self/fd/1", "/proc/self/fd/2")
_LOCAL_RATELIMIT_KEYS = (
    "@type", "stat_prefix", "token_bucket", "filter_enabled", "filter_enforced", "status",
    "local_rate_limit_per_downstream_connection", "response_headers_to_add",
)  # fmt: skip


def http_filters(ctx: EnvoyLoad, node: Node) -> RateLimitConfig | None:
    """The listener's rate limit (if any); sets ``ctx.local_ratelimit_filter``."""
    items = node.items(non_empty=True)
    limit = None
    ctx.local_ratelimit_filter = ctx.cors_filter = False
    for i, item in enumerate(items):
        kind, cfg, f = extension(item, HTTP_FILTERS, "HTTP filter")
        if f.opt("disabled", Node.flag, False):
            raise f.need("disabled").error("disabled filters are not supported")
        if f.opt("is_optional", Node.flag, False):
            ctx.ignore(f.need("is_optional"), "the filter is known to nodeproxy")
        last = i == len(items) - 1
        if kind == "router":
            if not last:
                raise item.error("the router must be the last HTTP filter")
            if cfg is not None:
                ctx.fields(cfg, "@type", ignored=ROUTER_FILTER)
        elif last:
            raise item.error("the last HTTP filter must be the router (envoy.filters.http.router)")
        elif kind == "cors":
            ctx.cors_filter = envoy_cors.cors_filter(cfg)
        else:
            ctx.local_ratelimit_filter = True
            limit = local_rate_limit(ctx, cfg) if cfg is not None else None
    return limit


def local_rate_limit(ctx: EnvoyLoad, node: Node) -> RateLimitConfig | None:
    """A ``LocalRateLimit`` config -> the bucket, or None when not enforced (or no bucket)."""
    f = ctx.fields(node, *_LOCAL_RATELIMIT_KEYS)
    f.opt("stat_prefix", Node.text, "")
    if (st := f.get("status")) is not None:
        code = integer(st.fields("code", unknown=UNSUPPORTED).need("code"), 100, 599)
        if code != 429:
            raise st.error("only 429 (TooManyRequests, the default) is supported")
    if f.opt("local_rate_limit_per_downstream_connection", Node.flag, False):
        raise f.need("local_rate_limit_per_downstream_connection").error("only false is supported")
    bucket = f.get("token_bucket")
    enabled = f.opt("filter_enabled", fraction, 0.0)
    enforced = f.opt("filter_enforced", fraction, 0.0)
    for key, share in (("filter_enabled", enabled), ("filter_enforced", enforced)):
        if share not in (0.0, 1.0):
            raise f.need(key).error("only 0 % or 100 % are supported")
    no_headers: tuple[HeaderMutation, ...] = ()
    added = f.opt("response_headers_to_add", _limited_headers, no_headers)
    if bucket is None:
        return None
    b = bucket.fields("max_tokens", "tokens_per_fill", "fill_interval", unknown=UNSUPPORTED)
    burst = integer(b.need("max_tokens"), 1)
    per_fill = b.opt("tokens_per_fill", lambda n: integer(n, 1), 1)
    interval = duration(b.need("fill_interval"))
    if enabled < 1.0 or enforced < 1.0:
        ctx.ignore(bucket, "filter_enabled and filter_enforced are not both 100 %: "
                   "the limit only counts, as in Envoy")  # fmt: skip
        return None
    return RateLimitConfig(
        total=BucketConfig(per_fill / interval, burst), response_headers_to_add=added
    )


def _limited_headers(node: Node) -> tuple[HeaderMutation, ...]:
    """``response_headers_to_add``: headers on the 429 the limit answers."""
    added = headers_to_add(node)
    edits = HeaderEdits.build(added, ())
    if edits is not None and edits.reads_request:
        raise node.error("%REQ()% is not supported in a rate limit's response headers")
    return added


def per_filter_rate_limit(ctx: EnvoyLoad, node: Node) -> RateLimitConfig | None:
    """A route's or virtual host's ``typed_per_filter_config``: only the local rate limit."""
    limit = None
    for name, cfg in node.entries().items():
        if envoy_cors.per_filter(ctx, name, cfg):
            continue  # read by envoy_cors.typed_policy
        type_url = cfg.entries().get("@type") if cfg.is_map() else None
        known = HTTP_FILTERS["local_ratelimit"]
        ok = name in known[0] if type_url is None else type_name(type_url.text()) in known[1]
        if not ok:
            raise cfg.error(f"per-route config for {name!r} is not supported")
        if not ctx.local_ratelimit_filter:
            raise cfg.error("needs envoy.filters.http.local_ratelimit in http_filters")
        limit = local_rate_limit(ctx, cfg)
    return limit


def access_log(ctx: EnvoyLoad, node: Node) -> str | None:
    """One HCM ``access_log`` entry -> "json" or "text" (the line is written), None (not)."""
    kind, cfg, f = extension(node, ACCESS_LOGGERS, "access logger", "filter")
    if (flt := f.get("filter")) is not None:
        raise flt.error("access log filters are not supported")
    path = {"stdout": "/dev/stdout", "stderr": "/dev/stderr"}.get(kind)
    fmt = "text"
    if cfg is not None:
        keys = ("@type", "path", "format", "json_format", "typed_json_format", "log_format")
        c = cfg.fields(*keys, unknown=UNSUPPORTED)
        if kind == "file":
            path = c.need("path").text()
        elif "path" in c:
            raise c.need("path").error(UNSUPPORTED)
        if "json_format" in c or "typed_json_format" in c:
            fmt = "json"
        if (lf := c.get("log_format")) is not None:
            lf_keys = ("text_format", "text_format_source", "json_format", "typed_json_format",
                       "omit_empty_values", "content_type")  # fmt: skip
            g = lf.fields(*lf_keys, unknown=UNSUPPORTED)
            fmt = "json" if ("json_format" in g or "typed_json_format" in g) else fmt
        for key in ("format", "json_format", "typed_json_format", "log_format"):
            if (custom := c.get(key)) is not None:
                ctx.ignore(custom, "nodeproxy writes its own access line fields (docs/admin.md)")
    if path == "/dev/null":
        return None
    if path is None or path not in _STREAMS:
        where = cfg or node
        raise where.error(
            f"access log path {path!r}: nodeproxy writes its access line to its log stream "
            "(stdout); use /dev/stdout, /dev/stderr or /dev/null"
        )
    if path in ("/dev/stderr", "/proc/self/fd/2"):
        ctx.ignore(cfg or node, "the access line goes to nodeproxy's log stream (stdout)")
    return fmt
