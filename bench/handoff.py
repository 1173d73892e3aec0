"""What a hitless handoff costs the clients: failures, retries, and the latency bump.

Runs ``nodeproxy run --handoff-socket`` (``--workers 1`` unless told), puts steady load on
it (keep-alive clients and new-connection clients, the ones tests/test_handoff.py uses:
a keep-alive client retries once only when a reused connection closed before any response
byte), and replaces the running process ``--handoffs`` times in a row, each by a new
``nodeproxy run`` with the same path. For each handoff it reports how long the switch took
(new process started -> old process exited 0), and over the whole run: requests answered,
requests failed, retries, and request latency (p50/p99/max) in the quiet periods against
the windows around each switch (new process started -> old process exited, + 0.5 s).
``--mode restart`` does what a restart does without a handoff (SIGTERM, wait for the exit,
start the next process on the same ports), for comparison.

The upstream is the tests' trio backend on loopback, and the load runs in this process, so
everything shares the machine's cores: read failures and retries as exact, latencies as
relative (switch vs quiet), not as capacity. Bounded: ``--handoffs`` switches, each after
``--settle`` seconds of load, and every client stops after ``--max-requests``.

    .venv/bin/python bench/handoff.py [--handoffs 5] [--settle 1.0] [--keepalive 4] [--fresh 4]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' helpers

from tests.helpers.backends import backend, free_port
from tests.helpers.load import LoadResult, steady_load
from tests.helpers.proc import running_nodeproxy

HOST = "svc.default"


def _config(tmp: Path, upstream_port: int, port: int, admin_port: int) -> str:
    path = tmp / "nodeproxy.yaml"
    path.write_text(
        f"listeners: [{{name: outbound, address: '127.0.0.1:{port}'}}]\n"
        f"admin: {{address: '127.0.0.1:{admin_port}'}}\n"
        "log: {access_log: false}\n"
        f"services:\n  - name: svc\n    endpoints: ['127.0.0.1:{upstream_port}']\n"
    )
    return str(path)


def _quantiles(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    cuts = [c * 1000 for c in statistics.quantiles(values, n=100)]
    return f"p50 {cuts[49]:.1f} ms, p99 {cuts[98]:.1f} ms, max {max(values) * 1000:.1f} ms"


async def _run(args: argparse.Namespace) -> int:
    windows: list[tuple[float, float]] = []
    switch_seconds: list[float] = []
    codes: list[int] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        handoff = str(tmp / "handoff.sock")
        async with backend() as upstream, AsyncExitStack() as processes:
            config = _config(tmp, upstream.port, free_port(), free_port())
            run: tuple[str, ...] = ("run", "--config", config, "--log-format", "json")
            run += ("--workers", str(args.workers))
            if args.mode == "handoff":
                run += ("--handoff-socket", handoff)
            current = await processes.enter_async_context(running_nodeproxy(*run))
            port = current.listener_ports["outbound"]
            async with steady_load(
                port, HOST, keepalive=args.keepalive, fresh=args.fresh,
                max_requests=args.max_requests,
            ) as load:  # fmt: skip
                for _ in range(args.handoffs):
                    await trio.sleep(args.settle)
                    began = trio.current_time()
                    if args.mode == "restart":  # today's restart: stop, then start again
                        current.signal()
                        codes.append(await current.wait_exit())
                    successor = await processes.enter_async_context(running_nodeproxy(*run))
                    if args.mode == "handoff":
                        codes.append(await current.wait_exit())
                    ended = trio.current_time()
                    switch_seconds.append(ended - began)
                    windows.append((began, ended + 0.5))
                    current = successor
                await trio.sleep(args.settle)
                await load.finish()
            current.signal()
            await current.wait_exit()
    _report(load, windows, switch_seconds, codes)
    return 0 if not load.failures and all(c == 0 for c in codes) else 1


def _report(
    load: LoadResult,
    windows: list[tuple[float, float]],
    switch_seconds: list[float],
    codes: list[int],
) -> None:
    def in_switch(at: float) -> bool:
        return any(a <= at <= b for a, b in windows)

    switching = [d for at, d in load.latencies if in_switch(at)]
    quiet = [d for at, d in load.latencies if not in_switch(at)]
    print(f"handoffs: {len(switch_seconds)}, exit codes of the replaced processes: {codes}")
    print(
        "switch (handoff: new started -> old exited; restart: SIGTERM -> new serving): "
        + ", ".join(f"{s:.2f} s" for s in switch_seconds)
    )
    print(f"requests answered: {load.ok}, failed: {len(load.failures)}, retried: {load.retried}")
    done = sorted(at for at, _ in load.latencies)
    gap = max((b - a for a, b in itertools.pairwise(done)), default=0.0)
    print(f"longest time with no request answered: {gap * 1000:.0f} ms")
    for failure in load.failures[:3]:
        print(f"  failed: {failure}")
    print(f"latency, quiet:     {_quantiles(quiet)} ({len(quiet)} requests)")
    print(f"latency, switching: {_quantiles(switching)} ({len(switching)} requests)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--mode",
        choices=["handoff", "restart"],
        default="handoff",
        help="handoff: a new process takes the sockets over; restart: SIGTERM, then start "
        "a new one (what a restart costs without a handoff, for comparison)",
    )
    parser.add_argument("--handoffs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1, help="nodeproxy run --workers")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds of load between")
    parser.add_argument("--keepalive", type=int, default=4)
    parser.add_argument("--fresh", type=int, default=4)
    parser.add_argument("--max-requests", type=int, default=20000, help="per client")
    return trio.run(_run, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
