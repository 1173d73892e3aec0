"""``nodeproxy intercept install|uninstall``: the thin shell that applies rules.py's text.

Run by an init container or by the DaemonSet's container with NET_ADMIN, in
the node's network namespace (hostNetwork). nftables (``nft -f -``, one
transaction) when ``nft`` is installed, else iptables (iptables-nft). Both are
idempotent: install twice leaves one copy of the rules, uninstall leaves
nothing of ours, and neither touches anyone else's tables or chains.

The pod ranges come from ``--pod-cidr``, else ``intercept.pod_cidrs``, else
the Node object's ``spec.podCIDRs`` (one list call with a field selector, on
the discovery's API access: list is what the DaemonSet's RBAC grants).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from typing import Literal
from urllib.parse import quote

import trio

from nodeproxy.intercept.rules import (
    CHAIN,
    JUMP,
    InterceptRules,
    iptables_restore,
    nft_install,
    nft_uninstall,
)

Backend = Literal["nft", "iptables"]
NODE_LIST_LIMIT = 1 << 20  # one Node, trimmed or not, is far below this


class InstallError(Exception):
    """A rule command failed (its stderr is the message) or no backend is installed."""


def pick_backend(preference: str = "auto") -> Backend:
    """``nft`` if asked or installed, else ``iptables``; InstallError when neither is."""
    if preference in ("auto", "nft") and shutil.which("nft"):
        return "nft"
    if preference in ("auto", "iptables") and shutil.which("iptables"):
        return "iptables"
    raise InstallError(f"no rule tool for backend {preference!r}: install nftables or iptables")


async def _run(args: Sequence[str], stdin: bytes = b"", *, check: bool = True) -> int:
    result = await trio.run_process(
        list(args), stdin=stdin, capture_stdout=True, capture_stderr=True, check=False
    )
    if check and result.returncode != 0:
        err = result.stderr.decode(errors="replace").strip()
        raise InstallError(f"{' '.join(args[:3])}: exit {result.returncode}: {err}")
    return result.returncode


async def install(rules: InterceptRules, backend: Backend) -> None:
    """Replace our rules with ``rules`` (idempotent)."""
    if backend == "nft":
        await _run(["nft", "-f", "-"], nft_install(rules).encode())
        return
    await _run(["iptables-restore", "-w", "--noflush"], iptables_restore(rules).encode())
    if await _run(["iptables", "-w", "-t", "nat", "-C", *JUMP], check=False) != 0:
        await _run(["iptables", "-w", "-t", "nat", "-I", JUMP[0], "1", *JUMP[1:]])


async def uninstall(backend: Backend) -> None:
    """Remove every rule of ours (idempotent: nothing installed is not an error)."""
    if backend == "nft":
        await _run(["nft", "-f", "-"], nft_uninstall().encode())
        return
    for _ in range(64):  # every copy of the jump (bounded: a loop must end)
        if await _run(["iptables", "-w", "-t", "nat", "-D", *JUMP], check=False) != 0:
            break
    await _run(["iptables", "-w", "-t", "nat", "-F", CHAIN], check=False)
    await _run(["iptables", "-w", "-t", "nat", "-X", CHAIN], check=False)


def pod_cidrs_of(node_list: bytes) -> tuple[str, ...]:
    """``spec.podCIDRs`` (else ``spec.podCIDR``) of the one Node in a list response."""
    doc = json.loads(node_list)
    items = doc.get("items") if isinstance(doc, dict) else None
    if not isinstance(items, list) or len(items) != 1 or not isinstance(items[0], dict):
        return ()
    spec = items[0].get("spec")
    if not isinstance(spec, dict):
        return ()
    cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    return tuple(str(c) for c in cidrs if isinstance(c, str))


async def node_pod_cidrs(
    kubeconfig: str | None, context: str | None, node_name: str
) -> tuple[str, ...]:
    """This Node's pod ranges, read from the API (InstallError when it cannot be asked)."""
    from nodeproxy.discovery.kubernetes.access import from_kubeconfig, in_cluster
    from nodeproxy.discovery.kubernetes.apiclient import (
        ApiClient,
        ApiStatusError,
        ApiUnavailable,
    )
    from nodeproxy.errors import ConfigError

    target = "/api/v1/nodes?fieldSelector=" + quote(f"metadata.name={node_name}", safe="")
    try:
        access = from_kubeconfig(kubeconfig, context) if kubeconfig else in_cluster()
        async with ApiClient(access).get(target) as response:
            return pod_cidrs_of(await response.read_all(NODE_LIST_LIMIT))
    except (ConfigError, ApiUnavailable, ApiStatusError, ValueError) as exc:
        raise InstallError(f"reading Node {node_name}'s spec.podCIDRs: {exc}") from None
