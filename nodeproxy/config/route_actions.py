"""The native route actions -> ``RouteRule`` fields (docs/configuration.md, routes).

Why apart from ``loader.py``: ten keys with their own checks. Each value is
checked by the same pure helpers the data path compiles from
(``routing/actions.py``, ``routing/header_edits.py``), so a value that loads
is one the proxy can send; their ``ValueError`` becomes a ``ConfigError``
naming the key and line here.
"""

from __future__ import annotations

from typing import Any

from nodeproxy.config.checks import check_regex, checked, url_path
from nodeproxy.config.cors import read_cors
from nodeproxy.config.model import Config, DirectResponse, HeaderMutation, Redirect
from nodeproxy.config.yamlsrc import Fields, Node
from nodeproxy.errors import ConfigError
from nodeproxy.routing.actions import (
    REDIRECT_CODES,
    check_host_value,
    check_local_status,
    check_redirect,
    check_substitution,
    compile_actions,
)
from nodeproxy.routing.header_edits import check_header_name, check_header_value

# Keys a route uses only when it forwards (service or weighted); the rest apply to both.
FORWARD_KEYS = (
    "prefix_rewrite", "regex_rewrite", "host_rewrite", "auto_host_rewrite",
    "request_headers_to_add", "request_headers_to_remove",
)  # fmt: skip
ACTION_KEYS = (
    *FORWARD_KEYS, "direct_response", "redirect",
    "response_headers_to_add", "response_headers_to_remove", "cors",
)  # fmt: skip
LOCAL_KINDS = ("direct_response", "redirect")


def read_actions(f: Fields, kind: str, target: Node) -> dict[str, Any]:
    """``RouteRule`` keyword arguments for a route's actions; ``kind`` is the key that
    says where the route goes (``service``, ``weighted``, ``direct_response``,
    ``redirect``) and ``target`` its node."""
    out: dict[str, Any] = {
        "response_headers_to_add": _adds(f.get("response_headers_to_add")),
        "response_headers_to_remove": _removes(f.get("response_headers_to_remove")),
        "cors": f.opt("cors", read_cors, None),  # config/cors.py
    }
    if kind in LOCAL_KINDS:
        for key in (*FORWARD_KEYS, "timeout", "retries", "subset", "upgrades"):
            if (node := f.get(key)) is not None:
                raise node.error(f"only a route that forwards has it; this one answers ({kind})")
        if kind == "direct_response":
            out["direct_response"] = _direct_response(target)
        else:
            out["redirect"] = _redirect(target)
        return out
    prefix = f.opt("prefix_rewrite", url_path, None)
    regex = f.opt("regex_rewrite", _regex_rewrite, None)
    if prefix is not None and regex is not None:
        raise f.need("regex_rewrite").error("use one of prefix_rewrite or regex_rewrite, not both")
    host = f.opt("host_rewrite", lambda n: checked(n, check_host_value, n.text()), None)
    auto = f.opt("auto_host_rewrite", Node.flag, False)
    if host is not None and auto:
        raise f.need("auto_host_rewrite").error("use one of host_rewrite or auto_host_rewrite")
    out.update(
        prefix_rewrite=prefix,
        regex_rewrite=regex,
        host_rewrite=host,
        auto_host_rewrite=auto,
        request_headers_to_add=_adds(f.get("request_headers_to_add")),
        request_headers_to_remove=_removes(f.get("request_headers_to_remove")),
    )
    return out


def check_rules(config: Config) -> None:
    """Every rule's actions compile as the router will compile them, whichever front end
    built them: a ``ConfigError`` naming the route, never a ``ValueError`` at start."""
    for listener in config.listeners:
        for vh in listener.virtual_hosts:
            for i, rule in enumerate(vh.routes):
                try:
                    compile_actions(rule)
                except ValueError as exc:
                    where = f"virtual_hosts[{vh.name}].routes[{i}]"
                    raise ConfigError(where, str(exc), None, config.source_path) from None


def _regex_rewrite(node: Node) -> tuple[str, str]:
    """``{pattern, substitution}``: RE2's ``\\1`` groups; the path only, not the query."""
    f = node.fields("pattern", "substitution")
    pattern = check_regex(f.need("pattern"), f.need("pattern").text())
    sub_node = f.need("substitution")
    substitution = sub_node.text(non_empty=False)
    checked(sub_node, check_substitution, pattern, substitution)
    return pattern, substitution


def _direct_response(node: Node) -> DirectResponse:
    """``{status, body}``: status 200-599, a text body (text/plain) of at most 4 KiB."""
    f = node.fields("status", "body")
    status = f.need("status").integer(100, 999)
    body = f.opt("body", lambda n: n.text(non_empty=False), "")
    try:
        check_local_status(status, body)
    except ValueError as exc:
        where = f.need("status") if "status" in str(exc) else f.need("body")
        raise where.error(str(exc)) from None
    return DirectResponse(status=status, body=body)


def _redirect(node: Node) -> Redirect:
    """``{scheme, host, port, path | prefix_rewrite, response_code, strip_query}``."""
    f = node.fields(
        "scheme", "host", "port", "path", "prefix_rewrite", "response_code", "strip_query"
    )
    if "path" in f and "prefix_rewrite" in f:
        raise f.need("prefix_rewrite").error("use one of path or prefix_rewrite, not both")
    code_node = f.get("response_code")
    code = 301 if code_node is None else code_node.integer(100, 999)
    if code not in REDIRECT_CODES and code_node is not None:
        codes = ", ".join(map(str, REDIRECT_CODES))
        raise code_node.error(f"must be one of {codes}, got {code}")
    redirect = Redirect(
        scheme=f.opt("scheme", lambda n: n.text().lower(), None),
        host=f.opt("host", lambda n: checked(n, check_host_value, n.text()), None),
        port=f.opt("port", lambda n: n.integer(1, 65535), None),
        path=f.opt("path", url_path, None),
        prefix_rewrite=f.opt("prefix_rewrite", url_path, None),
        response_code=code,
        strip_query=f.opt("strip_query", Node.flag, False),
    )
    return checked(node, _checked, redirect)


def _checked(redirect: Redirect) -> Redirect:
    check_redirect(redirect)
    return redirect


def _adds(node: Node | None) -> tuple[HeaderMutation, ...]:
    """``[{name, value, append}]``; ``append`` (default true) adds a value, false replaces."""
    if node is None:
        return ()
    out = []
    for item in node.items():
        f = item.fields("name", "value", "append")
        name_node, value_node = f.need("name"), f.need("value")
        name = checked(name_node, check_header_name, name_node.text())
        value = checked(value_node, check_header_value, value_node.text(non_empty=False))
        out.append(HeaderMutation(name, value, f.opt("append", Node.flag, True)))
    return tuple(out)


def _removes(node: Node | None) -> tuple[str, ...]:
    if node is None:
        return ()
    return tuple(checked(item, check_header_name, item.text()) for item in node.items())
