"""deploy/signer.yaml: the signer Deployment says what ``nodeproxy signer`` needs, no more.

Structural checks (the CLI accepts its arguments, the CA Secret is mounted
only here, RBAC is exactly what a signing decision reads, two replicas kept
apart) and the same strict offline schema validation as deploy/daemonset.yaml.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodeproxy.cli import _parser
from tests.test_k8s_manifests import OLDEST_KUBERNETES, _validator

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SIGNER = DEPLOY / "signer.yaml"
Obj = dict[str, Any]


def objects(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def one(kind: str) -> Obj:
    (found,) = [o for o in objects(SIGNER) if o["kind"] == kind]
    return found


def test_the_signer_container_runs_the_cli_with_arguments_it_accepts() -> None:
    deployment = one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = _parser().parse_args(container["args"])
    assert args.command == "signer"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert args.ca_dir == mounts["ca"]
    assert args.listen == ("0.0.0.0", 8443)
    assert args.node_service_account == [("nodeproxy", "nodeproxy")]
    assert "nodeproxy-signer.nodeproxy.svc" in args.dns_name
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    service = one("Service")
    assert service["spec"]["ports"][0]["targetPort"] == "https"
    assert ports["https"] == args.listen[1] == service["spec"]["ports"][0]["port"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {
            "path": "/healthz",
            "port": "https",
            "scheme": "HTTPS",
        }
    assert deployment["spec"]["replicas"] == 2
    assert one("PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert pod["serviceAccountName"] == one("ServiceAccount")["metadata"]["name"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    sc = container["securityContext"]
    assert (sc["readOnlyRootFilesystem"], sc["allowPrivilegeEscalation"]) == (True, False)
    (ca,) = [v for v in pod["volumes"] if v["name"] == "ca"]
    assert ca["secret"]["secretName"] == "nodeproxy-ca"
    assert ca["secret"]["defaultMode"] & 0o007 == 0


def test_rbac_is_exactly_tokenreviews_and_reading_pods() -> None:
    granted = {
        (group, resource, verb)
        for rule in one("ClusterRole")["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == {
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("", "pods", "get"),
        ("", "pods", "list"),
    }
    binding = one("ClusterRoleBinding")
    assert binding["roleRef"]["name"] == one("ClusterRole")["metadata"]["name"]
    account = one("ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]


def test_the_signer_manifest_validates_strictly(tmp_path: Path) -> None:
    cmd = _validator()
    if cmd is None:
        pytest.skip("kubernetes-validate is not installed")
    args = [*cmd, "--strict", "--quiet", "-k", OLDEST_KUBERNETES]
    done = subprocess.run([*args, str(SIGNER)], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    typo = tmp_path / "typo.yaml"
    typo.write_text(SIGNER.read_text().replace("podAffinityTerm", "podAffinityTerms"))
    assert subprocess.run([*args, str(typo)], capture_output=True, timeout=120).returncode != 0
