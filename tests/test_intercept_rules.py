"""The node's interception rules as text (intercept/rules.py) and the install shell.

The text is what ``nft -f -`` gets; the round trip through a real nft runs in
tests/test_intercept_box.py (inside its own network namespace).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeproxy.intercept.install import InstallError, node_pod_cidrs, pod_cidrs_of
from nodeproxy.intercept.rules import (
    InterceptRules,
    RulesError,
    iptables_restore,
    nft_install,
    nft_uninstall,
)
from tests.fakes.apiserver import fake_apiserver
from tests.fakes.k8s_objects import node


def rules(**kw: object) -> InterceptRules:
    args: dict[str, object] = {"pod_cidrs": ["10.244.1.0/24"], "port": 15001, "mark": 0x4E50,
                               "destinations": ["10.96.0.0/12", "10.244.0.0/16"]}  # fmt: skip
    args.update(kw)
    return InterceptRules.build(**args)  # type: ignore[arg-type]


def test_nft_ruleset_replaces_our_table_in_one_transaction() -> None:
    text = nft_install(rules())
    lines = text.splitlines()
    # Create-then-delete: the delete cannot fail on a node that never had the table.
    assert lines[:3] == ["table ip nodeproxy", "delete table ip nodeproxy", "table ip nodeproxy {"]
    assert "type nat hook prerouting priority dstnat - 10; policy accept;" in text
    assert "meta mark 0x4e50 return" in text
    assert (
        "ip saddr { 10.244.1.0/24 } ip daddr { 10.96.0.0/12, 10.244.0.0/16 } meta l4proto tcp"
        " redirect to :15001" in text
    )
    assert text.index("meta mark") < text.index("redirect")  # the escape hatch first
    assert "output" not in text  # the node's (and the proxy's) own traffic: never


def test_uninstall_deletes_only_our_table_whether_or_not_it_exists() -> None:
    assert nft_uninstall() == "table ip nodeproxy\ndelete table ip nodeproxy\n"


def test_ranges_are_normalised_merged_and_ipv6_is_left_out() -> None:
    r = rules(pod_cidrs=["10.244.1.7/24", "fd00::/64"],
              destinations=["10.244.0.0/16", "10.244.3.0/24", "10.96.0.0/12"])  # fmt: skip
    assert r.pod_cidrs == ("10.244.1.0/24",)
    # nft refuses overlapping intervals in one set: the /24 inside the /16 is merged away.
    assert r.destinations == ("10.244.0.0/16", "10.96.0.0/12")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"pod_cidrs": []}, "no pod range"),
        ({"pod_cidrs": ["fd00::/64"]}, "IPv6 is not intercepted"),
        ({"destinations": []}, "no destination range"),
        ({"destinations": ["10.96.0.0/33"]}, "10.96.0.0/33"),
        ({"port": 0}, "port 0"),
        ({"mark": 0}, "mark"),
    ],
)
def test_unusable_settings_are_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(RulesError, match=message):
        rules(**kw)


def test_iptables_fallback_fills_one_chain_of_ours() -> None:
    text = iptables_restore(rules())
    assert text.splitlines() == [
        "*nat",
        ":NODEPROXY-INTERCEPT - [0:0]",  # declaring it empties it: install is idempotent
        "-A NODEPROXY-INTERCEPT -m mark --mark 0x4e50 -j RETURN",
        "-A NODEPROXY-INTERCEPT -s 10.244.1.0/24 -d 10.96.0.0/12 -p tcp -j REDIRECT"
        " --to-ports 15001",
        "-A NODEPROXY-INTERCEPT -s 10.244.1.0/24 -d 10.244.0.0/16 -p tcp -j REDIRECT"
        " --to-ports 15001",
        "COMMIT",
    ]


def test_pod_ranges_read_from_the_node_list() -> None:
    doc = (
        b'{"items": [{"spec": {"podCIDR": "10.244.1.0/24",'
        b' "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"]}}]}'
    )
    assert pod_cidrs_of(doc) == ("10.244.1.0/24", "fd00:1::/64")
    assert pod_cidrs_of(b'{"items": [{"spec": {"podCIDR": "10.244.2.0/24"}}]}') == (
        "10.244.2.0/24",
    )
    assert pod_cidrs_of(b'{"items": []}') == ()


def test_a_listener_on_its_own_address_is_reached_by_dnat() -> None:
    # The DaemonSet's shape: the same link-local address on every node, whatever the CNI
    # puts (or does not put) on the pod-facing interfaces.
    r = rules(address="169.254.20.41")
    assert "meta l4proto tcp dnat to 169.254.20.41:15001\n" in nft_install(r)
    assert "-j DNAT --to-destination 169.254.20.41:15001" in iptables_restore(r)
    assert rules(address="0.0.0.0").address is None  # the wildcard: redirect to the port
    with pytest.raises(RulesError, match="not an IPv4 address"):
        rules(address="fd00::1")


async def test_pod_ranges_come_from_this_nodes_object_in_the_api(tmp_path: Path) -> None:
    async with fake_apiserver() as api:
        for name, cidrs in (("node-1", ["10.244.1.0/24"]), ("node-2", ["10.244.2.0/24"])):
            obj = node(name, "10.0.0.1")
            obj["spec"] = {"podCIDR": cidrs[0], "podCIDRs": cidrs}
            api.add("nodes", obj)
        kc = api.write_kubeconfig(tmp_path / "kubeconfig")
        assert await node_pod_cidrs(str(kc), None, "node-2") == ("10.244.2.0/24",)
        assert await node_pod_cidrs(str(kc), None, "node-9") == ()  # no such Node: no ranges
        with pytest.raises(InstallError, match="cannot read kubeconfig"):
            await node_pod_cidrs(str(tmp_path / "missing"), None, "node-1")
