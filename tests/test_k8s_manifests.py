"""deploy/: the manifests say what the code needs, and Kubernetes would accept them.

Structural checks, one per promise the manifests make (docs/kubernetes.md):
the outbound port is on a node-local address and nothing is published on
every node address; admin stays on loopback and the kubelet probes a port
that answers only /ready and /healthz; RBAC is exactly what discovery reads,
pods through ``spec.nodeName``; the startup probe waits for /ready with a
real budget; Linux nodes only; a quota for the priority class; images with
a registry; memory requests and limits; no CA key on any node; upgrades
surge through the handoff socket. Strict schema validation uses
``kubernetes-validate`` (a test dependency that bundles the schemas, so it
runs offline).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
import yaml

from nodeproxy.app import AppHandle, run_app
from nodeproxy.config import load_config_text
from nodeproxy.discovery.kubernetes import KubernetesDiscoveryConfig, watched_resources

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MANIFESTS = [
    *sorted(DEPLOY.glob("*.yaml")),
    *sorted((DEPLOY / "examples").glob("*.yaml")),
]
OLDEST_KUBERNETES = "1.29.0"  # EndpointSlice v1, bound service-account tokens
OUTBOUND_IP = ipaddress.ip_address("169.254.20.41")
Obj = dict[str, Any]


def objects(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def one(kind: str, path: Path = DEPLOY / "daemonset.yaml") -> Obj:
    (found,) = [o for o in objects(path) if o["kind"] == kind]
    return found


def pod_spec() -> Obj:
    spec = one("DaemonSet")["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def proxy_container() -> Obj:
    (container,) = pod_spec()["containers"]
    assert isinstance(container, dict)
    return container


def native_config() -> Obj:
    text = one("ConfigMap")["data"]["config.yaml"]
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)(s|m)", duration)
    assert m, duration
    return int(m[1]) * (60 if m[2] == "m" else 1)


def mebibytes(quantity: str) -> float:
    m = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
    assert m, quantity
    return int(m[1]) * (1024 if m[2] == "Gi" else 1)


def all_containers(spec: Obj) -> list[Obj]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def pod_specs(path: Path) -> list[Obj]:
    return [
        o["spec"]["template"]["spec"]
        for o in objects(path)
        if o["kind"] in ("DaemonSet", "Deployment")
    ]


def mounts(container: Obj) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}


def volume(name: str) -> Obj:
    (found,) = [v for v in pod_spec()["volumes"] if v["name"] == name]
    assert isinstance(found, dict)
    return found


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_workload_selectors_match_their_pod_labels(path: Path) -> None:
    pods: list[dict[str, str]] = []
    for obj in objects(path):
        if obj["kind"] in ("DaemonSet", "Deployment"):
            selector = obj["spec"]["selector"]["matchLabels"]
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), obj["metadata"]["name"]
            pods.append(labels)
    for obj in objects(path):
        if obj["kind"] == "Service":
            assert any(obj["spec"]["selector"].items() <= p.items() for p in pods)


# -- the outbound port: pods of the node only ------------------------------------------


def test_outbound_port_is_on_a_node_local_address_not_on_every_node_address() -> None:
    config, pod = native_config(), pod_spec()
    (outbound,) = config["listeners"]
    host, port = host_port(outbound["address"])
    assert (ipaddress.ip_address(host), port) == (OUTBOUND_IP, 4140)
    assert OUTBOUND_IP.is_link_local  # never routed to this node from off the node
    # nothing published on the node's addresses: no hostPort (and, with hostNetwork,
    # no containerPort either, which the API would turn into a hostPort)
    assert pod["hostNetwork"] is True
    for container in all_containers(pod):
        assert "ports" not in container, container["name"]
    # every address explicit: in the node's network a wildcard means every node address
    addresses = [
        outbound["address"],
        config["admin"]["address"],
        config["admin"]["probe_address"],
        config["mesh"]["inbound"],
    ]
    for address in addresses:
        assert host_port(address)[0] not in ("0.0.0.0", "::", "[::]", ""), address
    assert config["mesh"]["inbound"] == "${HOST_IP}:4143"  # mTLS peers reach InternalIP
    # the init container gives the node that address, on an interface of its own
    (setup,) = pod["initContainers"]
    script = setup["args"][0]
    assert f"ip addr replace {OUTBOUND_IP}/32 dev nodeproxy0" in script
    assert "type dummy" in script
    assert setup["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "CHOWN"]
    # a NetworkPolicy would not select a hostNetwork pod: none pretends to
    assert not [o for o in objects(DEPLOY / "daemonset.yaml") if o["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize("path", sorted((DEPLOY / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_send_to_the_node_local_proxy_address(path: Path) -> None:
    for spec in pod_specs(path):
        for container in all_containers(spec):
            for env in container.get("env", []):
                if env["name"] == "http_proxy":
                    url = urlsplit(env["value"])
                    assert url.hostname is not None
                    ip = ipaddress.ip_address(url.hostname)
                    assert ip.is_loopback or (ip, url.port) == (OUTBOUND_IP, 4140), env


# -- admin on loopback, probes on a port of their own ------------------------------------


def test_admin_is_on_loopback_and_the_kubelet_probes_the_probe_port() -> None:
    config, container = native_config(), proxy_container()
    admin_host, admin_port = host_port(config["admin"]["address"])
    probe_host, probe_port = host_port(config["admin"]["probe_address"])
    assert ipaddress.ip_address(admin_host).is_loopback
    assert ipaddress.ip_address(probe_host).is_loopback  # the kubelet shares the node's network
    assert probe_port != admin_port
    probes = {k: container[k]["httpGet"] for k in ("readinessProbe", "livenessProbe")}
    for name, probe in probes.items():
        assert (probe["host"], probe["port"]) == (probe_host, probe_port), name
        assert probe["port"] != admin_port, name  # never the port that serves POST /drain
    assert probes["readinessProbe"]["path"] == "/ready"
    assert probes["livenessProbe"]["path"] == "/healthz"
    startup = container["startupProbe"]["exec"]["command"][-1]
    assert f":{probe_port}" in startup
    assert f":{admin_port}" not in startup


# -- RBAC: what discovery reads, and no more ---------------------------------------------


def discovery_config() -> KubernetesDiscoveryConfig:
    k8s = native_config()["discovery"]["kubernetes"]
    return KubernetesDiscoveryConfig(endpoints_api=k8s["endpoints_api"], node_name="node-1")


def test_rbac_grants_exactly_the_list_and_watch_discovery_makes() -> None:
    granted = {
        (group, resource, verb)
        for rule in one("ClusterRole")["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    needed = {
        (r.group, r.name, verb)
        for r in watched_resources(discovery_config())
        for verb in ("list", "watch")
    }
    assert granted == needed  # no get, no endpoints with endpointslices, nothing to write
    assert native_config()["node_name"] == "${NODE_NAME}"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in proxy_container()["env"]}
    assert env["NODE_NAME"] == "spec.nodeName"
    binding = one("ClusterRoleBinding")
    assert binding["roleRef"]["name"] == one("ClusterRole")["metadata"]["name"]
    account = one("ServiceAccount")["metadata"]
    assert pod_spec()["serviceAccountName"] == account["name"]
    subject = {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    assert subject in [
        {k: s[k] for k in ("kind", "name", "namespace")} for s in binding["subjects"]
    ]


def test_pods_are_listed_and_watched_only_for_this_node() -> None:
    (pods,) = [r for r in watched_resources(discovery_config()) if r.name == "pods"]
    for target in (pods.list_target(500), pods.watch_target("7", 300)):
        assert "fieldSelector=spec.nodeName%3Dnode-1" in target, target


# -- probes, scheduling, resources --------------------------------------------------------


def test_startup_probe_waits_for_ready_with_a_real_budget() -> None:
    container = proxy_container()
    startup = container["startupProbe"]
    probe_port = host_port(native_config()["admin"]["probe_address"])[1]
    script = startup["exec"]["command"][-1]
    handoff = native_config()["handoff_socket"]
    assert f"ss -Hxlp | grep -F {handoff} | grep -q pid=" in script  # taken over here
    assert f"http://127.0.0.1:{probe_port}/ready" in script  # not the liveness path
    assert startup["timeoutSeconds"] >= 2  # a Python start on a busy node
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert 120 <= budget <= 600, budget


def startup_probe(port: int, handoff: str) -> list[str]:
    """The manifest's startup probe command, for a probe listener on ``port``."""
    config = native_config()
    probe_port = host_port(config["admin"]["probe_address"])[1]
    command: list[str] = proxy_container()["startupProbe"]["exec"]["command"]
    return [
        part.replace(f":{probe_port}", f":{port}")
        .replace(config["handoff_socket"], handoff)
        .replace("python -c", f"{sys.executable} -c")
        for part in command
    ]


APP = """
{handoff}
admin: {{address: "127.0.0.1:0", probe_address: "127.0.0.1:0"}}
listeners: [{{address: "127.0.0.1:0"}}]
services: [{{name: web, endpoints: [{{address: "127.0.0.1:9"}}]}}]
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ss") is None or shutil.which("unshare") is None,
    reason="needs root, ss and unshare (another PID namespace stands in for another pod)",
)
async def test_startup_probe_passes_only_in_the_container_whose_process_took_over() -> None:
    other_pod = ("unshare", "--pid", "--fork", "--mount-proc")

    async def probe(*prefix: str, command: list[str] | None = None) -> int:
        argv = [*prefix, *(command or startup_probe(port, handoff))]
        done = await trio.run_process(argv, check=False, capture_stdout=True, capture_stderr=True)
        return done.returncode

    with tempfile.TemporaryDirectory(prefix="np-probe-") as tmp:  # short: sun_path
        handoff = f"{tmp}/handoff.sock"
        for takes_the_path in (True, False):
            text = APP.format(handoff=f"handoff_socket: {handoff}" if takes_the_path else "")
            async with trio.open_nursery() as nursery:
                app = partial(run_app, load_config_text(text), handle_signals=False)
                handle: AppHandle = await nursery.start(app)
                assert handle.probe_port is not None
                port = handle.probe_port
                with trio.fail_after(60):
                    if not takes_the_path:  # ready, holds the sockets, but no handoff path
                        assert await probe() != 0
                        handle.runtime.drain.start("test")
                        continue
                    assert await probe() == 0  # took over the path, and ready
                    # the new pod during an upgrade: the old pod's process answers 200 on
                    # the same address, but no process of this container (PID namespace)
                    # listens on the handoff path
                    assert await probe(*other_pod) != 0
                    get = f"import urllib.request as u; u.urlopen('http://127.0.0.1:{port}/ready')"
                    assert await probe(*other_pod, command=[sys.executable, "-c", get]) == 0
                    handle.runtime.listeners_ready = False  # took over, but /ready says 503
                    assert await probe() != 0
                handle.runtime.drain.start("test")


def test_linux_nodes_only_and_a_quota_for_the_priority_class() -> None:
    pod = pod_spec()
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert {"operator": "Exists"} in pod["tolerations"]
    assert pod["priorityClassName"] == "system-node-critical"
    quota = one("ResourceQuota")
    assert quota["metadata"]["namespace"] == one("DaemonSet")["metadata"]["namespace"]
    (term,) = quota["spec"]["scopeSelector"]["matchExpressions"]
    assert term == {
        "scopeName": "PriorityClass",
        "operator": "In",
        "values": [pod["priorityClassName"]],
    }
    assert int(quota["spec"]["hard"]["pods"]) >= 2  # room for the surge pod


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_images_name_their_registry_and_a_version(path: Path) -> None:
    for spec in pod_specs(path):
        for container in all_containers(spec):
            image = container["image"]
            registry, _, rest = image.partition("/")
            assert "." in registry or ":" in registry or registry == "localhost", image
            assert re.search(r"(:[\w][\w.-]*|@sha256:[0-9a-f]{64})$", rest), image
            assert not image.endswith(":latest"), image


def test_memory_requests_and_limits() -> None:
    resources = proxy_container()["resources"]
    request = mebibytes(resources["requests"]["memory"])
    limit = mebibytes(resources["limits"]["memory"])
    assert (request, limit) == (128, 256)
    for container in all_containers(pod_spec()):
        assert container["resources"]["limits"]["memory"], container["name"]


def test_hardening_and_drain() -> None:
    pod = pod_spec()
    sc = proxy_container()["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (setup,) = pod["initContainers"]  # root, for ip and chown only: no privileged, no escalation
    assert setup["securityContext"]["privileged"] is False
    assert setup["securityContext"]["allowPrivilegeEscalation"] is False
    assert setup["securityContext"]["capabilities"]["drop"] == ["ALL"]
    drain = seconds(native_config()["limits"]["drain_timeout"])
    assert drain < pod["terminationGracePeriodSeconds"] <= drain + 30


# -- no CA key on a node -----------------------------------------------------------------


def test_no_node_mounts_the_ca_key_and_the_signer_token_is_for_the_signer() -> None:
    pod, mesh = pod_spec(), native_config()["mesh"]
    for v in pod["volumes"]:
        assert "secret" not in v, v["name"]
        for source in v.get("projected", {}).get("sources", []):
            assert "secret" not in source, v["name"]
    assert "ca_dir" not in mesh  # ca_dir means a CA key on the node
    ca_cert = PurePosixPath(mesh["ca_cert"])
    assert str(ca_cert.parent) == mounts(proxy_container())["ca-cert"]
    assert volume("ca-cert")["configMap"]["items"] == [{"key": "ca.crt", "path": ca_cert.name}]
    token = PurePosixPath(mesh["signer"]["token_file"])
    assert str(token.parent) == mounts(proxy_container())["signer-token"]
    (source,) = volume("signer-token")["projected"]["sources"]
    projected = source["serviceAccountToken"]
    assert (projected["audience"], projected["path"]) == ("nodeproxy-signer", token.name)
    assert urlsplit(mesh["signer"]["url"]).scheme == "https"
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"  # the signer's name resolves


# -- upgrades through the handoff ----------------------------------------------------------


def test_upgrades_start_the_new_pod_beside_the_old_and_share_the_handoff_socket() -> None:
    ds, pod, container = one("DaemonSet"), pod_spec(), proxy_container()
    rolling = ds["spec"]["updateStrategy"]["rollingUpdate"]
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert (rolling["maxSurge"], rolling["maxUnavailable"]) == (1, 0)
    # the surge pod fits beside the old one only with no hostPorts: with hostNetwork every
    # declared port would become one (checked above: no container declares ports)
    assert pod["hostNetwork"] is True
    assert all("ports" not in c for c in all_containers(pod))
    socket = PurePosixPath(native_config()["handoff_socket"])
    assert len(str(socket).encode()) <= 96  # the loader's bound, within sun_path
    # restartPolicy is Always: an old process that exited after handing over would be
    # started again and take the sockets back, so it waits for its pod's SIGTERM
    assert native_config()["after_handoff"] == "wait"
    handoff = volume("handoff")["hostPath"]
    assert handoff == {"path": str(socket.parent), "type": "DirectoryOrCreate"}
    assert mounts(container)["handoff"] == str(socket.parent)
    (setup,) = pod["initContainers"]
    assert mounts(setup)["handoff"] == str(socket.parent)
    uid = pod["securityContext"]["runAsUser"]
    assert f"chown {uid}:{uid} {socket.parent}" in setup["args"][0]
    assert "chmod 0700" in setup["args"][0]
    # the old pod goes only after the new process has answered /ready itself for a while
    assert ds["spec"]["minReadySeconds"] >= 10
    drain = seconds(native_config()["limits"]["drain_timeout"])
    assert pod["terminationGracePeriodSeconds"] > drain


def test_dockerfile_matches_the_daemonset() -> None:
    text = (ROOT / "Dockerfile").read_text()
    uid = pod_spec()["securityContext"]["runAsUser"]
    assert re.search(rf"^USER {uid}:{uid}$", text, re.M)
    assert 'ENTRYPOINT ["nodeproxy"]' in text
    assert proxy_container()["args"][-1] in text
    assert "iproute2" in text  # the init container's ip
    (setup,) = pod_spec()["initContainers"]
    assert setup["image"] == proxy_container()["image"]


# -- strict schema validation, offline ---------------------------------------------------


def _validator() -> list[str] | None:
    """kubernetes-validate from $KUBERNETES_VALIDATE, this venv, or PATH."""
    exe = os.environ.get("KUBERNETES_VALIDATE") or shutil.which(
        "kubernetes-validate", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    return [exe] if exe and Path(exe).is_file() else None


def test_manifests_validate_strictly_against_the_oldest_kubernetes(tmp_path: Path) -> None:
    cmd = _validator()
    if cmd is None:
        pytest.skip(
            "kubernetes-validate is not installed (pip install kubernetes-validate, "
            "or point $KUBERNETES_VALIDATE at its executable)"
        )
    args = [*cmd, "--strict", "--quiet", "-k", OLDEST_KUBERNETES]
    done = subprocess.run([*args, *map(str, MANIFESTS)], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    # and the validator does catch a typo, so the pass above means something
    text = (DEPLOY / "daemonset.yaml").read_text()
    for good, typo in (
        ("readOnlyRootFilesystem", "readOnlyRootFileSystem"),
        ("minReadySeconds", "minReadySecond"),
        ("scopeSelector", "scopeSelectors"),
    ):
        bad_file = tmp_path / f"{typo}.yaml"
        bad_file.write_text(text.replace(good, typo))
        bad = subprocess.run([*args, str(bad_file)], capture_output=True, timeout=120)
        assert bad.returncode != 0, typo


# -- transparent interception (docs/interception.md) --------------------------------------


def test_interception_is_off_but_one_uncommented_section_away() -> None:
    config_text = one("ConfigMap")["data"]["config.yaml"]
    assert "intercept" not in native_config()  # off: destinations are this cluster's ranges
    (setup,) = pod_spec()["initContainers"]
    script = setup["args"][0]
    # every rollout installs or removes the rules, as the config says
    cmd = "nodeproxy intercept install --if-configured --config /etc/nodeproxy/config/config.yaml"
    assert cmd in script
    assert "NET_ADMIN" in setup["securityContext"]["capabilities"]["add"]
    assert mounts(setup)["config"] == mounts(proxy_container())["config"]
    assert mounts(setup)["ca-cert"] == mounts(proxy_container())["ca-cert"]  # the config loads
    assert {e["name"] for e in setup["env"]} >= {"NODE_NAME", "HOST_IP"}
    assert "nftables" in (ROOT / "Dockerfile").read_text()
    # uncommented, the section is valid and dnats to the node-local address
    lines = config_text.splitlines()
    start = lines.index("# intercept:")
    section = [ln.removeprefix("# ") for ln in lines[start : start + 3]]
    doc = yaml.safe_load("\n".join(section))
    address = doc["intercept"]["address"]
    assert host_port(address) == (str(OUTBOUND_IP), 15001)
    from nodeproxy.intercept.rules import InterceptRules, nft_install

    host, port = host_port(address)
    rules = InterceptRules.build(["10.244.1.0/24"], doc["intercept"]["destinations"], port,
                                 0x4E50, host)  # fmt: skip
    assert f"dnat to {OUTBOUND_IP}:15001" in nft_install(rules)
