"""The less common parts of a route match: regex paths, case-insensitive paths, query
parameters, gRPC requests.

Why apart from ``router.py``: most rules are a plain prefix or path, and the
router's loop keeps those to one string comparison. A rule that needs more
(Envoy's ``safe_regex`` path, ``case_sensitive: false``, ``query_parameters``)
is decided here instead, by pure functions of the request target.

Query parameters follow Envoy's route matching: the query string is split on
``&`` and ``=`` without percent-decoding, a parameter written without ``=``
has the value ``""``, and a condition looks at the parameter's first value.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from nodeproxy.config.model import QueryMatch, RouteMatch


def path_and_query_ok(m: RouteMatch, path: str, compiled: dict[str, re.Pattern[str]]) -> bool:
    """Whether ``path`` (the request target, query included) meets ``m``'s path and
    query conditions; ``compiled`` holds every regex of the rule, by pattern."""
    path_only, _, query = path.partition("?")
    if m.regex is not None:
        if compiled[m.regex].fullmatch(path_only) is None:
            return False
    else:
        candidate = path_only if m.case_sensitive else path_only.lower()
        if m.path is not None:  # the loader lowercased m.path when case_sensitive is false
            if candidate != m.path:
                return False
        elif m.prefix is not None and not candidate.startswith(m.prefix):
            return False
    return all(query_ok(q, query, compiled) for q in m.query)


def first_value(query: str, name: str) -> str | None:
    """The first value of parameter ``name`` in a raw query string, None when absent."""
    for part in query.split("&"):
        key, eq, value = part.partition("=")
        if key == name and (eq or key):
            return value
    return None


def query_ok(q: QueryMatch, query: str, compiled: dict[str, re.Pattern[str]]) -> bool:
    value = first_value(query, q.name)
    if q.present is not None:
        return (value is not None) == q.present
    if value is None:
        return False
    if q.exact is not None:
        return value == q.exact
    if q.prefix is not None:
        return value.startswith(q.prefix)
    if q.regex is not None:
        return compiled[q.regex].fullmatch(value) is not None
    return True


def grpc_ok(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Envoy's ``match.grpc``: the (first) content-type is exactly ``application/grpc``
    or starts with ``application/grpc+`` (so ``application/grpc-web`` is not gRPC)."""
    for name, value in headers:
        if name == b"content-type":
            return value == b"application/grpc" or value.startswith(b"application/grpc+")
    return False


def patterns(m: RouteMatch) -> list[str]:
    """Every regex pattern ``m`` needs compiled (path and query)."""
    out = [q.regex for q in m.query if q.regex is not None]
    return out if m.regex is None else [m.regex, *out]
