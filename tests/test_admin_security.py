"""The admin listener is for the node's operator only (Host checks, /explain).

- Host checking against DNS rebinding: a page in a browser on the node whose
  name resolves to 127.0.0.1 sends ``Host: evil.example``; it gets 421 on every
  path, while ``127.0.0.1``, ``localhost``, the bind address and the names in
  ``admin.allowed_hosts`` are answered.
- ``/config_dump`` hides values that came from ``${VAR}`` and every header
  matcher value; ``?include_sensitive=1`` shows them, from loopback only.
- ``deploy/examples/sidecar.yaml`` keeps admin on loopback and probes it there.
- ``GET /explain`` changes nothing: no traffic state created, no panic counted.

Real sockets on loopback (raw bytes and httpx); the non-loopback cases connect
from this machine's own non-loopback address when it has one.
"""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import pytest
import trio
import yaml

from nodeproxy.admin.access import HostPolicy, check_request, is_loopback
from nodeproxy.admin.dump import REDACTED
from nodeproxy.admin.handlers import AdminContext, handle
from nodeproxy.admin.server import serve_admin
from nodeproxy.config import load_config_text
from nodeproxy.config.model import AdminConfig, BreakerConfig, Config
from nodeproxy.discovery.snapshot import static_snapshot
from nodeproxy.errors import ConfigError
from nodeproxy.resilience.health import HealthCheckConfig
from nodeproxy.resilience.outlier import OutlierConfig
from nodeproxy.runtime import Runtime
from tests.helpers.backends import free_port, simple_config

SECRET = "tok-9f8e7d6c5b4a"
SESSION = "abc123"
CONFIG = """
node_name: node-a
admin:
  address: "127.0.0.1:0"
  allowed_hosts: [admin.node.example, "pinned.example:9999"]
services:
  - name: web
    endpoints:
      - {address: "127.0.0.1:3000", labels: {team: "${TEAM_TOKEN}"}}
    routes:
      - name: sticky
        match:
          headers: [{name: x-session, exact: "abc123"}]
        service: web
      - name: "api-${SECRET_TOKEN}"
        match: {prefix: /api}
        service: web
"""
ENV = {"SECRET_TOKEN": SECRET, "TEAM_TOKEN": "team-4711-private"}


def load(text: str = CONFIG, env: dict[str, str] | None = None) -> Config:
    return load_config_text(text, ENV if env is None else env)


def runtime_for(config: Config) -> Runtime:
    rt = Runtime(config)
    rt.endpoints.publish(static_snapshot(config))
    rt.listeners_ready = True
    return rt


@pytest.fixture
async def admin_port(nursery: trio.Nursery) -> int:
    port: int = await nursery.start(serve_admin, runtime_for(load()))
    return port


async def exchange(port: int, request: bytes, *, address: str = "127.0.0.1") -> bytes:
    stream = await trio.open_tcp_stream(address, port)
    async with stream:
        await stream.send_all(request)
        chunks = []
        while chunk := await stream.receive_some(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def get(target: str, host: str | None, *, method: str = "GET", version: str = "1.1") -> bytes:
    head = f"{method} {target} HTTP/{version}\r\n"
    if host is not None:
        head += f"Host: {host}\r\n"
    if method == "POST":
        head += "Content-Length: 0\r\n"
    return (head + "Connection: close\r\n\r\n").encode()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def own_address() -> str | None:
    """A non-loopback address of this machine that accepts connections, if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent; picks the outgoing address
        except OSError:
            return None
        ip: str = s.getsockname()[0]
    return None if is_loopback(ip) else ip


# -- Host checking ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target"), [("GET", "/config_dump"), ("GET", "/stats"), ("POST", "/drain")]
)
async def test_a_rebinding_host_gets_421(nursery: trio.Nursery, method: str, target: str) -> None:
    rt = runtime_for(load())
    port = await nursery.start(serve_admin, rt)
    out = await exchange(port, get(target, "evil.example", method=method))
    assert status_of(out) == 421
    assert b"\r\nx-nodeproxy-error: admin_host_not_allowed\r\n" in out
    assert SESSION.encode() not in out
    assert b"clusters" not in out
    out = await exchange(port, get(target, f"evil.example:{port}", method=method))
    assert status_of(out) == 421
    assert not rt.drain.draining
    async with httpx.AsyncClient(trust_env=False) as client:
        r = await client.request(
            method, f"http://127.0.0.1:{port}{target}", headers={"Host": "evil.example"}
        )
        assert (r.status_code, r.headers["x-nodeproxy-error"]) == (421, "admin_host_not_allowed")
    assert not rt.drain.draining


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:{port}",
        "localhost:{port}",
        "LocalHost",
        "localhost.",
        "[::1]:{port}",
        "127.0.0.1",
        "admin.node.example",  # admin.allowed_hosts, any port
        "admin.node.example:{port}",
        "pinned.example:9999",  # an allowed entry with a port: that port only
    ],
)
async def test_names_of_the_admin_are_answered(admin_port: int, host: str) -> None:
    out = await exchange(admin_port, get("/config_dump", host.format(port=admin_port)))
    assert status_of(out) == 200, out[:200]


@pytest.mark.parametrize(
    "host", ["pinned.example", "pinned.example:1234", "localhost.evil.example", "10.1.2.3"]
)
async def test_other_names_and_addresses_are_refused(admin_port: int, host: str) -> None:
    assert status_of(await exchange(admin_port, get("/ready", host))) == 421


async def test_httpx_with_its_own_host_header_is_answered(admin_port: int) -> None:
    for base in (f"http://127.0.0.1:{admin_port}", f"http://localhost:{admin_port}"):
        async with httpx.AsyncClient(base_url=base, trust_env=False) as client:
            assert (await client.get("/config_dump")).status_code == 200


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        # absolute form: the target's authority is the one checked (RFC 9112 §3.2.2)
        (b"GET http://evil.example/config_dump HTTP/1.1\r\nHost: 127.0.0.1\r\n", 421),
        (b"GET http://127.0.0.1/ready HTTP/1.1\r\nHost: evil.example\r\n", 200),
        (b"GET http://user@127.0.0.1/ready HTTP/1.1\r\nHost: 127.0.0.1\r\n", 400),
        # two Host fields, or one that is not a host[:port], are 400 (RFC 9112 §3.2)
        (b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n", 400),
        (b"GET /ready HTTP/1.1\r\nHost: ::1\r\n", 400),
        (b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1:http\r\n", 400),
        (b"GET /ready HTTP/1.1\r\nHost: \r\n", 400),
        # HTTP/1.0 without Host: answered from loopback (this connection)
        (b"GET /ready HTTP/1.0\r\n", 200),
    ],
)
async def test_host_forms(admin_port: int, request_bytes: bytes, status: int) -> None:
    out = await exchange(admin_port, request_bytes + b"Connection: close\r\n\r\n")
    assert status_of(out) == status, out[:300]


async def test_bound_to_every_address_any_ip_literal_but_no_name(nursery: trio.Nursery) -> None:
    config = load()
    config = replace(config, admin=replace(config.admin, host="0.0.0.0"))
    port = await nursery.start(serve_admin, runtime_for(config))
    for host in ("10.1.2.3:9901", "192.0.2.7", "[2001:db8::1]:80", "127.0.0.1", "localhost"):
        assert status_of(await exchange(port, get("/ready", host))) == 200, host
    for host in ("evil.example", "evil.example:9901", "node-a"):
        assert status_of(await exchange(port, get("/ready", host))) == 421, host
    assert status_of(await exchange(port, get("/ready", "admin.node.example"))) == 200
    ip = own_address()
    if ip is None:
        pytest.skip("no non-loopback address on this machine")
    # HTTP/1.0 without Host is answered from loopback only
    out = await exchange(port, b"GET /ready HTTP/1.0\r\n\r\n", address=ip)
    assert status_of(out) == 421
    assert status_of(await exchange(port, get("/ready", ip), address=ip)) == 200


def test_host_policy_table() -> None:
    """The pure decision for peers a loopback-only test machine cannot produce."""
    pod = HostPolicy.from_config(AdminConfig(host="10.244.0.7", port=9901))
    kubelet = "10.244.0.1"  # the node: an httpGet probe sends Host: <pod IP>:<port>
    assert check_request(pod, "/ready", ["10.244.0.7:9901"], "1.1", kubelet) is None
    assert check_request(pod, "/ready", ["127.0.0.1:9901"], "1.1", kubelet) is None
    refused = check_request(pod, "/ready", ["10.244.0.8:9901"], "1.1", kubelet)
    assert refused is not None
    assert refused.status == 421
    no_host = check_request(pod, "/ready", [], "1.0", kubelet)
    assert no_host is not None
    assert no_host.status == 421
    assert check_request(pod, "/ready", [], "1.0", "127.0.0.1") is None
    assert check_request(pod, "/ready", [], "1.0", "::ffff:127.0.0.1") is None
    assert [is_loopback(ip) for ip in ("::1", "127.3.4.5", "10.0.0.1")] == [True, True, False]


# -- /config_dump redaction ------------------------------------------------------


def test_config_dump_hides_env_values_and_matcher_values() -> None:
    rt = runtime_for(load())
    ctx = AdminContext(rt, started_at=0.0)
    text = handle(ctx, "GET", "/config_dump", {}, 1.0).text
    for private in (SECRET, "team-4711-private", SESSION):
        assert private not in text
    dump = json.loads(text)
    routes = dump["listeners"][0]["virtual_hosts"][0]["routes"]
    assert routes[0]["match"]["headers"][0]["exact"] == REDACTED
    assert routes[0]["match"]["headers"][0]["name"] == "x-session"
    assert routes[1]["name"] == REDACTED
    assert dump["clusters"]["web"]["endpoints"][0]["labels"] == {"team": REDACTED}
    assert dump["node_name"] == "node-a"  # written in the file: shown
    shown = handle(ctx, "GET", "/config_dump?include_sensitive=1", {}, 1.0, peer_loopback=True)
    for private in (SECRET, "team-4711-private", SESSION):
        assert private in shown.text
    refused = handle(ctx, "GET", "/config_dump?include_sensitive=1", {}, 1.0)
    assert refused.status == 403


def test_env_values_are_redacted_wherever_they_appear() -> None:
    """A value from the environment is hidden in every field it lands in (numbers are kept)."""
    text = """
    node_name: ${NODE}
    listeners: [{address: "127.0.0.1:${PORT:-4140}"}]
    services:
      - name: web
        endpoints: [{address: "${UP_HOST}:8080", node: "${NODE}"}, "${REPLICA}"]
        routes:
          - match: {headers: [{name: authorization, prefix: "Bearer ${SECRET_TOKEN}"}]}
            service: web
    """
    env = {
        "NODE": "worker-17.example",
        "UP_HOST": "db-primary.internal",
        "REPLICA": "db-replica.internal:5432",
        "SECRET_TOKEN": SECRET,
    }
    rt = runtime_for(load(text, env))
    dump = handle(AdminContext(rt, 0.0), "GET", "/config_dump", {}, 1.0).text
    for value in env.values():
        assert value not in dump
    parsed = json.loads(dump)
    assert parsed["node_name"] == REDACTED
    primary, replica = parsed["clusters"]["web"]["endpoints"]
    assert (primary["host"], replica["host"], replica["port"]) == (REDACTED, REDACTED, 5432)
    assert parsed["listeners"][0]["host"] == "127.0.0.1"  # written in the file
    assert parsed["listeners"][0]["port"] == 4140
    assert "env_values" not in parsed  # the list of hidden values is itself never shown
    assert "env_values" not in repr(rt.config)  # nor in a log line printing the config


async def test_include_sensitive_over_loopback_only(nursery: trio.Nursery) -> None:
    config = load()
    config = replace(config, admin=replace(config.admin, host="0.0.0.0"))
    port = await nursery.start(serve_admin, runtime_for(config))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
        hidden = (await client.get("/config_dump")).text
        assert SECRET not in hidden
        assert SESSION not in hidden
        shown = await client.get("/config_dump", params={"include_sensitive": "1"})
        assert shown.status_code == 200
        assert SECRET in shown.text
        assert SESSION in shown.text
        bad = await client.get("/config_dump", params={"include_sensitive": "maybe"})
        assert bad.status_code == 400
    ip = own_address()
    if ip is None:
        pytest.skip("no non-loopback address on this machine")
    async with httpx.AsyncClient(base_url=f"http://{ip}:{port}", trust_env=False) as client:
        assert (await client.get("/config_dump")).status_code == 200
        r = await client.get("/config_dump", params={"include_sensitive": "1"})
        assert (r.status_code, r.headers["x-nodeproxy-error"]) == (403, "admin_not_loopback")
        assert SECRET not in r.text


# -- deploy/examples/sidecar.yaml ----------------------------------------------------

SIDECAR = Path(__file__).resolve().parent.parent / "deploy" / "examples" / "sidecar.yaml"


def test_sidecar_admin_stays_on_loopback_and_probes_reach_it() -> None:
    docs = [d for d in yaml.safe_load_all(SIDECAR.read_text()) if d]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    native = yaml.safe_load(cm["data"]["nodeproxy.yaml"])
    admin_address = native["admin"]["address"]
    assert admin_address.startswith("127.0.0.1:")
    port = admin_address.rpartition(":")[2]
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert deployments
    for dep in deployments:
        (proxy,) = [
            c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "nodeproxy"
        ]
        assert all(p["name"] != "admin" for p in proxy["ports"])  # nothing to reach from outside
        probe = proxy["readinessProbe"]
        assert "httpGet" not in probe  # the kubelet's httpGet comes from the node, not loopback
        command = " ".join(probe["exec"]["command"])
        assert f"http://127.0.0.1:{port}/ready" in command


# -- /explain is a pure read ---------------------------------------------------------


def explain_runtime(now: float) -> Runtime:
    dead = [("127.0.0.1", free_port()), ("127.0.0.1", free_port())]
    config = simple_config({"hc": dead, "ej": dead, "never": dead}, lb_policy="p2c_ewma")
    c = config.clusters
    clusters = {
        "hc": replace(c["hc"], health_check=HealthCheckConfig(unhealthy_threshold=2)),
        "ej": replace(c["ej"], outlier=OutlierConfig(max_ejection_percent=100)),
        "never": replace(c["never"], circuit_breaker=BreakerConfig()),
    }
    rt = runtime_for(replace(config, clusters=MappingProxyType(clusters)))
    hc = rt.traffic.cluster(clusters["hc"], now)
    ej = rt.traffic.cluster(clusters["ej"], now)
    for ep in rt.endpoints.current().endpoints("hc"):
        for _ in range(2):
            assert hc.health is not None
            hc.health.record(ep, False, now)
    for ep in rt.endpoints.current().endpoints("ej"):
        for _ in range(5):
            ej.outlier.put_status(ep, 503, now)
    return rt


def traffic_lines(metrics: str) -> list[str]:
    """The exposition minus what moves by itself (process CPU, memory, fds, uptime)."""
    moving = ("nodeproxy_process_", "nodeproxy_uptime_", "# ")
    return [line for line in metrics.splitlines() if not line.startswith(moving)]


async def test_explain_changes_nothing(nursery: trio.Nursery) -> None:
    rt = explain_runtime(trio.current_time())
    states = {name: repr(state) for name, state in rt.traffic.items()}
    port = await nursery.start(serve_admin, rt)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:

        async def snapshot() -> tuple[Any, list[str]]:
            clusters = (await client.get("/clusters")).json()
            metrics = (await client.get("/stats/prometheus")).text
            return clusters, traffic_lines(metrics)

        before = await snapshot()
        for name in ("hc", "ej", "never", "hc", "ej", "never"):
            r = await client.get("/explain", params={"authority": f"{name}.default"})
            assert r.status_code == 200
            report = r.json()
            # panic mode: every endpoint failing its checks, or ejected -> all eligible
            assert [row["eligible"] for row in report["candidates"]] == [True, True]
            assert report["decision"].startswith(f"p2c_ewma over 2 eligible endpoint(s) of {name}")
        after = await snapshot()
    assert after == before
    assert rt.traffic.get("never") is None  # no state for a cluster no request used
    assert {name: repr(state) for name, state in rt.traffic.items()} == states
    hc, ej = rt.traffic.get("hc"), rt.traffic.get("ej")
    assert hc is not None
    assert ej is not None
    assert (hc.health_panics, hc.outlier.panics, ej.outlier.panics) == (0, 0, 0)


async def test_explain_of_a_never_used_cluster_reports_its_first_request() -> None:
    now = trio.current_time()
    rt = explain_runtime(now)
    report = json.loads(
        handle(AdminContext(rt, 0.0), "GET", "/explain?authority=never.default", {}, now).body
    )
    assert report["breaker"]["state"] == "closed"
    assert [row["outlier"]["state"] for row in report["candidates"]] == ["active", "active"]
    assert rt.traffic.get("never") is None


async def test_clusters_page_adopts_no_endpoint(nursery: trio.Nursery) -> None:
    """``/clusters`` reads too: describing an endpoint must not start its EWMA clock."""
    rt = explain_runtime(trio.current_time())
    states = {name: repr(state) for name, state in rt.traffic.items()}
    port = await nursery.start(serve_admin, rt)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
        assert (await client.get("/clusters")).status_code == 200
    assert {name: repr(state) for name, state in rt.traffic.items()} == states


def test_allowed_hosts_are_validated_and_normalised() -> None:
    text = "services: []\nadmin: {allowed_hosts: [Admin.Example., 'node-a:9901', '[::1]:80']}\n"
    assert load(text).admin.allowed_hosts == ("admin.example", "node-a:9901", "[::1]:80")
    with pytest.raises(ConfigError) as err:
        load("services: []\nadmin: {allowed_hosts: ['bad host']}\n")
    assert err.value.field == "admin.allowed_hosts[0]"
