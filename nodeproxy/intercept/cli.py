"""``nodeproxy intercept install|uninstall``: argv -> rules -> install.py.

    nodeproxy intercept install --config FILE [--pod-cidr C]... [--destination C]...
                                [--port P] [--mark M] [--backend auto|nft|iptables] [--dry-run]
                                [--if-configured]   (no intercept: section -> uninstall)
    nodeproxy intercept uninstall [--backend ...]

The settings are the config's ``intercept:`` section (the same file the
proxy runs, so the port agrees); flags override it. Exit 0 when the rules are
in place (or gone), 1 with one line on stderr when not.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import trio

from nodeproxy.intercept.rules import InterceptRules, RulesError, nft_install

EXIT_FAILED = 1


def add_intercept_subcommand(sub: Any) -> None:
    p = sub.add_parser("intercept", help="install or remove the node's interception rules")
    actions = p.add_subparsers(dest="intercept_action", required=True)
    inst = actions.add_parser("install", help="redirect pod TCP to the transparent listener")
    inst.add_argument("--config", "-c", help="the proxy's config (its intercept: section)")
    inst.add_argument("--pod-cidr", action="append", default=[], help="this node's pod range")
    inst.add_argument(
        "--destination", action="append", default=[], help="a Service or cluster pod range"
    )
    inst.add_argument("--port", type=int, help="the transparent listener's port")
    inst.add_argument("--mark", type=lambda v: int(v, 0), help="packets never redirected")
    inst.add_argument("--dry-run", action="store_true", help="print the nftables rules only")
    inst.add_argument(
        "--if-configured",
        action="store_true",
        help="when the config has no intercept: section, remove any rules instead (an init "
        "container that runs on every rollout, whether interception is on or off)",
    )
    uninst = actions.add_parser("uninstall", help="remove every interception rule")
    for a in (inst, uninst):
        a.add_argument("--backend", choices=["auto", "nft", "iptables"])


def run_intercept_command(args: argparse.Namespace) -> int:
    from nodeproxy.intercept.install import InstallError, pick_backend

    try:
        if args.intercept_action == "uninstall":
            from nodeproxy.intercept.install import uninstall

            backend = pick_backend(args.backend or "auto")
            trio.run(uninstall, backend)
            print(f"nodeproxy: interception rules removed ({backend})")
            return 0
        if args.if_configured and not _configured(args.config):
            from nodeproxy.intercept.install import uninstall

            backend = pick_backend(args.backend or "auto")
            trio.run(uninstall, backend)
            print(f"nodeproxy: interception is not configured: no rules ({backend})")
            return 0
        rules, preference = trio.run(_rules, args)
        if args.dry_run:
            print(nft_install(rules), end="")
            return 0
        from nodeproxy.intercept.install import install

        backend = pick_backend(preference)
        trio.run(install, rules, backend)
    except (InstallError, RulesError, OSError) as exc:
        print(f"nodeproxy intercept: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"nodeproxy: interception rules installed ({backend}): pods {', '.join(rules.pod_cidrs)}"
          f" -> {', '.join(rules.destinations)} to :{rules.port}")  # fmt: skip
    return 0


def _configured(path: str | None) -> bool:
    """The config at ``path`` has an ``intercept:`` section (RulesError if it does not load)."""
    if not path:
        raise RulesError("--if-configured needs --config")
    from nodeproxy.config import load_config
    from nodeproxy.errors import ConfigError

    try:
        return load_config(path).intercept is not None
    except ConfigError as exc:
        raise RulesError(str(exc)) from None


async def _rules(args: argparse.Namespace) -> tuple[InterceptRules, str]:
    """The rules from the flags over the config's section (and the Node's podCIDRs)."""
    from nodeproxy.config.model import InterceptConfig

    ic, k8s, node_name = InterceptConfig(), None, ""
    if args.config:
        from nodeproxy.config import load_config
        from nodeproxy.errors import ConfigError

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            raise RulesError(str(exc)) from None
        ic = config.intercept or ic
        k8s, node_name = config.discovery.kubernetes, config.node_name
    pod_cidrs = tuple(args.pod_cidr) or ic.pod_cidrs
    if not pod_cidrs and k8s is not None and node_name:
        from nodeproxy.intercept.install import node_pod_cidrs

        pod_cidrs = await node_pod_cidrs(k8s.kubeconfig, k8s.context, node_name)
    rules = InterceptRules.build(
        pod_cidrs,
        tuple(args.destination) or ic.destinations,
        args.port if args.port is not None else ic.port,
        args.mark if args.mark is not None else ic.mark,
        ic.host,
    )
    return rules, args.backend or ic.backend
