"""``nodeproxy run --workers N``: a supervisor and N worker processes, end to end.

Real processes on loopback: the supervisor binds once and its workers serve;
its admin adds the workers' counters up exactly; a worker killed with SIGKILL
is replaced (and counted) while a client keeps sending; ``/ready`` follows the
workers; ``/drain`` ends them all and the supervisor exits 0; a fleet that
cannot stay up makes the supervisor exit non-zero; ``workers`` values are
checked with a clear error.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import h11
import httpx
import pytest
import trio

from nodeproxy.tls.ca import init_ca
from tests.fakes.apiserver import fake_apiserver
from tests.fakes.k8s_objects import endpoint, endpoint_slice, node
from tests.helpers.backends import Backend, ask, backend, free_port, read_response
from tests.helpers.proc import RunningProxy, running_nodeproxy
from tests.test_k8s_wiring import POD_A, POD_B, backends, greeter_objects, kubeconfig

DEADLINE = 30.0


def write_config(path: Path, upstream: Backend, workers: str = "2") -> Path:
    path.write_text(
        f"workers: {workers}\n"
        "listeners:\n  - name: outbound\n    address: 127.0.0.1:0\n"
        "admin:\n  address: 127.0.0.1:0\n"
        "log:\n  format: json\n  access_log: false\n"
        f"services:\n  - name: svc\n    endpoints:\n      - address: 127.0.0.1:{upstream.port}\n"
    )
    return path


@asynccontextmanager
async def fleet(config: Path, *args: str) -> AsyncIterator[RunningProxy]:
    """The supervisor, started; its stdout (every process's log) read in the background."""
    async with (
        running_nodeproxy("run", "--config", str(config), *args) as proxy,
        trio.open_nursery() as nursery,
    ):

        async def pump() -> None:
            with contextlib.suppress(EOFError):
                await proxy.read_event("never-logged")

        nursery.start_soon(pump)
        yield proxy
        nursery.cancel_scope.cancel()


async def exit_code(proxy: RunningProxy, deadline: float = DEADLINE) -> int:
    """Wait for the supervisor to exit (``fleet`` keeps reading its output meanwhile)."""
    with trio.fail_after(deadline):
        return await proxy.process.wait()


async def scrape(admin_port: int) -> dict[str, float]:
    """``/stats/prometheus`` as {sample line name+labels: value}."""
    async with httpx.AsyncClient() as client:
        resp = await client.get(f"http://127.0.0.1:{admin_port}/stats/prometheus")
    assert resp.status_code == 200
    out: dict[str, float] = {}
    for line in resp.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def total(samples: dict[str, float], metric: str) -> float:
    pattern = re.compile(re.escape(metric) + r"(\{.*\})?$")
    return sum(v for k, v in samples.items() if pattern.match(k))


async def ready(admin_port: int) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{admin_port}/ready")


async def until(check: Callable[[], Awaitable[bool]], deadline: float = DEADLINE) -> None:
    """Poll an async predicate until it holds (bounded); other processes have no mock clock
    and no event to wait on, so this asks again every 20 ms."""
    with trio.fail_after(deadline):
        while not await check():  # noqa: ASYNC110  # another process: nothing to wait on
            await trio.sleep(0.02)


async def test_two_workers_serve_and_admin_counts_every_request(tmp_path: Path) -> None:
    async with backend() as upstream:
        config = write_config(tmp_path / "np.yaml", upstream)
        async with fleet(config) as proxy:
            port = proxy.listener_ports["outbound"]
            assert (await ready(proxy.admin_port)).status_code == 200
            before = await scrape(proxy.admin_port)
            sent = 60
            async with trio.open_nursery() as nursery:  # 6 clients at once, new connections
                for _ in range(6):

                    async def client() -> None:
                        for _ in range(sent // 6):
                            status, _, _ = await ask(port, b"GET", b"/x", b"svc")
                            assert status == 200

                    nursery.start_soon(client)
            after = await scrape(proxy.admin_port)
            requests = "nodeproxy_requests_total"
            assert total(after, requests) - total(before, requests) == sent
            duration = "nodeproxy_request_duration_ms_count"
            assert total(after, duration) - total(before, duration) == sent
            per_worker = total(after, "nodeproxy_worker_requests_total")
            assert per_worker - total(before, "nodeproxy_worker_requests_total") == sent
            assert after['nodeproxy_worker_up{worker="0"}'] == 1
            assert after['nodeproxy_worker_up{worker="1"}'] == 1
            assert after["nodeproxy_build_info" + _build_labels(after)] == 1  # not one per worker
            assert len(upstream.requests) == sent
            async with httpx.AsyncClient() as admin:  # the dashboard: the workers' merged view
                resp = await admin.get(f"http://127.0.0.1:{proxy.admin_port}/dashboard.json")
            dash = resp.json()
            (svc,) = dash["clusters"]
            assert (svc["name"], svc["requests"], svc["latency"]["count"]) == ("svc", sent, sent)
            (ep,) = svc["endpoints"]
            assert (ep["state"], ep["requests"]) == ("healthy", sent)
            (caller,) = dash["sources"]["rows"]  # each worker's table, summed
            assert (caller["source"], caller["requests"], caller["in_flight"]) == (
                "127.0.0.1",
                sent,
                0,
            )
            assert dash["node"]["ready"] is True


def _build_labels(samples: dict[str, float]) -> str:
    (name,) = [k for k in samples if k.startswith("nodeproxy_build_info")]
    return name.removeprefix("nodeproxy_build_info")


async def test_killed_worker_is_replaced_while_traffic_continues(tmp_path: Path) -> None:
    async with backend() as upstream:
        config = write_config(tmp_path / "np.yaml", upstream)
        async with fleet(config) as proxy:
            port = proxy.listener_ports["outbound"]
            started = next(line for line in proxy.lines if line.get("event") == "started")
            victim = started["pids"][0]
            ok, failed = 0, 0
            killed = trio.Event()
            ok_after_kill = 0

            async def client() -> None:  # bounded: at most 2000 requests, one at a time
                nonlocal ok, failed, ok_after_kill
                for _ in range(2000):
                    try:
                        status, _, _ = await ask(port, b"GET", b"/x", b"svc")
                    except (OSError, trio.BrokenResourceError, h11.RemoteProtocolError):
                        failed += 1
                        continue
                    assert status == 200
                    ok += 1
                    if killed.is_set():
                        ok_after_kill += 1
                    if ok_after_kill >= 200:
                        return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(client)
                await until(lambda: _answered(proxy.admin_port, 50))
                counted = total(await scrape(proxy.admin_port), "nodeproxy_requests_total")
                os.kill(victim, signal.SIGKILL)
                killed.set()
                await until(lambda: _restarted(proxy.admin_port))
                assert (await ready(proxy.admin_port)).status_code == 200
            samples = await scrape(proxy.admin_port)
            assert samples['nodeproxy_worker_restarts_total{worker="0"}'] == 1
            assert total(samples, "nodeproxy_requests_total") >= counted  # never backwards
            assert ok_after_kill >= 200
            assert failed <= 1  # only a request the killed worker held can fail


async def _answered(admin_port: int, at_least: int) -> bool:
    return total(await scrape(admin_port), "nodeproxy_requests_total") >= at_least


async def _restarted(admin_port: int) -> bool:
    samples = await scrape(admin_port)
    return (
        samples.get('nodeproxy_worker_restarts_total{worker="0"}', 0) == 1
        and samples.get('nodeproxy_worker_up{worker="0"}', 0) == 1
    )


async def test_ready_follows_workers_and_drain_stops_them_all(tmp_path: Path) -> None:
    async with backend() as upstream:
        config = write_config(tmp_path / "np.yaml", upstream)
        async with fleet(config) as proxy:
            assert (await ready(proxy.admin_port)).status_code == 200
            started = next(line for line in proxy.lines if line.get("event") == "started")
            os.kill(started["pids"][1], signal.SIGKILL)
            seen_down: list[str] = []

            async def down() -> bool:
                resp = await ready(proxy.admin_port)
                if resp.status_code == 503:
                    seen_down.append(resp.text)
                return resp.status_code == 503

            await until(down)
            assert "workers not up: 1 of 2" in seen_down[0]
            await until(lambda: _is_ready(proxy.admin_port))
            async with httpx.AsyncClient() as client:
                drained = await client.post(f"http://127.0.0.1:{proxy.admin_port}/drain")
            assert drained.status_code == 202
            assert await exit_code(proxy) == 0
            pids = [*started["pids"]]
            for pid in pids:  # every worker is gone too
                assert not Path(f"/proc/{pid}").exists() or _zombie(pid)


async def _is_ready(admin_port: int) -> bool:
    return (await ready(admin_port)).status_code == 200


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


async def test_supervisor_exits_nonzero_when_workers_cannot_stay_up(tmp_path: Path) -> None:
    async with backend() as upstream:
        config = write_config(tmp_path / "np.yaml", upstream)
        async with fleet(config) as proxy:
            config.write_text("services: [")  # every new worker now fails to load it
            started = next(line for line in proxy.lines if line.get("event") == "started")
            os.kill(started["pids"][0], signal.SIGKILL)
            assert await exit_code(proxy, 60) == 3
            assert any(line.get("event") == "workers_failing" for line in proxy.lines)


async def send_on(stream: trio.SocketStream, target: bytes) -> dict[bytes, bytes]:
    """One request on a kept-alive connection; the response's headers."""
    await stream.send_all(b"GET %s HTTP/1.1\r\nHost: svc\r\n\r\n" % target)
    events = await read_response(stream)
    return next(dict(e.headers) for e in events if isinstance(e, h11.Response))


async def one_connection_per_worker(port: int, admin_port: int) -> list[trio.SocketStream]:
    """Keep-alive connections to the proxy until one is held by each worker (bounded)."""
    held: dict[str, trio.SocketStream] = {}
    spare: list[trio.SocketStream] = []
    for _ in range(32):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        before = await scrape(admin_port)
        await send_on(stream, b"/x")
        after = await scrape(admin_port)
        (worker,) = [
            k for k, v in after.items()
            if k.startswith("nodeproxy_worker_requests_total") and v > before.get(k, 0)
        ]  # fmt: skip
        if worker in held:
            spare.append(stream)
        else:
            held[worker] = stream
        if len(held) == 2:
            break
    for stream in spare:
        await stream.aclose()
    assert len(held) == 2, "32 connections, all accepted by the same worker"
    return [held[k] for k in sorted(held)]


async def test_a_breaker_trip_in_one_worker_opens_it_in_every_worker(tmp_path: Path) -> None:
    """Workers share trips: 3 failures in worker 0 make worker 1 refuse too, untouched."""
    async with backend() as upstream:
        config = write_config(tmp_path / "np.yaml", upstream)
        breaker = "    circuit_breaker: {failure_threshold: 3, open_interval: 60s}\n"
        config.write_text(config.read_text() + breaker)
        async with fleet(config) as proxy:
            port, admin = proxy.listener_ports["outbound"], proxy.admin_port
            first, second = await one_connection_per_worker(port, admin)
            hits = len(upstream.requests)
            for _ in range(3):
                assert b"x-nodeproxy-error" not in await send_on(first, b"/status/503")
            assert len(upstream.requests) == hits + 3

            async def both_open() -> bool:
                async with httpx.AsyncClient() as client:
                    view = (await client.get(f"http://127.0.0.1:{admin}/clusters")).json()
                (svc,) = [c for c in view["clusters"] if c["name"] == "svc"]
                workers = (svc["traffic"] or {}).get("workers", {})
                states = [w["breaker"]["state"] for w in workers.values()]
                return states == ["open", "open"]

            await until(both_open, 10.0)
            refused = await send_on(second, b"/status/503")
            assert refused[b"x-nodeproxy-error"] == b"circuit_open"
            assert len(upstream.requests) == hits + 3  # worker 1 never touched the service
            for stream in (first, second):
                await stream.aclose()


async def test_discovery_runs_once_and_every_worker_follows_it(tmp_path: Path) -> None:
    """One Kubernetes watch (the supervisor's); its snapshots reach every worker."""
    async with (
        fake_apiserver() as api,
        backends(POD_A, POD_B) as (a, b),
        httpx.AsyncClient() as client,
    ):
        greeter_objects(api, a.port, ("node-1", "node-1"))
        api.add("nodes", node("node-1", "127.0.0.1"))
        config = tmp_path / "np.yaml"
        config.write_text(
            "workers: 2\nnode_name: node-1\n"
            "listeners: [{address: '127.0.0.1:0'}]\nadmin: {address: '127.0.0.1:0'}\n"
            "log: {format: json, access_log: false}\n"
            f"discovery:\n  kubernetes: {{kubeconfig: {kubeconfig(tmp_path / 'kc', api)}}}\n"
        )
        async with fleet(config) as proxy:
            url = f"http://127.0.0.1:{proxy.listener_ports['outbound']}/hello"
            host = {"host": "bdgreeter"}
            for _ in range(20):  # new connections: both workers serve
                async with httpx.AsyncClient() as fresh:
                    assert (await fresh.get(url, headers=host)).status_code == 200
            assert len(a.requests) + len(b.requests) == 20
            assert len(a.requests) > 0
            assert len(b.requests) > 0
            lists = [t for t, _ in api.requests if t.startswith("/api/v1/services?limit")]
            assert len(lists) == 1  # one watcher for the node, not one per worker

            api.modify("endpointslices", endpoint_slice("bdgreeter-x", "bdgreeter", [
                endpoint(POD_A, node="node-1", pod="bd-a"),
                endpoint(POD_B, node="node-1", pod="bd-b", ready=False, terminating=True),
            ], ports=[("http", a.port)]))  # fmt: skip

            async def only_a_in_both() -> bool:
                view = (await client.get(f"http://127.0.0.1:{proxy.admin_port}/clusters")).json()
                (svc,) = [c for c in view["clusters"] if c["name"] == "bdgreeter"]
                return [e["address"] for e in svc["endpoints"]] == [f"{POD_A}:{a.port}"]

            await until(only_a_in_both, 10.0)
            b_before = len(b.requests)
            for _ in range(20):
                async with httpx.AsyncClient() as fresh:
                    assert (await fresh.get(url, headers=host)).status_code == 200
            # Workers install what the supervisor published; none keeps the old snapshot.
            assert len(b.requests) == b_before


async def test_health_verdicts_of_the_supervisor_reach_every_worker(tmp_path: Path) -> None:
    """The supervisor probes; each worker takes its verdicts and sends nothing to the bad one."""
    async with backend() as upstream:
        down = free_port()
        config = tmp_path / "np.yaml"
        config.write_text(
            "workers: 2\n"
            "listeners:\n  - name: outbound\n    address: 127.0.0.1:0\n"
            "admin:\n  address: 127.0.0.1:0\n"
            "log:\n  format: json\n  access_log: false\n"
            "services:\n  - name: svc\n    endpoints:\n"
            f"      - address: 127.0.0.1:{upstream.port}\n      - address: 127.0.0.1:{down}\n"
            "    health_check: {interval: 200ms, timeout: 200ms, unhealthy_threshold: 1}\n"
        )
        async with fleet(config) as proxy, httpx.AsyncClient() as client:
            admin = f"http://127.0.0.1:{proxy.admin_port}"

            async def down_in_both() -> bool:
                view = (await client.get(f"{admin}/clusters")).json()
                (svc,) = [c for c in view["clusters"] if c["name"] == "svc"]
                (bad,) = [e for e in svc["endpoints"] if e["port"] == down]
                per_worker = (bad["traffic"] or {}).get("workers", {})
                health = [w["health"] for _, w in sorted(per_worker.items())]
                return health == ["unhealthy", "unhealthy"]

            await until(down_in_both, 10.0)
            port = proxy.listener_ports["outbound"]
            for _ in range(20):
                status, _, _ = await ask(port, b"GET", b"/x", b"svc")
                assert status == 200
            samples = await scrape(proxy.admin_port)
            assert total(samples, "nodeproxy_upstream_connect_failures_total") == 0
            assert len([r for r in upstream.requests if r.target == b"/x"]) == 20


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nodeproxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_workers_auto_is_accepted(tmp_path: Path) -> None:
    config = tmp_path / "np.yaml"
    config.write_text(
        "workers: auto\nservices:\n  - name: svc\n    endpoints:\n      - address: 127.0.0.1:1\n"
    )
    done = run_cli("check-config", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("workers auto")


def test_bad_worker_counts_are_refused_clearly(tmp_path: Path) -> None:
    config = tmp_path / "np.yaml"
    for value, message in (
        ("0", "workers: must be >= 1, got 0 (a worker count, or auto)"),
        ("many", "workers: expected an integer, got 'many' (a worker count, or auto)"),
        ("100000", "workers: must be <= 256, got 100000 (a worker count, or auto)"),
    ):
        config.write_text(
            f"workers: {value}\n"
            "services:\n  - name: svc\n    endpoints:\n      - address: 127.0.0.1:1\n"
        )
        done = run_cli("check-config", str(config))
        assert done.returncode == 1
        assert f"{config}:1: {message}" in done.stderr, done.stderr
    config.write_text("services:\n  - name: svc\n    endpoints:\n      - address: 127.0.0.1:1\n")
    done = run_cli("run", "--config", str(config), "--workers", "0")
    assert done.returncode == 2
    assert "--workers: expected 1..256 or auto, got '0'" in done.stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_the_mesh_example_with_two_workers_per_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/mesh/mesh.yaml with --workers 2 on both nodes: the inbound mTLS listener is
    bound by each supervisor and served by its workers; policy holds as with one process."""
    init_ca(tmp_path / "ca")
    example = str(Path(__file__).parent.parent / "examples" / "mesh" / "mesh.yaml")
    async with backend() as auth, backend() as database:
        for name, value in {
            "CA_DIR": str(tmp_path / "ca"),
            "AUTH_PORT": str(auth.port),
            "DATABASE_PORT": str(database.port),
            "OUTBOUND": "127.0.0.1:0",
            "ADMIN": "127.0.0.1:0",
            "INBOUND": "127.0.0.1:0",
            "NODE_NAME": "node-b",
        }.items():
            monkeypatch.setenv(name, value)
        async with fleet(Path(example), "--workers", "2") as node_b:
            monkeypatch.setenv("NODE_NAME", "node-a")
            monkeypatch.setenv("NODE_B_INBOUND", f"127.0.0.1:{node_b.listener_ports['inbound']}")
            async with fleet(Path(example), "--workers", "2") as node_a:
                url = f"http://127.0.0.1:{node_a.listener_ports['outbound']}/"
                web = ("--interface", "127.0.0.2")
                for _ in range(4):  # new connections each: both workers of each node serve
                    assert await _curl(*web, "-H", "Host: auth-api.shop", url) == (0, "200")
                    assert await _curl(*web, "-H", "Host: database.shop", url) == (0, "403")
                assert len(auth.requests) == 4
                assert database.requests == []
                samples = await scrape(node_b.admin_port)
                # allowed requests ride pooled CONNECT tunnels (a decision per tunnel), the
                # denied ones are refused there: node-b's workers decided on every one
                assert total(samples, "nodeproxy_policy_denied_total") == 4
                assert total(samples, "nodeproxy_policy_allowed_total") >= 1


async def _curl(*args: str) -> tuple[int, str]:
    with trio.fail_after(20):
        done = await trio.run_process(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, done.stdout.decode()
