"""deploy/: the manifests say what the code needs, and Kubernetes would accept them.

Structural checks run everywhere (selectors match labels, RBAC covers every
resource discovery watches, probes hit the admin port, hardening is present,
the grace period covers the drain). Strict schema validation needs
``kubernetes-validate`` (it bundles the schemas, so it runs offline); without
it that test is skipped with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodeproxy.discovery.kubernetes import KubernetesDiscoveryConfig, watched_resources
from nodeproxy.discovery.kubernetes.discovery import EndpointsApi

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MANIFESTS = [DEPLOY / "daemonset.yaml", *sorted((DEPLOY / "examples").glob("*.yaml"))]
OLDEST_KUBERNETES = "1.29.0"  # EndpointSlice v1, bound service-account tokens
Obj = dict[str, Any]


def objects(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def one(kind: str, path: Path = DEPLOY / "daemonset.yaml") -> Obj:
    (found,) = [o for o in objects(path) if o["kind"] == kind]
    return found


def proxy_container() -> Obj:
    (container,) = one("DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def native_config() -> Obj:
    text = one("ConfigMap")["data"]["config.yaml"]
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)(s|m)", duration)
    assert m, duration
    return int(m[1]) * (60 if m[2] == "m" else 1)


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


def test_rbac_covers_every_watched_resource_and_binds_the_pod_account() -> None:
    rules = one("ClusterRole")["rules"]
    granted = {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    apis: tuple[EndpointsApi, ...] = ("endpointslices", "endpoints")
    for api in apis:
        config = KubernetesDiscoveryConfig(endpoints_api=api, node_name="n")
        for r in watched_resources(config):
            for verb in ("list", "watch"):
                assert (r.group, r.name, verb) in granted, (r, verb)
    assert {v for _, _, v in granted} == {"get", "list", "watch"}  # read-only
    binding = one("ClusterRoleBinding")
    assert binding["roleRef"]["name"] == one("ClusterRole")["metadata"]["name"]
    account = one("ServiceAccount")["metadata"]
    pod = one("DaemonSet")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["name"]
    subject = {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    assert subject in [
        {k: s[k] for k in ("kind", "name", "namespace")} for s in binding["subjects"]
    ]


def test_probes_and_ports_match_the_config() -> None:
    container, config = proxy_container(), native_config()
    ports = {p["name"]: p for p in container["ports"]}
    assert config["admin"]["address"].endswith(f":{ports['admin']['containerPort']}")
    assert "hostPort" not in ports["admin"]  # the admin port stays off the node
    assert config["listeners"][0]["address"] == "0.0.0.0:4140"
    assert (ports["outbound"]["hostPort"], ports["inbound"]["hostPort"]) == (4140, 4143)
    assert config["mesh"]["inbound"].endswith(":4143")
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {
        "NODE_NAME": "spec.nodeName",
        "HOST_IP": "status.hostIP",
        "POD_IP": "status.podIP",
    }
    assert container["args"][-1] == "/etc/nodeproxy/config/config.yaml"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert config["mesh"]["ca_dir"] == mounts["ca"]


def test_hardening_scheduling_and_drain() -> None:
    ds = one("DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    sc = proxy_container()["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert proxy_container()["resources"].keys() == {"requests", "limits"}
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    drain = seconds(native_config()["limits"]["drain_timeout"])
    assert drain < pod["terminationGracePeriodSeconds"] <= drain + 30
    (ca,) = [v for v in pod["volumes"] if v["name"] == "ca"]
    assert ca["secret"]["defaultMode"] & 0o007 == 0  # the CA key is not world-readable


def test_dockerfile_matches_the_daemonset() -> None:
    text = (ROOT / "Dockerfile").read_text()
    uid = one("DaemonSet")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert re.search(rf"^USER {uid}:{uid}$", text, re.M)
    assert 'ENTRYPOINT ["nodeproxy"]' in text
    assert proxy_container()["args"][-1] in text


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
    typo = tmp_path / "typo.yaml"
    text = (DEPLOY / "daemonset.yaml").read_text()
    typo.write_text(text.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem"))
    bad = subprocess.run([*args, str(typo)], capture_output=True, timeout=120)
    assert bad.returncode != 0
