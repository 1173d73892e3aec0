"""`nodeproxy demo`: greeter replicas, the proxy and its admin in one process, one nursery.

Why one process: `make demo` must work on a fresh machine with nothing else running, and one
Ctrl-C must stop everything. The greeters start first on free loopback ports, then the built-in
config (`demo_config_text`, the same YAML a user would write) goes through the real loader and
`run_app`. Ctrl-C is the proxy's drain signal; when `run_app` returns, the greeters are cancelled.
"""

from __future__ import annotations

import string
import sys
from functools import partial

import trio

from nodeproxy.app import AppHandle, run_app
from nodeproxy.config import load_config_text
from nodeproxy.config.model import Config
from nodeproxy.demo.config import demo_banner, demo_config_text
from nodeproxy.demo.greeter import serve_greeter
from nodeproxy.errors import ConfigError

MAX_REPLICAS = len(string.ascii_lowercase)


def replica_names(count: int) -> list[str]:
    """Replica names a, b, c... (shown in the x-greeter-replica header)."""
    if not 1 <= count <= MAX_REPLICAS:
        raise ValueError(f"replicas must be between 1 and {MAX_REPLICAS}, got {count}")
    return list(string.ascii_lowercase[:count])


async def _proxy_then_stop(
    config: Config,
    handle_signals: bool,
    everything: trio.CancelScope,
    task_status: trio.TaskStatus[AppHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        await run_app(config, handle_signals=handle_signals, task_status=task_status)
    finally:
        everything.cancel()  # the proxy has drained and stopped: the greeters go too


async def demo_main(
    proxy_port: int = 4140,
    admin_port: int = 9901,
    replicas: int = 2,
    *,
    handle_signals: bool = True,
    announce: bool = True,
    task_status: trio.TaskStatus[AppHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the demo until the proxy drains (Ctrl-C, SIGTERM or `POST /drain`).

    Reports the proxy's `AppHandle` (bound ports) through `task_status` once it serves.
    """
    names = replica_names(replicas)
    async with trio.open_nursery() as nursery:
        ports: list[int] = [
            await nursery.start(partial(serve_greeter, "127.0.0.1", 0, name)) for name in names
        ]
        text = demo_config_text(ports, proxy_port, admin_port)
        config = load_config_text(text, source="<nodeproxy demo>")
        if announce:
            from nodeproxy.logs import configure_logging

            configure_logging(config.log)
        handle: AppHandle = await nursery.start(
            _proxy_then_stop, config, handle_signals, nursery.cancel_scope
        )
        if announce:
            banner = demo_banner(
                handle.listener_ports.get("outbound", proxy_port),
                handle.admin_port,
                greeter_ports=ports,
            )
            print(banner, flush=True)
        task_status.started(handle)


def _leaves(group: BaseExceptionGroup[Exception]) -> list[BaseException]:
    """The exceptions inside a (nested) group, for one plain line each."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def run_demo(proxy_port: int = 4140, admin_port: int = 9901, replicas: int = 2) -> int:
    """Entry point for `nodeproxy demo`; returns the process exit status."""
    try:
        replica_names(replicas)
    except ValueError as exc:
        print(f"nodeproxy demo: {exc}", file=sys.stderr)
        return 2
    code = 0
    try:
        trio.run(demo_main, proxy_port, admin_port, replicas)
    except* KeyboardInterrupt:  # Ctrl-C before the proxy's signal watcher was up
        code = 0
    except* ConfigError as group:  # a bug in the built-in config: say which field
        for config_error in _leaves(group):
            print(f"nodeproxy demo: built-in config rejected: {config_error}", file=sys.stderr)
        code = 1
    except* OSError as os_group:  # e.g. port 4140 or 9901 already in use
        for os_error in _leaves(os_group):
            print(f"nodeproxy demo: cannot start: {os_error}", file=sys.stderr)
        print("  (choose other ports: nodeproxy demo --port P --admin-port Q)", file=sys.stderr)
        code = 1
    return code
