"""From Services, EndpointSlices/Endpoints, Pods and Nodes to clusters of endpoints (pure).

Objects go through the same two steps as in the reflector: projected to records
(``project.py``) and translated (``translate.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nodeproxy.config.model import EndpointConfig
from nodeproxy.discovery.kubernetes import project, translate
from nodeproxy.discovery.kubernetes.translate import PodIdentity, Translator, cluster_name
from tests.fakes.k8s_objects import endpoint, endpoint_slice, endpoints_v1, node, pod, service

Objs = Iterable[dict[str, Any]]
Clusters = dict[str, tuple[EndpointConfig, ...]]


def clusters_from_slices(services: Objs, slices: Objs, pods: Objs = ()) -> Clusters:
    return translate.clusters_from(
        map(project.service, services), map(project.endpoint_slice, slices), map(project.pod, pods)
    )


def clusters_from_endpoints(services: Objs, endpoints: Objs) -> Clusters:
    return translate.clusters_from(
        map(project.service, services), map(project.endpoints_v1, endpoints)
    )


def node_proxies(nodes: Objs) -> dict[str, str]:
    return translate.node_proxies(map(project.node, nodes))


def pod_identities(pods: Objs) -> dict[str, PodIdentity]:
    return translate.pod_identities(map(project.pod, pods))


def hosts(eps: tuple[EndpointConfig, ...]) -> list[str]:
    return [e.address for e in eps]


def test_cluster_names_follow_the_native_config() -> None:
    assert cluster_name("bdgreeter", "default") == "bdgreeter"
    assert cluster_name("db", "prod") == "db.prod"
    assert cluster_name("db", "prod", default_namespace="prod") == "db"


def test_several_slices_per_service_only_ready_and_not_terminating() -> None:
    svc = service("bdgreeter", [("http", 80, 8080)])
    slices = [
        endpoint_slice("bd-1", "bdgreeter", [
            endpoint("10.0.1.1"),
            endpoint("10.0.1.2", ready=False),
        ]),
        endpoint_slice("bd-2", "bdgreeter", [
            endpoint("10.0.2.1", node="node-2"),
            endpoint("10.0.2.2", ready=False, terminating=True),
            endpoint("10.0.2.3", ready=None),  # nil ready means ready (API docs)
        ]),
        endpoint_slice("other-1", "other", [endpoint("10.0.9.9")]),
    ]  # fmt: skip
    clusters = clusters_from_slices([svc], slices)
    assert sorted(clusters) == ["bdgreeter", "bdgreeter:80"]
    assert hosts(clusters["bdgreeter"]) == ["10.0.1.1:8080", "10.0.2.1:8080", "10.0.2.3:8080"]
    assert clusters["bdgreeter"] == clusters["bdgreeter:80"]
    assert [e.node for e in clusters["bdgreeter"]] == ["node-1", "node-2", "node-1"]


def test_terminating_but_ready_endpoint_gets_no_new_traffic() -> None:
    # publishNotReadyAddresses keeps ready=true while terminating
    svc = service("s", [("", 80, 8080)])
    sl = endpoint_slice("s-1", "s", [endpoint("10.0.0.1", terminating=True)], ports=(("", 8080),))
    assert clusters_from_slices([svc], [sl])["s"] == ()


def test_port_names_pick_the_slice_port_and_each_port_is_a_cluster() -> None:
    svc = service("api", [("grpc", 9090, 9000), ("http", 8080, 8000)], ns="prod")
    sl = endpoint_slice(
        "api-1", "api", [endpoint("10.1.0.1")], ports=(("http", 8000), ("grpc", 9000)), ns="prod"
    )
    clusters = clusters_from_slices([svc], [sl])
    assert hosts(clusters["api.prod:8080"]) == ["10.1.0.1:8000"]
    assert hosts(clusters["api.prod:9090"]) == ["10.1.0.1:9000"]
    assert clusters["api.prod"] == clusters["api.prod:9090"]  # no port 80: the first port


def test_slices_in_another_namespace_do_not_match() -> None:
    svc = service("s", [("http", 80, 8080)], ns="a")
    sl = endpoint_slice("s-1", "s", [endpoint("10.0.0.1")], ns="b")
    assert clusters_from_slices([svc], [sl]) == {"s.a": (), "s.a:80": ()}


def test_service_without_slices_is_an_empty_cluster_and_external_name_is_skipped() -> None:
    ext = service("ext", [("http", 80, 80)])
    ext["spec"]["type"] = "ExternalName"
    clusters = clusters_from_slices([service("lonely", [("http", 80, 8080)]), ext], [])
    assert clusters == {"lonely": (), "lonely:80": ()}


def test_duplicate_address_across_slices_is_listed_once() -> None:
    svc = service("s", [("http", 80, 8080)])
    slices = [endpoint_slice(f"s-{i}", "s", [endpoint("10.0.0.1")]) for i in range(2)]
    assert hosts(clusters_from_slices([svc], slices)["s"]) == ["10.0.0.1:8080"]


def test_labels_from_the_local_pod_and_the_zone() -> None:
    svc = service("s", [("http", 80, 8080)])
    sl = endpoint_slice("s-1", "s", [
        endpoint("10.0.0.1", pod="s-a", zone="z1"),
        endpoint("10.0.0.2", pod="s-remote"),
    ])  # fmt: skip
    pods = [pod("s-a", "10.0.0.1", labels={"version": "v1"})]
    eps = clusters_from_slices([svc], [sl], pods)["s"]
    assert dict(eps[0].labels) == {"version": "v1", "topology.kubernetes.io/zone": "z1"}
    assert dict(eps[1].labels) == {}


def test_v1_endpoints_ready_addresses_only() -> None:
    svc = service("bdgreeter", [("http", 80, 8080)])
    eps = endpoints_v1("bdgreeter", [("10.0.0.1", "n1"), ("10.0.0.2", "n2")], [("10.0.0.3", "n1")])
    clusters = clusters_from_endpoints([svc], [eps])
    assert hosts(clusters["bdgreeter"]) == ["10.0.0.1:8080", "10.0.0.2:8080"]
    assert [e.node for e in clusters["bdgreeter"]] == ["n1", "n2"]


def test_node_proxy_addresses() -> None:
    no_ip = {"metadata": {"name": "n3"}, "status": {"addresses": []}}
    v6 = node("n4", "fd00::4")
    assert node_proxies([node("n1", "192.168.0.1"), no_ip, v6]) == {
        "n1": "192.168.0.1:4143",
        "n4": "[fd00::4]:4143",
    }


def test_pod_identities_by_ip() -> None:
    done = pod("job", "10.0.0.9")
    done["status"]["phase"] = "Succeeded"
    host = pod("hostnet", "192.168.0.1")
    host["spec"]["hostNetwork"] = True
    pods = [pod("web", "10.0.0.1", ns="shop", service_account="web-sa"), done, host]
    assert pod_identities(pods) == {"10.0.0.1": PodIdentity("web", "shop", "web-sa")}


def test_translator_rebuilds_only_the_services_a_change_touches() -> None:
    def slice_of(i: int, ip: str, pod_name: str | None = None) -> project.SliceRecord:
        return project.endpoint_slice(
            endpoint_slice(f"s{i}-1", f"s{i}", [endpoint(ip, pod=pod_name)])
        )

    t = Translator()
    svcs = [
        (f"default/s{i}", project.service(service(f"s{i}", [("http", 80, 8080)]))) for i in range(3)
    ]
    assert t.update(svcs, [(f"default/s{i}-1", slice_of(i, f"10.0.0.{i}")) for i in range(3)])
    assert t.rebuilt == 3
    first = dict(t.clusters)
    assert sorted(first) == ["s0", "s0:80", "s1", "s1:80", "s2", "s2:80"]
    # one slice changes: one service rebuilt, the others keep their very objects
    assert t.update([], [("default/s1-1", slice_of(1, "10.0.9.9"))])
    assert t.rebuilt == 1
    assert hosts(t.clusters["s1"]) == ["10.0.9.9:8080"]
    assert t.clusters["s0"] is first["s0"]
    # a change that changes nothing publishes nothing
    assert not t.update([], [("default/s1-1", slice_of(1, "10.0.9.9"))])
    # a local pod's labels rebuild only the service its endpoint backs
    t.update([], [("default/s0-1", slice_of(0, "10.0.0.0", "p"))])
    t.update([], [], [("default/p", project.pod(pod("p", "10.0.0.0", labels={"v": "1"})))])
    assert t.rebuilt == 1
    assert dict(t.clusters["s0"][0].labels) == {"v": "1"}
    t.update([], [], [("default/p", None)])
    assert dict(t.clusters["s0"][0].labels) == {}
    # a slice that moves to another service, a deleted service, an unknown pod
    assert t.update([], [("default/s0-1", slice_of(2, "10.0.5.5"))])
    assert hosts(t.clusters["s0"]) == []
    assert hosts(t.clusters["s2"]) == ["10.0.0.2:8080", "10.0.5.5:8080"]
    assert t.update([("default/s2", None)], [])
    assert "s2" not in t.clusters
    assert "s2:80" not in t.clusters
    assert not t.update([], [], [("default/nobody", None)])
    assert repr(t) == "<Translator [2 services, 4 clusters, 0 rebuilt last]>"


def test_records_keep_only_what_translation_reads() -> None:
    sl = endpoint_slice("s-1", "s", [
        endpoint("10.0.0.1", pod="a", zone="z1"), endpoint("10.0.0.2", ready=False),
        endpoint("10.0.0.3", terminating=True),
    ])  # fmt: skip
    sl["metadata"]["managedFields"] = [{"manager": "x", "fieldsV1": {"f:endpoints": {}}}]
    assert project.endpoint_slice(sl) == project.SliceRecord(
        "default", "s", (("http", 8080),),
        (project.EndpointRecord("10.0.0.1", "node-1", "z1", ("default", "a")),),
    )  # fmt: skip
    n = node("n1", "192.168.0.1")
    n["status"]["images"] = [{"names": ["registry/app:v1"], "sizeBytes": 1}]
    assert project.node(n) == project.NodeRecord("n1", "192.168.0.1")
    # zone-only labels are one shared mapping per zone
    svc = service("s", [("http", 80, 8080)])
    two = endpoint_slice(
        "s-1", "s", [endpoint("10.0.0.1", zone="z"), endpoint("10.0.0.2", zone="z")]
    )
    eps = clusters_from_slices([svc], [two])["s"]
    assert eps[0].labels is eps[1].labels


def test_malformed_objects_are_projected_field_by_field() -> None:
    assert project.service({"metadata": "junk", "spec": {"ports": [3, {"port": "80"}]}}) == (
        project.ServiceRecord("", "", ())
    )
    bad_slice: dict[str, Any] = {
        "endpoints": [None, {"addresses": []}, {"addresses": ["10.0.0.1"], "targetRef": 3}]
    }
    assert project.endpoint_slice(bad_slice).endpoints == (
        project.EndpointRecord("10.0.0.1", None, None, None),
    )
    assert project.pod({"status": {"podIPs": "x", "podIP": "10.0.0.5"}}).ips == ("10.0.0.5",)
