"""Command line: argv -> config -> logging -> trio.run.

    nodeproxy run --config FILE        serve (native YAML or an Envoy bootstrap)
                  [--kubeconfig F]     discover services from that cluster's API
                  [--workers N|auto]   N worker processes under a supervisor
                  [--handoff-socket P] take over the listening sockets of the
                                       process running there (hitless restart)
    nodeproxy check-config FILE...     validate and summarise (and warn), start nothing
    nodeproxy demo                     two greeter replicas + the proxy + admin
    nodeproxy ca init|issue            the local CA (see docs/security.md)
    nodeproxy signer --ca-dir D ...    the certificate signer (holds the CA key)
    nodeproxy intercept install|uninstall   the node's redirect rules (docs/interception.md)

A config error is printed with its file, line and field, and the exit status
is 1: nothing starts half-configured.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, TextIO, cast

import trio

from nodeproxy import __version__
from nodeproxy.config import load_config
from nodeproxy.config.checks import handoff_path_problem
from nodeproxy.config.model import CODEC_ENV, Config, DiscoveryConfig, KubernetesConfig
from nodeproxy.errors import ConfigError
from nodeproxy.handoff.protocol import HandoffError
from nodeproxy.intercept.cli import add_intercept_subcommand
from nodeproxy.signer.cli import add_signer_subcommand
from nodeproxy.tls.cli import add_ca_subcommands, run_ca_command

if TYPE_CHECKING:
    from nodeproxy.workers.child import WorkerLink

EXIT_CONFIG = 1
EXIT_USAGE = 2


class _Version(argparse.Action):
    """``--version``: the release, the HTTP/1.1 codec this install would run, and whether
    its data path is compiled (``nodeproxy/compiled.py``)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from nodeproxy import compiled
        from nodeproxy.http1 import impl  # picks the codec (NODEPROXY_CODEC or auto)

        build = compiled.status()
        print(f"nodeproxy {__version__} (codec {impl.NAME} {impl.VERSION}, data path {build})")
        parser.exit()


def _leaves(group: BaseExceptionGroup[OSError]) -> list[BaseException]:
    """The exceptions inside a (nested) group, for one plain line each."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def _select_codec(config: Config) -> str | None:
    """Honour the config's ``codec`` unless NODEPROXY_CODEC is set; an error text or None.

    Must run before anything imports the data path (``http1/impl.py`` binds
    the codec once, at import).
    """
    if os.environ.get(CODEC_ENV) is None and config.codec != "auto":
        os.environ[CODEC_ENV] = config.codec
    try:
        import nodeproxy.http1.impl  # noqa: F401  # binds the codec now, or says why not
    except RuntimeError as exc:  # impl.CodecUnavailable
        return str(exc)
    return None


def _worker_count(text: str) -> int | str:
    from nodeproxy.workers.count import MAX_WORKERS

    if text == "auto":
        return "auto"
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"expected 1..{MAX_WORKERS} or auto, got {text!r}")
    return int(text)


DESCRIPTION = """\
nodeproxy: a per-node service-mesh proxy for Kubernetes. Pods send their HTTP/1.1
requests to the node's proxy (as an HTTP proxy or with a Host header); it finds the
service, picks a healthy endpoint and carries the request there, over mTLS between
nodes when the mesh is on. It reads its own YAML or the common subset of an Envoy
bootstrap file."""

EPILOG = """\
examples:
  nodeproxy demo                                  try it: greeter replicas behind the proxy
  nodeproxy check-config examples/nodeproxy.yaml  validate a config, start nothing
  nodeproxy run --config examples/nodeproxy.yaml  serve until SIGTERM/SIGINT, then drain
  nodeproxy run -c nodeproxy.yaml --workers auto  one worker process per usable CPU

'nodeproxy COMMAND --help' shows a command's options.

exit status: 0 after a drain; 1 for a config error or a listener that cannot
start (its address and errno are printed); 2 for a usage error; 3 when worker
processes keep failing.

docs: docs/configuration.md (every field), docs/admin.md (the admin port),
docs/security.md (the mesh CA, mTLS, policy), docs/kubernetes.md (deploying)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nodeproxy",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action=_Version, nargs=0, help="show the version and codec")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run the proxy from a config file",
        description="Serve the config's listeners until SIGTERM/SIGINT or POST /drain on the "
        "admin port; then in-flight requests finish and the process exits 0.",
    )
    run.add_argument("--config", "-c", required=True, help="native YAML or Envoy bootstrap")
    run.add_argument(
        "--log-format", choices=["auto", "json", "console"], help="override log.format"
    )
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.add_argument(
        "--kubeconfig",
        help="discover from the API this kubeconfig names (development; "
        "overrides discovery.kubernetes.kubeconfig, enables kubernetes discovery)",
    )
    run.add_argument("--context", help="kubeconfig context (with --kubeconfig)")
    run.add_argument(
        "--workers",
        type=_worker_count,
        help="worker processes: a number or auto (the CPUs this process may use); "
        "overrides the config's workers (default 1: one process)",
    )
    run.add_argument(
        "--handoff-socket",
        metavar="PATH",
        help="Unix socket where a running nodeproxy hands over its listening sockets "
        "(and where this one will hand them over in turn); overrides handoff_socket",
    )
    run.add_argument(
        "--after-handoff",
        choices=["exit", "wait"],
        help="once handed off and drained: exit 0 at once, or wait for SIGTERM/SIGINT "
        "first; overrides after_handoff",
    )
    check = sub.add_parser(
        "check-config",
        help="validate a config file without starting",
        description="Load each file as 'run' would and print a one-line summary and its "
        "warnings (fields accepted that change nothing); exit 1 if any file has an error, "
        "which names the file, line and field.",
    )
    check.add_argument("config", nargs="+", help="one or more config files")
    demo = sub.add_parser(
        "demo",
        help="run the embedded demo (greeter replicas + proxy)",
        description="Start greeter replicas, the proxy and its admin port in one process and "
        "print curl lines to try; Ctrl-C drains and stops everything.",
    )
    demo.add_argument("--port", type=int, default=4140, help="outbound listener port")
    demo.add_argument("--admin-port", type=int, default=9901)
    demo.add_argument("--replicas", type=int, default=2)
    add_ca_subcommands(sub)
    add_signer_subcommand(sub)
    add_intercept_subcommand(sub)
    return p


def summarise(config: Config) -> str:
    endpoints = sum(len(c.endpoints) for c in config.clusters.values())
    listeners = ", ".join(f"{lc.name}@{lc.host}:{lc.port}" for lc in config.listeners)
    if (ic := config.intercept) is not None:
        listeners += f", intercept@{ic.host}:{ic.port}"
    workers = f", workers {config.workers}" if config.workers != 1 else ""
    return (
        f"ok: {config.source_format} config, listeners [{listeners}], "
        f"{len(config.clusters)} clusters, {endpoints} endpoints, "
        f"admin {config.admin.host}:{config.admin.port}, discovery {config.discovery.mode}"
        f"{workers}"
    )


def _with_log_overrides(config: Config, fmt: str | None, level: str | None) -> Config:
    import dataclasses

    log_cfg = config.log
    if fmt:
        log_cfg = dataclasses.replace(log_cfg, format=fmt)  # type: ignore[arg-type]
    if level:
        log_cfg = dataclasses.replace(log_cfg, level=level)  # type: ignore[arg-type]
    return dataclasses.replace(config, log=log_cfg)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from nodeproxy.demo.runner import run_demo

        return run_demo(args.port, args.admin_port, args.replicas)
    if args.command == "ca":
        return run_ca_command(args)
    if args.command == "signer":
        from nodeproxy.signer.cli import run_signer_command

        return run_signer_command(args)
    if args.command == "intercept":
        from nodeproxy.intercept.cli import run_intercept_command

        return run_intercept_command(args)
    if args.command == "check-config":
        return check_config(args.config)
    config = load_for_run(
        args.config, args.log_format, args.log_level, args.kubeconfig, args.context
    )
    if config is None:
        return EXIT_CONFIG
    if args.handoff_socket is not None:
        if (problem := handoff_path_problem(args.handoff_socket)) is not None:
            print(f"nodeproxy: --handoff-socket: {problem}", file=sys.stderr)
            return EXIT_USAGE
        config = dataclasses.replace(config, handoff_socket=args.handoff_socket)
    if args.after_handoff is not None:
        config = dataclasses.replace(config, after_handoff=args.after_handoff)
    workers = args.workers if args.workers is not None else config.workers
    if workers == "auto":
        from nodeproxy.workers.count import available_cpus

        workers = available_cpus()
    if workers == 1:
        return serve(config)  # one process: exactly the single-process path
    from nodeproxy.workers.supervisor import ChildArgs, supervise

    child = ChildArgs(args.config, args.log_format, args.log_level, args.kubeconfig, args.context)
    return supervise(config, int(workers), child)


def load_for_run(
    path: str,
    log_format: str | None = None,
    log_level: str | None = None,
    kubeconfig: str | None = None,
    context: str | None = None,
) -> Config | None:
    """The config ``run`` serves: the file, then the command line's overrides."""
    config = _load(path)
    if config is None:
        return None
    config = _with_log_overrides(config, log_format, log_level)
    if kubeconfig:
        config = with_kubeconfig(config, kubeconfig, context)
    return config


def _load(path: str) -> Config | None:
    """The config at ``path``, or None after printing why not."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"nodeproxy: config error: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"nodeproxy: cannot read config {path}: {exc.strerror}", file=sys.stderr)
    return None


def check_config(paths: Sequence[str]) -> int:
    """Validate each file: its summary and its warnings (fields accepted that change
    nothing, Envoy files), each line prefixed by the file when there are several."""
    code = 0
    for path in paths:
        config = _load(path)
        if config is None:
            code = EXIT_CONFIG
            continue
        prefix = f"{path}: " if len(paths) > 1 else ""
        print(prefix + summarise(config))
        for warning in config.warnings:
            print(f"{prefix}warning: {warning}")
    return code


def with_kubeconfig(config: Config, path: str, context: str | None = None) -> Config:
    """``--kubeconfig``: Kubernetes discovery from that file (other settings kept)."""
    import dataclasses

    from nodeproxy.config.discovery import KUBERNETES_VHOST

    k8s = config.discovery.kubernetes
    if k8s is None:  # turn discovery on: discovered services need the catch-all route
        k8s = KubernetesConfig()
        listeners = tuple(
            dataclasses.replace(lc, virtual_hosts=(*lc.virtual_hosts, KUBERNETES_VHOST))
            for lc in config.listeners
        )
        config = dataclasses.replace(config, listeners=listeners)
    k8s = dataclasses.replace(k8s, kubeconfig=path, context=context or k8s.context)
    return dataclasses.replace(config, discovery=DiscoveryConfig(kubernetes=k8s))


def start_logging(config: Config, *, warn: bool = True, fleet: bool = False) -> str | None:
    """Pick the codec and configure logging once; an error text when the codec cannot load.

    ``fleet``: a supervisor or a worker, whose processes share stdout (workers/output.py).
    """
    if (problem := _select_codec(config)) is not None:
        return problem
    from nodeproxy.logs import configure_logging

    stream = None
    if fleet:
        from nodeproxy.workers.output import WholeLines

        sys.stdout.flush()
        stream = cast(TextIO, WholeLines(sys.stdout.fileno()))  # a TextIOBase, as TextIO wants
    configure_logging(config.log, stream)
    if warn and config.warnings:
        import structlog

        log = structlog.get_logger("nodeproxy.config")
        for warning in config.warnings:
            log.warning("config_field_ignored", detail=warning, file=config.source_path)
    return None


def serve(config: Config, link: WorkerLink | None = None) -> int:
    if (problem := start_logging(config, warn=link is None, fleet=link is not None)) is not None:
        print(f"nodeproxy: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    from nodeproxy.app import run_app

    code = 0
    try:
        trio.run(partial(run_app, config, link=link))
    except* ConfigError as errors:  # e.g. the kubeconfig: read only when discovery is built
        for error in errors.exceptions:
            print(f"nodeproxy: config error: {error}", file=sys.stderr)
        code = EXIT_CONFIG
    except* HandoffError as refusals:  # refused: a handoff already running, another version
        for refusal in refusals.exceptions:
            print(f"nodeproxy: cannot start: {refusal}", file=sys.stderr)
        code = 1
    except* OSError as group:  # e.g. address in use: say so plainly, no traceback
        # A worker binds nothing: what fails there is its output (the supervisor is gone).
        what = "cannot start" if link is None else f"worker {link.index} stopped"
        for exc in _leaves(group):  # a listener's bind fails inside nested nurseries
            print(f"nodeproxy: {what}: {exc}", file=sys.stderr)
        code = 1
    return code
