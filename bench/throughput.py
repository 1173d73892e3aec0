"""Throughput of nodeproxy against nginx as a reverse proxy, on the same work, in one run.

Why this shape: a proxy's cost is what it adds on top of the upstream, so the upstream must never
be the bottleneck. It is nginx answering a fixed 200 from memory (`return 200`), not the Python
greeter. wrk (keep-alive, `--latency`) measures the targets one after another: the upstream
directly, nginx as a reverse proxy (upstream keep-alive, one worker), a bare trio + h11 relay
(bench/bare_relay.py: the calibration peer, the floor for a Python proxy on this machine) on each
HTTP/1.1 codec, and nodeproxy on each codec (access log on, as it ships). The codec is
NODEPROXY_CODEC in each server's environment: `h11` (the reference) or `h11-mypyc` (the compiled
build of the `fast` extra, what users run). The proxy under test is pinned to one core (default
1) and is the only thing on it; wrk and the upstream share the other core (default 0). The
proxy's CPU comes from /proc (utime + stime of its process group) before and after the measured
run, divided by the requests wrk completed.

Loopback only, bounded in time (default run about 80 s), installs nothing, and every process it
starts is killed (process groups, try/finally) even on Ctrl-C or SIGTERM.
    .venv/bin/python bench/throughput.py [--duration 10] [--connections 16] [--targets ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import signal
import string
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from harness import (
    Processes,
    Result,
    cpu_seconds,
    free_port,
    median_results,
    parse_wrk,
    pinned,
    relative,
    run_wrk,
    wait_http_ok,
)
from procstats import ReceiveCalls, pids_of
from targets import (
    BENCH,
    CODECS,
    COMPILED_CODECS,
    COMPILED_PYTHON,
    FAST,
    TARGET_PATH,
    TARGETS,
)
from throughput_report import ratios, report

from nodeproxy.config.model import CODEC_ENV
from nodeproxy.demo.config import DEMO_SERVICE, demo_config_text

INSTALL_HINT = "sudo apt-get install -y wrk nginx-light"
ACCESS_EVENT = '"event":"access"'  # in each JSON access line nodeproxy writes to its log


def run_wrk_at(args: argparse.Namespace, port: int, seconds: float) -> tuple[list[str], str]:
    url = f"http://127.0.0.1:{port}{TARGET_PATH}"
    return run_wrk(
        args.load_cpu, args.threads, args.connections, url, DEMO_SERVICE, seconds, args.pace
    )


def measure(args: argparse.Namespace, name: str, port: int, pgid: int, cpu_of: str) -> Result:
    result = Result(target=name, cpu_of=cpu_of)
    if args.warmup > 0:
        run_wrk_at(args, port, args.warmup)
    # counted for every target, so the tracepoint's small cost is paid by each alike
    counting = ReceiveCalls(pids_of({pgid}))
    before = cpu_seconds(pgid)
    argv, out = run_wrk_at(args, port, args.duration)
    used = cpu_seconds(pgid) - before
    reads = counting.stop()
    result.wrk_command = shlex.join(argv)
    parse_wrk(out, result)
    if result.requests:
        result.cpu_us_per_req = used * 1e6 / result.requests
        if reads is not None and name.startswith("nodeproxy"):  # procstats.ReceiveCalls
            per = reads / result.requests
            result.note = f"{name}: {per:.2f} receive calls per request (the floor is 2)"
    return result


def render(template: str, out: Path, **values: object) -> Path:
    text = string.Template((BENCH / f"{template}.conf.tmpl").read_text())
    path = out / f"{template}.conf"
    path.write_text(text.substitute(out=out, **values))
    return path


def nginx_argv(conf: Path, out: Path, cpu: int) -> list[str]:
    err = out / f"{conf.stem}.startup.log"
    return pinned(cpu, "nginx", "-e", str(err), "-p", str(out), "-c", str(conf))


def with_codec(codec: str, argv: list[str]) -> list[str]:
    """argv run with NODEPROXY_CODEC set (printed as is, so the command reproduces the run)."""
    return ["env", f"{CODEC_ENV}={codec}", *argv]


def nodeproxy_config(path: Path, up_port: int, port: int, access_log: bool) -> Path:
    """The demo's config: service bdgreeter -> the upstream, listening on ``port``."""
    text = demo_config_text(
        [up_port],
        port,
        free_port(),
        log_level="info" if access_log else "warning",
        access_log=access_log,
        drain_timeout="1s",
    )
    path.write_text(text)
    return path


def bench_proxy(
    args: argparse.Namespace, procs: Processes, name: str, argv: list[str], port: int
) -> Result:
    proc = procs.start(name, argv)
    try:
        wait_http_ok(port, proc, TARGET_PATH, DEMO_SERVICE)
        result = measure(args, name, port, proc.pid, f"{name} (core {args.proxy_cpu})")
    except (RuntimeError, ValueError, subprocess.SubprocessError) as exc:
        result = Result(target=name, error=f"{exc}\n{procs.log_tail(name)}")
    finally:
        procs.stop(name)
    result.server_command = shlex.join(argv)
    return result


def access_lines(out: Path, name: str) -> int:
    """JSON access lines in a stopped nodeproxy's log (it flushes its buffer when it drains)."""
    with (out / f"{name}.log").open(errors="replace") as log:
        return sum(ACCESS_EVENT in line for line in log)


def run_all(args: argparse.Namespace, procs: Processes) -> tuple[list[str], list[list[Result]]]:
    """Start the upstream, then measure each target in turn, ``--rounds`` times over;
    returns (upstream argv, each round's results)."""
    out: Path = args.out
    (out / "tmp").mkdir(parents=True, exist_ok=True)
    up_port = free_port()
    up_argv = nginx_argv(render("nginx-upstream", out, port=up_port), out, args.upstream_cpu)
    upstream = procs.start("upstream", up_argv)
    wait_http_ok(up_port, upstream, TARGET_PATH, DEMO_SERVICE)
    rounds = [measure_round(args, procs, up_port, upstream.pid) for _ in range(args.rounds)]
    return up_argv, rounds


def measure_round(
    args: argparse.Namespace, procs: Processes, up_port: int, upstream_pid: int
) -> list[Result]:
    """Every selected target once, in the order of TARGETS."""
    out: Path = args.out
    results: list[Result] = []
    if "direct" in args.targets:
        direct = measure(args, "direct", up_port, upstream_pid, "upstream nginx")
        results.append(direct)
    if "nginx" in args.targets:
        port = free_port()
        conf = render("nginx-proxy", out, port=port, upstream_port=up_port)
        results.append(
            bench_proxy(args, procs, "nginx", nginx_argv(conf, out, args.proxy_cpu), port)
        )
    for codec in CODECS:
        if (name := f"bare-{codec}") in args.targets:
            port = free_port()
            relay = str(BENCH / "bare_relay.py")
            argv = pinned(args.proxy_cpu, sys.executable, relay, str(port), str(up_port))
            results.append(bench_proxy(args, procs, name, with_codec(codec, argv), port))
    for codec in CODECS:
        if (name := f"nodeproxy-{codec}") in args.targets:
            results.append(bench_nodeproxy(args, procs, name, codec, up_port))
    for name, codec in COMPILED_CODECS.items():
        if name in args.targets:
            results.append(bench_nodeproxy(args, procs, name, codec, up_port))
    return results


def bench_nodeproxy(
    args: argparse.Namespace, procs: Processes, name: str, codec: str, up_port: int
) -> Result:
    """nodeproxy on one codec, its config written to <out>/<name>.yaml."""
    port = free_port()
    config = nodeproxy_config(args.out / f"{name}.yaml", up_port, port, args.access_log)
    argv = pinned(args.proxy_cpu, args.nodeproxy, "run", "--config", str(config))
    if name in COMPILED_CODECS:  # the compiled wheel's venv (-m from /: nothing else on sys.path)
        run = ["-m", "nodeproxy", "run", "--config", str(config.resolve())]
        argv = pinned(args.proxy_cpu, str(COMPILED_PYTHON), *run)
        argv = ["env", "-C", "/", "-u", "PYTHONPATH", *argv]
    result = bench_proxy(args, procs, name, with_codec(codec, argv), port)
    if result.error is None and args.access_log:
        lines = access_lines(args.out, name)
        note = f"{name}: {lines:,} JSON access lines in {args.out / name}.log"
        if lines < result.requests:  # the log also holds the warm-up's lines
            note = f"WARNING {note}, fewer than the {result.requests:,} requests"
        result.note = f"{result.note}; {note}" if result.note else note
    return result


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per target")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured warm-up")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--pace",
        type=int,
        default=0,
        metavar="MS",
        help="each connection waits MS ms between requests: CPU per request at an equal rate",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every target N times, in turn; report each target's medians",
    )
    p.add_argument(
        "--targets",
        default=",".join(TARGETS),
        type=lambda s: s.split(","),
        help=f"comma-separated, measured in this order: {','.join(TARGETS)}",
    )
    p.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="nodeproxy writes its JSON access line per request (to <out>/nodeproxy-*.log)",
    )
    p.add_argument("--load-cpu", type=int, default=0, help="core for wrk")
    p.add_argument("--upstream-cpu", type=int, default=0, help="core for the upstream nginx")
    p.add_argument("--proxy-cpu", type=int, default=1, help="core for the proxy under test")
    default_bin = Path(sys.executable).parent / "nodeproxy"
    p.add_argument("--nodeproxy", default=str(default_bin) if default_bin.exists() else "nodeproxy")
    p.add_argument("--out", type=Path, default=BENCH / "out")
    return p.parse_args(argv)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT/SIGTERM unwind through the finally that stops every child (even when started in
    the background, where a shell would have left SIGINT ignored)."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the table and writes <out>/throughput.json."""
    args = _parse_args(argv)
    if args.rounds < 1:
        print("--rounds must be at least 1", file=sys.stderr)
        return 2
    if unknown := set(args.targets) - set(TARGETS):
        print(f"unknown targets {sorted(unknown)}; choose from {TARGETS}", file=sys.stderr)
        return 2
    args.out = args.out.resolve()
    missing = [tool for tool in ("wrk", "nginx", "taskset") if shutil.which(tool) is None]
    if missing:
        print(f"missing: {', '.join(missing)}; install with:\n    {INSTALL_HINT}", file=sys.stderr)
        return 2
    if any(t.endswith(FAST) for t in args.targets) and not importlib.util.find_spec("h11_mypyc"):
        print(
            f"{FAST} is not installed: .venv/bin/pip install -e '.[fast]'"
            " (or leave its targets out with --targets)",
            file=sys.stderr,
        )
        return 2
    compiled = [t for t in COMPILED_CODECS if t in args.targets]
    if compiled and not COMPILED_PYTHON.is_file():
        print(f"{compiled[0]}: no {relative(str(COMPILED_PYTHON))}; build it with: make compiled"
              " (or leave it out with --targets)", file=sys.stderr)  # fmt: skip
        return 2
    cores = os.sched_getaffinity(0)
    if not {args.load_cpu, args.proxy_cpu, args.upstream_cpu} <= cores:
        print(f"cores {sorted(cores)} available; pick others with --*-cpu", file=sys.stderr)
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    procs = Processes(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    interrupted = ""
    try:
        upstream, rounds = run_all(args, procs)
        results = median_results(rounds)
    except KeyboardInterrupt as exc:
        interrupted = str(exc) or "SIGINT"
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up
        procs.stop_all()
    if interrupted:
        print(f"interrupted by {interrupted}; stopped every process started", file=sys.stderr)
        return 130
    print(report(args, upstream, results))
    print(f"\n1-minute load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    doc = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "cpus": os.cpu_count(),
        "loadavg_1m_after": os.getloadavg()[0],
        "results": [asdict(r) for r in results],
        "rounds": [[asdict(r) for r in each] for each in rounds],
        "ratios": ratios(results),
    }
    (args.out / "throughput.json").write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
