"""Throughput of 1 worker against 2 on this machine, and how evenly 2 workers share connections.

Why this shape: ``--workers N`` exists so a node's proxy can use more than one core, so the
question is how close 2 workers come to twice what 1 does (scaling efficiency = rps with 2 /
(2 x rps with 1)) and what each worker costs in memory. The upstream is nginx answering a fixed
200 from memory, as in bench/throughput.py, and wrk is the load (keep-alive, one thread).

Placement, and what it costs: the machine this was written on has 2 cores. With 1 worker the
proxy has core 1 to itself and wrk + nginx share core 0. With 2 workers there is no free core
left: the workers run on cores 0 and 1 and wrk + nginx still run on core 0, so one worker shares
its core with the load generator and the upstream. The report prints how much CPU wrk + nginx
(+ anything else on the machine) used during each run, so the cost is visible, and the proxy's
CPU per request, which is what extrapolates to a machine with free cores.

The spread part runs 2 workers twice, once on one inherited listening socket (the default) and
once on one SO_REUSEPORT socket per worker (``NODEPROXY_WORKER_SOCKETS=reuseport``), with
new-connection load (``Connection: close``: every request is a new connection) and keep-alive
load, and reads each worker's accepted connections and requests from the supervisor's admin.

Bounded (each wrk run is ``--duration`` seconds), loopback only, every process started is
stopped (process groups), and the machine may be shared: read the ratios, not the absolutes.
    .venv/bin/python bench/workers.py [--duration 8] [--connections 32]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from harness import (
    Processes,
    Result,
    cpu_seconds,
    free_port,
    parse_wrk,
    pinned,
    relative,
    wait_http_ok,
)
from targets import TARGET_PATH
from throughput import nginx_argv, render

from nodeproxy.demo.config import DEMO_SERVICE, demo_config_text

BENCH = Path(__file__).resolve().parent


def busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wrk(args: argparse.Namespace, port: int, seconds: float, close: bool) -> tuple[list[str], str]:
    argv = pinned(args.load_cpu, "wrk", "-t1", f"-c{args.connections}", f"-d{seconds:g}s")
    argv += ["--latency", "-H", f"Host: {DEMO_SERVICE}"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://127.0.0.1:{port}{TARGET_PATH}")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True)
    return argv, done.stdout


def scrape(admin: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats/prometheus", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def per_worker(samples: dict[str, float], metric: str) -> list[float]:
    found = sorted(
        (int(m.group(1)), v)
        for k, v in samples.items()
        if (m := re.fullmatch(re.escape(metric) + r'\{worker="(\d+)"\}', k))
    )
    return [v for _, v in found]


def start_proxy(
    args: argparse.Namespace, procs: Processes, name: str, workers: int, up_port: int,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], int, int, list[str]]:  # fmt: skip
    port, admin = free_port(), free_port()
    config = args.out / f"{name}.yaml"
    text = demo_config_text(
        [up_port], port, admin, log_level="warning", access_log=False, drain_timeout="1s"
    )
    config.write_text(text)
    cores = "1" if workers == 1 else args.worker_cpus
    argv = ["taskset", "-c", cores, args.nodeproxy, "run", "--config", str(config)]
    argv += ["--workers", str(workers)]
    os.environ.pop("NODEPROXY_WORKER_SOCKETS", None)
    os.environ.update(env or {})
    proc = procs.start(name, argv)
    wait_http_ok(port, proc, TARGET_PATH, DEMO_SERVICE, timeout=30)
    return proc, port, admin, argv


def throughput(args: argparse.Namespace, procs: Processes, workers: int, up: int) -> dict[str, Any]:
    name = f"workers-{workers}"
    proc, port, admin, argv = start_proxy(args, procs, name, workers, up)
    try:
        wrk(args, port, args.warmup, close=False)
        proxy0, busy0 = cpu_seconds(proc.pid), busy_seconds()
        wrk_argv, out = wrk(args, port, args.duration, close=False)
        proxy_cpu, busy = cpu_seconds(proc.pid) - proxy0, busy_seconds() - busy0
        result = Result(target=name)
        parse_wrk(out, result)
        samples = scrape(admin)
    finally:
        procs.stop(name)
    rss = per_worker(samples, "nodeproxy_worker_resident_memory_bytes") or [
        samples["nodeproxy_process_resident_memory_bytes"]
    ]
    return {
        "workers": workers,
        "rps": result.rps,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "errors": result.non_2xx + result.socket_errors,
        "proxy_cpu_us_per_req": proxy_cpu * 1e6 / max(result.requests, 1),
        "proxy_cores_used": proxy_cpu / args.duration,
        "others_cores_used": (busy - proxy_cpu) / args.duration,  # wrk, nginx, anyone else
        "worker_rss_mib": [round(v / 2**20, 1) for v in rss],
        "supervisor_rss_mib": round(samples["nodeproxy_process_resident_memory_bytes"] / 2**20, 1)
        if workers > 1
        else None,
        "requests_per_worker": per_worker(samples, "nodeproxy_worker_requests_total"),
        "command": shlex.join(argv),
        "wrk": shlex.join(wrk_argv),
    }


def spread(args: argparse.Namespace, procs: Processes, mode: str, up: int) -> dict[str, Any]:
    name = f"spread-{mode}"
    env = {"NODEPROXY_WORKER_SOCKETS": "reuseport"} if mode == "reuseport" else {}
    proc, port, admin, _ = start_proxy(args, procs, name, 2, up, env)
    try:
        before = scrape(admin)
        cpu0 = cpu_seconds(proc.pid)
        _, out = wrk(args, port, args.spread_duration, close=True)
        cpu = cpu_seconds(proc.pid) - cpu0
        middle = scrape(admin)
        wrk(args, port, args.spread_duration, close=False)
        after = scrape(admin)
    finally:
        procs.stop(name)
    metric = "nodeproxy_worker_connections_total"

    def delta(a: dict[str, float], b: dict[str, float], m: str) -> list[float]:
        return [y - x for x, y in zip(per_worker(a, m), per_worker(b, m), strict=True)]

    result = Result(target=name)
    parse_wrk(out, result)
    return {
        "mode": mode,
        "new_connection_rps": result.rps,
        "proxy_cpu_us_per_new_connection": cpu * 1e6 / max(result.requests, 1),
        "new_connections_per_worker": delta(before, middle, metric),
        "keepalive_connections_per_worker": delta(middle, after, metric),
        "keepalive_requests_per_worker": delta(middle, after, "nodeproxy_worker_requests_total"),
    }


def share(values: list[float]) -> str:
    total = sum(values) or 1
    return " / ".join(f"{v:,.0f} ({100 * v / total:.0f} %)" for v in values)


def report(
    args: argparse.Namespace, runs: list[dict[str, Any]], spreads: list[dict[str, Any]]
) -> str:
    one, two = runs
    efficiency = two["rps"] / (2 * one["rps"]) if one["rps"] else 0.0
    lines = [
        f"wrk -t1 -c{args.connections} -d{args.duration:g}s keep-alive on core {args.load_cpu}"
        f" (with nginx, the upstream); 1 worker on core 1; 2 workers on cores {args.worker_cpus}",
        "",
        "| workers | req/s | p50 ms | p99 ms | proxy CPU µs/req | proxy cores | wrk+nginx+other"
        " cores | RSS per worker MiB | supervisor RSS MiB | requests per worker |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['workers']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f}"
            f" | {r['proxy_cpu_us_per_req']:.0f} | {r['proxy_cores_used']:.2f}"
            f" | {r['others_cores_used']:.2f} | {', '.join(map(str, r['worker_rss_mib']))}"
            f" | {r['supervisor_rss_mib'] or '-'} | {share(r['requests_per_worker'])} |"
        )
    per_core = one["proxy_cpu_us_per_req"] / two["proxy_cpu_us_per_req"]
    lines += [
        "",
        f"- scaling efficiency (2 workers / 2 x 1 worker), measured: {efficiency:.2f}",
        f"- cores the proxy got: {one['proxy_cores_used']:.2f} (1 worker),"
        f" {two['proxy_cores_used']:.2f} (2 workers); wrk + nginx + the rest of the machine:"
        f" {one['others_cores_used']:.2f} and {two['others_cores_used']:.2f} of {os.cpu_count()}",
        f"- CPU per request, 1 worker / 2 workers: {per_core:.2f} (the work a second worker"
        " adds per request: supervisor, shared caches, context switches)",
        f"- extrapolation, NOT measured: with a free core per worker, 2 workers would reach about"
        f" {2 * per_core:.2f} x one worker's throughput",
    ]
    lines += [f"- errors: {[r['errors'] for r in runs]}", "", "Spread over 2 workers:", ""]
    lines += [
        "| sockets | new connections per worker | req/s, new connection each | proxy CPU µs"
        " per connection | keep-alive connections | keep-alive requests |"
    ]
    lines += ["|---|---|---:|---:|---|---|"]
    for s in spreads:
        lines.append(
            f"| {s['mode']} | {share(s['new_connections_per_worker'])}"
            f" | {s['new_connection_rps']:,.0f} | {s['proxy_cpu_us_per_new_connection']:.0f}"
            f" | {share(s['keepalive_connections_per_worker'])}"
            f" | {share(s['keepalive_requests_per_worker'])} |"
        )
    lines += ["", "Reproduce:"] + [f"    {r['command']}\n    {r['wrk']}" for r in runs]
    return relative("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--spread-duration", type=float, default=3.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--load-cpu", type=int, default=0, help="core for wrk and nginx")
    p.add_argument("--worker-cpus", default="0,1", help="cores for the 2 workers")
    default_bin = Path(sys.executable).parent / "nodeproxy"
    p.add_argument("--nodeproxy", default=str(default_bin) if default_bin.exists() else "nodeproxy")
    p.add_argument("--out", type=Path, default=BENCH / "out")
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    (args.out / "tmp").mkdir(parents=True, exist_ok=True)
    procs = Processes(args.out)
    try:
        up = free_port()
        upstream = procs.start("upstream", nginx_argv(render("nginx-upstream", args.out, port=up),
                                                      args.out, args.load_cpu))  # fmt: skip
        wait_http_ok(up, upstream, TARGET_PATH, DEMO_SERVICE)
        runs = [throughput(args, procs, n, up) for n in (1, 2)]
        spreads = [spread(args, procs, mode, up) for mode in ("inherited", "reuseport")]
    finally:
        procs.stop_all()
    print(report(args, runs, spreads))
    print(f"\n1-minute load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    doc = {"runs": runs, "spread": spreads, "loadavg_1m_after": os.getloadavg()[0]}
    (args.out / "workers.json").write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
