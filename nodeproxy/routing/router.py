"""The route table: (authority, path, headers) -> the cluster to send to.

Pure and synchronous. Built once per listener from the config; a lookup is a
few dict probes plus an ordered scan of one virtual host's rules, like
Envoy's: the first matching rule wins. Unknown authority -> ``UnknownService``;
a known service whose rules all miss -> ``NoRoute``. A rule's actions
(rewrites, header edits, a direct response or redirect: ``routing/actions.py``)
are compiled here once and ride on the decision.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from nodeproxy.config.model import (
    EMPTY_LABELS,
    HeaderMatch,
    ListenerConfig,
    RouteRule,
    VirtualHost,
    WeightedCluster,
)
from nodeproxy.errors import NoRoute, UnknownService
from nodeproxy.routing.actions import RouteActions, compile_actions
from nodeproxy.routing.authority import Authority
from nodeproxy.routing.match import grpc_ok, path_and_query_ok, patterns

Headers = Sequence[tuple[bytes, bytes]]  # lowercased names, as h11 gives them


@dataclass(frozen=True)
class RouteDecision:
    virtual_host: VirtualHost
    rule: RouteRule
    cluster: str
    # Canary: only endpoints with all these labels (the weighted branch's, else the rule's).
    subset: Mapping[str, str] = field(default_factory=lambda: EMPTY_LABELS, hash=False)
    # The rule's rewrites, header edits or local answer (routing/actions.py); None: none.
    # A local answer (``actions.local``) has cluster "": nothing goes upstream.
    actions: RouteActions | None = None


_SEEN_MAX = 1024  # authorities whose virtual host a router keeps


class Router:
    def __init__(
        self,
        listener: ListenerConfig,
        default_namespace: str = "default",
        cluster_domain: str = "cluster.local",
        rng: random.Random | None = None,
    ) -> None:
        self._default_ns = default_namespace
        self._cluster_domain = cluster_domain
        self._port_match = listener.host_port_match
        self._native_names = listener.host_port_match == "strip_any"
        self.listener_port = listener.port  # the bound one once listening (``bound``)
        self._exact: dict[str, VirtualHost] = {}
        self._suffix: list[tuple[str, VirtualHost]] = []  # "*.example.com" -> ".example.com"
        self._prefix: list[tuple[str, VirtualHost]] = []  # "api.*" -> "api."
        self._any: VirtualHost | None = None
        self._regex: dict[str, re.Pattern[str]] = {}
        self._rng = rng or random.Random()
        # A rule naming one cluster always decides the same: built once, not per
        # request. Keyed by id(): the rules live in the config as long as we do,
        # and hashing a frozen rule would walk all its fields each time.
        self._fixed: dict[int, RouteDecision] = {}
        self._actions: dict[int, RouteActions] = {}  # rules with actions only, by id()
        # Authority (as sent, lowercased) -> its virtual host: a node's pods name the
        # same few services over and over. Bounded by clearing when full.
        self._seen: dict[str, VirtualHost] = {}
        for vh in listener.virtual_hosts:
            for domain in vh.domains:
                d = domain.lower()
                if d == "*":
                    self._any = self._any or vh
                elif d.startswith("*"):
                    self._suffix.append((d[1:], vh))
                elif d.endswith("*"):
                    self._prefix.append((d[:-1], vh))
                else:
                    self._exact.setdefault(d, vh)
            for rule in vh.routes:
                actions = compile_actions(rule)
                if actions is not None:
                    self._actions[id(rule)] = actions
                if rule.cluster is not None or (actions is not None and actions.local):
                    cluster = rule.cluster or ""
                    self._fixed[id(rule)] = RouteDecision(vh, rule, cluster, rule.subset, actions)
                for h in rule.match.headers:
                    if h.regex is not None:
                        self._regex[h.regex] = re.compile(h.regex)
                for pattern in patterns(rule.match):
                    self._regex[pattern] = re.compile(pattern)
        # Longest wildcard first, as Envoy does.
        self._suffix.sort(key=lambda p: -len(p[0]))
        self._prefix.sort(key=lambda p: -len(p[0]))

    def __repr__(self) -> str:
        wildcards = len(self._suffix) + len(self._prefix) + (self._any is not None)
        return f"<Router [{len(self._exact)} names, {wildcards} wildcards]>"

    def bound(self, port: int) -> None:
        """The port the listener bound (its config may say 0): ``strip_matching`` compares it."""
        self.listener_port = port
        self._seen.clear()

    def virtual_host(self, authority: Authority, raw: str) -> VirtualHost:
        """The virtual host ``raw`` (``host[:port]``, lowercased) selects (``_select``)."""
        vh = self._seen.get(raw)
        if vh is None:
            vh = self._select(authority, raw)  # UnknownService: nothing kept
            if len(self._seen) >= _SEEN_MAX:
                self._seen.clear()
            self._seen[raw] = vh
        return vh

    def _select(self, authority: Authority, raw: str) -> VirtualHost:
        """The virtual host ``raw`` (``host[:port]``) selects, per ``host_port_match``.

        ``strip_any`` (native) ignores the port and maps every Kubernetes
        spelling of a service (``svc``, ``svc.ns.svc.cluster.local``) onto its
        ``svc.ns`` domain; ``exact`` (Envoy's default) matches the authority as
        written, so ``example.com`` does not take ``example.com:8080``;
        ``strip_matching`` drops the port only when it is the listener's own.
        Wildcards then compare against the same name.
        """
        exact = self._exact
        if self._native_names:
            vh = exact.get(raw.lower()) or exact.get(authority.name)
            if vh is not None:
                return vh
            key = authority.service_key(self._default_ns, self._cluster_domain)
            if key is not None and (vh := exact.get(key)) is not None:
                return vh
            host = authority.name
        else:
            host = raw.lower()
            if authority.port == self.listener_port and self._port_match == "strip_matching":
                host = host[: host.rindex(":")]
            vh = exact.get(host)
            if vh is not None:
                return vh
        for suffix, vh in self._suffix:  # the "*" must stand for at least one character
            if host.endswith(suffix) and len(host) > len(suffix):
                return vh
        for prefix, vh in self._prefix:
            if host.startswith(prefix) and len(host) > len(prefix):
                return vh
        if self._any is not None:
            return self._any
        raise UnknownService(f"no service for authority {raw!r}")

    def upstream_host(self, host: bytes) -> bytes:
        """``host`` without the port ``host_port_match`` strips (Envoy's strip_*_host_port
        send the stripped Host upstream too; the pipeline asks only when configured)."""
        name, sep, port = host.rpartition(b":")
        if not sep or not port.isdigit() or name.endswith(b":") or self._port_match == "exact":
            return host  # no port (a bare IPv6 address ends in "...:1]", not digits)
        if self._port_match == "strip_matching" and int(port) != self.listener_port:
            return host
        return name

    def route(self, authority: Authority, raw: str, path: str, headers: Headers) -> RouteDecision:
        vh = self.virtual_host(authority, raw)
        path_only = path.partition("?")[0]
        for rule in vh.routes:
            m = rule.match
            if m.regex is not None or m.query or not m.case_sensitive:  # routing/match.py
                if not path_and_query_ok(m, path, self._regex):
                    continue
            elif m.path is not None:
                if path_only != m.path:
                    continue
            elif m.prefix is not None and not path_only.startswith(m.prefix):
                continue
            if m.headers and not all(self._header_ok(h, headers) for h in m.headers):
                continue
            if m.grpc and not grpc_ok(headers):  # routing/match.py
                continue
            fixed = self._fixed.get(id(rule))
            if fixed is not None and fixed.virtual_host is vh:
                return fixed
            actions = self._actions.get(id(rule)) if self._actions else None
            if rule.cluster is not None or (actions is not None and actions.local):
                return RouteDecision(vh, rule, rule.cluster or "", rule.subset, actions)
            if rule.cluster_from_authority:
                cluster = self.service_cluster(authority, raw)
                return RouteDecision(vh, rule, cluster, rule.subset, actions)
            branch = self._target(rule)
            return RouteDecision(vh, rule, branch.cluster, branch.subset or rule.subset, actions)
        raise NoRoute(f"no route in {vh.name!r} for {path_only!r}")

    def service_cluster(self, authority: Authority, raw: str) -> str:
        """The discovered cluster an authority names: ``svc[.ns]``, ``svc[.ns]:<port>``.

        Named as discovery names them (discovery/kubernetes/translate.py): the
        default namespace is left out, a port picks that Service port's cluster.
        """
        key = authority.service_key(self._default_ns, self._cluster_domain)
        if key is None:
            raise UnknownService(f"no service for authority {raw!r}")
        name, _, ns = key.partition(".")
        base = name if ns == self._default_ns else key
        return base if authority.port is None else f"{base}:{authority.port}"

    def _target(self, rule: RouteRule) -> WeightedCluster:
        """The weighted branch to take (a rule with ``weighted`` set: ``_fixed`` took the rest)."""
        total = sum(w.weight for w in rule.weighted)
        pick = self._rng.randrange(total) if total > 0 else 0
        for w in rule.weighted:
            pick -= w.weight
            if pick < 0:
                return w
        return rule.weighted[-1]

    def _header_ok(self, h: HeaderMatch, headers: Headers) -> bool:
        name = h.name.encode()
        values = [v.decode("latin-1") for k, v in headers if k == name]
        if h.present is not None:
            ok = bool(values) == h.present
        elif not values:
            ok = False
        else:
            value = ",".join(values)
            if h.exact is not None:
                ok = value == h.exact
            elif h.prefix is not None:
                ok = value.startswith(h.prefix)
            elif h.regex is not None:
                ok = self._regex[h.regex].fullmatch(value) is not None
            else:
                ok = True
        return ok != h.invert
