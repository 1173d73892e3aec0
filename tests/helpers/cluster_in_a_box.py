"""A 3-node cluster in network namespaces: the fake API, one nodeproxy per node, greeters.

Run ONLY inside ``unshare --mount --net --pid --fork`` (tests/test_cluster_in_a_box.py does):
the new network namespace has no route off the machine, the private mount
namespace holds the ``/run/netns`` tmpfs, and every process started here dies
with the PID namespace's first process, this one. It refuses to run
otherwise. Nothing ever connects to these addresses from the machine's own
namespace: they exist only in here.

    box namespace:  br0 10.77.0.1/24 -- the fake Kubernetes API server (this process)
      node-1 (netns) eth0 10.77.0.11, pod "client" 10.77.0.111 -- nodeproxy
      node-2 (netns) eth0 10.77.0.12, pod "greeter-2" 10.77.0.121:8080 -- nodeproxy
      node-3 (netns) eth0 10.77.0.13, pod "greeter-3" 10.77.0.131:8080 -- nodeproxy

Pods are extra addresses on their node's eth0. The client calls ``bdgreeter``
through node-1's proxy (``curl -x``, from the pod's address); each replica is
on another node, so every request crosses node to node over mTLS. Then a
replica is deleted in the API (terminating, then gone) and its process stopped:
no request may fail. Then the API server stops: traffic must keep flowing.
Prints one JSON document: ``{"ok", "checks": {name: bool}, "details"}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from nodeproxy.tls.ca import init_ca
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.k8s_objects import endpoint, endpoint_slice, node, pod, service

API_IP = "10.77.0.1"
NODES = {"node-1": "10.77.0.11", "node-2": "10.77.0.12", "node-3": "10.77.0.13"}
PODS = {"client": ("node-1", "10.77.0.111"), "greeter-2": ("node-2", "10.77.0.121"),
        "greeter-3": ("node-3", "10.77.0.131")}  # fmt: skip
GREETER_PORT = 8080
DEADLINE = 45.0
CONFIG = """
node_name: ${{NODE_NAME}}
listeners: [{{address: "0.0.0.0:4140"}}]
admin: {{address: "0.0.0.0:9901"}}
log: {{format: json, access_log: false}}
discovery:
  kubernetes: {{kubeconfig: {kubeconfig}}}
# http_tunnel off: the per-request hop, which node-2 parses and counts (node_to_node_mtls);
# HTTP over pooled CONNECT tunnels is the interception box's and test_tunnel_http.py's.
mesh: {{ca_dir: {ca}, inbound: "0.0.0.0:4143", http_tunnel: "off"}}
services:  # settings only; the endpoints come from the API. Round robin so that both
  - name: bdgreeter  # replicas answer a sequential client (p2c_ewma would keep to one)
    lb_policy: round_robin
"""


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=10)


def refuse_unless_isolated() -> None:
    """Only as PID 1 of a new PID namespace, in a fresh network namespace (nothing but lo)."""
    if os.getpid() != 1:
        sys.exit("refusing: not PID 1 of a new PID namespace (run under unshare --pid --fork)")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    if [line.split(":")[1].strip() for line in links.stdout.splitlines()] != ["lo"]:
        sys.exit(f"refusing: this network namespace is not empty:\n{links.stdout}")


def build_network() -> None:
    sh("ip", "link", "set", "lo", "up")
    Path("/run/netns").mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "tmpfs", "tmpfs", "/run/netns")  # private: --mount made it so
    sh("ip", "link", "add", "br0", "type", "bridge")
    sh("ip", "addr", "add", f"{API_IP}/24", "dev", "br0")
    sh("ip", "link", "set", "br0", "up")
    for i, (name, ip) in enumerate(NODES.items(), 1):
        sh("ip", "netns", "add", name)
        sh("ip", "link", "add", f"veth{i}", "type", "veth", "peer", "name", "eth0", "netns", name)
        sh("ip", "link", "set", f"veth{i}", "master", "br0", "up")
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", name, "addr", "add", f"{ip}/24", "dev", "eth0")
        for where, pod_ip in PODS.values():
            if where == name:
                sh("ip", "-n", name, "addr", "add", f"{pod_ip}/24", "dev", "eth0")
        sh("ip", "-n", name, "link", "set", "eth0", "up")


def seed(api: FakeApiServer, *, terminating: bool = False) -> None:
    api.add("services", service("bdgreeter", [("http", 80, GREETER_PORT)]))
    eps = [endpoint(PODS["greeter-2"][1], node="node-2", pod="greeter-2"),
           endpoint(PODS["greeter-3"][1], node="node-3", pod="greeter-3",
                    ready=not terminating, terminating=terminating)]  # fmt: skip
    api.add("endpointslices", endpoint_slice("bdgreeter-1", "bdgreeter", eps,
                                             ports=[("http", GREETER_PORT)]))  # fmt: skip


class Box:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: dict[str, trio.Process] = {}
        self.checks: dict[str, bool] = {}
        self.details: dict[str, Any] = {}

    async def spawn(self, name: str, netns: str, args: list[str], env: dict[str, str]) -> None:
        with (self.work / f"{name}.log").open("wb") as log:  # the child keeps its own copy
            self.procs[name] = await trio.lowlevel.open_process(
                ["ip", "netns", "exec", netns, *args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            )  # fmt: skip

    async def wait_http(self, client: httpx.AsyncClient, url: str) -> None:
        while True:
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await trio.sleep(0.05)  # external processes starting: no event to wait on

    async def batch(self, n: int, tag: str) -> list[tuple[str, str]]:
        """``n`` requests from the client pod through node-1's proxy (one keep-alive curl)."""
        args = ["curl", "-sS", "--max-time", "5", "--interface", PODS["client"][1],
                "-x", f"http://{NODES['node-1']}:4140"]  # fmt: skip
        for i in range(n):
            args += ["-o", "/dev/null", "-w", r"%{http_code} %header{x-greeter-replica}\n",
                     f"http://bdgreeter/hello/{tag}{i}"]  # fmt: skip
        r = await trio.run_process(
            ["ip", "netns", "exec", "node-1", *args], capture_stdout=True, check=False
        )
        out: list[tuple[str, str]] = []
        for line in r.stdout.decode().splitlines():  # "200 greeter-2"; "000 " when it failed
            code, _, replica = line.partition(" ")
            out.append((code, replica))
        return out if len(out) == n else [*out, *[("missing", "")] * (n - len(out))]

    def check(self, name: str, ok: bool, detail: Any = None) -> None:
        self.checks[name] = bool(ok)
        if detail is not None:
            self.details[name] = detail

    async def endpoints_seen_by(self, client: httpx.AsyncClient, node_name: str) -> list[str]:
        view = (await client.get(f"http://{NODES[node_name]}:9901/clusters")).json()
        for c in view["clusters"]:
            if c["name"] == "bdgreeter":
                return [e["address"] for e in c["endpoints"]]
        return []


def counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def scenario(box: Box) -> None:
    ca = box.work / "ca"
    init_ca(ca)
    api = FakeApiServer(host=API_IP)
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=5) as http:
        api_scope = trio.CancelScope()

        async def serve_api(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
            with api_scope:
                await api.serve(task_status=task_status)

        await nursery.start(serve_api)
        seed(api)
        for name, (where, ip) in PODS.items():
            api.add("pods", pod(name, ip, node=where, service_account=name.split("-")[0]))
        for name, ip in NODES.items():
            api.add("nodes", node(name, ip))
        kc = api.write_kubeconfig(box.work / "kubeconfig", token="box-token")
        config = box.work / "nodeproxy.yaml"
        config.write_text(CONFIG.format(kubeconfig=kc, ca=ca))
        for name in NODES:
            await box.spawn(name, name, [sys.executable, "-m", "nodeproxy", "run", "-c",
                                         str(config)], {"NODE_NAME": name})  # fmt: skip
        for name in ("greeter-2", "greeter-3"):
            where, ip = PODS[name]
            await box.spawn(name, where, [sys.executable, "-m", "nodeproxy.demo.greeter",
                                          "--host", ip, "--port", str(GREETER_PORT),
                                          "--replica", name], {})  # fmt: skip
        for ip in NODES.values():
            await box.wait_http(http, f"http://{ip}:9901/ready")  # synced with the API
        for name in ("greeter-2", "greeter-3"):
            await box.wait_http(http, f"http://{PODS[name][1]}:{GREETER_PORT}/healthz")

        first = await box.batch(20, "a")
        box.check("all_200_before", all(c == "200" for c, _ in first), first)
        box.check("both_replicas_answer", {r for _, r in first} == {"greeter-2", "greeter-3"})

        seed(api, terminating=True)  # greeter-3 is being deleted
        during: list[tuple[str, str]] = []
        for _ in range(100):
            during += await box.batch(5, "b")
            if await box.endpoints_seen_by(http, "node-1") == [f"{PODS['greeter-2'][1]}:8080"]:
                break
        api.delete("pods", "greeter-3")
        api.add("endpointslices", endpoint_slice("bdgreeter-1", "bdgreeter", [
            endpoint(PODS["greeter-2"][1], node="node-2", pod="greeter-2")],
            ports=[("http", GREETER_PORT)]))  # fmt: skip
        box.procs["greeter-3"].kill()  # the replica is gone for good
        after = await box.batch(20, "c")
        box.check("no_failed_request_while_deleting", all(c == "200" for c, _ in during), during)
        box.check("traffic_moved", after == [("200", "greeter-2")] * 20, after)

        api_scope.cancel()  # the API server goes away
        outage = await box.batch(20, "d")
        box.check("traffic_flows_without_api", outage == [("200", "greeter-2")] * 20, outage)
        ready = await http.get(f"http://{NODES['node-1']}:9901/ready")
        box.check("still_ready_without_api", ready.status_code == 200, ready.text)

        m1 = (await http.get(f"http://{NODES['node-1']}:9901/stats/prometheus")).text
        m2 = (await http.get(f"http://{NODES['node-2']}:9901/stats/prometheus")).text
        mtls = counter(m1, "nodeproxy_upstream_connections_opened_total", cluster="mesh:node-2")
        # HTTP to node-2's pods rides pooled CONNECT tunnels that node-2 checks once and then
        # only splices (docs/tunnel.md): one decision per tunnel, not per request
        inbound = counter(m2, "nodeproxy_policy_allowed_total", listener="inbound")
        box.check("node_to_node_mtls", mtls >= 1 and inbound >= 1, {"mtls": mtls, "in": inbound})
        nursery.cancel_scope.cancel()


async def run_box(
    scenario: Callable[[Box], Awaitable[None]],
    network: Callable[[], None],
    prefix: str,
    deadline: float,
) -> int:
    """Build the network, run ``scenario`` within ``deadline``, print the JSON verdict
    (with the logs when a check failed) and kill whatever it started."""
    refuse_unless_isolated()
    network()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        box = Box(Path(tmp))
        error = None
        try:
            with trio.fail_after(deadline):
                await scenario(box)
        except Exception as exc:  # reported in the JSON, with the logs
            error = f"{type(exc).__name__}: {exc}"
        finally:
            for proc in box.procs.values():
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        ok = error is None and bool(box.checks) and all(box.checks.values())
        logs = {}
        if not ok:
            for f in sorted(Path(tmp).glob("*.log")):
                logs[f.stem] = f.read_text(errors="replace")[-3000:]
        print(json.dumps({"ok": ok, "error": error, "checks": box.checks,
                          "details": box.details if not ok else {}, "logs": logs}))  # fmt: skip
        return 0 if ok else 1


async def main() -> int:
    return await run_box(scenario, build_network, "np-box-", DEADLINE)


if __name__ == "__main__":
    sys.exit(trio.run(main))
