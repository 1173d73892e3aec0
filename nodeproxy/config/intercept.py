"""The native ``intercept:`` section -> ``InterceptConfig`` (docs/interception.md).

Why a module of its own: the section is read by two programs, the proxy (its
transparent listener) and ``nodeproxy intercept install`` (the node's rules),
and both must agree on the port; ranges are checked here so a typo fails
``check-config`` rather than the init container.
"""

from __future__ import annotations

from typing import Literal, cast

from nodeproxy.config.checks import Binds
from nodeproxy.config.model import InterceptConfig
from nodeproxy.config.yamlsrc import Node
from nodeproxy.intercept.rules import RulesError, ipv4_ranges

INTERCEPT_KEYS = ("address", "detect_timeout", "pod_cidrs", "destinations", "mark", "backend")
MAX_DETECT_TIMEOUT = 10.0


def read_intercept(node: Node, binds: Binds) -> InterceptConfig:
    if node.node.tag == "tag:yaml.org,2002:null":
        return InterceptConfig()
    f = node.fields(*INTERCEPT_KEYS)
    d = InterceptConfig()
    host, port = d.host, d.port
    if (addr := f.get("address")) is not None:
        host, port = addr.address(allow_zero_port=True)
        binds.append((addr, host, port))
    timeout = f.opt("detect_timeout", Node.duration, d.detect_timeout)
    if timeout > MAX_DETECT_TIMEOUT:
        raise f.need("detect_timeout").error(f"at most {MAX_DETECT_TIMEOUT:g}s")
    backend = f.opt("backend", lambda n: n.choice("auto", "nft", "iptables"), str(d.backend))
    return InterceptConfig(
        host=host,
        port=port,
        detect_timeout=timeout,
        pod_cidrs=_ranges(f.items("pod_cidrs")),
        destinations=_ranges(f.items("destinations")),
        mark=f.opt("mark", lambda n: n.integer(1, (1 << 32) - 1), d.mark),
        backend=cast(Literal["auto", "nft", "iptables"], backend),
    )


def _ranges(items: list[Node]) -> tuple[str, ...]:
    out: list[str] = []
    for item in items:
        try:
            out.extend(ipv4_ranges([item.text()]))
        except RulesError as exc:
            raise item.error(str(exc)) from None
    return tuple(out)
