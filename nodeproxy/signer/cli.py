"""``nodeproxy signer``: run the certificate signer (a Deployment holding the CA key).

    nodeproxy signer --ca-dir DIR --dns-name NAME [--dns-name NAME ...]
                     [--listen 0.0.0.0:8443] [--node-service-account NS/SA ...]
                     [--audience nodeproxy-signer] [--cert-lifetime 24h]
                     [--api-timeout 10] [--kubeconfig F [--context C]]

The API server is reached with the pod's own service account unless a
kubeconfig is given (development). A bad CA or flag prints one line and
exits 1 before anything listens.
"""

from __future__ import annotations

import argparse
import signal
import sys
from functools import partial
from typing import Any

import structlog
import trio

from nodeproxy.config.model import LogConfig
from nodeproxy.discovery.kubernetes.access import ApiAccess, from_kubeconfig, in_cluster
from nodeproxy.errors import ConfigError
from nodeproxy.signer.kubeapi import KubeApi
from nodeproxy.signer.protocol import AUDIENCE
from nodeproxy.signer.server import serve_signer
from nodeproxy.signer.service import Signer
from nodeproxy.tls.ca import CAError, load_ca
from nodeproxy.tls.cli import parse_lifetime

EXIT_ERROR = 1
log = structlog.get_logger("nodeproxy.signer")


def _account(text: str) -> tuple[str, str]:
    ns, _, sa = text.partition("/")
    if not ns or not sa or "/" in sa:
        raise argparse.ArgumentTypeError(f"expected NAMESPACE/SERVICE_ACCOUNT, got {text!r}")
    return ns, sa


def _listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def add_signer_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "signer", help="run the certificate signer (holds the CA key; nodes ask it)"
    )
    p.add_argument("--ca-dir", required=True, help="directory with ca.crt and ca.key")
    p.add_argument(
        "--dns-name", action="append", required=True,
        help="a name nodes reach the signer by (its Service DNS name); repeatable",
    )  # fmt: skip
    p.add_argument("--listen", type=_listen, default=("0.0.0.0", 8443), help="HOST:PORT")
    p.add_argument(
        "--node-service-account", type=_account, action="append",
        help="NAMESPACE/NAME of the node proxies' service account (default nodeproxy/nodeproxy)",
    )  # fmt: skip
    p.add_argument("--audience", default=AUDIENCE, help="token audience to require")
    p.add_argument("--cert-lifetime", type=parse_lifetime, default="24h", help="max lifetime")
    p.add_argument("--api-timeout", type=float, default=10.0, help="seconds per API call")
    p.add_argument("--kubeconfig", help="reach the API with this kubeconfig (development)")
    p.add_argument("--context", help="kubeconfig context (with --kubeconfig)")
    p.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    return p


def run_signer_command(args: argparse.Namespace) -> int:
    try:
        ca = load_ca(args.ca_dir)
        access: ApiAccess = (
            from_kubeconfig(args.kubeconfig, args.context) if args.kubeconfig else in_cluster()
        )
    except (CAError, ConfigError) as exc:
        print(f"nodeproxy signer: {exc}", file=sys.stderr)
        return EXIT_ERROR
    from nodeproxy.logs import configure_logging

    configure_logging(LogConfig(format=args.log_format))
    signer = Signer(
        ca,
        KubeApi(access, timeout=args.api_timeout),
        frozenset(args.node_service_account or [("nodeproxy", "nodeproxy")]),
        audience=args.audience,
        max_lifetime=args.cert_lifetime,
    )
    host, port = args.listen
    try:
        trio.run(partial(_serve_until_signal, signer, args.dns_name, host, port))
    except OSError as exc:
        print(f"nodeproxy signer: cannot start: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return 0


async def _serve_until_signal(signer: Signer, dns_names: list[str], host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT; a request cut short is retried by its node."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_signer, signer, dns_names, host, port))
            async for signum in signals:
                log.info("signer_stopping", signal=signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
