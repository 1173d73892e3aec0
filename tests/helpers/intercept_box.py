"""The interception box: pods in their own network namespaces, no proxy settings.

Run ONLY inside ``unshare --mount --net --pid --fork`` (tests/test_intercept_box.py
does); it refuses otherwise, as tests/helpers/cluster_in_a_box.py does.

    box namespace: br0 10.77.0.1/24 -- the fake Kubernetes API (this process), tcpdump
      node-1 (netns) eth0 10.77.0.11, cbr0 10.78.1.1/24 (pod range) -- nodeproxy
        pod "client" (netns) 10.78.1.10, pod "local" (netns) 10.78.1.20
      node-2 (netns) eth0 10.77.0.12, cbr0 10.78.2.1/24 -- nodeproxy
        pod "remote" (netns) 10.78.2.10

Each pod is a namespace behind a veth on its node's bridge, its default route
the node (a kubenet-shaped node); nodes route each other's pod ranges. Services
have ClusterIPs in 10.96.0.0/16, which nothing routes: only interception makes
them reachable. Each node runs ``nodeproxy intercept install`` from its config,
then the proxy (node-1 with 2 workers, node-2 as one process). The client pod
has no proxy settings: curl and plain sockets to ClusterIPs and pod IPs.
tcpdump on br0 records what crosses between nodes. At the end ``nodeproxy
intercept uninstall`` must leave no rule.
Prints one JSON document: ``{"ok", "error", "checks": {name: bool}, "details"}``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from nodeproxy.tls.ca import init_ca
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.k8s_objects import endpoint, endpoint_slice, node, pod, service
from tests.helpers.box_pods import write_tls
from tests.helpers.cluster_in_a_box import Box, counter, run_box, sh

API_IP = "10.77.0.1"
NODES = {"node-1": ("10.77.0.11", "10.78.1"), "node-2": ("10.77.0.12", "10.78.2")}
PODS = {"client": ("node-1", "10.78.1.10", "client"),
        "local": ("node-1", "10.78.1.20", "server"),
        "remote": ("node-2", "10.78.2.10", "server")}  # fmt: skip
# Service -> (ClusterIP, (port, targetPort), backing pod)
SERVICES = {"greeter": ("10.96.0.10", (80, 8080), "remote"),
            "echo-local": ("10.96.0.11", (9000, 9000), "local"),
            "echo-remote": ("10.96.0.12", (9000, 9000), "remote"),
            "tls-remote": ("10.96.0.13", (443, 9443), "remote"),
            "banner-remote": ("10.96.0.14", (3306, 3306), "remote"),
            "secret-local": ("10.96.0.15", (9000, 9000), "local"),
            "secret-remote": ("10.96.0.16", (9000, 9000), "remote"),
            "tls-secret": ("10.96.0.17", (443, 9443), "remote")}  # fmt: skip
WORKERS = {"node-1": "2", "node-2": "1"}  # interception in a worker fleet and in one process
DEADLINE = 50.0
CONFIG = """
node_name: ${{NODE_NAME}}
workers: ${{WORKERS}}  # node-1, where the client is intercepted: 2 workers; node-2: 1
listeners: [{{address: "0.0.0.0:4140"}}]
admin: {{address: "0.0.0.0:9901"}}
log: {{format: json, access_log: true}}  # one tcp_connection line per TCP connection
discovery:
  kubernetes: {{kubeconfig: {kubeconfig}}}
mesh:
  ca_dir: {ca}
  inbound: "0.0.0.0:4143"
  policy:
    default_action: allow
    rules:
      - name: no-secrets
        action: deny
        from: ["*"]
        to: [secret-local, secret-remote, tls-secret]
intercept:
  address: "169.254.20.41:15001"  # as the DaemonSet: the same link-local address per node
  pod_cidrs: ["${{POD_CIDR}}"]
  destinations: [10.96.0.0/16, 10.78.0.0/16]
"""


def build_network() -> None:
    sh("ip", "link", "set", "lo", "up")
    Path("/run/netns").mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "tmpfs", "tmpfs", "/run/netns")  # private: --mount made it so
    sh("ip", "link", "add", "br0", "type", "bridge")
    sh("ip", "addr", "add", f"{API_IP}/24", "dev", "br0")
    sh("ip", "link", "set", "br0", "up")
    for i, (name, (ip, prefix)) in enumerate(NODES.items(), 1):
        sh("ip", "netns", "add", name)
        sh("ip", "link", "add", f"veth{i}", "type", "veth", "peer", "name", "eth0", "netns", name)
        sh("ip", "link", "set", f"veth{i}", "master", "br0", "up")
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", name, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        sh("ip", "route", "add", f"{prefix}.0/24", "via", ip)  # the box reaches pods (probes)
        sh("ip", "-n", name, "link", "add", "cbr0", "type", "bridge")
        sh("ip", "-n", name, "addr", "add", f"{prefix}.1/24", "dev", "cbr0")
        sh("ip", "-n", name, "link", "set", "cbr0", "up")
        sh("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # node-setup puts it on a dummy interface; this kernel may lack the dummy driver
        sh("ip", "-n", name, "addr", "add", "169.254.20.41/32", "dev", "lo")
        for other, (other_ip, other_prefix) in NODES.items():
            if other != name:
                sh("ip", "-n", name, "route", "add", f"{other_prefix}.0/24", "via", other_ip)
    for i, (name, (where, ip, _)) in enumerate(PODS.items(), 1):
        netns, prefix = f"pod-{name}", NODES[where][1]
        sh("ip", "netns", "add", netns)
        sh("ip", "link", "add", f"p{i}", "netns", where, "type", "veth",
           "peer", "name", "eth0", "netns", netns)  # fmt: skip
        sh("ip", "-n", where, "link", "set", f"p{i}", "master", "cbr0", "up")
        sh("ip", "-n", netns, "link", "set", "lo", "up")
        sh("ip", "-n", netns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", netns, "link", "set", "eth0", "up")
        sh("ip", "-n", netns, "route", "add", "default", "via", f"{prefix}.1")


def seed(api: FakeApiServer) -> None:
    for name, (node_name, ip, sa) in PODS.items():
        api.add("pods", pod(name, ip, node=node_name, service_account=sa))
    for name, (ip, _) in NODES.items():
        api.add("nodes", node(name, ip))
    for name, (cluster_ip, (port, target), backend) in SERVICES.items():
        svc = service(name, [("p", port, target)])
        svc["spec"]["clusterIP"] = cluster_ip
        svc["spec"]["clusterIPs"] = [cluster_ip]
        api.add("services", svc)
        where, ip, _ = PODS[backend]
        eps = [endpoint(ip, node=where, pod=backend)]
        api.add("endpointslices", endpoint_slice(f"{name}-1", name, eps, ports=[("p", target)]))


def tcp_flows(pcap: bytes) -> dict[tuple[str, int, str, int], bytes]:
    """Each TCP direction's first payload bytes in a pcap (Ethernet, IPv4): a TLS
    connection opens with a handshake record (0x16 0x03) both ways."""
    flows: dict[tuple[str, int, str, int], bytes] = {}
    p = 24  # the global header
    while p + 16 <= len(pcap):
        caplen = struct.unpack_from("<I", pcap, p + 8)[0]
        frame, p = pcap[p + 16 : p + 16 + caplen], p + 16 + caplen
        if frame[12:14] != b"\x08\x00" or frame[23] != 6:  # IPv4, TCP
            continue
        ip = frame[14:]
        tcp = ip[(ip[0] & 0x0F) * 4 : struct.unpack_from("!H", ip, 2)[0]]
        payload = tcp[(tcp[12] >> 4) * 4 :]
        src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
        key = (src, struct.unpack_from("!H", tcp)[0], dst, struct.unpack_from("!H", tcp, 2)[0])
        if payload and key not in flows:
            flows[key] = payload
    return flows


def node_env(name: str) -> dict[str, str]:
    """A node's ${VAR}s in the shared config."""
    return {"NODE_NAME": name, "POD_CIDR": f"{NODES[name][1]}.0/24", "WORKERS": WORKERS[name]}


def no_proxy_env() -> dict[str, str]:
    """The client pod's environment: nothing that points at a proxy."""
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


async def run_in(netns: str, *args: str, env: dict[str, str] | None = None) -> str:
    r = await trio.run_process(
        ["ip", "netns", "exec", netns, *args],
        capture_stdout=True, capture_stderr=True, check=False, env=env or no_proxy_env(),
    )  # fmt: skip
    return r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")


async def curl(url: str, *headers: str) -> tuple[str, str]:
    """One request from the client pod, no proxy: (``<code> <x-served-by>``, body)."""
    args = [a for h in headers for a in ("-H", h)]
    out = await run_in("pod-client", "curl", "-sS", "--max-time", "5", *args,
                       "-w", r"\n%{http_code} %header{x-served-by}", url)  # fmt: skip
    body, _, status = out.strip().rpartition("\n")
    return status, body


async def scenario(box: Box) -> None:
    ca = box.work / "ca"
    init_ca(ca)
    write_tls(box.work)
    api = FakeApiServer(host=API_IP)
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=5) as http:
        await nursery.start(api.serve)
        seed(api)
        kc = api.write_kubeconfig(box.work / "kubeconfig", token="box-token")
        config = box.work / "nodeproxy.yaml"
        config.write_text(CONFIG.format(kubeconfig=kc, ca=ca))
        py = sys.executable
        installed = {}
        for name in NODES:
            env = {**os.environ, **node_env(name)}
            out = await run_in(name, py, "-m", "nodeproxy", "intercept", "install", "-c",
                               str(config), env=env)  # fmt: skip
            again = await run_in(name, py, "-m", "nodeproxy", "intercept", "install", "-c",
                                 str(config), env=env)  # fmt: skip
            rules = await run_in(name, "nft", "list", "ruleset")
            installed[name] = rules
            box.check(f"install_idempotent_{name}", rules.count("dnat to 169.254.20.41:15001") == 1
                      and "installed" in out + again, [out, again, rules])  # fmt: skip
            await box.spawn(name, name, [py, "-m", "nodeproxy", "run", "-c", str(config)],
                            node_env(name))  # fmt: skip
        for name in ("local", "remote"):
            await box.spawn(name, f"pod-{name}", [py, "-m", "tests.helpers.box_pods", "serve",
                                                  name, str(box.work)], {})  # fmt: skip
        for ip, _ in NODES.values():
            await box.wait_http(http, f"http://{ip}:9901/ready")
        for name in ("local", "remote"):
            await box.wait_http(http, f"http://{PODS[name][1]}:8080/healthz")

        pcap = box.work / "br0.pcap"
        dump = await trio.lowlevel.open_process(
            ["tcpdump", "-i", "br0", "-U", "--immediate-mode", "-s", "0", "-w", str(pcap),
             "tcp and not port 9901 and not port " + api.url.rsplit(":", 1)[1]],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        assert dump.stderr is not None
        await dump.stderr.receive_some(4096)  # "listening on br0": capturing from here

        greeter_ip = SERVICES["greeter"][0]
        by_ip = await curl(f"http://{greeter_ip}/intercepted-http-marker")
        box.check("http_to_cluster_ip", by_ip[0] == "200 remote"
                  and f"host={greeter_ip}" in by_ip[1], by_ip)  # fmt: skip
        by_pod = await curl(f"http://{PODS['remote'][1]}:8080/intercepted-pod-marker")
        box.check("http_to_remote_pod_ip", by_pod[0] == "200 remote", by_pod)
        lying = await curl(f"http://{greeter_ip}/", "Host: echo-local")
        box.check("http_routed_by_destination_not_host", lying[0] == "200 remote", lying)
        denied = await curl(f"http://{SERVICES['secret-remote'][0]}:9000/")
        box.check("http_denied_by_policy", denied[0].startswith("403"), denied)

        targets = {
            "echo_local": f"echo@{SERVICES['echo-local'][0]}:9000",
            "echo_remote": f"echo@{SERVICES['echo-remote'][0]}:9000",
            "tls_remote": f"tls@{SERVICES['tls-remote'][0]}:443",
            "banner_remote": f"banner@{SERVICES['banner-remote'][0]}:3306",
            "denied_local": f"echo@{SERVICES['secret-local'][0]}:9000",
            "denied_remote": f"echo@{SERVICES['secret-remote'][0]}:9000",
            "tls_denied": f"tls@{SERVICES['tls-secret'][0]}:443",
            "echo_remote_pod_ip": f"echo@{PODS['remote'][1]}:9000",
        }
        raw = await run_in("pod-client", py, "-m", "tests.helpers.box_pods", "tcp",
                           str(box.work), *targets.values())  # fmt: skip
        try:
            got = json.loads(raw.strip().splitlines()[-1])
        except (ValueError, IndexError):
            got = {"raw": raw}
        res = {k: got.get(v) for k, v in targets.items()}
        box.check("tcp_echo_local", res["echo_local"] == "echo-marker-9000", res)
        box.check("tcp_echo_remote", res["echo_remote"] == "echo-marker-9000", res)
        box.check("tcp_pod_ip_remote", res["echo_remote_pod_ip"] == "echo-marker-9000", res)
        box.check("tls_remote", res["tls_remote"] == "tls:tls-marker-443", res)
        box.check("server_first_remote",
                  res["banner_remote"] == ["BANNER remote\n", "ping-banner"], res)  # fmt: skip
        box.check("tcp_denied_local", res["denied_local"] in ("closed", "timeout")
                  or str(res["denied_local"]).startswith("error"), res)  # fmt: skip
        box.check("tcp_denied_remote", res["denied_remote"] in ("closed", "timeout")
                  or str(res["denied_remote"]).startswith("error"), res)  # fmt: skip
        box.check("tls_denied", str(res["tls_denied"]).startswith("error")
                  or res["tls_denied"] == "closed", res)  # fmt: skip

        dump.send_signal(signal.SIGINT)
        await dump.wait()
        captured = pcap.read_bytes()
        plaintext = [m for m in (b"intercepted-http-marker", b"intercepted-pod-marker",
                                 b"echo-marker", b"ping-banner", b"BANNER", b"hello from")
                     if m in captured]  # fmt: skip
        flows = tcp_flows(captured)
        not_tls = {f"{k[0]}:{k[1]}->{k[2]}:{k[3]}": first[:16].hex()
                   for k, first in flows.items() if first[:2] != b"\x16\x03"}  # fmt: skip
        box.check("bridge_sees_only_tls", len(flows) >= 2 and not plaintext and not not_tls,
                  {"flows": len(flows), "not_tls": not_tls,
                   "plaintext": [p.decode() for p in plaintext]})  # fmt: skip
        metrics = (await http.get(f"http://{NODES['node-1'][0]}:9901/stats/prometheus")).text
        seen = {(p, path): counter(metrics, "nodeproxy_intercepted_connections_total",
                                   protocol=p, path=path)
                for p, path in (("http1", "http"), ("tls", "tcp"), ("tcp", "tcp"))}  # fmt: skip
        box.check("detection_counted", seen[("http1", "http")] >= 4
                  and seen[("tls", "tcp")] == 2 and seen[("tcp", "tcp")] >= 6,
                  {f"{k[0]}/{k[1]}": v for k, v in seen.items()})  # fmt: skip
        log1 = (box.work / "node-1.log").read_text(errors="replace")
        tcp_lines = [json.loads(ln) for ln in log1.splitlines()
                     if ln.startswith("{") and '"tcp_connection"' in ln]  # fmt: skip
        tls_line = [e for e in tcp_lines if e.get("dst") == f"{SERVICES['tls-remote'][0]}:443"]
        box.check("sni_logged", [e.get("sni") for e in tls_line] == ["tls.example"], tcp_lines)
        started = [json.loads(ln) for ln in log1.splitlines()
                   if ln.startswith("{") and '"event": "started"' in ln]  # fmt: skip
        box.check("node1_intercepts_in_two_workers", [e.get("workers") for e in started] == [2]
                  and "intercept" in started[0].get("listeners", {}), started)  # fmt: skip

        for name in NODES:
            env = {**os.environ, **node_env(name)}
            out = await run_in(name, py, "-m", "nodeproxy", "intercept", "uninstall", env=env)
            left = await run_in(name, "nft", "list", "ruleset")
            box.check(f"uninstall_leaves_nothing_{name}", left.strip() == "", [out, left])
        nursery.cancel_scope.cancel()


async def main() -> int:
    return await run_box(scenario, build_network, "np-intercept-", DEADLINE)


if __name__ == "__main__":
    sys.exit(trio.run(main))
