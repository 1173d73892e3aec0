"""What the signer costs when many nodes ask at once (a cluster-wide restart).

The fake API server (tests/fakes/apiserver.py: TokenReview and pods in the real
wire format) runs in this process with N nodes, each with its node proxy pod and
K workload pods of K service accounts. ``nodeproxy signer`` runs as a child
process pointed at it by a kubeconfig, so its CPU and memory are its own, read
from /proc. Then N simulated node proxies (the real ``SignerClient``: fresh
keys, CSRs, mutual TLS once they hold a node certificate) ask for their node
identity and K workload identities, C at a time; each node asks twice (start,
then a renewal over mTLS with its node certificate).

Reported: requests per second, latency p50/p99, the signer's CPU time per
request and per certificate, its RSS. Everything is bounded (deadlines, the
child is stopped on exit).

    .venv/bin/python bench/signer_load.py                      # 200 nodes, 10 identities each
    .venv/bin/python bench/signer_load.py --nodes 50 --pods 30 --concurrency 8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodeproxy.tls.ca import init_ca
from nodeproxy.tls.identity import SpiffeId
from nodeproxy.tls.signer_client import SignerClient
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.k8s_objects import pod

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_mib(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed(api: FakeApiServer, nodes: int, pods: int) -> None:
    for n in range(nodes):
        node = f"node-{n}"
        api.add("pods", pod(f"nodeproxy-{n}", f"10.{n // 250}.{n % 250}.2", node=node,
                            ns="nodeproxy", service_account="nodeproxy"))  # fmt: skip
        for p in range(pods):
            api.add("pods", pod(f"app-{n}-{p}", f"10.{100 + n // 250}.{n % 250}.{p + 10}",
                                node=node, ns="shop", service_account=f"sa-{p}"))  # fmt: skip


async def run(args: argparse.Namespace, work: Path) -> dict[str, float]:
    init_ca(work / "ca")
    ca_pem = (work / "ca" / "ca.crt").read_bytes()
    api = FakeApiServer()
    seed(api, args.nodes, args.pods)
    port = free_port()
    async with trio.open_nursery() as nursery:
        await nursery.start(api.serve)
        kc = work / "kubeconfig"
        kc.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: f, cluster: {{server: '{api.url}'}}}}]\n"
            "users: [{name: u, user: {token: t}}]\n"
            "contexts: [{name: f, context: {cluster: f, user: u}}]\ncurrent-context: f\n"
        )
        cmd = [sys.executable, "-m", "nodeproxy", "signer", "--ca-dir", str(work / "ca"),
               "--listen", f"127.0.0.1:{port}", "--dns-name", "localhost",
               "--kubeconfig", str(kc), "--log-format", "json"]  # fmt: skip
        log = (work / "signer.log").open("wb")
        proc = await trio.lowlevel.open_process(cmd, stdout=log, stderr=log, start_new_session=True)
        try:
            with trio.fail_after(30):
                while b"signer_started" not in (work / "signer.log").read_bytes():  # noqa: ASYNC110 -- a file another process writes
                    await trio.sleep(0.05)
            clients = []
            for n in range(args.nodes):
                token = api.token_reviews.issue(f"nodeproxy-{n}", "nodeproxy", lifetime=1e6)
                path = work / f"token-{n}"
                path.write_text(token)
                clients.append(SignerClient(f"https://localhost:{port}", str(path), ca_pem,
                                            "cluster.local", timeout=60))  # fmt: skip
            ids = [[SpiffeId.node(f"node-{n}")] + [SpiffeId.workload("shop", f"sa-{p}")
                   for p in range(args.pods)] for n in range(args.nodes)]  # fmt: skip
            latencies: list[float] = []
            limiter = trio.CapacityLimiter(args.concurrency)

            async def one_node(n: int) -> None:
                held = None
                for _ in range(2):  # start, then a renewal over mTLS
                    async with limiter:
                        t = trio.current_time()
                        out = await clients[n].sign(ids[n], lifetime=timedelta(hours=24),
                                                    client=held)  # fmt: skip
                        latencies.append(trio.current_time() - t)
                    assert len(out.issued) == len(ids[n]), out.refused
                    held = next(i for i in out.issued if i.spiffe_id.kind == "node")

            cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            with trio.fail_after(args.deadline):
                async with trio.open_nursery() as clients_nursery:
                    for n in range(args.nodes):
                        clients_nursery.start_soon(one_node, n)
            wall = time.perf_counter() - t0
            cpu = cpu_seconds(proc.pid) - cpu0
            requests = len(latencies)
            latencies.sort()
            return {
                "nodes": args.nodes,
                "identities_per_request": args.pods + 1,
                "requests": requests,
                "wall_s": round(wall, 2),
                "requests_per_s": round(requests / wall, 1),
                "p50_ms": round(statistics.median(latencies) * 1000, 1),
                "p99_ms": round(latencies[int(0.99 * (requests - 1))] * 1000, 1),
                "signer_cpu_ms_per_request": round(cpu / requests * 1000, 2),
                "signer_cpu_ms_per_certificate": round(cpu / requests / (args.pods + 1) * 1000, 3),
                "signer_rss_mib": round(rss_mib(proc.pid), 1),
            }
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with trio.move_on_after(5):
                await proc.wait()
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)
            log.close()
            nursery.cancel_scope.cancel()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--pods", type=int, default=9, help="workload identities per node")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--deadline", type=float, default=300.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="signer-load-") as tmp:
        result = trio.run(run, args, Path(tmp))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
