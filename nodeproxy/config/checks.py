"""Validation shared by the native and Envoy front ends.

Small checks that turn one YAML value into a validated Python value or a
``ConfigError`` naming it: durations, hosts and ports, Kubernetes names,
header names, regexes, and the cross-field check that no two sockets would
bind the same port.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from nodeproxy.config.yamlsrc import Node

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_NUMBER = re.compile(r"[+-]?(\d+(?:\.\d*)?|\.\d+)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9])?(\.[A-Za-z0-9_-]+)*\.?"
)
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-zA-Z-]+")
_WILDCARD_HOSTS = ("0.0.0.0", "::")
Binds = list[tuple["Node", str, int]]

T = TypeVar("T")


def checked(node: Node, check: Callable[..., T], *args: object) -> T:
    """``check(*args)`` (a ``routing/`` checker); its ``ValueError`` names ``node``."""
    try:
        return check(*args)
    except ValueError as exc:
        raise node.error(str(exc)) from None


def parse_duration(value: str) -> float | None:
    """Seconds for a duration string, or None when it is not one."""
    value = value.strip()
    if _NUMBER.fullmatch(value):
        return float(value)
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


def check_port(node: Node, port: int, *, allow_zero: bool = False) -> int:
    if not (0 if allow_zero else 1) <= port <= 65535:
        low = 0 if allow_zero else 1
        raise node.error(f"port must be in {low}..65535, got {port}")
    return port


def check_host(node: Node, host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(host):
        raise node.error(f"invalid host {host!r}")
    return host.rstrip(".").lower()


def check_unique_binds(binds: Binds) -> None:
    """Two sockets on one port (other than port 0) would fail at start: say so now."""
    seen: Binds = []
    for node, host, port in binds:
        for other, other_host, other_port in seen:
            wildcard = host in _WILDCARD_HOSTS or other_host in _WILDCARD_HOSTS
            same_host = host == other_host or wildcard
            if port and port == other_port and same_host:
                raise node.error(f"address {host}:{port} is also used by {other.path}")
        seen.append((node, host, port))


def dns_label(node: Node) -> str:
    """A Kubernetes name (service, namespace): a lowercase DNS label."""
    value = node.text()
    if not _DNS_LABEL.fullmatch(value):
        raise node.error(f"{value!r} is not a DNS label (lowercase letters, digits, '-')")
    return value


def url_path(node: Node) -> str:
    value = node.text()
    if not value.startswith("/"):
        raise node.error(f"must start with '/', got {value!r}")
    return value


def header_name(node: Node) -> str:
    value = node.text()
    if not _HEADER_NAME.fullmatch(value):
        raise node.error(f"invalid header name {value!r}")
    return value.lower()


def check_regex(node: Node, pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise node.error(f"invalid regex {pattern!r}: {exc}") from None
    return pattern


def upgrade_token(node: Node) -> str:
    """One ``Upgrade`` protocol token (``websocket``), lowercased; ``h2c`` is refused.

    RFC 9113 §3.1 removed HTTP/1.1's upgrade to h2c; the proxy strips it from
    requests, so a config asking to relay it is an error.
    """
    token = node.text().lower()
    if token == "h2c":
        raise node.error("h2c cannot be relayed: RFC 9113 removed the HTTP/1.1 upgrade to h2")
    if not _HEADER_NAME.fullmatch(token):
        raise node.error(f"invalid upgrade token {token!r}")
    return token


def upgrade_tokens(node: Node) -> tuple[str, ...]:
    """A list of Upgrade tokens relayed (``[websocket]``); ``[]`` relays none."""
    return tuple(upgrade_token(item) for item in node.items())


# A Unix socket path holds 107 bytes; the handoff binds ``<path>.<pid>`` first.
HANDOFF_PATH_MAX = 96


def handoff_path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a handoff socket path, or None."""
    if not path:
        return "must not be empty"
    if len(path.encode()) > HANDOFF_PATH_MAX:
        return f"path over {HANDOFF_PATH_MAX} bytes (a Unix socket address is short)"
    if "\0" in path:
        return "path contains a NUL byte"
    return None


def handoff_path(node: Node) -> str:
    path = node.text()
    if (problem := handoff_path_problem(path)) is not None:
        raise node.error(problem)
    return path
