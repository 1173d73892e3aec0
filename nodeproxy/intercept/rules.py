"""The node's redirect rules as text: pure functions, no I/O (install.py applies them).

Why text: the whole ruleset is one ``nft -f -`` transaction, so install and
uninstall are atomic and a unit test reads exactly what the kernel gets.

What is redirected: TCP whose source is one of this node's pod ranges (the
Node's ``spec.podCIDRs``) and whose destination is in ``destinations`` (the
Service ClusterIP range and the cluster's pod ranges) goes to the transparent
listener's port (``redirect``: the packet's destination becomes the address
of the interface it came in on; ``SO_ORIGINAL_DST`` gives the listener the
old one back).

What is not, by construction: the rule sits in the ``prerouting`` hook, which
only sees packets that arrive from an interface -- a pod's, behind its veth.
Connections the node opens, the proxy's own included, leave through
``output`` and are never redirected, so the proxy needs no uid or mark of its
own. Packets carrying ``mark`` are returned before the redirect: an escape
hatch for traffic another component has to keep out of the mesh.

The chain runs at ``dstnat - 10``, before kube-proxy's nat chains (``dstnat``):
the proxy sees the ClusterIP the pod dialled, not the endpoint kube-proxy
would have chosen.

Our rules live in their own table (``ip nodeproxy``) and nowhere else: install
deletes and re-adds that table in one transaction (idempotent), uninstall
deletes it (nothing left behind). Where ``nft`` is missing the same rules are
written with iptables (iptables-nft) into one chain of the nat table,
``NODEPROXY-INTERCEPT``, jumped to from ``PREROUTING``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

TABLE = "nodeproxy"
CHAIN = "NODEPROXY-INTERCEPT"  # the iptables fallback's chain (nat table)
DEFAULT_MARK = 0x4E50  # "NP"


class RulesError(ValueError):
    """The interception settings cannot be rendered (e.g. no pod range, IPv6)."""


@dataclass(frozen=True)
class InterceptRules:
    """What to redirect where: the inputs of both renderers."""

    pod_cidrs: tuple[str, ...]  # sources: this node's pods (spec.podCIDRs, IPv4)
    destinations: tuple[str, ...]  # the Service range and the cluster's pod ranges
    port: int  # the transparent listener's port
    mark: int = DEFAULT_MARK  # packets with this mark are never redirected
    # The listener's own address when it binds one (dnat there), None when it binds the
    # wildcard (redirect: to the address of the interface the packet came in on).
    address: str | None = None

    @classmethod
    def build(
        cls,
        pod_cidrs: Sequence[str],
        destinations: Sequence[str],
        port: int,
        mark: int,
        address: str | None = None,
    ) -> InterceptRules:
        """Validated and normalised (``10.0.0.5/24`` -> ``10.0.0.0/24``); IPv4 only."""
        if not pod_cidrs:
            raise RulesError("no pod range: set intercept.pod_cidrs or the Node's spec.podCIDRs")
        if not destinations:
            raise RulesError("no destination range: set intercept.destinations")
        if not 1 <= port <= 65535:
            raise RulesError(f"port {port} out of range")
        if not 0 < mark < 1 << 32:
            raise RulesError(f"mark {mark:#x} must fit 32 bits and not be 0")
        if address in ("", "0.0.0.0"):
            address = None
        if address is not None:
            try:
                ipaddress.IPv4Address(address)
            except ValueError:
                raise RulesError(f"listener address {address!r} is not an IPv4 address") from None
        return cls(ipv4_ranges(pod_cidrs), ipv4_ranges(destinations), port, mark, address)

    @property
    def nft_target(self) -> str:
        if self.address is None:
            return f"redirect to :{self.port}"
        return f"dnat to {self.address}:{self.port}"

    @property
    def iptables_target(self) -> str:
        if self.address is None:
            return f"REDIRECT --to-ports {self.port}"
        return f"DNAT --to-destination {self.address}:{self.port}"


def ipv4_ranges(cidrs: Sequence[str]) -> tuple[str, ...]:
    """IPv4 networks, normalised; one inside another is merged away (nft refuses
    overlapping intervals in a set); the order of first appearance is kept."""
    nets: list[ipaddress.IPv4Network] = []
    for text in cidrs:
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError as exc:
            raise RulesError(f"{text!r}: {exc}") from None
        if isinstance(net, ipaddress.IPv4Network):  # IPv6 is not intercepted (docs)
            nets.append(net)
    if not nets:
        raise RulesError(f"no IPv4 range in {list(cidrs)} (IPv6 is not intercepted)")
    out: list[str] = []
    for net in nets:
        inside = any(net != other and net.subnet_of(other) for other in nets)
        if not inside and str(net) not in out:
            out.append(str(net))
    return tuple(out)


def nft_install(rules: InterceptRules) -> str:
    """One ``nft -f -`` transaction: our table replaced whole (creating it first makes the
    delete succeed when it was absent)."""
    sources = ", ".join(rules.pod_cidrs)
    dests = ", ".join(rules.destinations)
    return (
        f"table ip {TABLE}\n"
        f"delete table ip {TABLE}\n"
        f"table ip {TABLE} {{\n"
        f"\tchain prerouting {{\n"
        f"\t\ttype nat hook prerouting priority dstnat - 10; policy accept;\n"
        f"\t\tmeta mark {rules.mark:#x} return\n"
        f"\t\tip saddr {{ {sources} }} ip daddr {{ {dests} }} meta l4proto tcp"
        f" {rules.nft_target}\n"
        f"\t}}\n"
        f"}}\n"
    )


def nft_uninstall() -> str:
    """Our table gone, whether or not it was there (one transaction)."""
    return f"table ip {TABLE}\ndelete table ip {TABLE}\n"


def iptables_restore(rules: InterceptRules) -> str:
    """``iptables-restore --noflush`` input: our chain declared (which empties it) and filled."""
    lines = ["*nat", f":{CHAIN} - [0:0]", f"-A {CHAIN} -m mark --mark {rules.mark:#x} -j RETURN"]
    for src in rules.pod_cidrs:
        for dst in rules.destinations:
            lines.append(f"-A {CHAIN} -s {src} -d {dst} -p tcp -j {rules.iptables_target}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


# The jump into our chain (iptables fallback), as arguments after ``iptables -t nat``.
JUMP = ("PREROUTING", "-j", CHAIN)
