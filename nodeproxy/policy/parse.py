"""Policy config (plain mappings, as YAML gives them) -> an immutable ``Policy``.

Shape (the ``policy:`` section of the native config)::

    default_action: deny            # allow | deny; "deny" when omitted
    rules:
      - name: webserver-to-auth     # unique; logged with every decision it makes
        action: allow               # allow | deny
        from: ["spiffe://cluster.local/ns/shop/sa/webserver"]
        to: ["auth-api"]            # svc (default namespace), svc.ns, *.ns or *
        methods: [GET, POST]        # optional
        path_prefixes: ["/login"]   # optional
        ports: [8080]               # optional: destination pod ports (TCP and HTTP)

Writing a policy at all means "only what is listed": the default default is
deny (as with a Kubernetes NetworkPolicy); with no ``policy`` section the
proxy uses ``Policy.allow_all()``. Every problem is a ConfigError naming the
field (``policy.rules[2].from[0]``), found at load time, never per request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from nodeproxy.errors import ConfigError
from nodeproxy.policy.model import Action, IdentityPattern, Policy, Rule, ServicePattern
from nodeproxy.tls.identity import (
    SCHEME,
    InvalidSpiffeId,
    parse_spiffe_id,
    validate_trust_domain,
)

_RULE_KEYS = frozenset({"name", "action", "from", "to", "methods", "path_prefixes", "ports"})
_POLICY_KEYS = frozenset({"default_action", "rules"})
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 method token


def parse_identity_pattern(text: str) -> IdentityPattern:
    """``*``, ``spiffe://td/*``, ``spiffe://td/ns/<ns>/*`` or an exact ID (InvalidSpiffeId)."""
    if text == "*":
        return IdentityPattern(text, "any")
    if text.endswith("/*") and text.startswith(SCHEME):
        head = text[len(SCHEME) : -2]
        trust_domain, _, rest = head.partition("/")
        validate_trust_domain(trust_domain, in_id=text)
        if not rest:
            return IdentityPattern(text, "trust_domain", trust_domain=trust_domain)
        parts = rest.split("/")
        if len(parts) == 2 and parts[0] == "ns" and _DNS_LABEL.fullmatch(parts[1]):
            return IdentityPattern(text, "namespace", trust_domain=trust_domain, namespace=parts[1])
        raise InvalidSpiffeId(text, "a wildcard is spiffe://<td>/* or spiffe://<td>/ns/<ns>/*")
    if "*" in text:
        raise InvalidSpiffeId(text, "'*' is allowed only as a whole last segment")
    return IdentityPattern(text, "exact", exact=parse_spiffe_id(text))


def parse_service_pattern(text: str, default_namespace: str) -> ServicePattern:
    """``*``, ``*.ns``, ``svc.ns`` or ``svc`` (in ``default_namespace``); ValueError if bad."""
    if text == "*":
        return ServicePattern(text, None, None)
    name, dot, namespace = text.partition(".")
    if not dot:
        namespace = default_namespace
    for part in (name, namespace) if name != "*" else (namespace,):
        if not _DNS_LABEL.fullmatch(part):
            raise ValueError(f"{text!r} is not svc, svc.namespace, *.namespace or *")
    return ServicePattern(text, None if name == "*" else name, namespace)


def _list(value: Any, field: str, *, optional: bool = False) -> list[Any] | None:
    if value is None and optional:
        return None
    if not isinstance(value, list) or not value:
        raise ConfigError(field, "must be a non-empty list")
    return value


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(field, "must be a non-empty string")
    return value


def _action(value: Any, field: str) -> Action:
    try:
        return Action(value)
    except ValueError:
        raise ConfigError(field, f"must be 'allow' or 'deny', got {value!r}") from None


def _rule(raw: Any, field: str, default_namespace: str) -> Rule:
    if not isinstance(raw, Mapping):
        raise ConfigError(field, "must be a mapping with name, action, from, to")
    for key in raw:
        if key not in _RULE_KEYS:
            raise ConfigError(
                f"{field}.{key}", f"unknown field (known: {', '.join(sorted(_RULE_KEYS))})"
            )
    for key in ("name", "action", "from", "to"):
        if key not in raw:
            raise ConfigError(f"{field}.{key}", "required")
    sources = []
    for i, item in enumerate(_list(raw["from"], f"{field}.from") or []):
        try:
            sources.append(parse_identity_pattern(_string(item, f"{field}.from[{i}]")))
        except InvalidSpiffeId as exc:
            raise ConfigError(f"{field}.from[{i}]", exc.reason + f" ({exc.value!r})") from None
    services = []
    for i, item in enumerate(_list(raw["to"], f"{field}.to") or []):
        try:
            services.append(
                parse_service_pattern(_string(item, f"{field}.to[{i}]"), default_namespace)
            )
        except ValueError as exc:
            raise ConfigError(f"{field}.to[{i}]", str(exc)) from None
    methods = _list(raw.get("methods"), f"{field}.methods", optional=True)
    if methods is not None:
        for i, m in enumerate(methods):
            if not _TOKEN.fullmatch(_string(m, f"{field}.methods[{i}]")):
                raise ConfigError(f"{field}.methods[{i}]", f"{m!r} is not an HTTP method")
    prefixes = _list(raw.get("path_prefixes"), f"{field}.path_prefixes", optional=True)
    if prefixes is not None:
        for i, p in enumerate(prefixes):
            if not _string(p, f"{field}.path_prefixes[{i}]").startswith("/"):
                raise ConfigError(f"{field}.path_prefixes[{i}]", f"{p!r} must start with '/'")
    ports = _list(raw.get("ports"), f"{field}.ports", optional=True)
    if ports is not None:
        for i, port in enumerate(ports):
            if type(port) is not int or not 0 < port < 65536:
                raise ConfigError(f"{field}.ports[{i}]", f"{port!r} is not a port (1-65535)")
    return Rule(
        name=_string(raw["name"], f"{field}.name"),
        action=_action(raw["action"], f"{field}.action"),
        sources=tuple(sources),
        services=tuple(services),
        methods=frozenset(m.upper() for m in methods) if methods is not None else None,
        path_prefixes=tuple(prefixes) if prefixes is not None else None,
        ports=frozenset(ports) if ports is not None else None,
    )


def parse_policy(raw: Any, *, default_namespace: str = "default", field: str = "policy") -> Policy:
    """Validate a ``policy`` mapping (None -> allow all); ConfigError names the bad field."""
    if raw is None:
        return Policy.allow_all()
    if not isinstance(raw, Mapping):
        raise ConfigError(field, "must be a mapping with default_action and rules")
    for key in raw:
        if key not in _POLICY_KEYS:
            raise ConfigError(f"{field}.{key}", "unknown field (known: default_action, rules)")
    default = _action(raw.get("default_action", "deny"), f"{field}.default_action")
    raw_rules = raw.get("rules", [])
    if not isinstance(raw_rules, list):
        raise ConfigError(f"{field}.rules", "must be a list")
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw_rules):
        rule = _rule(item, f"{field}.rules[{i}]", default_namespace)
        if rule.name in seen:
            raise ConfigError(
                f"{field}.rules[{i}].name",
                f"duplicate rule name {rule.name!r} (rules[{seen[rule.name]}])",
            )
        seen[rule.name] = i
        rules.append(rule)
    return Policy(tuple(rules), default, default_namespace)
