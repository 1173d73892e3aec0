"""Route actions, decided without I/O: rewrites, local answers, header edits.

A route may change what goes upstream (``prefix_rewrite``, ``regex_rewrite``,
``host_rewrite``, ``auto_host_rewrite``, ``request_headers_to_add/remove``),
what comes back (``response_headers_to_add/remove``), or answer by itself
(``direct_response``, ``redirect``), with Envoy's semantics (its
``RouteAction``, ``RedirectAction``, ``DirectResponseAction`` and
``HeaderValueOption``). ``compile_actions`` turns one rule into a
``RouteActions`` once, when the router is built, and returns None for a rule
without actions: the request path only checks ``decision.actions is None``.

Header edits are ``header_edits.py``. The ``check_*`` helpers here and
there raise ``ValueError`` with a message a loader prefixes with the field
it read; ``compile_actions`` checks a whole rule the same way, so a front end
that builds ``RouteRule`` objects can validate them with one call.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

from nodeproxy.config.model import DirectResponse, Redirect, RouteMatch, RouteRule
from nodeproxy.routing.authority import is_ip
from nodeproxy.routing.header_edits import VISIBLE, Header, HeaderEdits

T = TypeVar("T")

REDIRECT_CODES = (301, 302, 303, 307, 308)
MAX_BODY = 4096  # Envoy's default max_direct_response_body_size_bytes
_HOST = re.compile(r"([A-Za-z0-9._~!$&'()*+,;=%-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")
_GROUP = re.compile(r"\\(.)", re.DOTALL)


def check_substitution(pattern: str, substitution: str) -> str:
    """The Python ``re.sub`` template for an RE2 substitution (``\\1``; ``\\\\`` is a backslash)."""
    try:
        groups = re.compile(pattern).groups
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
    out: list[str] = []
    last = 0
    for m in _GROUP.finditer(substitution):
        out.append(substitution[last : m.start()])
        last = m.end()
        char = m.group(1)
        if char == "\\":
            out.append("\\\\")
        elif char.isdigit():
            if int(char) > groups:
                msg = f"substitution uses \\{char} but the pattern has {groups} group(s)"
                raise ValueError(msg)
            out.append(f"\\g<{char}>")
        else:
            raise ValueError(f"invalid escape \\{char} in substitution (only \\0-\\9 and \\\\)")
    out.append(substitution[last:])
    return "".join(out)


def check_local_status(status: int, body: str) -> None:
    """A direct response's status and body (``ValueError`` when they cannot go out)."""
    if not 200 <= status <= 599:
        raise ValueError(f"status must be a final status 200-599, got {status}")
    if body and status in (204, 304):
        raise ValueError(f"a {status} response has no body")
    if len(body.encode()) > MAX_BODY:
        raise ValueError(f"body over {MAX_BODY} bytes (Envoy's default limit)")


@dataclass(frozen=True, slots=True)
class RouteActions:
    """One rule's actions, compiled once by ``compile_actions``."""

    match: RouteMatch
    local: bool  # direct_response or redirect: answered here, nothing goes upstream
    rewrites: bool  # prefix_rewrite or regex_rewrite changes the upstream target
    direct: DirectResponse | None = None
    redirect: Redirect | None = None
    prefix: str | None = None
    regex: re.Pattern[str] | None = None
    substitution: str = ""
    host: bytes | None = None  # host_rewrite
    auto_host: bool = False
    request: HeaderEdits | None = None
    response: HeaderEdits | None = None

    def path(self, target: str) -> str:
        """The upstream target for ``target`` (query kept; regex_rewrite sees the path only)."""
        if self.prefix is not None:
            return swap_prefix(self.match, self.prefix, target)
        if self.regex is not None:
            path, q, query = target.partition("?")
            return _origin(self.regex.sub(self.substitution, path)) + q + query
        return target

    def local_response(
        self, *, scheme: str, authority: str, target: str, source: str
    ) -> tuple[int, list[Header], bytes]:
        """(status, headers, body) of a direct response or redirect; framing included."""
        if self.direct is not None:
            status, body = self.direct.status, self.direct.body.encode()
            headers = [(b"content-type", b"text/plain")] if body else []
        else:
            assert self.redirect is not None, "only a local rule answers"
            status, body = self.redirect.response_code, b""
            location = redirect_location(
                self.redirect, self.match, scheme=scheme, authority=authority, target=target
            )
            headers = [(b"location", location.encode("latin-1"))]
        if status not in (204, 304):
            headers.append((b"content-length", str(len(body)).encode()))
        if self.response is not None:
            headers = self.response.apply(headers, source, status)
        return status, headers, body


def compile_actions(rule: RouteRule) -> RouteActions | None:
    """``rule``'s actions, checked (``ValueError`` naming the field); None without any."""
    local = rule.direct_response is not None or rule.redirect is not None
    forward = (
        rule.prefix_rewrite is not None
        or rule.regex_rewrite is not None
        or rule.host_rewrite is not None
        or rule.auto_host_rewrite
        or bool(rule.request_headers_to_add or rule.request_headers_to_remove)
    )
    response = bool(rule.response_headers_to_add or rule.response_headers_to_remove)
    if not (local or forward or response):
        return None
    _check_combinations(rule, local)
    regex, substitution = None, ""
    if rule.regex_rewrite is not None:
        pattern, sub = rule.regex_rewrite
        substitution = _field("regex_rewrite", check_substitution, pattern, sub)
        regex = re.compile(pattern)
    if rule.direct_response is not None:
        d = rule.direct_response
        _field("direct_response", check_local_status, d.status, d.body)
    if rule.redirect is not None:
        _field("redirect", check_redirect, rule.redirect)
    if rule.host_rewrite is not None:
        _field("host_rewrite", check_host_value, rule.host_rewrite)
    request = _field(
        "request_headers_to_add/remove",
        HeaderEdits.build,
        rule.request_headers_to_add,
        rule.request_headers_to_remove,
    )
    response_edits = _field(
        "response_headers_to_add/remove",
        HeaderEdits.build,
        rule.response_headers_to_add,
        rule.response_headers_to_remove,
    )
    if local and response_edits is not None and response_edits.reads_request:
        raise ValueError(
            "response_headers_to_add: %REQ()% is not supported on a direct_response or "
            "redirect route"
        )
    return RouteActions(
        match=rule.match,
        local=local,
        rewrites=rule.prefix_rewrite is not None or regex is not None,
        direct=rule.direct_response,
        redirect=rule.redirect,
        prefix=rule.prefix_rewrite,
        regex=regex,
        substitution=substitution,
        host=rule.host_rewrite.encode() if rule.host_rewrite is not None else None,
        auto_host=rule.auto_host_rewrite,
        request=request,
        response=response_edits,
    )


def _check_combinations(rule: RouteRule, local: bool) -> None:
    if rule.prefix_rewrite is not None and rule.regex_rewrite is not None:
        raise ValueError("regex_rewrite: use one of prefix_rewrite or regex_rewrite, not both")
    if rule.host_rewrite is not None and rule.auto_host_rewrite:
        raise ValueError("auto_host_rewrite: use one of host_rewrite or auto_host_rewrite")
    if rule.prefix_rewrite and not VISIBLE.fullmatch(rule.prefix_rewrite):
        raise ValueError(f"prefix_rewrite: invalid path {rule.prefix_rewrite!r}")
    if not local:
        return
    if rule.direct_response is not None and rule.redirect is not None:
        raise ValueError("redirect: use one of direct_response or redirect, not both")
    if rule.cluster is not None or rule.weighted or rule.cluster_from_authority:
        raise ValueError("a route that answers itself (direct_response, redirect) has no service")
    forward_only = {
        "prefix_rewrite": rule.prefix_rewrite is not None,
        "regex_rewrite": rule.regex_rewrite is not None,
        "host_rewrite": rule.host_rewrite is not None,
        "auto_host_rewrite": rule.auto_host_rewrite,
        "request_headers_to_add": bool(rule.request_headers_to_add),
        "request_headers_to_remove": bool(rule.request_headers_to_remove),
    }
    for name, present in forward_only.items():
        if present:
            raise ValueError(f"{name}: only a route that forwards has it (this one answers itself)")


def check_redirect(r: Redirect) -> None:
    """A redirect's parts (``ValueError`` for the first bad one)."""
    if r.response_code not in REDIRECT_CODES:
        codes = ", ".join(map(str, REDIRECT_CODES))
        raise ValueError(f"response_code must be one of {codes}, got {r.response_code}")
    if r.path is not None and r.prefix_rewrite is not None:
        raise ValueError("use one of path or prefix_rewrite, not both")
    for name, path in (("path", r.path), ("prefix_rewrite", r.prefix_rewrite)):
        if path and not VISIBLE.fullmatch(path):
            raise ValueError(f"{name}: invalid path {path!r}")
    if r.scheme is not None and not re.fullmatch(r"[a-z][a-z0-9+.-]*", r.scheme):
        raise ValueError(f"scheme: invalid scheme {r.scheme!r}")
    if r.host is not None:
        check_host_value(r.host)
    if r.port is not None and not 1 <= r.port <= 65535:
        raise ValueError(f"port must be in 1..65535, got {r.port}")


def check_host_value(host: str) -> str:
    """A Host value (``name``, ``name:port``, ``[v6]:port``) for a rewrite or a redirect."""
    if not _HOST.fullmatch(host):
        raise ValueError(f"invalid host {host!r}")
    return host


def _field(name: str, check: Callable[..., T], *args: object) -> T:
    try:
        return check(*args)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def swap_prefix(match: RouteMatch, replacement: str, target: str) -> str:
    """``target`` with the part its route matched swapped for ``replacement`` (Envoy's
    ``prefix_rewrite``): the prefix, the exact path, or the whole path of a regex match."""
    path, q, query = target.partition("?")
    if match.regex is not None:
        rest = ""
    elif match.path is not None:
        rest = path[len(match.path) :]
    elif match.prefix is not None:
        rest = path[len(match.prefix) :]
    else:  # no path condition: the route matched "/"
        rest = path[1:] if path.startswith("/") else path
    return _origin(replacement + rest) + q + query


def _origin(path: str) -> str:
    return path if path.startswith("/") else "/" + path


def redirect_location(
    r: Redirect, match: RouteMatch, *, scheme: str, authority: str, target: str
) -> str:
    """The ``Location`` of a redirect, as Envoy builds it from the request's parts.

    The request's scheme, host and path are kept unless ``r`` replaces them. Without a
    new host, the request's port is dropped when ``r`` sets a port, or when the scheme
    changes and the port was the old scheme's default (``:80`` for http, ``:443`` for
    https). A ``path`` with its own query keeps it whatever ``strip_query`` says.
    """
    new_scheme = r.scheme or scheme
    port = f":{r.port}" if r.port else ""
    host = r.host if r.host else _request_host(authority, scheme, new_scheme, bool(port))
    path_has_query = False
    if r.path is not None:
        path_has_query = "?" in r.path
        query = target.partition("?")[1:]
        path = r.path if path_has_query else r.path + "".join(query)
    elif r.prefix_rewrite is not None:
        path = swap_prefix(match, r.prefix_rewrite, target)
    else:
        path = target
    path = _origin(path)
    if r.strip_query and not path_has_query:
        path = path.partition("?")[0]
    return f"{new_scheme}://{host}{port}{path}"


def _request_host(authority: str, scheme: str, new_scheme: str, new_port: bool) -> str:
    cut = authority.rfind("]:") + 1 if authority.startswith("[") else authority.rfind(":")
    if cut <= 0:
        return authority  # no port
    host, port = authority[:cut], authority[cut + 1 :]
    default = {"http": "80", "https": "443"}.get(scheme)
    if new_port or (new_scheme != scheme and port == default):
        return host
    return authority


@lru_cache(maxsize=4096)
def auto_host(host: str, port: int, *, ip_endpoints: bool) -> bytes | None:
    """The Host for ``auto_host_rewrite`` towards an endpoint; None leaves it.

    A DNS name gives its name (Envoy's hostname of a ``strict_dns`` host, no port).
    An IP address gives ``ip:port`` when ``ip_endpoints`` (the native format), and
    nothing in an Envoy file: Envoy does not rewrite toward a ``static`` host.
    """
    if not is_ip(host):
        return host.encode()
    if not ip_endpoints:
        return None
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()
