"""Authorization: may this caller (a SPIFFE ID) call this service, method and path?

The semantics are Envoy RBAC's, flattened into one ordered list:

- Rules are evaluated **in order; the first rule that matches decides**
  (allow or deny). No match: ``default_action``. So a deny rule placed
  before a broad allow rule carves an exception out of it, and vice versa.
- A rule matches when *every* condition it has matches: the caller against
  any of ``from``, the service against any of ``to``, and, when given, the
  method against any of ``methods`` and the path against any of
  ``path_prefixes``. Omitted ``methods``/``path_prefixes`` match everything.
- Identity patterns: an exact SPIFFE ID; ``spiffe://<td>/ns/<ns>/*`` (every
  service account of a namespace); ``spiffe://<td>/*`` (every authenticated
  identity of a trust domain); ``*`` (every caller, *including
  unauthenticated ones* -- Envoy's ``any: true``). An unauthenticated caller
  (``source=None``) matches only ``*``.
- Services are canonical ``svc.ns`` names (what routing's ``service_key``
  gives); ``*.ns`` is every service of a namespace, ``*`` every service.
- ``ports`` (optional) are destination pod ports: the port a connection or
  request reaches on the pod (the target port, not the Service port).
- Methods compare case-insensitively (a lowercase ``delete`` must not slip
  past a deny rule written for ``DELETE``). Paths are normalised before the
  plain string-prefix test: query and fragment dropped, percent-encoded
  unreserved characters decoded, ``//`` merged and dot segments resolved, so
  ``/public/../admin`` and ``/%61dmin`` are both seen as ``/admin``.

TCP (``decide_tcp``: caller, service, port; no method or path to see): the
same ordered list, first match decides, ``default_action`` otherwise. A rule
with HTTP conditions (``methods`` or ``path_prefixes``) cannot be checked on
raw bytes, so it fails closed: such an *allow* rule never matches a TCP
connection, such a *deny* rule always does (Istio's rule for TCP traffic).
``has_http_rules(service)`` tells whether any rule that can apply to the
service looks at method or path; when none does, an HTTP request's decision
equals its connection's (``decide`` == ``decide_tcp``), which is what lets a
node carry HTTP through a CONNECT tunnel that the destination only splices.

Everything here is pure and immutable: ``decide`` is a table test, and the
inbound data path calls it per request with no lock and no await.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Literal

from nodeproxy.errors import ProxyError
from nodeproxy.tls.identity import SpiffeId

PatternKind = Literal["any", "trust_domain", "namespace", "exact"]


class Action(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


class Denied(ProxyError):
    """The policy refused the request: 403, ``x-nodeproxy-error: denied``, Envoy's body."""

    status = 403
    cause = "denied"
    body = "RBAC: access denied"

    def __init__(self, rule: str | None, detail: str = "") -> None:
        super().__init__(detail or f"denied by {rule or 'default action'}")
        self.rule = rule


@dataclass(frozen=True)
class IdentityPattern:
    """One ``from`` entry; see the module docstring for the four kinds."""

    text: str
    kind: PatternKind
    trust_domain: str | None = None
    namespace: str | None = None
    exact: SpiffeId | None = None

    def matches(self, source: SpiffeId | None) -> bool:
        if self.kind == "any":
            return True
        if source is None:
            return False
        if self.kind == "exact":
            return source == self.exact
        if source.trust_domain != self.trust_domain:
            return False
        if self.kind == "trust_domain":
            return True
        return source.kind == "workload" and source.namespace == self.namespace


@dataclass(frozen=True)
class ServicePattern:
    """One ``to`` entry: ``svc.ns``, ``*.ns`` or ``*`` (name/namespace None = any)."""

    text: str
    name: str | None
    namespace: str | None

    def matches(self, service: str) -> bool:
        name, _, namespace = service.partition(".")
        return (self.name is None or self.name == name) and (
            self.namespace is None or self.namespace == namespace
        )


@dataclass(frozen=True)
class Rule:
    """One ordered rule; ``methods``/``path_prefixes`` None means "any"."""

    name: str
    action: Action
    sources: tuple[IdentityPattern, ...]
    services: tuple[ServicePattern, ...]
    methods: frozenset[str] | None = None
    path_prefixes: tuple[str, ...] | None = None
    ports: frozenset[int] | None = None

    @property
    def http_only(self) -> bool:
        """The rule looks at method or path: it cannot be checked on raw TCP."""
        return self.methods is not None or self.path_prefixes is not None

    def matches(
        self, source: SpiffeId | None, service: str, method: str, path: str, port: int | None
    ) -> bool:
        """``method`` upper-cased and ``path`` normalised by the caller (``Policy``)."""
        return (
            any(p.matches(source) for p in self.sources)
            and any(s.matches(service) for s in self.services)
            and (self.ports is None or port in self.ports)
            and (self.methods is None or method in self.methods)
            and (self.path_prefixes is None or any(map(path.startswith, self.path_prefixes)))
        )

    def matches_tcp(self, source: SpiffeId | None, service: str, port: int) -> bool:
        """A connection: HTTP conditions fail closed (allow: no match; deny: match)."""
        if self.http_only and self.action is Action.ALLOW:
            return False
        return (
            any(p.matches(source) for p in self.sources)
            and any(s.matches(service) for s in self.services)
            and (self.ports is None or port in self.ports)
        )


@dataclass(frozen=True)
class Decision:
    """The answer: ``rule`` names the matching rule, None when the default applied."""

    allowed: bool
    rule: str | None

    def raise_if_denied(self) -> None:
        """Raise ``Denied`` (403) for a refusal; the data path's one-liner."""
        if not self.allowed:
            raise Denied(self.rule)


@dataclass(frozen=True)
class Policy:
    """Ordered rules and a default; build with ``parse_policy`` or ``allow_all``."""

    rules: tuple[Rule, ...]
    default_action: Action
    default_namespace: str = "default"

    @classmethod
    def allow_all(cls) -> Policy:
        """The policy when none is configured: every request is allowed."""
        return cls(rules=(), default_action=Action.ALLOW)

    def decide(
        self,
        source: SpiffeId | None,
        service: str,
        method: str,
        path: str,
        port: int | None = None,
    ) -> Decision:
        """First matching rule wins; no match means ``default_action``.

        ``service`` is ``svc.ns`` (a bare ``svc`` is taken in the default
        namespace); ``path`` is the request target in origin form; ``port`` the
        destination pod's port (None: unknown, only rules without ``ports`` match).
        """
        if "." not in service:
            service = f"{service}.{self.default_namespace}"
        method = method.upper()
        path = normalize_path(path)
        for rule in self.rules:
            if rule.matches(source, service, method, path, port):
                return Decision(allowed=rule.action is Action.ALLOW, rule=rule.name)
        return Decision(allowed=self.default_action is Action.ALLOW, rule=None)

    def decide_tcp(self, source: SpiffeId | None, service: str, port: int) -> Decision:
        """A connection to ``service`` on pod port ``port``: first match, else the default."""
        if "." not in service:
            service = f"{service}.{self.default_namespace}"
        for rule in self.rules:
            if rule.matches_tcp(source, service, port):
                return Decision(allowed=rule.action is Action.ALLOW, rule=rule.name)
        return Decision(allowed=self.default_action is Action.ALLOW, rule=None)

    def has_http_rules(self, service: str) -> bool:
        """Some rule that may apply to ``service`` looks at method or path."""
        if "." not in service:
            service = f"{service}.{self.default_namespace}"
        return any(r.http_only and any(s.matches(service) for s in r.services) for r in self.rules)

    def __repr__(self) -> str:
        return f"<Policy [{len(self.rules)} rules | default {self.default_action.value}]>"


_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _unescape_unreserved(m: re.Match[str]) -> str:
    char = chr(int(m.group(1), 16))
    return char if char in _UNRESERVED else "%" + m.group(1).upper()


def normalize_path(path: str) -> str:
    """The path a prefix rule is tested against (see the module docstring).

    >>> normalize_path("/a//b/./c/../%64?x=1")
    '/a/b/d'
    """
    path = path.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        return path  # "*" (OPTIONS) or a malformed target: compared as is
    path = _ESCAPE.sub(_unescape_unreserved, path)
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        elif segment == ".":
            if last:
                out.append("")
        elif segment or last:
            out.append(segment)
    return "/" + "/".join(out)
