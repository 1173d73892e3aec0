"""The real app with Kubernetes discovery, pointed at the fake API server by a kubeconfig.

Nothing here is configured per service: the proxy learns ``bdgreeter`` from
the API (a Service, an EndpointSlice, Pods, Nodes) and routes to it through
the catch-all route. Backends are real servers on 127.0.0.2/127.0.0.3 (one
port, as one Deployment's pods would have). Checked as a user sees it: /ready,
status codes, which backend answered, and that no request failed while the
API changed or went away. The second test runs two node proxies with the mesh
on loopback, their peers and pod identities coming only from the API.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import trio

from nodeproxy.app import AppHandle, run_app
from nodeproxy.config import load_config_text
from nodeproxy.tls.ca import init_ca
from tests.fakes.apiserver import FakeApiServer, fake_apiserver
from tests.fakes.k8s_objects import endpoint, endpoint_slice, node, pod, service
from tests.helpers.backends import Backend
from tests.helpers.mesh import client_from

POD_A, POD_B = "127.0.0.2", "127.0.0.3"


def kubeconfig(path: Path, api: FakeApiServer) -> Path:
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{api.url}"}}}}]
users: [{{name: dev, user: {{token: dev-token}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: dev}}}}]
current-context: fake
"""
    )
    return path


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def backends(*hosts: str) -> AsyncIterator[list[Backend]]:
    """One backend per host, all on the same port."""
    out = [Backend() for _ in hosts]
    async with trio.open_nursery() as nursery:
        port = 0
        for b, host in zip(out, hosts, strict=True):
            listeners = await nursery.start(partial(trio.serve_tcp, b.handle, port, host=host))
            port = b.port = listeners[0].socket.getsockname()[1]
        yield out
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def app(text: str) -> AsyncIterator[AppHandle]:
    async with trio.open_nursery() as nursery:
        handle: AppHandle = await nursery.start(
            partial(run_app, load_config_text(text), handle_signals=False)
        )
        yield handle
        handle.runtime.drain.start("test")


async def until(cond: Callable[[], bool], deadline: float = 10.0) -> None:
    with trio.fail_after(deadline):
        while not cond():
            await trio.lowlevel.checkpoint()


def greeter_objects(api: FakeApiServer, port: int, nodes: tuple[str, str]) -> None:
    api.add("services", service("bdgreeter", [("http", 80, port)]))
    api.add("endpointslices", endpoint_slice("bdgreeter-x", "bdgreeter", [
        endpoint(POD_A, node=nodes[0], pod="bd-a"), endpoint(POD_B, node=nodes[1], pod="bd-b"),
    ], ports=[("http", port)]))  # fmt: skip
    for name, ip, where in (("bd-a", POD_A, nodes[0]), ("bd-b", POD_B, nodes[1])):
        api.add("pods", pod(name, ip, node=where, service_account="greeter"))


async def test_discovered_service_serves_follows_the_api_and_survives_its_outage(
    tmp_path: Path,
) -> None:
    async with fake_apiserver() as api, backends(POD_A, POD_B) as (a, b):
        greeter_objects(api, a.port, ("node-1", "node-1"))
        api.add("nodes", node("node-1", "127.0.0.1"))
        api.go_down()  # the proxy starts before the API answers
        text = f"""
node_name: node-1
listeners: [{{address: "127.0.0.1:0"}}]
admin: {{address: "127.0.0.1:0"}}
discovery:
  kubernetes: {{kubeconfig: {kubeconfig(tmp_path / "kc", api)}}}
"""
        async with app(text) as handle, httpx.AsyncClient() as client:
            admin = f"http://127.0.0.1:{handle.admin_port}"
            ready = await client.get(f"{admin}/ready")
            assert ready.status_code == 503
            assert "starting" in ready.text
            api.go_up()
            await until(lambda: handle.runtime.endpoints.synced)
            assert (await client.get(f"{admin}/ready")).status_code == 200
            assert ("/api/v1/services?limit=500", "dev-token") in api.requests

            url = f"http://127.0.0.1:{handle.listener_ports['outbound']}/hello"
            host = {"host": "bdgreeter"}
            statuses = [(await client.get(url, headers=host)).status_code for _ in range(10)]
            assert statuses == [200] * 10
            assert len(a.requests) + len(b.requests) == 10  # p2c_ewma over both pods

            # bd-b is being deleted: its endpoint turns terminating, traffic moves, none fails.
            api.modify("endpointslices", endpoint_slice("bdgreeter-x", "bdgreeter", [
                endpoint(POD_A, node="node-1", pod="bd-a"),
                endpoint(POD_B, node="node-1", pod="bd-b", ready=False, terminating=True),
            ], ports=[("http", a.port)]))  # fmt: skip
            for _ in range(2000):
                r = await client.get(url, headers=host)
                assert r.status_code == 200
                if len(handle.runtime.endpoints.current().endpoints("bdgreeter")) == 1:
                    break
            b_before = len(b.requests)
            for _ in range(10):
                assert (await client.get(url, headers=host)).status_code == 200
            assert len(b.requests) == b_before  # no new request for the terminating pod

            api.go_down()  # the last good state keeps serving, and the proxy stays ready
            a_before = len(a.requests)
            for _ in range(20):
                assert (await client.get(url, headers=host)).status_code == 200
            assert len(a.requests) == a_before + 20
            assert (await client.get(f"{admin}/ready")).status_code == 200
            missing = await client.get(url, headers={"host": "nosuch"})
            # a route to a cluster that does not exist: the service is unknown
            assert (missing.status_code, missing.headers["x-nodeproxy-error"]) == (
                404,
                "unknown_service",
            )
            metrics = (await client.get(f"{admin}/stats/prometheus")).text
            assert "# HELP nodeproxy_k8s_snapshots_published_total Endpoint snapshots" in metrics


async def test_two_node_mesh_learns_peers_and_callers_from_the_api(tmp_path: Path) -> None:
    """node-1's pod 127.0.0.4 calls bdgreeter, whose pods are on node-2 only: mTLS as
    default/web, with node-2's address and the caller's identity known only from the API."""
    init_ca(tmp_path / "ca")
    inbound_port = free_port("127.0.0.12")
    async with fake_apiserver() as api, backends(POD_A, POD_B) as (a, b):
        greeter_objects(api, a.port, ("node-2", "node-2"))
        api.add("pods", pod("web", "127.0.0.4", node="node-1", service_account="web"))
        api.add("nodes", node("node-1", "127.0.0.11"))
        api.add("nodes", node("node-2", "127.0.0.12"))
        kc = kubeconfig(tmp_path / "kc", api)

        def config(name: str, ip: str) -> str:
            return f"""
node_name: {name}
listeners: [{{address: "127.0.0.1:0"}}]
admin: {{address: "127.0.0.1:0"}}
discovery:
  kubernetes: {{kubeconfig: {kc}, node_proxy_port: {inbound_port}}}
mesh: {{ca_dir: {tmp_path / "ca"}, inbound: "{ip}:{inbound_port}"}}
"""

        async with app(config("node-1", "127.0.0.11")) as n1, app(config("node-2", "127.0.0.12")):
            await until(lambda: n1.runtime.endpoints.synced)
            url = f"http://127.0.0.1:{n1.listener_ports['outbound']}/hi"
            async with client_from("127.0.0.4") as web:
                for _ in range(6):
                    r = await web.get(url, headers={"host": "bdgreeter.default"})
                    assert r.status_code == 200, r.text
            assert len(a.requests) + len(b.requests) == 6
            xfcc = dict((a.requests or b.requests)[0].headers)[b"x-forwarded-client-cert"].decode()
            assert xfcc == (
                "By=spiffe://cluster.local/node/node-2;URI=spiffe://cluster.local/ns/default/sa/web"
            )
            async with client_from("127.0.0.1") as stranger:  # not a pod of node-1
                r = await stranger.get(url, headers={"host": "bdgreeter"})
            assert (r.status_code, r.headers["x-nodeproxy-error"]) == (403, "unknown_source")


def discovery_config(api: FakeApiServer, kc: Path) -> str:
    return f"""
node_name: node-1
listeners: [{{address: "127.0.0.1:0"}}]
admin: {{address: "127.0.0.1:0"}}
discovery:
  kubernetes: {{kubeconfig: {kubeconfig(kc, api)}}}
"""


async def test_before_the_first_sync_a_service_name_is_503_not_synced(tmp_path: Path) -> None:
    """A 404 looks final (clients do not retry it); before discovery has listed
    everything the proxy cannot know, so it says so, and /ready says what it waits for."""
    async with fake_apiserver() as api, backends(POD_A, POD_B) as (a, _):
        greeter_objects(api, a.port, ("node-1", "node-1"))
        api.add("nodes", node("node-1", "127.0.0.1"))
        api.go_down()
        async with app(discovery_config(api, tmp_path / "kc")) as handle, httpx.AsyncClient() as c:
            url = f"http://127.0.0.1:{handle.listener_ports['outbound']}/hello"
            early = await c.get(url, headers={"host": "bdgreeter"})
            assert (early.status_code, early.headers["x-nodeproxy-error"]) == (503, "not_synced")
            ready = await c.get(f"http://127.0.0.1:{handle.admin_port}/ready")
            assert ready.status_code == 503
            assert "endpoints not synced" in ready.text
            assert "(waiting for services: " in ready.text
            assert "the API server closed the connection" in ready.text
            api.go_up()
            await until(lambda: handle.runtime.endpoints.synced)
            assert (await c.get(url, headers={"host": "bdgreeter"})).status_code == 200
            gone = await c.get(url, headers={"host": "nosuch"})
            assert (gone.status_code, gone.headers["x-nodeproxy-error"]) == (404, "unknown_service")


async def test_api_rollback_relists_and_routes_to_the_restored_state(tmp_path: Path) -> None:
    """An etcd restore: the proxy's versions are ahead of the API's; within seconds it
    lists again and routes to what the API now says, while it stays ready."""
    async with fake_apiserver() as api, backends(POD_A, POD_B) as (a, b):
        greeter_objects(api, a.port, ("node-1", "node-1"))
        api.add("nodes", node("node-1", "127.0.0.1"))
        api.modify("endpointslices", endpoint_slice("bdgreeter-x", "bdgreeter", [
            endpoint(POD_A, node="node-1", pod="bd-a")], ports=[("http", a.port)]))  # fmt: skip
        backup = api.checkpoint()  # only POD_A
        async with app(discovery_config(api, tmp_path / "kc")) as handle, httpx.AsyncClient() as c:
            await until(lambda: handle.runtime.endpoints.synced)
            await until(lambda: len(api.watchers) == 4)
            api.modify("endpointslices", endpoint_slice("bdgreeter-x", "bdgreeter", [
                endpoint(POD_B, node="node-1", pod="bd-b")], ports=[("http", a.port)]))  # fmt: skip
            url = f"http://127.0.0.1:{handle.listener_ports['outbound']}/hello"
            host = {"host": "bdgreeter"}
            await until(lambda: len(handle.runtime.endpoints.current().endpoints("bdgreeter")) == 1
                        and handle.runtime.endpoints.current().endpoints("bdgreeter")[0].host
                        == POD_B)  # fmt: skip
            assert (await c.get(url, headers=host)).status_code == 200
            assert len(b.requests) == 1
            api.restore(backup)  # back to POD_A, with older versions
            with trio.fail_after(5):
                while True:
                    r = await c.get(url, headers=host)
                    assert r.status_code == 200
                    if len(a.requests) > 0:
                        break
                    await trio.sleep(0.05)
            b_before = len(b.requests)
            for _ in range(5):
                assert (await c.get(url, headers=host)).status_code == 200
            assert len(b.requests) == b_before
            assert (await c.get(f"http://127.0.0.1:{handle.admin_port}/ready")).status_code == 200
            metrics = (await c.get(f"http://127.0.0.1:{handle.admin_port}/stats/prometheus")).text
            relists = 'nodeproxy_k8s_relists_total{reason="too_large",resource="endpointslices"} 1'
            assert relists in metrics
