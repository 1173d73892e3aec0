"""Authorization: decision tables (first match wins, wildcards, methods, paths), path
normalisation, and config errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from nodeproxy.errors import ConfigError
from nodeproxy.policy import Decision, Denied, Policy, normalize_path, parse_policy
from nodeproxy.tls.identity import SpiffeId

WEB = SpiffeId.workload("shop", "webserver")
ADMIN = SpiffeId.workload("ops", "admin")
BATCH = SpiffeId.workload("ops", "batch")
OTHER_TD = SpiffeId.workload("shop", "webserver", "evil.org")
NODE = SpiffeId.node("n1")

# The seed's example: the webserver may call auth-api, and nothing else.
SEED = {
    "default_action": "deny",
    "rules": [
        {
            "name": "webserver-to-auth",
            "action": "allow",
            "from": ["spiffe://cluster.local/ns/shop/sa/webserver"],
            "to": ["auth-api.shop"],
        }
    ],
}


def test_seed_example_webserver_reaches_auth_but_not_the_database() -> None:
    policy = parse_policy(SEED)
    assert policy.decide(WEB, "auth-api.shop", "POST", "/login") == Decision(
        True, "webserver-to-auth"
    )
    denied = policy.decide(WEB, "database.shop", "GET", "/")
    assert denied == Decision(False, None)
    with pytest.raises(Denied) as info:
        denied.raise_if_denied()
    assert (info.value.status, info.value.cause, info.value.rule) == (403, "denied", None)
    assert info.value.response_body() == b"RBAC: access denied\n"
    policy.decide(WEB, "auth-api.shop", "GET", "/").raise_if_denied()  # no raise


POLICY = parse_policy(
    {
        "default_action": "allow",
        "rules": [
            {
                "name": "no-delete-on-db",
                "action": "deny",
                "from": ["*"],
                "to": ["database.shop"],
                "methods": ["DELETE"],
            },
            {
                "name": "ops-admin-paths",
                "action": "allow",
                "from": ["spiffe://cluster.local/ns/ops/*"],
                "to": ["*.shop"],
                "path_prefixes": ["/admin/"],
            },
            {
                "name": "admin-paths-closed",
                "action": "deny",
                "from": ["*"],
                "to": ["*"],
                "path_prefixes": ["/admin/", "/debug"],
            },
            {
                "name": "db-only-from-shop",
                "action": "deny",
                "from": ["spiffe://cluster.local/*", "*"],
                "to": ["database"],  # default namespace: database.default
            },
        ],
    }
)

# (source, service, method, path) -> (allowed, rule)
TABLE: list[tuple[SpiffeId | None, str, str, str, bool, str | None]] = [
    (WEB, "database.shop", "GET", "/rows", True, None),
    (WEB, "database.shop", "DELETE", "/rows", False, "no-delete-on-db"),
    (WEB, "database.shop", "delete", "/rows", False, "no-delete-on-db"),  # case-insensitive
    (ADMIN, "database.shop", "DELETE", "/admin/x", False, "no-delete-on-db"),  # order wins
    (ADMIN, "auth-api.shop", "GET", "/admin/users", True, "ops-admin-paths"),
    (BATCH, "auth-api.shop", "GET", "/admin/", True, "ops-admin-paths"),
    (ADMIN, "auth-api.prod", "GET", "/admin/users", False, "admin-paths-closed"),
    (WEB, "auth-api.shop", "GET", "/admin/users", False, "admin-paths-closed"),
    (WEB, "auth-api.shop", "GET", "/public/../admin/users", False, "admin-paths-closed"),
    (WEB, "auth-api.shop", "GET", "/%61dmin/users", False, "admin-paths-closed"),
    (WEB, "auth-api.shop", "GET", "//admin//users", False, "admin-paths-closed"),
    (WEB, "auth-api.shop", "GET", "/debug?x=1", False, "admin-paths-closed"),
    (WEB, "auth-api.shop", "GET", "/debugger", False, "admin-paths-closed"),  # plain prefix
    (WEB, "auth-api.shop", "GET", "/administrator", True, None),
    (WEB, "auth-api.shop", "GET", "/admin", True, None),  # prefix is "/admin/"
    (WEB, "database", "GET", "/", False, "db-only-from-shop"),  # bare name: default ns
    (None, "database.default", "GET", "/", False, "db-only-from-shop"),  # "*" includes anon
    (NODE, "database.default", "GET", "/", False, "db-only-from-shop"),
    (None, "auth-api.shop", "GET", "/", True, None),
]


@pytest.mark.parametrize(("source", "service", "method", "path", "allowed", "rule"), TABLE)
def test_decision_table(
    source: SpiffeId | None, service: str, method: str, path: str, allowed: bool, rule: str | None
) -> None:
    assert POLICY.decide(source, service, method, path) == Decision(allowed, rule)


def test_identity_pattern_kinds() -> None:
    policy = parse_policy(
        {
            "rules": [
                {"name": "exact", "action": "allow", "from": [WEB.uri], "to": ["*"]},
                {"name": "ns", "action": "allow", "from": ["spiffe://cluster.local/ns/ops/*"]}
                | {"to": ["*"]},
                {"name": "td", "action": "allow", "from": ["spiffe://evil.org/*"], "to": ["*"]},
            ]
        }
    )
    who = {
        WEB: "exact",
        ADMIN: "ns",
        OTHER_TD: "td",
        SpiffeId.workload("shop", "other"): None,
        SpiffeId.workload("ops", "x", "evil.org"): "td",  # namespace pattern pins its td
        NODE: None,  # node identities have no namespace
        None: None,  # unauthenticated matches only "*"
    }
    for source, rule in who.items():
        assert policy.decide(source, "svc.ns", "GET", "/").rule == rule, source


def test_allow_all_and_repr() -> None:
    assert Policy.allow_all().decide(None, "x.y", "GET", "/") == Decision(True, None)
    assert repr(POLICY) == "<Policy [4 rules | default allow]>"
    assert repr(parse_policy(None)) == "<Policy [0 rules | default allow]>"
    assert repr(parse_policy({})) == "<Policy [0 rules | default deny]>"


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/b/", "/a/b/"),
        ("/a//b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/../../etc", "/etc"),
        ("/%2e%2e/admin", "/admin"),
        ("/a%2Fb", "/a%2Fb"),  # an encoded slash stays encoded: not a separator
        ("/a%2fb", "/a%2Fb"),
        ("/%7Euser", "/~user"),
        ("/p?q=/admin#frag", "/p"),
        ("*", "*"),
    ],
)
def test_normalize_path(path: str, normal: str) -> None:
    assert normalize_path(path) == normal
    assert normalize_path(normal) == normal  # idempotent


def rule(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "r", "action": "allow", "from": ["*"], "to": ["*"]}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        ("deny", "policy", "mapping"),
        ({"default": "deny"}, "policy.default", "unknown field"),
        ({"default_action": "maybe"}, "policy.default_action", "'allow' or 'deny'"),
        ({"rules": {}}, "policy.rules", "list"),
        ({"rules": ["r"]}, "policy.rules[0]", "mapping"),
        ({"rules": [rule(action="permit")]}, "policy.rules[0].action", "'allow' or 'deny'"),
        ({"rules": [rule(name=None)]}, "policy.rules[0].name", "required"),
        ({"rules": [rule(name="")]}, "policy.rules[0].name", "non-empty string"),
        ({"rules": [rule(**{"from": []})]}, "policy.rules[0].from", "non-empty list"),
        ({"rules": [rule(**{"from": [5]})]}, "policy.rules[0].from[0]", "string"),
        (
            {"rules": [rule(**{"from": ["*", "spiffe://cluster.local/ns/a"]})]},
            "policy.rules[0].from[1]",
            "path must be",
        ),
        (
            {"rules": [rule(**{"from": ["spiffe://cluster.local/ns/a/sa/*x"]})]},
            "policy.rules[0].from[0]",
            "'*'",
        ),
        (
            {"rules": [rule(**{"from": ["spiffe://cluster.local/node/*"]})]},
            "policy.rules[0].from[0]",
            "wildcard",
        ),
        ({"rules": [rule(to="db")]}, "policy.rules[0].to", "non-empty list"),
        ({"rules": [rule(to=["db.ns.svc"])]}, "policy.rules[0].to[0]", "svc.namespace"),
        ({"rules": [rule(to=["Db"])]}, "policy.rules[0].to[0]", "svc.namespace"),
        ({"rules": [rule(methods=["GE T"])]}, "policy.rules[0].methods[0]", "HTTP method"),
        ({"rules": [rule(methods=[])]}, "policy.rules[0].methods", "non-empty list"),
        ({"rules": [rule(path_prefixes=["api"])]}, "policy.rules[0].path_prefixes[0]", "'/'"),
        ({"rules": [rule(paths=["/"])]}, "policy.rules[0].paths", "unknown field"),
        ({"rules": [rule(), rule()]}, "policy.rules[1].name", "duplicate"),
    ],
)
def test_config_errors_name_the_field(raw: Any, field: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_policy(raw)
    assert info.value.field == field
    assert message in info.value.message


def test_parse_keeps_order_and_upcases_methods() -> None:
    policy = parse_policy(
        {
            "rules": [rule(name="a", methods=["get", "Post"]), rule(name="b")],
            "default_action": "allow",
        },
        default_namespace="shop",
    )
    assert [r.name for r in policy.rules] == ["a", "b"]
    assert policy.rules[0].methods == frozenset({"GET", "POST"})
    narrow = parse_policy({"rules": [rule(to=["auth-api"])]}, default_namespace="shop")
    assert narrow.decide(WEB, "auth-api", "GET", "/").allowed  # both sides in "shop"
    assert narrow.decide(WEB, "auth-api.shop", "GET", "/").allowed
    assert not narrow.decide(WEB, "auth-api.default", "GET", "/").allowed
