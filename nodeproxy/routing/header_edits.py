"""Header edits of a route (Envoy's ``headers_to_add`` / ``headers_to_remove``), pure.

Envoy's order: removals first, then additions in the order written;
``append: false`` replaces every value of the name, an empty value adds
nothing. Names that frame a message, describe one connection, pick the
upstream's Host or carry a node proxy's own identity are refused: the proxy
writes those itself (``FORBIDDEN``). A value may use ``%%`` for a percent
sign, the variables in ``VARIABLES`` and ``%REQ(name)%``; any other ``%NAME%`` is
refused when the config loads (``check_header_value``). Built once per rule
(``HeaderEdits.build``); a value without variables is stored as final bytes.

As Envoy formats them: ``%REQ(name)%`` is the request's first ``name`` value (the
request as sent upstream, read after the removals and before any addition),
``""`` when absent; ``%RESPONSE_CODE%`` is the response's status, ``""`` in a
request edit (no response yet). An empty result adds no header.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

from nodeproxy.config.model import HeaderMutation

Header = tuple[bytes, bytes]

# Framing, hop-by-hop, Host (host_rewrite sets it) and what only a node proxy may say.
FORBIDDEN = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
        "x-forwarded-client-cert",
    }
)
FORBIDDEN_PREFIX = "x-nodeproxy-"
VARIABLES = ("DOWNSTREAM_REMOTE_ADDRESS", "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", "RESPONSE_CODE")
_REQ = re.compile(r"REQ\(([!#$%&'*+.^_`|~0-9a-zA-Z-]+)\)")
_NO_REQUEST: Sequence[Header] = ()
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9a-zA-Z-]+")
VISIBLE = re.compile(r"[\x21-\x7e\x80-\xff]([\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?")


def check_header_name(name: str) -> str:
    """A header name a route may add or remove, lowercased."""
    lower = name.lower()
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}")
    if lower in FORBIDDEN or lower.startswith(FORBIDDEN_PREFIX):
        why = "set it with host_rewrite" if lower == "host" else "the proxy writes it itself"
        raise ValueError(f"header {lower!r} cannot be added or removed by a route ({why})")
    return lower


def check_header_value(value: str) -> str:
    """A header value template: visible characters, ``%%`` and ``%VARIABLE%`` (VARIABLES)."""
    _template(value)
    return value


@lru_cache(maxsize=256)
def _template(value: str) -> tuple[bytes | str, ...]:
    """Literal bytes and variable names (str), in order; ValueError for a bad value."""
    if value and not VISIBLE.fullmatch(value):
        raise ValueError(
            f"invalid header value {value!r} (visible characters, no leading or trailing space)"
        )
    parts: list[bytes | str] = []
    literal: list[str] = []
    i = 0
    while (j := value.find("%", i)) >= 0:
        literal.append(value[i:j])
        k = value.find("%", j + 1)
        if k == j + 1:
            literal.append("%")
        elif k < 0 or (value[j + 1 : k] not in VARIABLES and not _REQ.fullmatch(value, j + 1, k)):
            name = value[j:] if k < 0 else value[j : k + 1]
            raise ValueError(
                f"unsupported variable {name!r} in {value!r} (supported: "
                f"{', '.join(f'%{v}%' for v in VARIABLES)}, %REQ(header-name)%; "
                "write %% for a percent sign)"
            )
        else:
            if literal:
                parts.append("".join(literal).encode("latin-1"))
                literal = []
            name = value[j + 1 : k]
            parts.append(name if name in VARIABLES else "REQ:" + name[4:-1].lower())
        i = k + 1
    literal.append(value[i:])
    if "".join(literal):
        parts.append("".join(literal).encode("latin-1"))
    return tuple(parts)


def client_source(source: str, client: str | None) -> str:
    """Envoy's downstream remote address as ``ip:port``: the connection's ``source``, or
    the ``client`` a listener read from x-forwarded-for (port 0, as Envoy parses it)."""
    if client is None or source.rpartition(":")[0] == client:
        return source
    return f"{client}:0"


def _exchange_variable(name: str, source: str, request: Sequence[Header], status: int) -> bytes:
    """``_variable``, plus those read from the request (``REQ:<name>``) and the status
    (0: no response yet, so ``""``)."""
    if name.startswith("REQ:"):
        wanted = name[4:].encode()
        return next((v for k, v in request if k == wanted), b"")
    if name == "RESPONSE_CODE":
        return str(status).encode() if status else b""
    return _variable(name, source)


def _variable(name: str, source: str) -> bytes:
    """One variable's value for a request from ``source`` (``ip:port``, IPv6 unbracketed)."""
    ip, _, port = source.rpartition(":")
    if name == "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT":
        return ip.encode()
    return (f"[{ip}]:{port}" if ":" in ip else source).encode()


@dataclass(frozen=True, slots=True)
class _Add:
    name: bytes
    parts: tuple[bytes | str, ...]
    fixed: bytes | None  # the value when it has no variable
    append: bool

    def value(self, source: str) -> bytes:
        """The value when no part reads the request or the status (``HeaderEdits.plain``)."""
        if self.fixed is not None:
            return self.fixed
        return b"".join(p if type(p) is bytes else _variable(str(p), source) for p in self.parts)

    def render(self, source: str, request: Sequence[Header], status: int) -> bytes:
        if self.fixed is not None:
            return self.fixed
        return b"".join(
            p if type(p) is bytes else _exchange_variable(str(p), source, request, status)
            for p in self.parts
        )


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """One route's edits of a header list (request or response)."""

    remove: frozenset[bytes]
    add: tuple[_Add, ...]
    reads_request: bool = False  # some value uses %REQ(...)%
    plain: bool = True  # no value uses %REQ(...)% or %RESPONSE_CODE%: the cheap loop
    request: Sequence[Header] | None = None  # response edits: the request (``for_request``)

    @classmethod
    def build(cls, add: Iterable[HeaderMutation], remove: Iterable[str]) -> HeaderEdits | None:
        adds = []
        for m in add:
            parts = _template(check_header_value(m.value))
            fixed = b"".join(p for p in parts if type(p) is bytes)
            no_vars = all(type(p) is bytes for p in parts)
            name = check_header_name(m.name).encode()
            adds.append(_Add(name, parts, fixed if no_vars else None, m.append))
        gone = frozenset(check_header_name(n).encode() for n in remove)
        names = [p for a in adds for p in a.parts if type(p) is str]
        reads = any(p.startswith("REQ:") for p in names)
        plain = not reads and "RESPONSE_CODE" not in names
        return cls(gone, tuple(adds), reads, plain) if adds or gone else None

    def for_request(self, request: Sequence[Header]) -> HeaderEdits:
        """Response edits that read ``request`` (the request as sent upstream) for
        ``%REQ()%``; itself when none does, so a plain route allocates nothing."""
        return replace(self, request=request) if self.reads_request else self

    def apply(self, headers: Iterable[Header], source: str, status: int = 0) -> list[Header]:
        """``headers`` with the removals, then the additions, applied; ``status`` is the
        response's (0 for request edits)."""
        remove = self.remove
        out = [h for h in headers if h[0] not in remove] if remove else list(headers)
        if not self.plain:
            return self._apply_reading(out, source, status)
        for add in self.add:
            value = add.value(source)
            if not value:
                continue  # Envoy drops a header whose value is empty
            if not add.append:
                out = [h for h in out if h[0] != add.name]
            out.append((add.name, value))
        return out

    def _apply_reading(self, out: list[Header], source: str, status: int) -> list[Header]:
        """``apply`` for values with ``%REQ()%`` or ``%RESPONSE_CODE%``: all are read
        before any is added, as Envoy does; a request edit reads the request it edits
        (after the removals)."""
        if self.request is not None:
            seen: Sequence[Header] = self.request
        else:
            seen = _NO_REQUEST if status else out  # a response edit without its request
        values = [(a, a.render(source, seen, status)) for a in self.add]
        for add, value in values:
            if not value:
                continue
            if not add.append:
                out = [h for h in out if h[0] != add.name]
            out.append((add.name, value))
        return out


def replace_host(headers: Iterable[Header], host: bytes) -> list[Header]:
    """``headers`` with every Host value replaced by ``host`` (one Host)."""
    return [(b"host", host)] + [h for h in headers if h[0] != b"host"]
