"""The native ``retries``, ``rate_limit`` and ``fairness`` sections -> config dataclasses.

Why a module of its own: these three sections share one concern (how much
load a caller may put on the proxy and on a backend, and how hard the proxy
tries for them), their numbers are checked against each other (a backoff max
below its base, a burst below one request), and keeping them out of
``loader.py`` keeps that file about the shape of services and listeners.
Defaults are Envoy's where Envoy has one (1 retry, 25 ms / 250 ms backoff, a
20 % retry budget with a floor of 3); docs/configuration.md lists them.
"""

from __future__ import annotations

import re

from nodeproxy.config.model import BucketConfig, FairnessConfig, RateLimitConfig, RetryConfig
from nodeproxy.config.yamlsrc import Node

RETRY_ON = (
    "connect-failure", "reset", "gateway-error", "5xx", "retriable-status-codes", "retriable-4xx",
)  # fmt: skip
RETRY_KEYS = (
    "retry_on", "num_retries", "per_try_timeout", "backoff", "budget", "retriable_status_codes",
)  # fmt: skip
FAIRNESS_KEYS = (
    "max_concurrent_per_source", "max_queue_per_source", "max_wait", "max_concurrent", "max_queue",
)  # fmt: skip
MAX_RETRIES = 10  # more only multiplies the load on a sick service
_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?")


# Defaults read from an instance: RetryConfig is compiled (nodeproxy/compiled.py), and a
# compiled class's attributes are descriptors, not the default values.
_DEFAULT_RETRY = RetryConfig()


def read_retries(node: Node) -> RetryConfig:
    """``{retry_on, num_retries, per_try_timeout, backoff: {base, max}, budget: {...},
    retriable_status_codes}``."""
    f = node.fields(*RETRY_KEYS)
    d = RetryConfig()
    retry_on = f.opt("retry_on", _retry_on, d.retry_on)
    base, top = f.opt("backoff", _backoff, (d.backoff_base, d.backoff_max))
    ratio, floor = f.opt("budget", _budget, (d.budget_ratio, d.budget_min_concurrency))
    return RetryConfig(
        retry_on=retry_on,
        num_retries=f.opt("num_retries", lambda n: n.integer(0, MAX_RETRIES), d.num_retries),
        per_try_timeout=f.opt("per_try_timeout", Node.duration, None),
        backoff_base=base,
        backoff_max=top,
        budget_ratio=ratio,
        budget_min_concurrency=floor,
        retriable_status_codes=f.opt("retriable_status_codes", status_codes, ()),
    )


def status_codes(node: Node) -> tuple[int, ...]:
    """A list of HTTP statuses (``[503, 429]``), each 100..599."""
    return tuple(dict.fromkeys(item.integer(100, 599) for item in node.items(non_empty=True)))


def _retry_on(node: Node) -> tuple[str, ...]:
    """A list of names or Envoy's comma-separated string (``"5xx,reset"``)."""
    if node.is_map():
        raise node.error("expected a list or a comma-separated string")
    if node.node.tag == "tag:yaml.org,2002:seq":
        parts = [item.choice(*RETRY_ON) for item in node.items(non_empty=True)]
    else:
        parts = [p.strip() for p in node.text().split(",") if p.strip()]
        for part in parts:
            if part not in RETRY_ON:
                raise node.error(f"unsupported value {part!r} (expected any of: {RETRY_ON})")
    return tuple(dict.fromkeys(parts))


def _backoff(node: Node) -> tuple[float, float]:
    f = node.fields("base", "max")
    base = f.opt("base", Node.duration, _DEFAULT_RETRY.backoff_base)
    top = f.opt("max", Node.duration, max(base * 10, _DEFAULT_RETRY.backoff_max))
    if top < base:
        raise f.need("max").error(f"must be >= backoff.base ({base:g}s)")
    return base, top


def _budget(node: Node) -> tuple[float, int]:
    f = node.fields("percent", "min_concurrency")
    percent = f.opt("percent", lambda n: _number(n, 0.0, 100.0), _DEFAULT_RETRY.budget_ratio * 100)
    floor = f.opt("min_concurrency", lambda n: n.integer(0), _DEFAULT_RETRY.budget_min_concurrency)
    return percent / 100.0, floor


def read_rate_limit(node: Node) -> RateLimitConfig:
    """``{requests_per_second, burst, per_source: {requests_per_second, burst}}``."""
    f = node.fields("requests_per_second", "burst", "per_source")
    total = None
    if "requests_per_second" in f or "burst" in f:
        total = _bucket(node, f.get("requests_per_second"), f.get("burst"))
    per_source = f.opt("per_source", _per_source, None)
    if total is None and per_source is None:
        raise node.error("set requests_per_second (and burst) and/or per_source")
    return RateLimitConfig(total=total, per_source=per_source)


def _per_source(node: Node) -> BucketConfig:
    f = node.fields("requests_per_second", "burst")
    return _bucket(node, f.get("requests_per_second"), f.get("burst"))


def _bucket(owner: Node, rps: Node | None, burst: Node | None) -> BucketConfig:
    if rps is None:
        raise owner.error("requests_per_second is required")
    rate = _number(rps, 0.001, 1e9)
    # Envoy needs max_tokens; ours defaults to one second's worth (at least one request).
    size = burst.integer(1) if burst is not None else max(1, int(rate))
    return BucketConfig(requests_per_second=rate, burst=size)


def read_fairness(node: Node) -> FairnessConfig:
    """``{max_concurrent_per_source, max_queue_per_source, max_wait, ...}``."""
    f = node.fields(*FAIRNESS_KEYS)
    d = FairnessConfig()
    return FairnessConfig(
        max_concurrent_per_source=f.opt(
            "max_concurrent_per_source", Node.integer, d.max_concurrent_per_source
        ),
        max_queue_per_source=f.opt(
            "max_queue_per_source", lambda n: n.integer(0), d.max_queue_per_source
        ),
        max_wait=f.opt("max_wait", Node.duration, d.max_wait),
        max_concurrent=f.opt("max_concurrent", Node.integer, d.max_concurrent),
        max_queue=f.opt("max_queue", lambda n: n.integer(0), d.max_queue),
    )


def _number(node: Node, minimum: float, maximum: float) -> float:
    text = node.text()
    if not _NUMBER.fullmatch(text):
        raise node.error(f"expected a number, got {text!r}")
    value = float(text)
    if not minimum <= value <= maximum:
        raise node.error(f"must be between {minimum:g} and {maximum:g}, got {text}")
    return value
