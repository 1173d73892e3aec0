"""Which workload is calling: source pod IP -> SPIFFE ID (static config or discovery).

A per-node proxy sees every pod of its node as a plaintext client on the
outbound listener; the only thing that tells them apart is the source
address (in Kubernetes, the pod IP). The static config names them:
``mesh.workloads`` maps an IP or CIDR to a namespace and service account.
The most specific network wins (a /32 inside a /24), so one can give a
namespace-wide default and carve single pods out of it. With Kubernetes
discovery the mesh builds a new table from the API's pods at each refresh
(``Mesh.update``): every local pod IP is one exact entry.

An unknown source gets ``mesh.default_identity`` when configured; without
one it has *no* identity: cross-node calls are refused (``unknown_source``)
rather than made under some other workload's name, and same-node calls are
judged by the policy as unauthenticated (only ``from: ["*"]`` matches).

Pure and immutable; the lookup cache is bounded (a pod IP churns, the cache
must not grow with it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from nodeproxy.config.model import MeshConfig, WorkloadConfig
from nodeproxy.tls.identity import SpiffeId

_CACHE_MAX = 4096

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SourceIdentities:
    """``lookup(ip)`` -> the caller's SPIFFE ID, or None (unknown, no default)."""

    def __init__(
        self,
        workloads: Iterable[WorkloadConfig],
        trust_domain: str,
        default: SpiffeId | None = None,
    ) -> None:
        entries = [
            (
                ipaddress.ip_network(w.source),
                SpiffeId.workload(w.namespace, w.service_account, trust_domain),
            )
            for w in workloads
        ]
        entries.sort(key=lambda e: e[0].prefixlen, reverse=True)  # most specific first
        # Single addresses (every discovered pod) are one dict probe, not a scan;
        # the first of equal networks wins, as in the scan.
        self._exact: dict[str, SpiffeId] = {}
        for network, sid in entries:
            if network.prefixlen == network.max_prefixlen:
                self._exact.setdefault(str(network.network_address), sid)
        self._entries: list[tuple[Network, SpiffeId]] = [
            e for e in entries if e[0].prefixlen != e[0].max_prefixlen
        ]
        self.default = default
        self._cache: dict[str, SpiffeId | None] = {}

    @classmethod
    def from_config(cls, mesh: MeshConfig, node_name: str) -> SourceIdentities:
        """The workloads of ``node_name`` (those without a ``node`` are this node's)."""
        local = [w for w in mesh.workloads if w.node in (None, node_name)]
        default = None
        if mesh.default_identity is not None:
            default = SpiffeId.workload(*mesh.default_identity, mesh.trust_domain)
        return cls(local, mesh.trust_domain, default)

    def __repr__(self) -> str:
        return (
            f"<SourceIdentities [{len(self._entries) + len(self._exact)} sources | "
            f"default {self.default or 'refuse'}]>"
        )

    @property
    def identities(self) -> set[SpiffeId]:
        """Every identity this node may present (its pods', and the default)."""
        ids = {sid for _, sid in self._entries} | set(self._exact.values())
        if self.default is not None:
            ids.add(self.default)
        return ids

    def lookup(self, ip: str) -> SpiffeId | None:
        """The identity of the pod at ``ip`` (most specific network), else the default."""
        try:
            return self._cache[ip]
        except KeyError:
            pass
        found = self.default
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            addr = None
        if addr is not None and (exact := self._exact.get(str(addr))) is not None:
            found = exact
        elif addr is not None:
            for network, sid in self._entries:
                if addr.version == network.version and addr in network:
                    found = sid
                    break
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[ip] = found
        return found
