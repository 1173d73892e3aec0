"""Authority parsing: which host (and Kubernetes service) a request names.

Pods reach the proxy either as an HTTP proxy (absolute-form target,
``GET http://bdgreeter/hello``) or directly with a ``Host`` header. Either way
the authority is ``host[:port]``, and the host may spell a Kubernetes service
as ``svc``, ``svc.ns``, ``svc.ns.svc`` or ``svc.ns.svc.<cluster-domain>``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import cached_property

from nodeproxy.errors import BadRequest

# RFC 3986 reg-name characters (percent-encoding left as is); IPv4 fits too.
_REG_NAME = re.compile(r"[a-z0-9._~!$&'()*+,;=%-]+")
_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True)
class Authority:
    host: str  # lowercased, IPv6 without brackets
    port: int | None

    @cached_property  # parsed authorities are kept (``parse_authority``): computed once
    def name(self) -> str:
        """The host as a ``Host`` header writes it: an IPv6 address in brackets."""
        return f"[{self.host}]" if ":" in self.host else self.host

    def service_key(self, default_namespace: str, cluster_domain: str) -> str | None:
        """Canonical ``svc.ns`` for a Kubernetes service name, else None.

        >>> Authority("bdgreeter", None).service_key("default", "cluster.local")
        'bdgreeter.default'
        >>> Authority("db.prod.svc.cluster.local", 80).service_key("default", "cluster.local")
        'db.prod'
        """
        if ":" in self.host or _is_ipv4(self.host):
            return None
        parts = self.host.split(".")
        if len(parts) == 1:
            return f"{parts[0]}.{default_namespace}"
        if len(parts) == 2:
            return f"{parts[0]}.{parts[1]}"
        if len(parts) == 3 and parts[2] == "svc":
            return f"{parts[0]}.{parts[1]}"
        if parts[2] == "svc" and ".".join(parts[3:]) == cluster_domain:
            return f"{parts[0]}.{parts[1]}"
        return None


def is_ip(host: str) -> bool:
    """An IPv4 or IPv6 address (not a name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_ipv4(host: str) -> bool:
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() for p in parts)


# A node's pods name the same few services over and over: parsed authorities
# are kept (an Authority is immutable), bounded by clearing when full.
_PARSED: dict[str, Authority] = {}
_PARSED_MAX = 1024


def parse_authority(raw: str) -> Authority:
    """Split ``host[:port]`` (IPv6 in brackets); BadRequest when malformed."""
    authority = _PARSED.get(raw)
    if authority is None:
        authority = _parse_authority(raw)  # raises before anything is kept
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[raw] = authority
    return authority


def _parse_authority(raw: str) -> Authority:
    raw = raw.strip().lower()
    if not raw:
        raise BadRequest("empty authority")
    if "@" in raw or "/" in raw or " " in raw:
        raise BadRequest(f"malformed authority {raw!r}")
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise BadRequest(f"malformed authority {raw!r}")
        host, rest = raw[1:end], raw[end + 1 :]
        if rest and not rest.startswith(":"):
            raise BadRequest(f"malformed authority {raw!r}")
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise BadRequest(f"bad IPv6 address in authority {raw!r}") from None
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_ = raw.partition(":")
        port_text = port_text_ if sep else None
        host = host[:-1] if host.endswith(".") else host  # FQDN "svc.ns.svc.cluster.local."
        if not _REG_NAME.fullmatch(host):
            raise BadRequest(f"malformed authority {raw!r}")
    port: int | None = None
    if port_text is not None:
        if not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
            raise BadRequest(f"bad port in authority {raw!r}")
        port = int(port_text)
    return Authority(host=host, port=port)
