"""Per-node against per-pod (sidecar) nodeproxy, and against peer proxies, on one machine.

Why: the design claims one proxy per node costs far less than a sidecar per pod and adds no
latency. This measures both modes of the same binary on the same simulated cluster and the same
load (bench/topology.py: 2 nodes on loopback, P pods per node, services with replicas on both
nodes, every pod an app answering 1 KB and a client POSTing 1 KB), in Istio's units: vCPU per
1000 rps and MB of memory of all proxies, latency added over no mesh (p50/p90/p99), proxies, TLS
connections between proxies, certificates issued. Peers do the same work as plain per-node
reverse proxies (no TLS): nginx, haproxy, proxy.py, and nodeproxy without a mesh.

Placement (2 cores): the apps (one nginx) and the load generator (bench/loadgen.py, fixed rate,
each client bound to its pod address) on core 0, every proxy on core 1 once started (they start
on both cores). Proxy CPU is utime + stime of every proxy process from /proc over the measured
window. Everything is bounded in time and every process runs in its own process group, stopped
on exit, on error, on Ctrl-C and on SIGTERM.

    .venv/bin/python bench/pernode_vs_perpod.py [--pods 10,30] [--rate 250] [--duration 12]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType

import procstats
import report
import topology as topo
from harness import Processes
from modes import MODES, ModeRun, Row, ensure_bench_venv, start_mode, wait_ok

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def run_load(args: argparse.Namespace, procs: Processes, run: ModeRun, spec: Path) -> Row:
    """One measured run of the load generator; samples /proc at the window's edges."""
    row = Row(
        mode=run.mode,
        pods_per_node=run.cluster.pods_per_node,
        placement=run.cluster.placement,
        proxies=len(run.pgids),
    )
    row.start_s = run.start_s
    argv = ["taskset", "-c", str(args.load_cpu), sys.executable, str(BENCH / "loadgen.py")]
    argv.append(str(spec))
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True) as load:
        procs.running["loadgen"] = load  # type: ignore[assignment]  # stopped like the others
        assert load.stdout is not None
        cpu0 = 0.0
        for line in load.stdout:
            if line.startswith("measure-start"):
                cpu0 = procstats.cpu_seconds(run.pgids)
            elif line.startswith("measure-end"):
                row.cpu_s = procstats.cpu_seconds(run.pgids) - cpu0
                mem = procstats.memory(run.pgids)
                row.rss_mb, row.pss_mb = mem.rss / 2**20, mem.pss / 2**20
                row.tls_connections = procstats.established_to(run.tls_remotes)
            elif line.startswith("{"):
                result = json.loads(line)
        load.wait(timeout=30)
        procs.running.pop("loadgen", None)
    row.load = result
    row.certificates = sum(
        (args.out / f"{name}.log").read_text(errors="replace").count("certificate_issued")
        for name in run.names
        if run.counts_certs
    )
    return row


def measure_size(
    args: argparse.Namespace, procs: Processes, pods: int, placement: str, modes: list[str]
) -> list[Row]:
    cluster = topo.Cluster(pods, placement)
    out: Path = args.out
    (out / "apps.conf").write_text(topo.app_nginx_config(cluster, out))
    apps = ["taskset", "-c", str(args.load_cpu), "nginx", "-e", str(out / "apps.startup.log")]
    apps += ["-p", str(out), "-c", str(out / "apps.conf")]
    args.commands.append(" ".join(apps))
    proc = procs.start("apps", apps)
    for p in cluster.pods:
        wait_ok(p.ip, topo.APP_PORT, "/", proc, f"{p.service}.{topo.NS}")
    rows = []
    try:
        for mode in modes:
            run = start_mode(args, procs, cluster, mode)
            if run.skipped:
                print(f"P={pods} {placement} {mode}: skipped ({run.skipped})", flush=True)
                rows.append(Row(mode, pods, placement, skipped=run.skipped))
                continue
            try:
                procstats.pin(run.pgids, args.proxy_cpu)
                spec = out / f"load-{placement}-{mode}-{pods}.json"
                spec.write_text(json.dumps(run.load_spec(args)))
                row = run_load(args, procs, run, spec)
            finally:
                for name in run.names:
                    procs.stop(name)
            rows.append(row)
            print(report.progress(row), flush=True)
    finally:
        procs.stop("apps")
    return rows


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--pods", default="10,30", help="pods per node, comma separated (max 200)")
    p.add_argument("--rate", type=float, default=250.0, help="requests/s, all clients together")
    p.add_argument("--duration", type=float, default=12.0, help="seconds measured per mode")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of unmeasured load first")
    p.add_argument("--connections-per-client", type=int, default=2)
    p.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    p.add_argument(
        "--remote-modes",
        default="none,per-node,per-pod",
        help="modes also run with every request crossing nodes ('' for none)",
    )
    p.add_argument("--load-cpu", type=int, default=0, help="core of the apps and the load")
    p.add_argument("--proxy-cpu", type=int, default=1, help="core of every proxy")
    p.add_argument("--no-install", action="store_true", help="never create the bench venv")
    p.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    default_bin = Path(sys.executable).parent / "nodeproxy"
    p.add_argument("--nodeproxy", default=str(default_bin) if default_bin.exists() else "nodeproxy")
    p.add_argument("--out", type=Path, default=BENCH / "out" / "pernode")
    p.add_argument("--venv", type=Path, default=BENCH / "out" / "venv")
    args = p.parse_args(argv)
    args.pod_counts = [int(x) for x in args.pods.split(",") if x]
    args.modes = [m for m in args.modes.split(",") if m]
    args.remote_modes = [m for m in args.remote_modes.split(",") if m]
    if unknown := set(args.modes + args.remote_modes) - set(MODES):
        p.error(f"unknown modes {sorted(unknown)}")
    if not args.pod_counts or not all(2 <= n <= 200 for n in args.pod_counts):
        p.error("--pods: 2..200 per node (addresses 127.0.n.10 .. 127.0.n.209)")
    return args


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT/SIGTERM unwind through the finally that stops every child."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    """Run every size and mode; print and write the tables, JSON, plots and docs."""
    args = _parse_args(argv)
    args.out = args.out.resolve()
    args.commands = [" ".join([sys.executable, *sys.argv])]
    missing = [t for t in ("nginx", "taskset", args.nodeproxy) if shutil.which(t) is None]
    if missing:
        print(
            f"missing: {', '.join(missing)}; install with:\n    sudo apt-get install -y nginx"
            " util-linux",
            file=sys.stderr,
        )
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    shutil.rmtree(args.out, ignore_errors=True)
    (args.out / "tmp").mkdir(parents=True)
    subprocess.run(
        [args.nodeproxy, "ca", "init", "--dir", str(args.out / "ca")],
        check=True,
        capture_output=True,
        timeout=30,
    )
    args.commands.append(f"{args.nodeproxy} ca init --dir {args.out / 'ca'}")
    args.bench_python, args.venv_note = ensure_bench_venv(args)
    print(args.venv_note, flush=True)
    machine = report.machine(args)
    print(machine, flush=True)
    procs = Processes(args.out)
    rows: list[Row] = []
    started = time.monotonic()
    try:
        for pods in args.pod_counts:
            rows += measure_size(args, procs, pods, "spread", args.modes)
        for pods in args.pod_counts:
            rows += measure_size(args, procs, pods, "remote", args.remote_modes)
    except KeyboardInterrupt as exc:
        print(f"interrupted by {exc or 'SIGINT'}; stopped every process started", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError, OSError, subprocess.SubprocessError) as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up
        procs.stop_all()
    elapsed = time.monotonic() - started
    tables = report.tables(args, rows)
    print(tables)
    data = {
        "machine": machine,
        "commands": args.commands,
        "elapsed_s": elapsed,
        "settings": {k: str(v) for k, v in vars(args).items()},
        "rows": [asdict(r) for r in rows],
    }
    (args.out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    plots = report.plots(args, args.out / "results.json", ROOT / "docs" / "img")
    print(plots)
    if not args.no_docs:
        report.write_docs(ROOT / "docs" / "benchmarks.md", machine, args, tables, plots)
        print(f"wrote {ROOT / 'docs' / 'benchmarks.md'}")
    bad = [r for r in rows if not r.skipped and (r.load.get("failed") or r.load.get("bad_status"))]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
