"""SPIFFE ID parsing and formatting: tables of good and bad IDs, both directions."""

from __future__ import annotations

import pytest

from nodeproxy.tls.identity import InvalidSpiffeId, SpiffeId, parse_spiffe_id

GOOD = [
    ("spiffe://cluster.local/ns/default/sa/webserver", SpiffeId.workload("default", "webserver")),
    ("spiffe://cluster.local/ns/shop/sa/auth-api", SpiffeId.workload("shop", "auth-api")),
    ("spiffe://example.org/ns/a/sa/b.c-d", SpiffeId.workload("a", "b.c-d", "example.org")),
    ("spiffe://td_1-x.y/ns/n0/sa/s0", SpiffeId.workload("n0", "s0", "td_1-x.y")),
    (
        "spiffe://cluster.local/node/ip-10-0-0-1.ec2.internal",
        SpiffeId.node("ip-10-0-0-1.ec2.internal"),
    ),
    ("spiffe://prod/node/n1", SpiffeId.node("n1", "prod")),
]

BAD = [
    ("", "scheme"),
    ("https://cluster.local/ns/a/sa/b", "scheme"),
    ("SPIFFE://cluster.local/ns/a/sa/b", "scheme"),
    ("spiffe://", "trust domain"),
    ("spiffe://Cluster.local/ns/a/sa/b", "trust domain"),
    ("spiffe://cluster.local", "missing path"),
    ("spiffe://cluster.local/", "missing path"),
    ("spiffe://cluster.local:8443/ns/a/sa/b", "port"),
    ("spiffe://user@cluster.local/ns/a/sa/b", "userinfo"),
    ("spiffe://cluster.local/ns/a/sa/b?x=1", "query"),
    ("spiffe://cluster.local/ns/a/sa/b#f", "fragment"),
    ("spiffe://cluster.local/ns/a/sa/%62", "escape"),
    ("spiffe://cluster.local/ns/a/sa/b/", "empty"),
    ("spiffe://cluster.local/ns//sa/b", "empty"),
    ("spiffe://cluster.local/ns/./sa/b", "'.'"),
    ("spiffe://cluster.local/ns/../sa/b", "'.'"),
    ("spiffe://cluster.local/ns/a b/sa/b", "characters"),
    ("spiffe://cluster.local/ns/a/sa", "path must be"),
    ("spiffe://cluster.local/ns/a/sa/b/extra", "path must be"),
    ("spiffe://cluster.local/sa/b/ns/a", "path must be"),
    ("spiffe://cluster.local/node", "path must be"),
    ("spiffe://cluster.local/ns/UPPER/sa/b", "namespace"),
    ("spiffe://cluster.local/ns/-a/sa/b", "namespace"),
    ("spiffe://cluster.local/ns/" + "a" * 64 + "/sa/b", "namespace"),
    ("spiffe://cluster.local/ns/a/sa/B", "service account"),
    ("spiffe://cluster.local/ns/a/sa/b_c", "service account"),
    ("spiffe://cluster.local/node/Node1", "node name"),
    ("spiffe://cluster.local/ns/a/sa/" + "b" * 2100, "longer than"),
]


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_parse_good_ids_and_format_back(text: str, expected: SpiffeId) -> None:
    parsed = parse_spiffe_id(text)
    assert parsed == expected
    assert str(parsed) == text == parsed.uri
    assert parse_spiffe_id(str(expected)) == expected


@pytest.mark.parametrize(("text", "reason"), BAD)
def test_parse_bad_ids_names_the_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidSpiffeId) as info:
        parse_spiffe_id(text)
    assert reason in info.value.reason
    assert isinstance(info.value, ValueError)


def test_workload_and_node_fields() -> None:
    web = parse_spiffe_id("spiffe://cluster.local/ns/shop/sa/webserver")
    assert (web.kind, web.namespace, web.service_account, web.node_name) == (
        "workload",
        "shop",
        "webserver",
        None,
    )
    assert web.path == "/ns/shop/sa/webserver"
    node = parse_spiffe_id("spiffe://cluster.local/node/n1")
    assert (node.kind, node.node_name, node.namespace) == ("node", "n1", None)
    assert node.path == "/node/n1"


def test_constructor_validates_like_the_parser() -> None:
    with pytest.raises(InvalidSpiffeId, match="namespace"):
        SpiffeId.workload("Bad_NS", "sa")
    with pytest.raises(InvalidSpiffeId, match="trust domain"):
        SpiffeId.node("n1", trust_domain="UPPER")
    with pytest.raises(InvalidSpiffeId, match="no node"):
        SpiffeId("cluster.local", "workload", namespace="a", service_account="b", node_name="n")
    with pytest.raises(InvalidSpiffeId, match="unknown identity kind"):
        SpiffeId("cluster.local", "pod", namespace="a")  # type: ignore[arg-type]


def test_ids_are_hashable_ordered_and_immutable() -> None:
    a = SpiffeId.workload("a", "x")
    b = parse_spiffe_id("spiffe://cluster.local/ns/a/sa/x")
    assert {a: 1}[b] == 1
    assert sorted([SpiffeId.workload("b", "x"), a]) == [a, SpiffeId.workload("b", "x")]
    with pytest.raises(AttributeError):
        a.namespace = "b"  # type: ignore[misc]
