"""The `nodeproxy` command end to end, as an operator runs it: real process, real curl.

Covers check-config's exit codes and messages, the seed lab's Envoy bootstrap
running unchanged but for its addresses, and SIGTERM draining a request that
is in flight.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from nodeproxy.demo.greeter import serve_greeter
from tests.helpers.backends import backend
from tests.helpers.proc import running_nodeproxy

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nodeproxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_accepts_the_example_and_the_seed() -> None:
    for path in (ROOT / "examples" / "nodeproxy.yaml", DATA / "seed-envoy.yaml"):
        done = run_cli("check-config", str(path))
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("ok: ")


def test_check_config_names_the_field_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("services:\n  - name: web\n    endpoints:\n      - address: 127.0.0.1:99999\n")
    done = run_cli("check-config", str(bad))
    assert done.returncode == 1
    assert "services[0].endpoints[0].address" in done.stderr
    assert f"{bad}:4" in done.stderr


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    done = run_cli("run", "--config", str(tmp_path / "nope.yaml"))
    assert done.returncode == 1
    assert "nope.yaml" in done.stderr
    assert "Traceback" not in done.stderr


def test_help_is_written_for_users() -> None:
    done = run_cli("--help")
    assert done.returncode == 0
    assert done.stdout.startswith("usage: nodeproxy ")
    assert "service-mesh proxy for Kubernetes" in done.stdout
    assert "nodeproxy run --config examples/nodeproxy.yaml" in done.stdout
    assert "exit status:" in done.stdout
    assert "trio.run" not in done.stdout  # not the module docstring for developers
    run = run_cli("run", "--help")
    assert "POST /drain" in run.stdout


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_listener_port_in_use_is_one_line_naming_the_address_and_errno(
    tmp_path: Path, workers: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "np.yaml"
        config.write_text(f"""
listeners:
  - {{name: outbound, address: "127.0.0.1:{port}"}}
admin: {{address: "127.0.0.1:0"}}
services:
  - name: web
    endpoints: [{{address: "127.0.0.1:9"}}]
""")
        done = run_cli("run", "--workers", workers, "--config", str(config))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"nodeproxy: cannot start: listener outbound: cannot listen on 127.0.0.1:{port}: "
        f"Address already in use (EADDRINUSE, errno {errno.EADDRINUSE})"
    ]


def seed_envoy_on_loopback(greeter_port: int) -> str:
    """The seed lab's envoy.yaml with only its addresses changed, as the issue demands."""
    text = (DATA / "seed-envoy.yaml").read_text()
    text = text.replace("172.17.0.1", "127.0.0.1").replace(
        "port_value: 3000", f"port_value: {greeter_port}"
    )
    text = text.replace("port_value: 80\n", "port_value: 0\n").replace(
        "port_value: 8081", "port_value: 0"
    )
    return text.replace("address: 0.0.0.0", "address: 127.0.0.1")


async def test_seed_envoy_yaml_runs_end_to_end(tmp_path: Path, nursery: trio.Nursery) -> None:
    greeter_port = await nursery.start(partial(serve_greeter, "127.0.0.1", 0, "seed"))
    config = tmp_path / "envoy.yaml"
    config.write_text(seed_envoy_on_loopback(greeter_port))
    async with running_nodeproxy("run", "--config", str(config), "--log-format", "json") as proxy:
        port = proxy.listener_ports["listener_0"]
        curl = await trio.run_process(
            ["curl", "-sS", "-i", "-X", "POST", "-H", "content-type: application/json",
             "-d", '{"dateOfBirth":"1990-02-30"}', f"http://127.0.0.1:{port}/hello/Magalixcorp"],
            capture_stdout=True,
        )  # fmt: skip
        out = curl.stdout.decode()
        assert out.startswith("HTTP/1.1 400"), out  # Feb 30th: the greeter itself says so
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            ok = await client.post("/hello/Magalixcorp", json={"dateOfBirth": "1990-01-15"})
            assert ok.status_code == 200
            assert ok.json()["message"].startswith("Hello, Magalixcorp!")
            assert ok.headers["x-greeter-replica"] == "seed"
            miss = await client.get("/nothere")
            assert miss.status_code == 404
            assert miss.headers["x-nodeproxy-error"] == "no_route"
        async with httpx.AsyncClient() as admin:
            ready = await admin.get(f"http://127.0.0.1:{proxy.admin_port}/ready")
            assert ready.status_code == 200
        proxy.signal(signal.SIGTERM)
        assert await proxy.wait_exit() == 0


async def test_sigterm_drains_a_request_in_flight(tmp_path: Path) -> None:
    async with backend() as upstream:
        config = tmp_path / "nodeproxy.yaml"
        config.write_text(
            "listeners: [{name: outbound, address: '127.0.0.1:0'}]\n"
            "admin: {address: '127.0.0.1:0'}\n"
            "limits: {drain_timeout: 20s}\n"
            "services:\n"
            f"  - name: slow\n    endpoints: ['127.0.0.1:{upstream.port}']\n"
        )
        async with running_nodeproxy("run", "--config", str(config)) as proxy:
            port = proxy.listener_ports["outbound"]
            results: list[httpx.Response] = []

            async def client() -> None:
                async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{port}") as c:
                    results.append(await c.get("http://slow/wait", timeout=30))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(client)
                with trio.fail_after(10):
                    await upstream.arrived.wait()
                proxy.signal(signal.SIGTERM)
                await proxy.read_event("draining")
                async with httpx.AsyncClient() as admin:
                    ready = await admin.get(f"http://127.0.0.1:{proxy.admin_port}/ready")
                assert ready.status_code == 503
                assert "draining" in ready.text
                upstream.release.set()
            (answer,) = results
            assert answer.status_code == 200
            assert answer.headers["connection"] == "close"
            assert await proxy.wait_exit() == 0
            with trio.fail_after(5):
                refused = await trio.run_process(
                    ["curl", "-sS", "-o", "/dev/null", f"http://127.0.0.1:{port}/"],
                    check=False,
                    capture_stderr=True,
                )
            assert refused.returncode == 7  # curl: couldn't connect, the listener is gone


async def test_demo_serves_the_curl_lines_it_prints() -> None:
    """Every curl line of the banner ``nodeproxy demo`` prints, run as printed, does
    what the comment above it says."""
    proxies = ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")  # curl must go direct
    curl_env = {k: v for k, v in os.environ.items() if k not in proxies}
    async with running_nodeproxy(
        "demo", "--port", "0", "--admin-port", "0", env=dict.fromkeys(proxies)
    ) as demo:
        banner = await demo.read_text(until="Ctrl-C drains")
        curls = [line.strip() for line in banner if line.strip().startswith("curl ")]
        outputs = []
        for line in [*curls, curls[2]]:  # the GET twice: the replicas alternate
            done = await trio.run_process(
                shlex.split(line), capture_stdout=True, capture_stderr=True, env=curl_env
            )
            outputs.append(done.stdout.decode())
        birthday, with_host, get, unknown, no_route, clusters, prometheus, ready, get2 = outputs
        for out in (birthday, with_host):
            assert json.loads(out) == {"message": "Hello, Magalixcorp! Happy birthday"}
        assert get.startswith("HTTP/1.1 200")
        assert get2.startswith("HTTP/1.1 200")
        assert {_header(get, "x-greeter-replica"), _header(get2, "x-greeter-replica")} == {"a", "b"}
        assert unknown.startswith("HTTP/1.1 404")
        assert _header(unknown, "x-nodeproxy-error") == "unknown_service"
        assert no_route.startswith("HTTP/1.1 404")
        assert _header(no_route, "x-nodeproxy-error") == "no_route"
        (cluster,) = json.loads(clusters)["clusters"]
        assert (cluster["name"], len(cluster["endpoints"])) == ("bdgreeter", 2)
        assert "# TYPE nodeproxy_" in prometheus
        assert ready.startswith("HTTP/1.1 200")
        demo.signal(signal.SIGINT)
        assert await demo.wait_exit() == 0


def _header(response: str, name: str) -> str:
    """A header's value in ``curl -i`` output ("" when absent)."""
    for line in response.splitlines():
        key, _, value = line.partition(":")
        if key.lower() == name:
            return value.strip()
    return ""
