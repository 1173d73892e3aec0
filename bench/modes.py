"""The modes of bench/pernode_vs_perpod.py: which proxies run, and where each client sends.

Why apart: a mode is "start these processes, then point each client pod here"; keeping every
mode in one table-like place shows that they differ only in that, under the same load.

| mode | proxies | a client pod sends to |
|---|---|---|
| none | 0 | the replica itself (the client balances) |
| per-node | 1 nodeproxy per node, mesh mTLS between nodes | its node's proxy |
| per-pod | 1 nodeproxy per pod (sidecar), mTLS between every pair | its own sidecar |
| nodeproxy-plain | 1 nodeproxy per node, no mesh | its node's proxy |
| nginx, haproxy | 1 per node, plain reverse proxy | its node's proxy |
| proxy.py | 1 per node, forward proxy (absolute-form URI) | its node's proxy |
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import procstats
import topology as topo
from harness import Processes, wait_http_ok

MODES = ["none", "per-node", "per-pod", "nodeproxy-plain", "nginx", "haproxy", "proxy.py"]
BENCH_PACKAGES = ["proxy.py", "matplotlib"]


@dataclass
class Row:
    """One (mode, P) measurement: a row of the table."""

    mode: str
    pods_per_node: int
    placement: str = "spread"
    proxies: int = 0
    skipped: str = ""
    start_s: float = 0.0  # from launching the proxies to all of them ready
    cpu_s: float = 0.0  # all proxies, over the measured window
    rss_mb: float = 0.0  # all proxies, at the end of the window
    pss_mb: float = 0.0
    tls_connections: int = 0  # established, proxy to proxy, at the end of the window
    certificates: int = 0  # certificate_issued lines in the proxies' logs
    load: dict[str, Any] = field(default_factory=dict)  # bench/loadgen.py's result


@dataclass
class ModeRun:
    """The processes of one mode, started and ready."""

    mode: str
    cluster: topo.Cluster
    names: list[str] = field(default_factory=list)
    pgids: set[int] = field(default_factory=set)
    tls_remotes: set[tuple[str, int]] = field(default_factory=set)
    start_s: float = 0.0
    skipped: str = ""
    counts_certs: bool = False

    def target(self, pod: topo.Pod) -> tuple[str, int] | None:
        node = self.cluster.node_ip(pod.node)
        return {
            "none": None,
            "per-node": (node, topo.OUTBOUND),
            "per-pod": (pod.ip, topo.OUTBOUND),
            "nodeproxy-plain": (node, topo.PLAIN_PORT),
            "nginx": (node, topo.NGINX_PORT),
            "haproxy": (node, topo.HAPROXY_PORT),
            "proxy.py": (node, topo.PROXYPY_PORT),
        }[self.mode]

    def load_spec(self, args: argparse.Namespace) -> dict[str, Any]:
        def services(pod: topo.Pod) -> list[tuple[str, list[tuple[str, int]]]]:
            return [
                (f"{s}.{topo.NS}", [(p.ip, topo.APP_PORT) for p in self.cluster.replicas(s)])
                for s in self.cluster.calls(pod)
            ]

        clients = [
            {
                "source": p.ip,
                "proxy": self.target(p),
                "forward": self.mode == "proxy.py",
                "services": services(p),
            }
            for p in self.cluster.pods
        ]
        return {
            "clients": clients,
            "rate": args.rate,
            "warmup": args.warmup,
            "duration": args.duration,
            "connections_per_client": args.connections_per_client,
        }


def wait_ok(
    host: str,
    port: int,
    path: str,
    proc: subprocess.Popen[bytes],
    vhost: str,
    timeout: float = 60.0,
    source: str | None = None,
) -> None:
    """Poll `GET path` on `host:port` until it answers 200 (harness.wait_http_ok)."""
    wait_http_ok(port, proc, path, vhost, timeout, address=host, source=source)


def ensure_bench_venv(args: argparse.Namespace) -> tuple[Path | None, str]:
    """The bench's own venv (proxy.py, matplotlib), never nodeproxy's: (python, what happened)."""
    python = args.venv / "bin" / "python"
    check = [str(python), "-c", "import proxy, matplotlib"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python, f"bench venv: {args.venv} (proxy.py, matplotlib already there)"
    install = f"{sys.executable} -m venv {args.venv} && {python} -m pip install"
    install += " " + " ".join(BENCH_PACKAGES)
    if args.no_install:
        return None, f"bench venv missing and --no-install: proxy.py and plots skipped ({install})"
    print(f"creating the bench venv: {install}", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(args.venv)], check=True, timeout=120)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *BENCH_PACKAGES], check=True, timeout=600
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"bench venv failed ({exc}): proxy.py and plots skipped"
    return python, f"bench venv: created {args.venv} ({install})"


def _start(
    procs: Processes,
    run: ModeRun,
    name: str,
    argv: list[str],
    args: argparse.Namespace,
) -> subprocess.Popen[bytes]:
    proc = procs.start(name, argv)
    run.names.append(name)
    run.pgids.add(proc.pid)
    if len(run.names) <= 3:
        args.commands.append(
            " ".join(argv)
            + ("   # ... one per pod" if run.mode == "per-pod" and len(run.names) == 3 else "")
        )
    return proc


def start_mode(
    args: argparse.Namespace,
    procs: Processes,
    cluster: topo.Cluster,
    mode: str,
) -> ModeRun:
    """Start the proxies of `mode` and wait until every one is ready."""
    run = ModeRun(mode, cluster)
    out: Path = args.out
    ca = out / "ca"
    started = time.monotonic()
    svc0 = f"{cluster.services[0]}.{topo.NS}"
    waits: list[tuple[str, int, str, subprocess.Popen[bytes], str]] = []
    if mode in ("per-node", "nodeproxy-plain"):
        run.counts_certs = mode == "per-node"
        for n in (1, 2):
            text = (
                topo.per_node_config(cluster, n, ca)
                if mode == "per-node"
                else (topo.plain_config(cluster, n))
            )
            config = out / f"{mode}-node-{n}.yaml"
            config.write_text(text)
            argv = [args.nodeproxy, "run", "--config", str(config)]
            proc = _start(procs, run, f"{mode}-node-{n}", argv, args)
            admin = topo.ADMIN if mode == "per-node" else topo.PLAIN_ADMIN
            waits.append((cluster.node_ip(n), admin, "/ready", proc, "localhost"))
            run.tls_remotes.add((cluster.node_ip(n), topo.INBOUND))
    elif mode == "per-pod":
        run.counts_certs = True
        for pod in cluster.pods:
            config = out / f"sidecar-{pod.name}.yaml"
            config.write_text(topo.per_pod_config(cluster, pod, ca))
            argv = [args.nodeproxy, "run", "--config", str(config)]
            proc = _start(procs, run, f"sidecar-{pod.name}", argv, args)
            waits.append((pod.ip, topo.ADMIN, "/ready", proc, "localhost"))
            run.tls_remotes.add((pod.ip, topo.INBOUND))
    elif mode in ("nginx", "haproxy", "proxy.py"):
        for n in (1, 2):
            ip = cluster.node_ip(n)
            if mode == "nginx":
                config = out / f"nginx-{n}.conf"
                config.write_text(topo.peer_nginx_config(cluster, n, out))
                argv = [
                    "nginx",
                    "-e",
                    str(out / f"nginx-{n}.startup.log"),
                    "-p",
                    str(out),
                    "-c",
                    str(config),
                ]
                port, path = topo.NGINX_PORT, "/"
            elif mode == "haproxy":
                if not Path("/usr/sbin/haproxy").exists():
                    run.skipped = "haproxy missing: sudo apt-get install -y haproxy"
                    return run
                config = out / f"haproxy-{n}.cfg"
                config.write_text(topo.haproxy_config(cluster, n))
                argv = ["/usr/sbin/haproxy", "-db", "-f", str(config)]
                port, path = topo.HAPROXY_PORT, "/"
            else:
                if args.bench_python is None:
                    run.skipped = "no bench venv with proxy.py (" + args.venv_note + ")"
                    return run
                argv = [
                    str(args.bench_python),
                    "-m",
                    "proxy",
                    "--hostname",
                    ip,
                    "--port",
                    str(topo.PROXYPY_PORT),
                    "--num-workers",
                    "1",
                    "--num-acceptors",
                    "1",
                    "--log-level",
                    "WARNING",
                ]
                replica = cluster.replicas(cluster.services[0])[0]
                port, path = topo.PROXYPY_PORT, f"http://{replica.ip}:{topo.APP_PORT}/"
            proc = _start(procs, run, f"{mode}-{n}", argv, args)
            waits.append((ip, port, path, proc, svc0))
    for host, port, path, proc, vhost in waits:
        wait_ok(host, port, path, proc, vhost)
    if mode in ("per-node", "per-pod"):  # the mesh path itself answers, from one client pod
        pod = cluster.pods[0]
        first = run.target(pod)
        assert first is not None
        wait_ok(
            first[0],
            first[1],
            "/",
            procs.running[run.names[0]],
            f"{cluster.calls(pod)[0]}.{topo.NS}",
            source=pod.ip,
        )
    run.start_s = time.monotonic() - started
    procstats.pin(run.pgids, args.proxy_cpu)
    return run
