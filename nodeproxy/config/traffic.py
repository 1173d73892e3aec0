"""The native per-service traffic sections -> config objects: lb_policy, outlier
detection, circuit breaker, overload thresholds, active health checks; and the canary ``subset`` and
endpoint ``weight`` that route rules and endpoints may carry.

Why a module of its own: these settings feed the decision cores in
``balancing/`` and ``resilience/``, whose own frozen dataclasses
(``OutlierConfig``, ``OverloadLimits``) are built here directly, so their
defaults live in one place. ``loader.py`` only names the keys and calls in.
Defaults and meanings: docs/traffic.md and docs/configuration.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from nodeproxy.config.model import DEFAULT_LB_POLICY, EMPTY_LABELS, LB_POLICIES, BreakerConfig
from nodeproxy.config.yamlsrc import Fields, Node
from nodeproxy.resilience.health import HealthCheckConfig
from nodeproxy.resilience.outlier import OutlierConfig
from nodeproxy.resilience.overload import OverloadLimits

TRAFFIC_KEYS = ("lb_policy", "outlier_detection", "circuit_breaker", "overload", "health_check")
_LABEL_KEY = re.compile(r"([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?")


def cluster_traffic(f: Fields) -> dict[str, Any]:
    """``ClusterConfig`` keyword arguments from a service's traffic keys."""
    return {
        "lb_policy": f.opt("lb_policy", lambda n: n.choice(*LB_POLICIES), DEFAULT_LB_POLICY),
        "outlier": f.opt("outlier_detection", read_outlier, None),
        "circuit_breaker": f.opt("circuit_breaker", read_breaker, None),
        "overload": f.opt("overload", read_overload, None),
        "health_check": f.opt("health_check", read_health_check, None),
    }


def read_outlier(node: Node) -> OutlierConfig:
    """``{consecutive_5xx, consecutive_gateway_failure, interval, base_ejection_time,
    max_ejection_time, max_ejection_percent, enforcing_consecutive_5xx,
    enforcing_consecutive_gateway_failure}``; Envoy's names and defaults."""
    d = OutlierConfig()
    f = node.fields(*d.__dataclass_fields__)
    return OutlierConfig(
        consecutive_5xx=f.opt("consecutive_5xx", Node.integer, d.consecutive_5xx),
        consecutive_gateway_failure=f.opt(
            "consecutive_gateway_failure", Node.integer, d.consecutive_gateway_failure
        ),
        interval=f.opt("interval", Node.duration, d.interval),
        base_ejection_time=f.opt("base_ejection_time", Node.duration, d.base_ejection_time),
        max_ejection_time=f.opt("max_ejection_time", Node.duration, d.max_ejection_time),
        max_ejection_percent=f.opt("max_ejection_percent", _percent, d.max_ejection_percent),
        enforcing_consecutive_5xx=f.opt(
            "enforcing_consecutive_5xx", on_off_percent, d.enforcing_consecutive_5xx
        ),
        enforcing_consecutive_gateway_failure=f.opt(
            "enforcing_consecutive_gateway_failure",
            on_off_percent,
            d.enforcing_consecutive_gateway_failure,
        ),
    )


def on_off_percent(node: Node) -> float:
    """An Envoy ``enforcing_*`` percentage: 0 (detect only) or 100 (eject); a share in
    between would eject at random, which nodeproxy does not do."""
    value = _percent(node)
    if value not in (0.0, 100.0):
        raise node.error(f"only 0 or 100 are supported, got {node.text()!r}")
    return value


def read_breaker(node: Node) -> BreakerConfig:
    """``{failure_threshold, open_interval, max_open_interval}``."""
    d = BreakerConfig()
    f = node.fields("failure_threshold", "open_interval", "max_open_interval")
    open_interval = f.opt("open_interval", Node.duration, d.open_interval)
    top = f.opt("max_open_interval", Node.duration, None)
    if top is not None and top < open_interval:
        raise f.need("max_open_interval").error(f"must be >= open_interval ({open_interval:g}s)")
    return BreakerConfig(
        failure_threshold=f.opt("failure_threshold", Node.integer, d.failure_threshold),
        open_interval=open_interval,
        max_open_interval=top,
    )


def read_overload(node: Node) -> OverloadLimits:
    """``{max_connections, max_pending_requests, max_requests, max_retries}`` (Envoy's)."""
    d = OverloadLimits()
    f = node.fields(*d.__dataclass_fields__)
    return OverloadLimits(
        max_connections=f.opt("max_connections", Node.integer, d.max_connections),
        max_pending_requests=f.opt("max_pending_requests", Node.integer, d.max_pending_requests),
        max_requests=f.opt("max_requests", Node.integer, d.max_requests),
        max_retries=f.opt("max_retries", lambda n: n.integer(0), d.max_retries),
    )


def read_health_check(node: Node) -> HealthCheckConfig:
    """``{path, interval, timeout, healthy_threshold, unhealthy_threshold}``; Kubernetes'
    probe defaults (``/healthz``, 10 s, 1 s, 1, 3)."""
    d = HealthCheckConfig()
    f = node.fields(*d.__dataclass_fields__)
    path = f.opt("path", Node.text, d.path)
    if not path.startswith("/") or any(c.isspace() for c in path):
        raise f.need("path").error(f"expected an origin-form path like /healthz, got {path!r}")
    return HealthCheckConfig(
        path=path,
        interval=f.opt("interval", Node.duration, d.interval),
        timeout=f.opt("timeout", Node.duration, d.timeout),
        unhealthy_threshold=f.opt("unhealthy_threshold", Node.integer, d.unhealthy_threshold),
        healthy_threshold=f.opt("healthy_threshold", Node.integer, d.healthy_threshold),
    )


def read_labels(node: Node) -> dict[str, str]:
    """Kubernetes-style labels ``{name: value}`` (an endpoint's, or a subset's)."""
    out: dict[str, str] = {}
    for key, value in node.entries().items():
        if not _LABEL_KEY.fullmatch(key):
            raise value.error(f"invalid label name {key!r}")
        out[key] = value.text(non_empty=False)
    return out


def read_subset(node: Node) -> Mapping[str, str]:
    """A label selector ``{version: v2}``: only endpoints carrying every pair."""
    out = read_labels(node)
    if not out:
        raise node.error("a subset needs at least one label")
    return MappingProxyType(out)


def opt_subset(f: Fields) -> Mapping[str, str]:
    return f.opt("subset", read_subset, EMPTY_LABELS)


def read_weight(node: Node) -> float:
    """An endpoint's relative weight: a positive number."""
    text = node.text()
    if not _NUMBER.fullmatch(text) or float(text) <= 0:
        raise node.error(f"expected a positive number, got {text!r}")
    return float(text)


def _percent(node: Node) -> float:
    text = node.text()
    if not _NUMBER.fullmatch(text) or not 0 <= float(text) <= 100:
        raise node.error(f"expected a percentage between 0 and 100, got {text!r}")
    return float(text)
