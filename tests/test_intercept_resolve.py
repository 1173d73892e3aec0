"""Where an intercepted connection goes (intercept/resolve.py), from what discovery keeps:
the ClusterIPs of Services (project.py -> translate.py) and the endpoints of the snapshot;
and the ``intercept:`` config section."""

from __future__ import annotations

import pytest

from nodeproxy.config import load_config_text
from nodeproxy.config.model import EndpointConfig
from nodeproxy.discovery.kubernetes import project
from nodeproxy.discovery.kubernetes.translate import Translator
from nodeproxy.discovery.snapshot import EndpointRegistry
from nodeproxy.errors import ConfigError
from nodeproxy.intercept.resolve import Destination, Resolver
from tests.fakes.k8s_objects import endpoint, endpoint_slice, service


def svc(name: str, ip: str | None, ports: list[tuple[str, int, int]], ns: str = "default") -> dict:  # type: ignore[type-arg]
    obj = service(name, ports, ns=ns)
    if ip is not None:
        obj["spec"]["clusterIP"] = ip
        obj["spec"]["clusterIPs"] = [ip]
    return obj


def published() -> tuple[EndpointRegistry, Translator]:
    t = Translator()
    web = svc("web", "10.96.0.10", [("http", 80, 8080), ("admin", 9000, 9000)])
    db = svc("db", "10.96.0.11", [("sql", 5432, 5432)], ns="shop")
    headless = svc("headless", "None", [("http", 80, 8080)])
    web_eps = [endpoint("10.244.2.5", node="node-2", pod="web-a")]
    db_eps = [endpoint("10.244.1.9", node="node-1", pod="db-a", ns="shop")]
    t.update(
        [("default/web", project.service(web)), ("shop/db", project.service(db)),
         ("default/headless", project.service(headless))],
        [("default/web-1", project.endpoint_slice(
            endpoint_slice("web-1", "web", web_eps, ports=[("http", 8080), ("admin", 9000)]))),
         ("shop/db-1", project.endpoint_slice(
            endpoint_slice("db-1", "db", db_eps, ports=[("sql", 5432)], ns="shop")))],
    )  # fmt: skip
    registry = EndpointRegistry()
    registry.publish(t.clusters, t.service_ips)
    return registry, t


def test_discovery_keeps_cluster_ips_per_service_port() -> None:
    _, t = published()
    assert t.service_ips == {
        ("10.96.0.10", 80): "web:80",
        ("10.96.0.10", 9000): "web:9000",
        ("10.96.0.11", 5432): "db.shop:5432",
    }  # the headless Service ("None") has no ClusterIP to intercept
    t.update([("shop/db", None)], [])
    assert ("10.96.0.11", 5432) not in t.service_ips


def test_cluster_ip_and_port_name_the_service_port() -> None:
    registry, _ = published()
    r = Resolver()
    snap = registry.current()
    assert r.resolve(snap, "10.96.0.10", 80) == Destination("web:80", "web:80")
    assert r.resolve(snap, "10.96.0.10", 9000) == Destination("web:9000", "web:9000")
    assert r.resolve(snap, "10.96.0.11", 5432) == Destination("db.shop:5432", "db.shop:5432")
    assert r.resolve(snap, "10.96.0.10", 81) is None  # not a port of the Service: TCP as dialled
    assert r.resolve(snap, "10.96.0.99", 80) is None


def test_a_pod_ip_is_its_service_pinned_to_that_pod() -> None:
    registry, _ = published()
    r = Resolver()
    snap = registry.current()
    assert r.resolve(snap, "10.244.2.5", 8080) == Destination("web:80", "web:80", "10.244.2.5:8080")
    assert r.resolve(snap, "10.244.1.9", 5432) == Destination(
        "db.shop:5432", "db.shop:5432", "10.244.1.9:5432"
    )
    assert r.resolve(snap, "10.244.2.5", 22) is None  # backs no Service on that port


def test_the_pod_index_follows_the_snapshot() -> None:
    registry, t = published()
    r = Resolver()
    assert r.resolve(registry.current(), "10.244.7.7", 8080) is None
    clusters = dict(t.clusters)
    clusters["web:80"] = (*clusters["web:80"], EndpointConfig("10.244.7.7", 8080, node="node-7"))
    registry.publish(clusters)  # service_ips kept
    assert r.resolve(registry.current(), "10.244.7.7", 8080) == Destination(
        "web:80", "web:80", "10.244.7.7:8080"
    )
    assert r.resolve(registry.current(), "10.96.0.10", 80) == Destination("web:80", "web:80")


BASE = """
node_name: n1
listeners: [{address: "127.0.0.1:0"}]
discovery: {kubernetes: {kubeconfig: /nonexistent}}
"""


def test_intercept_section_defaults_and_fields() -> None:
    cfg = load_config_text(BASE + "intercept:\n", env={})
    assert cfg.intercept is not None
    assert (cfg.intercept.host, cfg.intercept.port, cfg.intercept.detect_timeout) == (
        "0.0.0.0", 15001, 0.1,
    )  # fmt: skip
    cfg = load_config_text(BASE + """intercept:
  address: "0.0.0.0:15006"
  detect_timeout: 250ms
  pod_cidrs: [10.244.1.0/24]
  destinations: [10.96.0.0/12, 10.244.0.0/16]
  mark: 0x1234
  backend: iptables
""", env={})  # fmt: skip
    ic = cfg.intercept
    assert ic is not None
    assert (ic.port, ic.detect_timeout, ic.mark, ic.backend) == (15006, 0.25, 0x1234, "iptables")
    assert ic.pod_cidrs == ("10.244.1.0/24",)
    assert ic.destinations == ("10.96.0.0/12", "10.244.0.0/16")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("intercept: {pod_cidrs: [10.244.1.0/33]}", "intercept.pod_cidrs"),
        ("intercept: {detect_timeout: 30s}", "at most"),
        ("intercept: {backend: pf}", "unsupported value"),
        (
            "intercept: {address: '127.0.0.1:4140'}\nlisteners: [{address: '127.0.0.1:4140'}]",
            "4140",
        ),
    ],
)
def test_intercept_section_errors_name_the_field(section: str, message: str) -> None:
    text = BASE + section + "\n"
    if section.count("listeners"):
        text = text.replace('listeners: [{address: "127.0.0.1:0"}]\n', "")
    with pytest.raises(ConfigError, match=message):
        load_config_text(text, env={})


def test_a_service_ports_cluster_is_its_service_for_policy() -> None:
    from nodeproxy.config.model import ClusterConfig
    from nodeproxy.mesh.state import service_of

    assert service_of(ClusterConfig(name="web:80")) == "web.default"
    assert service_of(ClusterConfig(name="db.shop:5432", namespace="shop")) == "db.shop"
    assert service_of(ClusterConfig(name="web")) == "web.default"
