"""Who the admin listener answers: the Host check against DNS rebinding, and loopback.

Why: the admin port serves ``/config_dump`` and ``POST /drain`` on
127.0.0.1, and a browser on the node is a client of 127.0.0.1 too. A page
from ``evil.example`` whose DNS answer switches to 127.0.0.1 (DNS rebinding)
is same-origin with itself, so the browser lets it read our answers. What the
page cannot change is the name it asked for: its requests say
``Host: evil.example``. So a request is answered only when its Host (or the
authority of an absolute-form target, RFC 9112 §3.2.2) names the admin:

- ``localhost`` or a loopback IP literal (``127.0.0.1``, ``[::1]``), any port;
- the bind address (``admin.address``'s host), any port; bound to every
  address (``0.0.0.0`` / ``::``), any IP literal: an IP literal cannot be
  rebound, and the node's own addresses are not known in advance;
- a name in ``admin.allowed_hosts`` (an entry with a port matches that port only).

Anything else is 421 Misdirected Request (RFC 9110 §15.5.20); a Host that is
not ``host[:port]``, or two of them, is 400 (RFC 9112 §3.2). An HTTP/1.0
request without Host is answered only from a loopback peer. Pure functions:
the server shell passes the request line, the Host values and the peer.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from nodeproxy.admin.handlers import AdminResponse, refuse
from nodeproxy.config.model import AdminConfig

HOST_NOT_ALLOWED = "admin_host_not_allowed"
BAD_HOST = "admin_bad_host"
LOCALHOST = "localhost"
_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?")
_PORT = re.compile(r"[0-9]{1,5}")
_WILDCARDS = frozenset({"0.0.0.0", "::"})
IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(text: str) -> IP | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_loopback(peer: str) -> bool:
    """True for 127.0.0.0/8, ::1 and v4-mapped loopback (``::ffff:127.0.0.1``)."""
    ip = _ip(peer.partition("%")[0])
    return ip is not None and ip.is_loopback


def parse_host(value: str) -> tuple[str, int | None] | None:
    """``Host`` -> (lowercase name or bracket-less IP, port); None when not ``host[:port]``."""
    value = value.strip()
    port: str | None = None
    if value.startswith("["):
        inside, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        try:
            ipaddress.IPv6Address(inside)  # "[1.2.3.4]" is not a URI host either
        except ValueError:
            return None
        name, port = inside.lower(), rest[1:] if rest else None
    else:
        name, sep, after = value.partition(":")
        port = after if sep else None
        name = name.lower()
        if name.endswith("."):
            name = name[:-1]  # "localhost." is the same name, fully qualified
        if not _NAME.fullmatch(name):
            return None
    if port is None:
        return name, None
    if not _PORT.fullmatch(port) or int(port) > 65535:
        return None
    return name, int(port)


@dataclass(frozen=True)
class HostPolicy:
    """The names the admin answers to, from ``AdminConfig`` (see the module docstring)."""

    bind_ip: IP | None  # None: the bind host is a name
    bind_name: str
    any_ip: bool  # bound to 0.0.0.0 or ::
    names: frozenset[str]  # allowed_hosts entries without a port
    names_with_port: frozenset[tuple[str, int]]

    @classmethod
    def from_config(cls, cfg: AdminConfig) -> HostPolicy:
        names: set[str] = set()
        with_port: set[tuple[str, int]] = set()
        for entry in cfg.allowed_hosts:
            parsed = parse_host(entry)
            if parsed is None:
                continue  # the loader validated every entry
            name, port = parsed
            if port is None:
                names.add(name)
            else:
                with_port.add((name, port))
        bind = cfg.host.lower()
        return cls(_ip(bind), bind, bind in _WILDCARDS, frozenset(names), frozenset(with_port))

    def allows(self, name: str, port: int | None) -> bool:
        if name == LOCALHOST or name in self.names or (name, port) in self.names_with_port:
            return True
        ip = _ip(name)
        if ip is None:
            return self.bind_ip is None and name == self.bind_name
        return ip.is_loopback or self.any_ip or ip == self.bind_ip


def check_request(
    policy: HostPolicy, target: str, hosts: Sequence[str], http_version: str, peer: str
) -> AdminResponse | None:
    """None when the request may be answered, else the 400 or 421 to send."""
    authority: str | None
    if target[:8].lower().startswith(("http://", "https://")):
        authority = urlsplit(target).netloc
        if "@" in authority:
            return refuse(400, "bad request: userinfo in the request target\n", BAD_HOST)
    elif len(hosts) > 1:
        return refuse(400, "bad request: more than one Host header\n", BAD_HOST)
    else:
        authority = hosts[0] if hosts else None
    if authority is None:
        if http_version == "1.0" and is_loopback(peer):
            return None
        return refuse(
            421, "misdirected request: no Host (answered from loopback only)\n", HOST_NOT_ALLOWED
        )
    parsed = parse_host(authority)
    if parsed is None:
        return refuse(400, "bad request: Host is not host[:port]\n", BAD_HOST)
    if policy.allows(*parsed):
        return None
    return refuse(
        421,
        "misdirected request: this Host is not the admin listener "
        "(use its address or localhost, or add the name to admin.allowed_hosts)\n",
        HOST_NOT_ALLOWED,
    )
