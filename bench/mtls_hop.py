"""The cost of one node-to-node hop: same-node path, the mTLS hop, the mTLS tunnel, in one run.

Why this shape: what the mesh adds is the hop node-a -> node-b over mTLS, so the same request to
the same upstream is measured twice on the same machine: once with the endpoint on node-a itself
(node-a forwards it in plaintext, as for a same-node pod) and once with the endpoint on node-b
(node-a -> pooled mTLS -> node-b -> upstream). Both modes go through the same outbound pipeline
and the same policy check, so the difference is the hop: node-b's whole work plus what TLS adds
to node-a. The upstream is nginx answering a fixed 200 from memory (bench/nginx-upstream.conf.tmpl)
so it never limits the proxies.

The cross-node request is measured twice, through two node-a processes with the same config but
`mesh.http_tunnel`: `off` (the per-request hop: node-b parses every request, checks the policy and
forwards it over its own pool: "mtls") and `auto` (one CONNECT tunnel per pooled connection:
node-b checks the policy once per tunnel and only splices bytes: "tunnel"). The issue's bar: the
tunnel's CPU per request (both proxies) at most 0.7 x the per-request hop's.

Two costs are reported:
- keep-alive: wrk -t1 -c16 at node-a; req/s, p50/p99 and each proxy's CPU µs per request (utime +
  stime of its process group from /proc, before and after the measured run). Connections are
  reused on every side, so this is the steady per-request price of the hop.
- new connections: a trio client (bench/mtls_conns.py) opening one fresh connection per request
  (connect, handshake, one GET, read the answer, close), bounded by a count and a time limit;
  the server's CPU µs per connection and connections/s. Against node-b's inbound mTLS listener
  (a workload certificate, the destination header) this is the price of a TLS handshake;
  against node-a's plaintext listener the price of a new TCP connection through the proxy;
  straight at nginx the floor of the client itself. The client uses nodeproxy's own client
  context and trio's SSLStream, as node-a does, so its CPU per connection (getrusage) is also
  node-a's price of opening a hop. Calibration: the same handshake with ssl alone, in memory.
  Forcing node-a itself to reconnect per request is not possible from config (its pool reuses
  connections while any are idle), hence a client of our own.

Placement (2 cores): wrk, the client loop and nginx on core 0; node-a and node-b both on core 1,
so the two proxies never compete with the load generator and their CPU is their own. The mTLS
req/s is then that of ONE core running both ends of the hop (on two real nodes each end has its
own): compare CPU per request, not req/s. `--node-b-cpu 0` moves node-b next to wrk instead.

Loopback only, bounded in time (default run about 30 s, at most about 50 s); every process it
starts runs in its own process group and is stopped on exit, on error, on Ctrl-C and on SIGTERM.
    .venv/bin/python bench/mtls_hop.py [--duration 8] [--new-connections 600]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import string
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType

from harness import (
    Processes,
    Result,
    cpu_seconds,
    free_port,
    parse_wrk,
    pinned,
    relative,
    run_wrk,
    wait_http_ok,
)
from mtls_conns import NewConns, measure_loop, memory_handshake_us, mtls_contexts

BENCH = Path(__file__).resolve().parent
CLIENT_ID = "spiffe://cluster.local/ns/bench/sa/client"
LOCAL, REMOTE = "local.bench", "remote.bench"  # the endpoint on node-a / on node-b
PATH = "/hello/bench"
INSTALL_HINT = "sudo apt-get install -y wrk nginx-light"
ACCEPTED = "nodeproxy_downstream_connections_total"

CONFIG = """\
# bench/mtls_hop.py: {node} of a two-node mesh on loopback; one upstream, two services.
node_name: {node}
listeners: [{{address: "127.0.0.1:{outbound}"}}]
admin: {{address: "127.0.0.1:{admin}"}}
limits: {{drain_timeout: 1s}}
log: {{level: warning, access_log: false}}
services:
  - {{name: local, namespace: bench, endpoints: [{{address: "127.0.0.1:{up}", node: node-a}}]}}
  - {{name: remote, namespace: bench, endpoints: [{{address: "127.0.0.1:{up}", node: node-b}}]}}
mesh:
  ca_dir: {ca}
  http_tunnel: {http_tunnel}   # off: the per-request hop node-b parses; auto: a CONNECT tunnel
  inbound: "127.0.0.1:{inbound}"
  nodes: {{node-a: "127.0.0.1:{a_inbound}", node-b: "127.0.0.1:{b_inbound}"}}
  workloads:   # wrk and the client connect from 127.0.0.1: that is the calling pod
    - {{source: 127.0.0.1, namespace: bench, service_account: client, node: node-a}}
  policy:      # a real check on both paths: default deny, one allow rule
    default_action: deny
    rules:
      - {{name: bench, action: allow, from: ["{client}"], to: ["{local}", "{remote}"]}}
"""


@dataclass
class KeepAlive:
    """One keep-alive mode: wrk's numbers and each proxy's CPU per request."""

    mode: str
    wrk: Result
    node_a_us: float = 0.0
    node_b_us: float = 0.0
    mtls_opened_total: float = 0.0  # node-a -> node-b so far (pooled: about -c once warm)
    mtls_opened_during_run: float = 0.0  # in the measured run: 0 when the pool is reused


@dataclass
class Setup:
    """Where everything listens, and the commands that started it."""

    out: Path
    up: int
    a_out: int
    a_admin: int
    b_in: int
    b_admin: int
    t_out: int = 0  # node-a-tunnel: the same node, mesh.http_tunnel: auto
    t_admin: int = 0
    commands: list[str] = field(default_factory=list)
    memory_handshake_us: float = 0.0  # calibration: ssl alone, both sides, in memory


def counter(admin: int, name: str, **match: str) -> float:
    """Sum of a counter from /stats/prometheus, over the series whose labels include `match`."""
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5.0)
    try:
        conn.request("GET", "/stats/prometheus")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    want = [f'{k}="{v}"' for k, v in match.items()]
    total = 0.0
    for m in re.finditer(rf"^{name}(\{{[^}}]*\}})?\s+(\S+)$", text, re.MULTILINE):
        if all(w in (m.group(1) or "") for w in want):
            total += float(m.group(2))
    return total


def run_cmd(setup: Setup, argv: list[str]) -> None:
    setup.commands.append(shlex.join(argv))
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def start_all(args: argparse.Namespace, procs: Processes) -> Setup:
    """CA + client certificate, nginx, node-b, node-a; returns once node-a answers both paths."""
    out: Path = args.out
    (out / "tmp").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "ca", ignore_errors=True)
    setup = Setup(out, free_port(), free_port(), free_port(), free_port(), free_port())
    run_cmd(setup, [args.nodeproxy, "ca", "init", "--dir", str(out / "ca")])
    run_cmd(
        setup,
        [
            args.nodeproxy,
            "ca",
            "issue",
            "--dir",
            str(out / "ca"),
            "--spiffe-id",
            CLIENT_ID,
            "--out-cert",
            str(out / "client.crt"),
            "--out-key",
            str(out / "client.key"),
            "--force",
        ],
    )
    tmpl = string.Template((BENCH / "nginx-upstream.conf.tmpl").read_text())
    (out / "nginx-upstream.conf").write_text(tmpl.substitute(out=out, port=setup.up))
    nginx = pinned(args.upstream_cpu, "nginx", "-e", str(out / "nginx-upstream.startup.log"))
    nginx += ["-p", str(out), "-c", str(out / "nginx-upstream.conf")]
    upstream = procs.start("upstream", nginx)
    setup.commands.append(shlex.join(nginx))
    wait_http_ok(setup.up, upstream, PATH, REMOTE)
    a_in = free_port()
    setup.t_out, setup.t_admin = free_port(), free_port()
    ports = {
        "node-a": (setup.a_out, setup.a_admin, a_in),
        "node-a-tunnel": (setup.t_out, setup.t_admin, free_port()),
        "node-b": (free_port(), setup.b_admin, setup.b_in),
    }
    procs_on = (("node-b", args.node_b_cpu), ("node-a", args.node_a_cpu))
    for name, cpu in (*procs_on, ("node-a-tunnel", args.node_a_cpu)):
        outbound, admin, inbound = ports[name]
        node = name.removesuffix("-tunnel")  # node-a-tunnel is node-a with the tunnel on
        config = out / f"{name}.yaml"
        config.write_text(
            CONFIG.format(
                node=node,
                http_tunnel="auto" if name == "node-a-tunnel" else "off",
                outbound=outbound,
                admin=admin,
                inbound=inbound,
                up=setup.up,
                ca=out / "ca",
                a_inbound=a_in,
                b_inbound=setup.b_in,
                client=CLIENT_ID,
                local=LOCAL,
                remote=REMOTE,
            )
        )
        argv = pinned(cpu, args.nodeproxy, "run", "--config", str(config))
        proc = procs.start(name, argv)
        setup.commands.append(shlex.join(argv))
        wait_http_ok(admin, proc, "/ready", "localhost")
    for host in (LOCAL, REMOTE):
        wait_http_ok(setup.a_out, procs.running["node-a"], PATH, host)
    wait_http_ok(setup.t_out, procs.running["node-a-tunnel"], PATH, REMOTE)
    return setup


def wrk_at(args: argparse.Namespace, port: int, host: str, seconds: float) -> tuple[str, str]:
    url = f"http://127.0.0.1:{port}{PATH}"
    argv, out = run_wrk(args.load_cpu, args.threads, args.connections, url, host, seconds)
    return shlex.join(argv), out


MODES = ("plaintext", "mtls", "tunnel")  # same node; the per-request hop; the CONNECT tunnel


def keep_alive(args: argparse.Namespace, procs: Processes, setup: Setup, mode: str) -> KeepAlive:
    host = LOCAL if mode == "plaintext" else REMOTE
    a_name, port, admin = "node-a", setup.a_out, setup.a_admin
    if mode == "tunnel":
        a_name, port, admin = "node-a-tunnel", setup.t_out, setup.t_admin
    if args.warmup > 0:
        wrk_at(args, port, host, args.warmup)
    groups = {"node-a": procs.running[a_name].pid, "node-b": procs.running["node-b"].pid}
    opened = partial(
        counter, admin, "nodeproxy_upstream_connections_opened_total", cluster="mesh:node-b"
    )
    opened_before = opened()
    before = {n: cpu_seconds(g) for n, g in groups.items()}
    command, text = wrk_at(args, port, host, args.duration)
    used = {n: cpu_seconds(g) - before[n] for n, g in groups.items()}
    row = KeepAlive(mode, Result(target=mode, wrk_command=command))
    parse_wrk(text, row.wrk)
    if row.wrk.requests:
        row.node_a_us = used["node-a"] * 1e6 / row.wrk.requests
        row.node_b_us = used["node-b"] * 1e6 / row.wrk.requests
    row.mtls_opened_total = opened()
    row.mtls_opened_during_run = row.mtls_opened_total - opened_before
    return row


def new_connections(args: argparse.Namespace, procs: Processes, setup: Setup) -> list[NewConns]:
    """The three new-connection loops, one after another (bench/mtls_conns.py)."""
    out: Path = args.out
    ctx, server = mtls_contexts(out / "ca" / "ca.crt", out / "client.crt", out / "client.key")
    setup.memory_handshake_us = memory_handshake_us(ctx, server, args.calibration_handshakes)
    dest = f"x-nodeproxy-destination: 127.0.0.1:{setup.up}\r\nx-nodeproxy-service: {REMOTE}\r\n"
    loops = [  # (mode, target, port, process measured, context, host, extra headers, stats)
        ("tcp-direct", "nginx", setup.up, "upstream", None, REMOTE, "", None),
        ("tcp-node-a", "node-a outbound", setup.a_out, "node-a", None, LOCAL, "", setup.a_admin),
        ("mtls-node-b", "node-b inbound", setup.b_in, "node-b", ctx, REMOTE, dest, setup.b_admin),
    ]
    rows: list[NewConns] = []
    for mode, target, port, proc, context, host, extra, admin in loops:
        row = NewConns(mode, target, cpu_of=proc)
        request = f"GET {PATH} HTTP/1.1\r\nHost: {host}\r\n{extra}connection: close\r\n\r\n"
        listener = "inbound" if context else "outbound"
        accepted = counter(admin, ACCEPTED, listener=listener) if admin else 0.0
        measure_loop(
            row,
            procs.running[proc].pid,
            port,
            context,
            request.encode(),
            count=args.new_connections,
            seconds=args.new_seconds,
            concurrency=args.concurrency,
        )
        if admin:
            row.accepted = counter(admin, ACCEPTED, listener=listener) - accepted
        rows.append(row)
    return rows


def report(args: argparse.Namespace, setup: Setup, ka: list[KeepAlive], nc: list[NewConns]) -> str:
    lines = [
        f"Keep-alive: wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s (after"
        f" {args.warmup:g}s warm-up) at node-a; wrk + nginx on core {args.load_cpu}, node-a on"
        f" core {args.node_a_cpu}, node-b on core {args.node_b_cpu}",
        "",
        "| mode | req/s | node-a µs/req | node-b µs/req | both µs/req | p50 ms | p99 ms"
        " | errors | a→b handshakes run/total |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ka:
        w = r.wrk
        lines.append(
            f"| {r.mode} | {w.rps:,.0f} | {r.node_a_us:.1f} | {r.node_b_us:.1f}"
            f" | {r.node_a_us + r.node_b_us:.1f} | {w.p50_ms:.3f} | {w.p99_ms:.3f}"
            f" | {w.non_2xx + w.socket_errors}"
            f" | {r.mtls_opened_during_run:.0f} / {r.mtls_opened_total:.0f} |"
        )
    by_mode = {r.mode: r for r in ka}
    if "plaintext" in by_mode and "mtls" in by_mode:
        plain, mtls = by_mode["plaintext"], by_mode["mtls"]
        both, alone = mtls.node_a_us + mtls.node_b_us, plain.node_a_us + plain.node_b_us
        lines += [
            "",
            f"- the mTLS hop adds {both - alone:.1f} CPU µs per request (both proxies together):"
            f" {both / max(alone, 1e-9):.2f} x the plaintext same-node path;"
            f" node-a alone pays {mtls.node_a_us - plain.node_a_us:+.1f} µs for speaking TLS",
        ]
    if "mtls" in by_mode and "tunnel" in by_mode:
        mtls, tunnel = by_mode["mtls"], by_mode["tunnel"]
        hop, tun = mtls.node_a_us + mtls.node_b_us, tunnel.node_a_us + tunnel.node_b_us
        ratio = tun / max(hop, 1e-9)
        lines += [
            f"- the CONNECT tunnel: {tun:.1f} CPU µs per cross-node request (both proxies) against"
            f" {hop:.1f} for the per-request hop: **{ratio:.2f} x** (the bar: <= 0.70,"
            f" {'met' if ratio <= 0.7 else 'NOT met'}); node-b {mtls.node_b_us:.1f} ->"
            f" {tunnel.node_b_us:.1f} µs, node-a {mtls.node_a_us:.1f} -> {tunnel.node_a_us:.1f} µs",
        ]
    lines += [
        "",
        f"New connections: one GET per connection, {args.concurrency} concurrent, at most"
        f" {args.new_connections} connections or {args.new_seconds:g}s per loop; client (trio, this"
        f" process) on core {args.load_cpu}",
        "",
        "| loop | target | conns/s | server CPU µs/conn | of | one core's capacity conns/s"
        " | client CPU µs/conn | p50 ms | p99 ms | ok | failed | server counted |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in nc:
        counted = "n/a" if n.accepted is None else f"{n.accepted:.0f}"
        cap = 1e6 / n.server_us if n.server_us else 0.0
        lines.append(
            f"| {n.mode} | {n.target} | {n.rate:,.0f} | {n.server_us:.0f} | {n.cpu_of} | {cap:,.0f}"
            f" | {n.client_us:.0f} | {n.p50_ms:.2f} | {n.p99_ms:.2f} | {n.ok} | {n.failed}"
            f" | {counted} |"
        )
    by = {n.mode: n for n in nc}
    if "tcp-node-a" in by and "mtls-node-b" in by and by["tcp-node-a"].ok:
        tls = by["mtls-node-b"].server_us - by["tcp-node-a"].server_us
        lines += [
            "",
            f"- a TLS handshake costs the server about {tls:.0f} CPU µs more than a new"
            " plaintext connection through the proxy",
        ]
    lines.append(
        f"- calibration: one mutual-TLS handshake with the same certificates and contexts, both"
        f" sides in one process over ssl.MemoryBIO (OpenSSL via Python's ssl, no sockets, no"
        f" trio): {setup.memory_handshake_us:.0f} CPU µs"
    )
    lines += [f"- {n.mode}: {n.failed} failed, first: {n.first_error}" for n in nc if n.failed]
    lines += ["", f"Reproduce (configs and logs in {setup.out}):"]
    lines += [f"    {c}" for c in setup.commands + [r.wrk.wrk_command for r in ka]]
    lines.append(f"    {shlex.join([sys.executable, *sys.argv])}   # the new-connection loops")
    return relative("\n".join(lines))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=8.0, help="seconds measured per mode")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured warm-up")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--new-connections", type=int, default=600, help="per new-connection loop")
    p.add_argument("--new-seconds", type=float, default=8.0, help="time limit per loop")
    p.add_argument("--calibration-handshakes", type=int, default=200, help="in-memory, ssl only")
    p.add_argument("--concurrency", type=int, default=4, help="connections in flight at once")
    p.add_argument("--load-cpu", type=int, default=0, help="core for wrk and the client")
    p.add_argument("--upstream-cpu", type=int, default=0, help="core for the upstream nginx")
    p.add_argument("--node-a-cpu", type=int, default=1)
    p.add_argument("--node-b-cpu", type=int, default=1)
    default_bin = Path(sys.executable).parent / "nodeproxy"
    p.add_argument("--nodeproxy", default=str(default_bin) if default_bin.exists() else "nodeproxy")
    p.add_argument("--out", type=Path, default=BENCH / "out" / "mtls")
    return p.parse_args(argv)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT/SIGTERM unwind through the finally that stops every child."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    """Run both measurements; print the tables and write bench/out/mtls_hop.json."""
    args = _parse_args(argv)
    args.out = args.out.resolve()
    missing = [t for t in ("wrk", "nginx", "taskset", args.nodeproxy) if shutil.which(t) is None]
    if missing:
        print(f"missing: {', '.join(missing)}; install with:\n    {INSTALL_HINT}", file=sys.stderr)
        return 2
    cpus = {args.load_cpu, args.upstream_cpu, args.node_a_cpu, args.node_b_cpu}
    if not cpus <= os.sched_getaffinity(0):
        print(f"cores {sorted(os.sched_getaffinity(0))} available; use --*-cpu", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {args.load_cpu})  # the new-connection client runs in this process
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    args.out.mkdir(parents=True, exist_ok=True)
    procs = Processes(args.out)
    try:
        setup = start_all(args, procs)
        ka = [keep_alive(args, procs, setup, mode) for mode in MODES]
        nc = new_connections(args, procs, setup)
    except KeyboardInterrupt as exc:
        print(f"interrupted by {exc or 'SIGINT'}; stopped every process started", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError, OSError, subprocess.SubprocessError) as exc:
        names = [
            n
            for n in ("node-a", "node-a-tunnel", "node-b", "upstream")
            if (args.out / f"{n}.log").exists()
        ]
        tails = "\n".join(f"--- {n}.log\n{procs.log_tail(n)}" for n in names)
        print(f"failed: {exc}\n{tails}", file=sys.stderr)
        return 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up
        procs.stop_all()
    print(report(args, setup, ka, nc))
    print(f"\n1-minute load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    doc = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "cpus": os.cpu_count(),
        "loadavg_1m_after": os.getloadavg()[0],
        "keep_alive": [asdict(r) for r in ka],
        "new_connections": [{k: v for k, v in asdict(n).items() if k != "latencies"} for n in nc],
        "commands": setup.commands,
        "memory_handshake_us_both_sides": setup.memory_handshake_us,
    }
    (args.out.parent / "mtls_hop.json").write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if any(n.failed or not n.ok for n in nc) else 0


if __name__ == "__main__":
    sys.exit(main())
