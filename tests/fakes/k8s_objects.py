"""Builders for the Kubernetes objects the tests put into the fake API server.

Shapes follow the real API (core/v1 Service, Pod, Node; discovery.k8s.io/v1
EndpointSlice; core/v1 Endpoints), trimmed to the fields discovery reads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

Obj = dict[str, Any]


def service(name: str, ports: Sequence[tuple[str, int, int]], ns: str = "default") -> Obj:
    """``ports``: (name, port, targetPort)."""
    return {
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "type": "ClusterIP",
            "ports": [
                {"name": n, "port": p, "targetPort": t, "protocol": "TCP"} for n, p, t in ports
            ],
        },
    }


def endpoint(
    ip: str,
    node: str = "node-1",
    ready: bool | None = True,
    terminating: bool = False,
    pod: str | None = None,
    ns: str = "default",
    zone: str | None = None,
) -> Obj:
    conditions: Obj = {"terminating": terminating, "serving": ready is not False}
    if ready is not None:
        conditions["ready"] = ready
    ep: Obj = {"addresses": [ip], "conditions": conditions, "nodeName": node}
    if pod:
        ep["targetRef"] = {"kind": "Pod", "name": pod, "namespace": ns}
    if zone:
        ep["zone"] = zone
    return ep


def endpoint_slice(
    name: str,
    service_name: str,
    endpoints: Sequence[Obj],
    ports: Sequence[tuple[str, int]] = (("http", 8080),),
    ns: str = "default",
) -> Obj:
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {
                "kubernetes.io/service-name": service_name,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "endpoints": list(endpoints),
        "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports],
    }


def endpoints_v1(
    name: str,
    ready: Sequence[tuple[str, str]],
    not_ready: Sequence[tuple[str, str]] = (),
    ports: Sequence[tuple[str, int]] = (("http", 8080),),
    ns: str = "default",
) -> Obj:
    """``ready``/``not_ready``: (ip, node)."""
    return {
        "metadata": {"name": name, "namespace": ns},
        "subsets": [
            {
                "addresses": [{"ip": ip, "nodeName": n} for ip, n in ready],
                "notReadyAddresses": [{"ip": ip, "nodeName": n} for ip, n in not_ready],
                "ports": [{"name": pn, "port": p, "protocol": "TCP"} for pn, p in ports],
            }
        ],
    }


def pod(
    name: str,
    ip: str,
    node: str = "node-1",
    ns: str = "default",
    service_account: str = "default",
    labels: dict[str, str] | None = None,
) -> Obj:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {"nodeName": node, "serviceAccountName": service_account, "containers": []},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def node(name: str, internal_ip: str) -> Obj:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "addresses": [
                {"type": "Hostname", "address": name},
                {"type": "InternalIP", "address": internal_ip},
            ]
        },
    }


# -- realistic objects: every field a real cluster returns, for memory measurements --------
# (bench/discovery_scale.py; the shapes follow `kubectl get -o json` of a kubeadm cluster:
# managedFields, ownerReferences, last-applied annotations, Nodes with images and conditions)


def _managed(manager: str, operation: str, fields: Obj, subresource: str = "") -> Obj:
    entry: Obj = {
        "manager": manager,
        "operation": operation,
        "apiVersion": "v1",
        "time": "2025-03-14T09:26:53Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    }
    if subresource:
        entry["subresource"] = subresource
    return entry


def _uid(kind: str, i: int) -> str:
    return f"{hash((kind, i)) & 0xFFFFFFFF:08x}-4e2b-4c1d-9a7e-{i:012x}"


def realistic_service(i: int, ns: str) -> Obj:
    """A ClusterIP Service applied with kubectl: two ports, a selector, last-applied."""
    name = f"svc-{i}"
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": f"team-{i % 40}",
              "app.kubernetes.io/managed-by": "Helm", "helm.sh/chart": f"{name}-1.4.2"}  # fmt: skip
    ports = [
        {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080},
        {"name": "metrics", "protocol": "TCP", "port": 9090, "targetPort": 9090},
    ]
    spec = {"ports": ports, "selector": {"app.kubernetes.io/name": name}, "type": "ClusterIP"}
    meta = {"labels": labels, "name": name, "namespace": ns}
    applied = {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}
    fields = {"f:metadata": {"f:annotations": {".": {}, "f:meta.helm.sh/release-name": {}},
                             "f:labels": {".": {}, **{f"f:{k}": {} for k in labels}}},
              "f:spec": {"f:internalTrafficPolicy": {}, "f:ports": {
                  f'k:{{"port":{p["port"]},"protocol":"TCP"}}': {
                      ".": {}, "f:name": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {}}
                  for p in ports}, "f:selector": {}, "f:sessionAffinity": {},
                  "f:type": {}}}  # fmt: skip
    return {
        "metadata": {
            "name": name, "namespace": ns, "uid": _uid("svc", i), "labels": labels,
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": json.dumps(applied),
                "meta.helm.sh/release-name": name, "meta.helm.sh/release-namespace": ns,
            },
            "managedFields": [_managed("helm", "Update", fields)],
        },
        "spec": {**spec, "clusterIP": f"10.96.{i // 250}.{i % 250}",
                 "clusterIPs": [f"10.96.{i // 250}.{i % 250}"], "sessionAffinity": "None",
                 "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                 "internalTrafficPolicy": "Cluster"},
        "status": {"loadBalancer": {}},
    }  # fmt: skip


def realistic_slice(i: int, ns: str, nodes: int, pods: int = 3, node_of: int = -1) -> Obj:
    """The EndpointSlice the controller writes for ``realistic_service(i)``."""
    svc = f"svc-{i}"
    endpoints = []
    for k in range(pods):
        n = (i * pods + k) % nodes if node_of < 0 else node_of
        endpoints.append({
            "addresses": [f"10.{(i >> 8) & 255}.{i & 255}.{k + 10}"],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "nodeName": f"node-{n}", "zone": f"zone-{n % 3}",
            "targetRef": {"kind": "Pod", "namespace": ns, "name": f"{svc}-7d9c8b6f4-{k:05d}",
                          "uid": _uid("pod", i * pods + k)},
        })  # fmt: skip
    ports = [{"name": "http", "protocol": "TCP", "port": 8080},
             {"name": "metrics", "protocol": "TCP", "port": 9090}]  # fmt: skip
    fields: Obj = {"f:addressType": {}, "f:endpoints": {}, "f:metadata": {
        "f:annotations": {".": {}, "f:endpoints.kubernetes.io/last-change-trigger-time": {}},
        "f:generateName": {}, "f:labels": {".": {}, "f:endpointslice.kubernetes.io/managed-by": {},
                                           "f:kubernetes.io/service-name": {}},
        "f:ownerReferences": {".": {}, f'k:{{"uid":"{_uid("svc", i)}"}}': {}}},
        "f:ports": {}}  # fmt: skip
    return {
        "metadata": {
            "name": f"{svc}-x7k2p", "generateName": f"{svc}-", "namespace": ns,
            "uid": _uid("slice", i),
            "labels": {"kubernetes.io/service-name": svc,
                       "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                       "app.kubernetes.io/name": svc, "app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time":
                            "2025-03-14T09:27:41Z"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": svc,
                                 "uid": _uid("svc", i), "controller": True,
                                 "blockOwnerDeletion": True}],
            "managedFields": [{**_managed("endpointslice-controller", "Update", fields),
                               "apiVersion": "discovery.k8s.io/v1"}],
        },
        "addressType": "IPv4", "endpoints": endpoints, "ports": ports,
    }  # fmt: skip


def realistic_node(i: int, images: int = 50) -> Obj:
    """A kubelet-registered Node: labels, taints, conditions, capacity and an image list."""
    name = f"node-{i}"
    labels = {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name,
              "kubernetes.io/os": "linux", "node.kubernetes.io/instance-type": "n2-standard-8",
              "topology.kubernetes.io/region": "europe-west1",
              "topology.kubernetes.io/zone": f"zone-{i % 3}",
              "cloud.google.com/gke-nodepool": f"pool-{i % 4}",
              "cloud.google.com/machine-family": "n2"}  # fmt: skip
    conditions = [
        {"type": t, "status": s, "lastHeartbeatTime": "2025-03-14T09:30:11Z",
         "lastTransitionTime": "2025-03-01T00:00:00Z", "reason": r, "message": m}
        for t, s, r, m in (
            ("MemoryPressure", "False", "KubeletHasSufficientMemory",
             "kubelet has sufficient memory available"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID",
             "kubelet has sufficient PID available"),
            ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ("NetworkUnavailable", "False", "RouteCreated", "RouteController created a route"),
        )
    ]  # fmt: skip
    image_list = [
        {"names": [f"registry.example.com/team-{k % 40}/app-{k}@sha256:{k:064x}",
                   f"registry.example.com/team-{k % 40}/app-{k}:v1.{k}.0"],
         "sizeBytes": 50_000_000 + k * 1_234_567}
        for k in range((i * 7) % 20, (i * 7) % 20 + images)
    ]  # fmt: skip
    resources = {"cpu": "8", "ephemeral-storage": "101430960Ki", "hugepages-1Gi": "0",
                 "hugepages-2Mi": "0", "memory": "32880532Ki", "pods": "110"}  # fmt: skip
    fields = {"f:status": {"f:conditions": {f'k:{{"type":"{c["type"]}"}}': {
        ".": {}, "f:lastHeartbeatTime": {}, "f:lastTransitionTime": {}, "f:message": {},
        "f:reason": {}, "f:status": {}, "f:type": {}} for c in conditions},
        "f:images": {}, "f:nodeInfo": {"f:bootID": {}, "f:kernelVersion": {}}}}  # fmt: skip
    return {
        "metadata": {
            "name": name, "uid": _uid("node", i), "labels": labels,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                            "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                            "csi.volume.kubernetes.io/nodeid":
                            json.dumps({"pd.csi.storage.gke.io": f"projects/p/zones/z/{name}"}),
                            "container.googleapis.com/instance_id": str(1_000_000 + i)},
            "managedFields": [
                _managed("kubelet", "Update", {"f:metadata": {"f:labels": {
                    f"f:{k}": {} for k in labels}}}),
                _managed("kube-controller-manager", "Update",
                         {"f:spec": {"f:podCIDR": {}, "f:podCIDRs": {}}}),
                _managed("kubelet", "Update", fields, subresource="status"),
            ],
        },
        "spec": {"podCIDR": f"10.{64 + i // 256}.{i % 256}.0/24",
                 "podCIDRs": [f"10.{64 + i // 256}.{i % 256}.0/24"],
                 "providerID": f"gce://project/zone-{i % 3}/{name}"},
        "status": {
            "addresses": [{"type": "InternalIP", "address": f"172.16.{i // 250}.{i % 250 + 1}"},
                          {"type": "Hostname", "address": name}],
            "allocatable": resources, "capacity": resources, "conditions": conditions,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "images": image_list,
            "nodeInfo": {"architecture": "amd64", "bootID": _uid("boot", i),
                         "containerRuntimeVersion": "containerd://1.7.22",
                         "kernelVersion": "6.1.100+", "kubeProxyVersion": "v1.30.5",
                         "kubeletVersion": "v1.30.5", "machineID": f"{i:032x}",
                         "operatingSystem": "linux", "osImage": "Container-Optimized OS",
                         "systemUUID": _uid("sys", i)},
        },
    }  # fmt: skip


def realistic_pod(i: int, ns: str, node_name: str, ip: str) -> Obj:
    """A Deployment's pod: one container with env, probes, volumes; status with conditions."""
    name = f"svc-{i}-7d9c8b6f4-{0:05d}"
    container = {
        "name": "app", "image": f"registry.example.com/team-{i % 40}/app-{i}:v1.{i}.0",
        "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
        "env": [{"name": f"SETTING_{k}", "value": f"value-{k}-{i}"} for k in range(12)],
        "resources": {"limits": {"memory": "512Mi"}, "requests": {"cpu": "100m",
                                                                  "memory": "256Mi"}},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"},
                           "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1,
                           "failureThreshold": 3},
        "volumeMounts": [{"name": "kube-api-access", "readOnly": True,
                          "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
        "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent",
    }  # fmt: skip
    return {
        "metadata": {
            "name": name, "generateName": f"svc-{i}-7d9c8b6f4-", "namespace": ns,
            "uid": _uid("pod", i), "labels": {"app.kubernetes.io/name": f"svc-{i}",
                                              "pod-template-hash": "7d9c8b6f4"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": f"svc-{i}-7d9c8b6f4", "uid": _uid("rs", i),
                                 "controller": True, "blockOwnerDeletion": True}],
            "managedFields": [_managed("kube-controller-manager", "Update", {"f:spec": {}}),
                              _managed("kubelet", "Update", {"f:status": {}}, "status")],
        },
        "spec": {"containers": [container], "nodeName": node_name,
                 "serviceAccountName": f"sa-{i % 10}", "restartPolicy": "Always",
                 "volumes": [{"name": "kube-api-access", "projected": {"sources": [
                     {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "hostIP": "172.16.0.1", "qosClass": "Burstable",
                   "conditions": [{"type": t, "status": "True",
                                   "lastTransitionTime": "2025-03-14T09:27:40Z"}
                                  for t in ("Initialized", "Ready", "ContainersReady",
                                            "PodScheduled")],
                   "containerStatuses": [{"name": "app", "ready": True, "restartCount": 0,
                                          "image": container["image"], "started": True,
                                          "containerID": f"containerd://{i:064x}",
                                          "state": {"running": {
                                              "startedAt": "2025-03-14T09:27:30Z"}}}]},
    }  # fmt: skip
