"""CORS as Envoy's ``envoy.filters.http.cors`` does it, decided without I/O.

A route's ``CorsPolicy`` (``config/model.py``; a virtual host's merged into
its routes at load, field by field, the route's first) is consulted only when
the request carries a non-empty ``Origin``. An origin no condition allows
leaves the request alone: it goes upstream unchanged and its response gets
no CORS header (Envoy does not reject it; ``forward_not_matching_preflights:
false`` answers such a preflight 403 instead of forwarding it). For an
allowed origin, a preflight (``OPTIONS`` with a non-empty
``Access-Control-Request-Method``) is answered here, 200 with the
``access-control-allow-*`` and ``-max-age`` headers, and never goes
upstream; any other request goes upstream and its response gets
``access-control-allow-origin`` (the request's origin, echoed even when the
policy allows ``*``), ``-allow-credentials`` and ``-expose-headers``,
replacing what the upstream said. A condition that matches the string ``*``
allows every origin, as in Envoy. Routes without a policy never reach this
module (``decision.rule.cors is None``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import fields, replace

from nodeproxy.config.model import CorsPolicy

Header = tuple[bytes, bytes]

ALLOW_ORIGIN = b"access-control-allow-origin"
ALLOW_CREDENTIALS = b"access-control-allow-credentials"
EXPOSE_HEADERS = b"access-control-expose-headers"


class Verdict(enum.Enum):
    NONE = "none"  # not a CORS request for this policy: nothing to do
    PREFLIGHT = "preflight"  # answer 200 here with preflight_headers()
    FORBIDDEN = "forbidden"  # a preflight for an origin not allowed, not forwarded: 403
    ACTUAL = "actual"  # forward; the response gets response_headers()


def matches(kind: str, value: str, origin: str) -> bool:
    """One origin condition ("exact" | "prefix" | "regex", full match) against ``origin``."""
    if kind == "exact":
        return origin == value
    if kind == "prefix":
        return origin.startswith(value)
    return re.fullmatch(value, origin) is not None


def origin_allowed(policy: CorsPolicy, origin: str) -> bool:
    """Envoy's ``isOriginAllowed``: a condition that matches ``*`` or the origin."""
    return any(matches(k, v, "*") or matches(k, v, origin) for k, v in policy.origins)


def classify(policy: CorsPolicy, method: bytes, headers: Iterable[Header]) -> tuple[Verdict, bytes]:
    """What the filter does with this request, and the origin it echoes."""
    if not policy.enabled:
        return Verdict.NONE, b""
    origin = request_method = b""
    for name, value in headers:
        if name == b"origin" and not origin:
            origin = value
        elif name == b"access-control-request-method" and not request_method:
            request_method = value
    if not origin:
        return Verdict.NONE, b""
    preflight = method == b"OPTIONS" and bool(request_method)
    if not origin_allowed(policy, origin.decode("latin-1")):
        if preflight and not policy.forward_not_matching_preflights:
            return Verdict.FORBIDDEN, origin
        return Verdict.NONE, b""
    return (Verdict.PREFLIGHT if preflight else Verdict.ACTUAL), origin


def preflight_headers(policy: CorsPolicy, origin: bytes, headers: Iterable[Header]) -> list[Header]:
    """The headers of the 200 answering a preflight (``content-length: 0`` included).

    ``allow_methods: "*"`` answers with the request's ``Access-Control-Request-Method``
    and ``allow_headers: "*"`` with its ``Access-Control-Request-Headers``, as Envoy does.
    """
    asked = dict(headers)
    out: list[Header] = [(ALLOW_ORIGIN, origin)]
    if policy.allow_credentials:
        out.append((ALLOW_CREDENTIALS, b"true"))
    if policy.allow_methods:
        methods = policy.allow_methods.encode("latin-1")
        if methods == b"*":
            methods = asked.get(b"access-control-request-method", b"")
        out.append((b"access-control-allow-methods", methods))
    if policy.allow_headers:
        allowed = policy.allow_headers.encode("latin-1")
        if allowed == b"*":
            allowed = asked.get(b"access-control-request-headers", b"")
        if allowed:
            out.append((b"access-control-allow-headers", allowed))
    if policy.max_age:
        out.append((b"access-control-max-age", policy.max_age.encode("latin-1")))
    out.append((b"content-length", b"0"))
    return out


def response_headers(policy: CorsPolicy, origin: bytes) -> list[Header]:
    """What an allowed non-preflight request's response gets (set, replacing the upstream's)."""
    out: list[Header] = [(ALLOW_ORIGIN, origin)]
    if policy.allow_credentials:
        out.append((ALLOW_CREDENTIALS, b"true"))
    if policy.expose_headers:
        out.append((EXPOSE_HEADERS, policy.expose_headers.encode("latin-1")))
    return out


def apply(headers: list[Header], cors: list[Header]) -> list[Header]:
    """``headers`` with the CORS ones set (any of theirs with those names dropped)."""
    names = {name for name, _ in cors}
    return [h for h in headers if h[0] not in names] + cors


def merge(route: CorsPolicy | None, vhost: CorsPolicy | None) -> CorsPolicy | None:
    """Envoy's lookup over [route, virtual host]: each field from the first policy that
    sets it; ``enabled`` (and the preflight switch) from the first policy there is."""
    if route is None or vhost is None:
        return route or vhost
    unset = CorsPolicy()
    changes = {
        f.name: getattr(vhost, f.name)
        for f in fields(CorsPolicy)
        if f.name not in ("enabled", "forward_not_matching_preflights", "per_filter")
        and getattr(route, f.name) == getattr(unset, f.name)
    }
    return replace(route, **changes)


def check_policy(policy: CorsPolicy) -> CorsPolicy:
    """``ValueError`` for a value that cannot go out in a header, or a bad regex."""
    for kind, value in policy.origins:
        if kind not in ("exact", "prefix", "regex"):
            raise ValueError(f"unknown origin condition {kind!r}")
        if kind == "regex":
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid origin regex {value!r}: {exc}") from None
    for name in ("allow_methods", "allow_headers", "expose_headers", "max_age"):
        text = getattr(policy, name)
        if any(c in text for c in "\r\n\0") or not text.isascii():
            raise ValueError(f"{name}: invalid header value {text!r}")
    if policy.max_age and not policy.max_age.isdigit():
        raise ValueError(f"max_age must be a number of seconds, got {policy.max_age!r}")
    return policy
