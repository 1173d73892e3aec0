"""What Kubernetes discovery costs at cluster scale: RSS, time to ready, CPU per change.

The fake API server (tests/fakes/apiserver.py, the real list+watch wire protocol) runs in
this process, filled with objects shaped like a real cluster's (tests/fakes/k8s_objects.py:
managedFields, ownerReferences, last-applied annotations, Nodes with image lists and
conditions): S Services with one EndpointSlice each, N Nodes, and the pods of the proxy's
own node. nodeproxy runs as a child process (`python -m nodeproxy run`) with Kubernetes
discovery pointed at it by a kubeconfig, so the numbers are the real reflector's, in a
process of its own, read from /proc:

1. start -> `/ready` 200: time to ready, then RSS once synced;
2. C changes (EndpointSlice updates, one every ``--change-interval``, 100 ms: each one
   handled on its own, not coalesced): the proxy's CPU per change, and RSS;
3. a full relist of every resource (history compacted, every watch ended with 410 Gone):
   the peak RSS while it lists again (VmHWM, reset just before through clear_refs).

Everything is bounded: the proxy is stopped on exit, each wait has a deadline.

    .venv/bin/python bench/discovery_scale.py                  # 6000 Services, 1000 Nodes
    .venv/bin/python bench/discovery_scale.py --services 500 --nodes 100 --changes 10

To measure an older version of the proxy against the same fake API server:
``git archive REV nodeproxy | tar -x -C /tmp/old`` and run with ``PYTHONPATH=/tmp/old``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.apiserver import FakeApiServer
from tests.fakes.k8s_objects import (
    realistic_node,
    realistic_pod,
    realistic_service,
    realistic_slice,
)

TICK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid``, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not permitted."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def populate(api: FakeApiServer, services: int, nodes: int, local_pods: int) -> None:
    for n in range(nodes):
        api.add("nodes", realistic_node(n))
    for i in range(services):
        ns = f"ns-{i % 50}"
        api.add("services", realistic_service(i, ns))
        node_of = 0 if i < local_pods else -1  # the first services have a pod on node-0
        api.add("endpointslices", realistic_slice(i, ns, nodes, node_of=node_of))
        if i < local_pods:
            api.add("pods", realistic_pod(i, ns, "node-0", f"10.{(i >> 8) & 255}.{i & 255}.10"))


def write_config(tmp: Path, api: FakeApiServer, admin_port: int) -> Path:
    kc = tmp / "kubeconfig"
    kc.write_text(
        "apiVersion: v1\nkind: Config\n"
        f'clusters: [{{name: fake, cluster: {{server: "{api.url}"}}}}]\n'
        "users: [{name: dev, user: {token: t}}]\n"
        "contexts: [{name: fake, context: {cluster: fake, user: dev}}]\n"
        "current-context: fake\n"
    )
    cfg = tmp / "nodeproxy.yaml"
    cfg.write_text(
        "node_name: node-0\n"
        'listeners: [{address: "127.0.0.1:0"}]\n'
        f'admin: {{address: "127.0.0.1:{admin_port}"}}\n'
        "log: {level: warning, access_log: false}\n"
        f"discovery: {{kubernetes: {{kubeconfig: {kc}}}}}\n"
    )
    return cfg


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(cond: Callable[[], bool], deadline: float, what: str) -> None:
    with trio.move_on_after(deadline) as scope:
        while not cond():  # noqa: ASYNC110 -- polls state another task changes
            await trio.sleep(0.1)
    if scope.cancelled_caught:
        raise SystemExit(f"timed out after {deadline:g}s waiting for {what}")


async def metric(client: httpx.AsyncClient, url: str, prefix: str) -> float:
    text = (await client.get(url)).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix))  # fmt: skip


async def measure(args: argparse.Namespace) -> dict[str, float]:
    api = FakeApiServer()
    result: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(api.serve)
        t0 = time.monotonic()
        populate(api, args.services, args.nodes, args.local_pods)
        print(f"fake API filled in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        admin_port = free_port()
        with tempfile.TemporaryDirectory() as tmp:
            cfg = write_config(Path(tmp), api, admin_port)
            argv = [sys.executable, "-m", "nodeproxy", "run", "--config", str(cfg)]
            # cwd: not the checkout, so PYTHONPATH=<an older checkout> picks the code to measure
            proc = await trio.lowlevel.open_process(argv, start_new_session=True, cwd=tmp)
            try:
                result.update(await scenario(api, proc.pid, admin_port, args))
            finally:
                with trio.CancelScope(shield=True):
                    os.killpg(proc.pid, signal.SIGTERM)
                    with trio.move_on_after(10) as waiting:
                        await proc.wait()
                    if waiting.cancelled_caught:
                        os.killpg(proc.pid, signal.SIGKILL)
                        await proc.wait()
        nursery.cancel_scope.cancel()
    return result


async def scenario(
    api: FakeApiServer, pid: int, admin_port: int, args: argparse.Namespace
) -> dict[str, float]:
    out: dict[str, float] = {}
    admin = f"http://127.0.0.1:{admin_port}"
    stats = f"{admin}/stats/prometheus"
    start = trio.current_time()
    async with httpx.AsyncClient(timeout=30) as client:
        ready = False
        with trio.move_on_after(args.deadline):
            while not ready:
                await trio.sleep(0.1)
                with contextlib.suppress(httpx.TransportError):
                    ready = (await client.get(f"{admin}/ready")).status_code == 200
        if not ready:
            raise SystemExit(f"the proxy was not ready after {args.deadline:g}s")
        out["time_to_ready_s"] = trio.current_time() - start
        await until(lambda: len(api.watchers) == 4, args.deadline, "four watches")
        await trio.sleep(2)
        out["rss_synced_mib"] = proc_status(pid)["VmRSS"] / MIB
        out["peak_initial_sync_mib"] = proc_status(pid)["VmHWM"] / MIB

        events = 'nodeproxy_k8s_watch_events_total{resource="endpointslices",type="MODIFIED"}'
        cpu0 = cpu_seconds(pid)
        for c in range(args.changes):
            i = (c * 97) % args.services
            sl = realistic_slice(i, f"ns-{i % 50}", args.nodes, pods=2 + c % 3)
            api.modify("endpointslices", sl)
            await trio.sleep(args.change_interval)
        with trio.move_on_after(args.deadline):
            while await metric(client, stats, events) < args.changes:  # noqa: ASYNC110
                await trio.sleep(0.5)  # another process's counter
        out["cpu_per_change_ms"] = (cpu_seconds(pid) - cpu0) / max(args.changes, 1) * 1000
        await trio.sleep(2)
        out["rss_after_changes_mib"] = proc_status(pid)["VmRSS"] / MIB

        peak_reset = reset_peak(pid)
        relists = 'nodeproxy_k8s_relists_total{reason="gone"'
        before = await metric(client, stats, relists)
        relist_start = trio.current_time()
        api.compact()
        api.end_watches(gone=True)
        with trio.move_on_after(args.deadline):
            while await metric(client, stats, relists) < before + 4 or len(api.watchers) < 4:  # noqa: ASYNC110
                await trio.sleep(0.2)  # another process's counter
        out["relist_s"] = trio.current_time() - relist_start
        await trio.sleep(2)
        status = proc_status(pid)
        out["rss_after_relist_mib"] = status["VmRSS"] / MIB
        if peak_reset:
            out["peak_relist_mib"] = status["VmHWM"] / MIB
        out["peak_overall_mib"] = (
            status["VmHWM"] / MIB
            if not peak_reset
            else max(out["peak_initial_sync_mib"], status["VmHWM"] / MIB)
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=6000)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--local-pods", type=int, default=30, help="pods on the proxy's node")
    p.add_argument("--changes", type=int, default=50)
    p.add_argument("--change-interval", type=float, default=0.1, help="seconds between changes")
    p.add_argument("--deadline", type=float, default=300.0, help="seconds per wait")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args()
    result = trio.run(measure, args)
    print(f"{args.services} Services, {args.nodes} Nodes, {args.local_pods} local pods")
    for name, value in result.items():
        print(f"  {name:24} {value:8.1f}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "result": result}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
