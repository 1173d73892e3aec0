"""A cluster's resilience settings in Envoy's words -> nodeproxy's cores.

``outlier_detection`` -> ``OutlierConfig`` with Envoy's defaults (max 10 %
ejected, consecutive gateway failures detected but not enforced); a cluster
without it gets ``outlier.DISABLED``: Envoy ejects nothing then.
``circuit_breakers.thresholds`` (the DEFAULT priority; routes are never HIGH
here) -> ``OverloadLimits``, ``per_host_thresholds.max_connections`` -> the
per-endpoint pool size, ``retry_budget`` -> the routes' retry budget (and, as
in Envoy, ``max_retries`` no longer applies). ``health_checks`` (one HTTP
check) -> ``HealthCheckConfig``. Detection kinds nodeproxy does not have
(success rate, failure percentage, local-origin splitting) are refused when
they would eject, accepted when they are only counted.
"""

from __future__ import annotations

from nodeproxy.config.envoy_ignored import CIRCUIT_BREAKERS, HEALTH_CHECK
from nodeproxy.config.envoy_values import (
    UNSUPPORTED,
    EnvoyLoad,
    duration,
    enum,
    integer,
    percent,
    string_matcher,
)
from nodeproxy.config.yamlsrc import Node
from nodeproxy.resilience.health import HealthCheckConfig
from nodeproxy.resilience.outlier import OutlierConfig
from nodeproxy.resilience.overload import OverloadLimits

NO_RETRY_CAP = 2**31  # with a retry_budget Envoy ignores max_retries
_SR = ("success_rate_minimum_hosts", "success_rate_request_volume", "success_rate_stdev_factor")
_FP = ("failure_percentage_threshold", "failure_percentage_minimum_hosts",
       "failure_percentage_request_volume")  # fmt: skip
_LOCAL = (
    "consecutive_local_origin_failure", "enforcing_consecutive_local_origin_failure",
    "enforcing_local_origin_success_rate", "enforcing_failure_percentage_local_origin",
)  # fmt: skip


def outlier_detection(ctx: EnvoyLoad, node: Node, endpoints: int) -> OutlierConfig:
    f = ctx.fields(
        node, "consecutive_5xx", "consecutive_gateway_failure", "interval",
        "base_ejection_time", "max_ejection_time", "max_ejection_percent",
        "enforcing_consecutive_5xx", "enforcing_consecutive_gateway_failure",
        "enforcing_success_rate", "enforcing_failure_percentage",
        "split_external_local_origin_errors", "always_eject_one_host",
        "successful_active_health_check_uneject_host", *_SR, *_FP, *_LOCAL,
        ignored={"max_ejection_time_jitter": "ejections end exactly on time (no jitter)"},
    )  # fmt: skip
    for key in ("split_external_local_origin_errors", "always_eject_one_host",
                "successful_active_health_check_uneject_host"):  # fmt: skip
        if f.opt(key, Node.flag, False):
            raise f.need(key).error(f"{key} is not supported (only false, Envoy's default)")
    sr = f.opt("enforcing_success_rate", percent, 100.0)
    min_hosts = f.opt("success_rate_minimum_hosts", integer, 5)
    if sr and any(k in f for k in _SR):
        raise f.need(next(k for k in _SR if k in f)).error(
            "success-rate ejection is not supported (set enforcing_success_rate: 0)"
        )
    if sr and endpoints >= min_hosts:
        ctx.ignore(node, f"success-rate ejection (Envoy's default with {min_hosts}+ endpoints "
                   "and 100 requests per interval each) is not implemented")  # fmt: skip
    if f.opt("enforcing_failure_percentage", percent, 0.0):
        raise f.need("enforcing_failure_percentage").error("failure-percentage ejection is "
                                                           "not supported")  # fmt: skip
    for key in (*_FP, *_LOCAL):
        if (n := f.get(key)) is not None:
            ctx.ignore(n, "only counted: its ejection is not enforced (as in Envoy)")
    d = OutlierConfig()
    base = f.opt("base_ejection_time", duration, d.base_ejection_time)
    top = f.opt("max_ejection_time", duration, max(d.max_ejection_time, base))
    if top < base:
        raise f.need("max_ejection_time").error("must be >= base_ejection_time")
    return OutlierConfig(
        consecutive_5xx=f.opt("consecutive_5xx", lambda n: integer(n, 1), d.consecutive_5xx),
        consecutive_gateway_failure=f.opt(
            "consecutive_gateway_failure", lambda n: integer(n, 1), d.consecutive_gateway_failure
        ),
        interval=f.opt("interval", duration, d.interval),
        base_ejection_time=base,
        max_ejection_time=top,
        max_ejection_percent=f.opt("max_ejection_percent", percent, 10.0),  # Envoy's default
        enforcing_consecutive_5xx=f.opt("enforcing_consecutive_5xx", _on_off, 100.0),
        enforcing_consecutive_gateway_failure=f.opt(
            "enforcing_consecutive_gateway_failure",
            _on_off,
            0.0,  # Envoy's default: 0 %
        ),
    )


def _on_off(node: Node) -> float:
    value = percent(node)
    if value not in (0.0, 100.0):
        raise node.error(f"only 0 or 100 are supported, got {node.text()!r}")
    return value


def circuit_breakers(
    ctx: EnvoyLoad, node: Node, cluster: str
) -> tuple[OverloadLimits | None, int | None]:
    """(the DEFAULT priority's limits, per-host max_connections); records a retry budget."""
    f = ctx.fields(node, "thresholds", "per_host_thresholds")
    limits = None
    for item in f.items("thresholds"):
        t = ctx.fields(
            item, "priority", "max_connections", "max_pending_requests", "max_requests",
            "max_retries", "retry_budget", ignored=CIRCUIT_BREAKERS,
        )  # fmt: skip
        if t.opt("priority", lambda n: enum(n, "DEFAULT", "HIGH"), "DEFAULT") == "HIGH":
            ctx.ignore(item, "HIGH priority thresholds: nodeproxy's routes are all DEFAULT")
            continue
        if limits is not None:
            raise item.error("a second DEFAULT priority threshold")
        d = OverloadLimits()
        max_retries = t.opt("max_retries", integer, d.max_retries)
        if (rb := t.get("retry_budget")) is not None:
            b = rb.fields("budget_percent", "min_retry_concurrency", unknown=UNSUPPORTED)
            ratio = b.opt("budget_percent", percent, 20.0) / 100
            ctx.retry_budgets[cluster] = (ratio, b.opt("min_retry_concurrency", integer, 3))
            max_retries = NO_RETRY_CAP
        limits = OverloadLimits(
            max_connections=t.opt("max_connections", lambda n: integer(n, 1), d.max_connections),
            max_pending_requests=t.opt(
                "max_pending_requests", lambda n: integer(n, 1), d.max_pending_requests
            ),
            max_requests=t.opt("max_requests", lambda n: integer(n, 1), d.max_requests),
            max_retries=max_retries,
        )
    per_host = None
    for item in f.items("per_host_thresholds"):
        t = item.fields("priority", "max_connections", unknown=UNSUPPORTED)
        if t.opt("priority", lambda n: enum(n, "DEFAULT", "HIGH"), "DEFAULT") == "DEFAULT":
            per_host = t.opt("max_connections", lambda n: integer(n, 1), None)
    return limits, per_host


def health_checks(ctx: EnvoyLoad, node: Node) -> HealthCheckConfig | None:
    items = node.items()
    if not items:
        return None
    if len(items) > 1:
        raise items[1].error("only one health check per cluster is supported")
    f = ctx.fields(
        items[0], "timeout", "interval", "unhealthy_threshold", "healthy_threshold",
        "http_health_check", "unhealthy_interval", ignored=HEALTH_CHECK,
    )  # fmt: skip
    if (ui := f.get("unhealthy_interval")) is not None:
        ctx.ignore(ui, "nodeproxy probes an unhealthy endpoint at the interval too")
    h = f.get("http_health_check")
    if h is None:
        raise items[0].error("only http_health_check is supported (not tcp, grpc or custom)")
    hc = ctx.fields(
        h, "path", "codec_client_type", "method", "service_name", "service_name_matcher",
        ignored={
            "host": "the probe's Host is the endpoint's address",
            "expected_statuses": "nodeproxy counts any 2xx or 3xx answer as healthy",
            "request_headers_to_remove": "the probe carries only Host and User-Agent",
        },
    )  # fmt: skip
    hc.opt("codec_client_type", lambda n: enum(n, "HTTP1"), "HTTP1")
    hc.opt("method", lambda n: enum(n, "GET", "METHOD_UNSPECIFIED"), "GET")
    path = hc.need("path").text()
    if not path.startswith("/") or any(c.isspace() for c in path):
        raise hc.need("path").error(f"expected an origin-form path like /healthz, got {path!r}")
    service = None
    if (sn := hc.get("service_name")) is not None and sn.text(non_empty=False):
        service = ("prefix", sn.text())  # v2: the header starts with it ("": no check)
    if (snm := hc.get("service_name_matcher")) is not None:  # v3
        if sn is not None:
            raise snm.error("use service_name or service_name_matcher, not both")
        service = string_matcher(snm)
    return HealthCheckConfig(
        path=path,
        service_name=service,
        interval=duration(f.need("interval")),
        timeout=duration(f.need("timeout")),
        unhealthy_threshold=integer(f.need("unhealthy_threshold"), 1),
        healthy_threshold=integer(f.need("healthy_threshold"), 1),
    )
