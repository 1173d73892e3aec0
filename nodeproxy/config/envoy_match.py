"""An Envoy route's ``match`` -> ``RouteMatch``: path, headers, query parameters.

Every spelling Envoy has had is read: v3 ``string_match`` and the older
``exact_match``/``prefix_match``/``suffix_match``/``contains_match``/
``safe_regex_match`` (and v2's ``regex_match`` and ``value``/``regex``), a
header matcher with only a name (the header must be present), the path as
``prefix``, ``path``, ``safe_regex`` (v2: ``regex``) or
``path_separated_prefix``. Conditions with no field of their own in
``HeaderMatch``/``QueryMatch`` (suffix, contains, ``ignore_case``) become the
regex Envoy's comparison is equivalent to (``envoy_values.matcher``).
Matching itself is ``routing/router.py`` and ``routing/match.py``.
"""

from __future__ import annotations

import re

from nodeproxy.config.checks import check_regex, header_name, url_path
from nodeproxy.config.envoy_values import (
    UNSUPPORTED,
    EnvoyLoad,
    matcher,
    regex,
    string_matcher,
)
from nodeproxy.config.model import HeaderMatch, QueryMatch, RouteMatch
from nodeproxy.config.yamlsrc import Node

PATH_KEYS = ("prefix", "path", "safe_regex", "regex", "path_separated_prefix")
_HEADER_KEYS = (
    "exact_match", "prefix_match", "suffix_match", "contains_match", "safe_regex_match",
    "regex_match", "present_match", "string_match", "value",
)  # fmt: skip


def route_match(ctx: EnvoyLoad, node: Node) -> RouteMatch:
    f = ctx.fields(node, *PATH_KEYS, "case_sensitive", "headers", "query_parameters", "grpc")
    if (grpc := f.get("grpc")) is not None:
        grpc.fields(unknown=UNSUPPORTED)  # GrpcRouteMatchOptions has no fields
    is_grpc = grpc is not None
    kind, value = f.one_of(*PATH_KEYS)
    case_sensitive = f.opt("case_sensitive", Node.flag, True)
    headers = tuple(header(h) for h in f.items("headers"))
    query = tuple(query_parameter(q) for q in f.items("query_parameters"))
    if kind in ("safe_regex", "regex"):
        pattern = regex(value) if kind == "safe_regex" else _raw_regex(value)
        return RouteMatch(headers=headers, query=query, regex=pattern, grpc=is_grpc)
    # an empty prefix matches every path, as "/" does (origin-form targets start with it)
    text = "/" if kind == "prefix" and not value.text(non_empty=False) else url_path(value)
    if kind == "path_separated_prefix":  # "/api" matches /api and /api/..., not /apix
        if text.endswith("/") or "?" in text or "#" in text:
            raise value.error("must not end with '/' nor hold '?' or '#'")
        flags = "" if case_sensitive else "(?i)"
        pattern = f"{flags}{re.escape(text)}(/.*)?"
        return RouteMatch(headers=headers, query=query, regex=pattern, grpc=is_grpc)
    if not case_sensitive:
        text = text.lower()
    return RouteMatch(
        prefix=text if kind == "prefix" else None,
        path=text if kind == "path" else None,
        headers=headers,
        query=query,
        case_sensitive=case_sensitive,
        grpc=is_grpc,
    )


def _raw_regex(node: Node) -> str:
    """v2's ``regex``/``regex_match``: a plain (ECMAScript) pattern string."""
    return check_regex(node, node.text(non_empty=False))


def header(node: Node) -> HeaderMatch:
    f = node.fields(
        "name", "invert_match", "treat_missing_header_as_empty", "range_match", "regex",
        *_HEADER_KEYS, unknown=UNSUPPORTED,
    )  # fmt: skip
    name = header_name(f.need("name"))
    invert = f.opt("invert_match", Node.flag, False)
    if (rm := f.get("range_match")) is not None:
        raise rm.error("range_match is not supported (use safe_regex_match)")
    if f.opt("treat_missing_header_as_empty", Node.flag, False):
        raise f.need("treat_missing_header_as_empty").error("only false is supported")
    present = [k for k in _HEADER_KEYS if k in f]
    if not present:  # a name alone: the header must be there
        return HeaderMatch(name=name, present=True, invert=invert)
    kind, value = f.one_of(*_HEADER_KEYS)
    if kind == "present_match":
        return HeaderMatch(name=name, present=value.flag(), invert=invert)
    if kind == "value":  # v2: value (exact, or a regex with regex: true)
        text = value.text(non_empty=False)
        if f.opt("regex", Node.flag, False):
            return HeaderMatch(name=name, regex=check_regex(value, text), invert=invert)
        return HeaderMatch(name=name, exact=text, invert=invert)
    if "regex" in f:
        raise f.need("regex").error("regex goes with value (v2); use safe_regex_match")
    if kind == "string_match":
        how, text = string_matcher(value)
    elif kind == "safe_regex_match":
        how, text = "regex", regex(value)
    elif kind == "regex_match":
        how, text = "regex", _raw_regex(value)
    else:
        how, text = matcher(kind.removesuffix("_match"), value.text(non_empty=False))
    exact, prefix, pattern = _condition(how, text)
    return HeaderMatch(name=name, exact=exact, prefix=prefix, regex=pattern, invert=invert)


def _condition(how: str, text: str) -> tuple[str | None, str | None, str | None]:
    """("exact" | "prefix" | "regex", text) -> (exact, prefix, regex)."""
    pick = {how: text}
    return pick.get("exact"), pick.get("prefix"), pick.get("regex")


def query_parameter(node: Node) -> QueryMatch:
    f = node.fields("name", "string_match", "present_match", "value", "regex", unknown=UNSUPPORTED)
    name_node = f.need("name")
    name = name_node.text()
    if (pm := f.get("present_match")) is not None:
        if len([k for k in ("string_match", "value") if k in f]):
            raise node.error("present_match goes alone")
        return QueryMatch(name=name, present=pm.flag())
    if (sm := f.get("string_match")) is not None:
        if "value" in f:
            raise node.error("use string_match or value, not both")
        exact, prefix, pattern = _condition(*string_matcher(sm))
        return QueryMatch(name=name, exact=exact, prefix=prefix, regex=pattern)
    if (value := f.get("value")) is not None:  # v2
        text = value.text(non_empty=False)
        if f.opt("regex", Node.flag, False):
            return QueryMatch(name=name, regex=check_regex(value, text))
        return QueryMatch(name=name, exact=text)
    return QueryMatch(name=name, present=True)  # a name alone: the parameter is there
