"""Kubernetes discovery against the fake API server: real sockets, the real wire protocol.

Time is trio's mock clock: watch timeouts, backoff and outages of minutes run
instantly. The clock jumps only after 10 ms of real idleness, so bytes in
flight on loopback are never overtaken by a jump.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from nodeproxy.discovery.kubernetes import (
    ApiAccess,
    ApiClient,
    Backoff,
    KubernetesDiscovery,
    KubernetesDiscoveryConfig,
    ReflectorSettings,
)
from nodeproxy.discovery.kubernetes.store import K8S_EVENTS, K8S_RELISTS, K8S_WATCH_RESTARTS
from nodeproxy.discovery.kubernetes.translate import PodIdentity
from nodeproxy.discovery.snapshot import EndpointRegistry
from nodeproxy.stats.registry import Stats
from tests.fakes.apiserver import FakeApiServer, GoneAs, TooLargeAs, fake_apiserver
from tests.fakes.k8s_objects import endpoint, endpoint_slice, endpoints_v1, node, pod, service


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.01)


async def eventually(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    with trio.fail_after(timeout):
        while not cond():  # noqa: ASYNC110 -- the conditions are state, not events we own
            await trio.sleep(0.25)  # virtual; the clock jumps after 10 ms of real idleness


def seed(api: FakeApiServer) -> None:
    api.add("services", service("bdgreeter", [("http", 80, 8080)]))
    api.add("endpointslices", endpoint_slice("bd-1", "bdgreeter", [
        endpoint("10.0.1.1", pod="bd-a"), endpoint("10.0.2.1", node="node-2"),
    ]))  # fmt: skip
    api.add("pods", pod("bd-a", "10.0.1.1", labels={"version": "v1"}))
    api.add("pods", pod("far", "10.0.2.1", node="node-2"))
    api.add("nodes", node("node-1", "192.168.0.1"))
    api.add("nodes", node("node-2", "192.168.0.2"))


@asynccontextmanager
async def discovery(
    api: FakeApiServer,
    access: ApiAccess | None = None,
    **config: object,
) -> AsyncIterator[KubernetesDiscovery]:
    settings = ReflectorSettings(
        watch_timeout=60.0, page_size=int(str(config.pop("page_size", 500))),
        max_event_bytes=int(str(config.pop("max_event_bytes", 1 << 20))),
        backoff=Backoff(initial=1.0, cap=8.0),
    )  # fmt: skip
    config.setdefault("node_name", "node-1")
    cfg = KubernetesDiscoveryConfig(reflector=settings, **config)  # type: ignore[arg-type]
    client = ApiClient(access or ApiAccess(server=api.url))
    disc = KubernetesDiscovery(client, EndpointRegistry(), Stats(), cfg, rng=random.Random(7))
    async with trio.open_nursery() as nursery:
        await nursery.start(disc.run)
        yield disc
        nursery.cancel_scope.cancel()


def hosts(disc: KubernetesDiscovery, cluster: str = "bdgreeter") -> list[str]:
    return [e.address for e in disc.registry.current().endpoints(cluster)]


def count(disc: KubernetesDiscovery, name: str, resource: str, **lbls: str) -> float:
    return disc.stats.sum_counter(name, resource=resource, **lbls)


async def watching(api: FakeApiServer, n: int = 4) -> None:
    await eventually(lambda: len(api.watchers) == n)


async def test_list_then_watch_publishes_endpoints_nodes_and_pods(
    clock: trio.testing.MockClock,
) -> None:
    async with fake_apiserver() as api:
        seed(api)
        async with discovery(api) as disc:
            await eventually(lambda: disc.registry.synced)
            assert hosts(disc) == ["10.0.1.1:8080", "10.0.2.1:8080"]
            eps = disc.registry.current().endpoints("bdgreeter")
            assert [e.node for e in eps] == ["node-1", "node-2"]
            assert dict(eps[0].labels) == {"version": "v1"}  # from the pod on this node
            assert disc.node_proxies == {"node-1": "192.168.0.1:4143", "node-2": "192.168.0.2:4143"}
            assert disc.pod_identities == {"10.0.1.1": PodIdentity("bd-a", "default", "default")}
            await watching(api)
            targets = [t for t, _ in api.requests]
            assert "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1&limit=500" in targets
            watch = next(t for t in targets if "endpointslices" in t and "watch=true" in t)
            assert "allowWatchBookmarks=true" in watch
            assert "labelSelector=kubernetes.io%2Fservice-name" in watch
            assert f"resourceVersion={api.state.version}" in watch
            assert disc.registry.current().version == 1


async def test_added_modified_deleted_and_readiness(clock: trio.testing.MockClock) -> None:
    async with fake_apiserver() as api:
        seed(api)
        async with discovery(api) as disc:
            await watching(api)
            api.add("endpointslices", endpoint_slice("bd-2", "bdgreeter", [endpoint("10.0.3.1")]))
            await eventually(lambda: "10.0.3.1:8080" in hosts(disc))
            api.modify("endpointslices", endpoint_slice("bd-1", "bdgreeter", [
                endpoint("10.0.1.1", ready=False), endpoint("10.0.2.1", terminating=True),
            ]))  # fmt: skip
            await eventually(lambda: hosts(disc) == ["10.0.3.1:8080"])
            api.delete("endpointslices", "bd-2")
            await eventually(lambda: hosts(disc) == [])
            assert "bdgreeter" in disc.registry.current().clusters
            api.delete("services", "bdgreeter")
            await eventually(lambda: "bdgreeter" not in disc.registry.current().clusters)
            for kind in ("ADDED", "MODIFIED", "DELETED"):
                assert count(disc, K8S_EVENTS, "endpointslices", type=kind) >= 1


async def test_bookmark_moves_only_the_version_and_spares_a_relist(
    clock: trio.testing.MockClock,
) -> None:
    async with fake_apiserver() as api:
        seed(api)
        async with discovery(api) as disc:
            await watching(api)
            api.add("nodes", node("node-3", "192.168.0.3"))  # not an event for the slices
            await eventually(lambda: "node-3" in disc.node_proxies)
            slices = disc.reflectors["endpointslices"].store
            assert slices.resource_version != str(api.state.version)
            published = disc.registry.current()
            api.bookmark()
            await eventually(lambda: slices.resource_version == str(api.state.version))
            assert count(disc, K8S_EVENTS, "endpointslices", type="BOOKMARK") == 1
            assert disc.registry.current() is published
            # the history is gone, but every watch resumes from its bookmark: no 410
            api.compact()
            api.end_watches()
            await eventually(lambda: count(disc, K8S_WATCH_RESTARTS, "endpointslices") == 1)
            await watching(api)
            assert count(disc, K8S_RELISTS, "endpointslices", reason="gone") == 0


async def test_gone_on_a_live_watch_relists(clock: trio.testing.MockClock) -> None:
    async with fake_apiserver() as api:
        seed(api)
        async with discovery(api) as disc:
            await watching(api)
            api.end_watches(gone=True)
            await eventually(lambda: count(disc, K8S_RELISTS, "endpointslices", reason="gone") == 1)
            await watching(api)
            api.add("endpointslices", endpoint_slice("bd-2", "bdgreeter", [endpoint("10.0.3.1")]))
            await eventually(lambda: len(hosts(disc)) == 3)


@pytest.mark.parametrize("gone_as", ["event", "status"])
async def test_outage_past_compaction_relists_to_the_right_state(
    clock: trio.testing.MockClock, gone_as: GoneAs
) -> None:
    async with fake_apiserver(gone_as=gone_as) as api:
        seed(api)
        async with discovery(api) as disc:
            await watching(api)
            api.go_down()
            api.delete("endpointslices", "bd-1")
            api.add("endpointslices", endpoint_slice("bd-9", "bdgreeter", [endpoint("10.0.9.9")]))
            api.compact()
            await trio.sleep(5)
            assert hosts(disc) == ["10.0.1.1:8080", "10.0.2.1:8080"]  # last good state
            api.go_up()
            await eventually(lambda: hosts(disc) == ["10.0.9.9:8080"])
            assert count(disc, K8S_RELISTS, "endpointslices", reason="gone") == 1
            assert count(disc, K8S_WATCH_RESTARTS, "endpointslices", reason="error") >= 1


async def test_api_down_keeps_state_backs_off_and_resumes_without_relist(
    clock: trio.testing.MockClock,
) -> None:
    async with fake_apiserver() as api:
        seed(api)
        async with discovery(api) as disc:
            await watching(api)
            published = disc.registry.current()
            api.go_down()
            api.add("endpointslices", endpoint_slice("bd-2", "bdgreeter", [endpoint("10.0.3.1")]))
            await trio.sleep(60)
            assert disc.registry.current() is published
            # backoff 1 s doubling to 8 s, jittered down by up to half: 8..16 attempts a minute
            errors = count(disc, K8S_WATCH_RESTARTS, "endpointslices", reason="error")
            assert 7 <= errors <= 17, errors
            assert disc.reflectors["endpointslices"].failures >= 7
            api.go_up()
            await eventually(lambda: "10.0.3.1:8080" in hosts(disc))
            assert count(disc, K8S_RELISTS, "endpointslices", reason="gone") == 0
            assert disc.reflectors["endpointslices"].failures == 0


async def test_first_sync_waits_for_the_api(clock: trio.testing.MockClock) -> None:
    async with fake_apiserver() as api:
        seed(api)
        api.go_down()
        async with discovery(api) as disc:
            await trio.sleep(30)
            assert not disc.registry.synced
            assert disc.registry.current().version == 0
            api.go_up()
            await eventually(lambda: disc.registry.synced)
            assert count(disc, K8S_RELISTS, "services", reason="initial") >= 2


async def test_watch_timeouts_rewatch_from_the_last_version(clock: trio.testing.MockClock) -> None:
    async with fake_apiserver() as api:
        seed(api)
        async with discovery(api) as disc:
            await watching(api)
            await trio.sleep(400)  # watch_timeout 60 s jittered to [60, 120)
            assert count(disc, K8S_WATCH_RESTARTS, "endpointslices", reason="timeout") >= 3
            assert disc.stats.sum_counter(K8S_RELISTS) == 4  # the initial ones only
            api.add("endpointslices", endpoint_slice("bd-2", "bdgreeter", [endpoint("10.0.3.1")]))
            await eventually(lambda: len(hosts(disc)) == 3)


async def test_token_file_is_read_again_after_rotation(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    async with fake_apiserver() as api:
        seed(api)
        api.tokens = {"first"}
        access = ApiAccess(server=api.url, token_file=str(token))
        async with discovery(api, access) as disc:
            await watching(api)
            await trio.sleep(5)  # a watch that ends at once without events would count as failed
            token.write_text("second\n")
            api.tokens = {"second"}
            api.end_watches()
            api.add("endpointslices", endpoint_slice("bd-2", "bdgreeter", [endpoint("10.0.3.1")]))
            await eventually(lambda: len(hosts(disc)) == 3)
            assert {tok for _, tok in api.requests} == {"first", "second"}
            assert disc.stats.sum_counter(K8S_WATCH_RESTARTS, reason="error") == 0


async def test_v1_endpoints_paging_and_no_pod_watch_without_node_name(
    clock: trio.testing.MockClock,
) -> None:
    async with fake_apiserver() as api:
        for i in range(5):
            api.add("services", service(f"s{i}", [("http", 80, 8080)]))
            api.add(
                "endpoints", endpoints_v1(f"s{i}", [(f"10.0.0.{i}", "n1")], [("10.9.9.9", "n")])
            )
        async with discovery(api, endpoints_api="endpoints", node_name="", page_size=2) as disc:
            await watching(api, 3)
            assert sorted(disc.reflectors) == ["endpoints", "nodes", "services"]
            assert hosts(disc, "s4") == ["10.0.0.4:8080"]
            assert sum("continue=" in t for t, _ in api.requests) == 4  # 2 lists x 2 more pages
            api.delete("endpoints", "s4")
            await eventually(lambda: hosts(disc, "s4") == [])


async def test_oversized_event_is_refused_and_the_last_state_kept(
    clock: trio.testing.MockClock,
) -> None:
    async with fake_apiserver() as api:
        seed(api)
        async with discovery(api, max_event_bytes=4096) as disc:
            await watching(api)
            big = endpoint_slice("bd-2", "bdgreeter", [endpoint("10.0.3.1")])
            big["metadata"]["annotations"] = {"junk": "x" * 8192}
            api.add("endpointslices", big)
            await eventually(lambda: count(disc, K8S_WATCH_RESTARTS, "endpointslices") >= 2)
            assert hosts(disc) == ["10.0.1.1:8080", "10.0.2.1:8080"]


@pytest.mark.parametrize("too_large_as", ["event", "status"])
async def test_rollback_too_large_resource_version_relists(
    clock: trio.testing.MockClock, too_large_as: TooLargeAs
) -> None:
    """After an etcd restore every watch asks for a version the API has not reached:
    504 "Too large resource version" means list again (client-go), not retry forever."""
    async with fake_apiserver() as api:
        api.too_large_as = too_large_as
        seed(api)
        backup = api.checkpoint()
        async with discovery(api) as disc:
            await watching(api)
            api.add("endpointslices", endpoint_slice("bd-2", "bdgreeter", [endpoint("10.0.3.1")]))
            api.add("endpointslices", endpoint_slice("bd-2", "bdgreeter", [endpoint("10.0.3.2")]))
            await eventually(lambda: "10.0.3.2:8080" in hosts(disc))
            api.restore(backup)  # bd-2 never happened; versions go back by two
            api.add("endpointslices", endpoint_slice("bd-3", "bdgreeter", [endpoint("10.0.4.1")]))
            started = trio.current_time()
            await eventually(lambda: "10.0.4.1:8080" in hosts(disc))
            assert "10.0.3.2:8080" not in hosts(disc)
            assert trio.current_time() - started < 5
            assert count(disc, K8S_RELISTS, "endpointslices", reason="too_large") == 1
            await watching(api)  # and it watches again from the restored versions
            api.delete("endpointslices", "bd-3")
            await eventually(lambda: "10.0.4.1:8080" not in hosts(disc))


async def test_resource_version_going_backwards_relists(clock: trio.testing.MockClock) -> None:
    """A server that accepts the newer version but sends older ones has been rolled back."""
    async with fake_apiserver() as api:
        api.too_large_as = "accept"
        seed(api)
        backup = api.checkpoint()
        async with discovery(api) as disc:
            await watching(api)
            api.add("endpointslices", endpoint_slice("bd-2", "bdgreeter", [endpoint("10.0.3.1")]))
            await eventually(lambda: len(hosts(disc)) == 3)
            api.restore(backup)
            await watching(api)
            api.add("endpointslices", endpoint_slice("bd-3", "bdgreeter", [endpoint("10.0.4.1")]))
            await eventually(lambda: "10.0.4.1:8080" in hosts(disc))
            assert "10.0.3.1:8080" not in hosts(disc)
            assert count(disc, K8S_RELISTS, "endpointslices", reason="rollback") == 1
