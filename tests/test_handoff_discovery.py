"""Handoff with Kubernetes discovery: the new process serves only once it has synced.

A process taking over from a running, synced predecessor starts its listeners
after its own first discovery sync; otherwise every pod on the node would get
503 ``not_synced`` from it during the sync while the old process, which had
every endpoint, was already draining. When the API server cannot be reached,
nothing is handed over: the old process keeps serving, the new one exits 1
with the reason. Real ``nodeproxy run`` processes, the fake API server, loopback.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import httpx
import pytest
import trio

from tests.fakes.apiserver import fake_apiserver
from tests.fakes.k8s_objects import node
from tests.helpers.backends import free_port
from tests.helpers.load import steady_load
from tests.helpers.proc import running_nodeproxy
from tests.test_k8s_wiring import POD_A, POD_B, backends, greeter_objects, kubeconfig
from tests.test_workers import until

DEADLINE = 60.0


async def until_ready(admin_port: int) -> None:
    async def ready() -> bool:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"http://127.0.0.1:{admin_port}/ready")).status_code == 200

    await until(ready, 10.0)


def write_config(tmp_path: Path, kubeconfig_path: Path, workers: int) -> str:
    """Fixed ports: a successor that failed to take over cannot quietly bind others."""
    path = tmp_path / "nodeproxy.yaml"
    path.write_text(
        f"workers: {workers}\nnode_name: node-1\nhandoff_timeout: 5s\n"
        f"listeners: [{{name: outbound, address: '127.0.0.1:{free_port()}'}}]\n"
        f"admin: {{address: '127.0.0.1:{free_port()}'}}\n"
        "log: {access_log: false}\n"
        f"discovery:\n  kubernetes: {{kubeconfig: {kubeconfig_path}}}\n"
    )
    return str(path)


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
async def test_taking_over_waits_for_the_first_sync_and_an_unsynced_one_hands_nothing_over(
    tmp_path: Path, workers: int
) -> None:
    handoff = tmp_path / "handoff.sock"
    async with fake_apiserver() as api, backends(POD_A, POD_B) as (a, _):
        greeter_objects(api, a.port, ("node-1", "node-1"))
        api.add("nodes", node("node-1", "127.0.0.1"))
        config = write_config(tmp_path, kubeconfig(tmp_path / "kc", api), workers)
        args = ("run", "--config", config, "--handoff-socket", str(handoff), "--log-format", "json")
        async with running_nodeproxy(*args) as old:
            port = old.listener_ports["outbound"]
            await until_ready(old.admin_port)  # a fresh start serves before its first sync
            with trio.fail_after(DEADLINE):
                async with steady_load(
                    port, "bdgreeter", keepalive=2, fresh=2, max_requests=100_000
                ) as load:
                    await load.wait_for(100)
                    # The API server goes away: a successor can never sync.
                    api.go_down()
                    unsynced = await trio.run_process(
                        [sys.executable, "-m", "nodeproxy", *args],
                        capture_stdout=True,
                        capture_stderr=True,
                        check=False,
                    )
                    assert unsynced.returncode == 1
                    assert b"discovery did not sync within 4s" in unsynced.stderr
                    assert f"pid {old.process.pid} keeps serving".encode() in unsynced.stderr
                    assert old.process.returncode is None
                    before = load.ok
                    await load.wait_for(100)  # the old process still serves, still synced
                    assert load.ok >= before + 100

                    # Back up: the next successor syncs first, then takes over.
                    api.go_up()
                    async with running_nodeproxy(*args) as new:
                        assert new.lines[-1]["handoff_from"] == old.process.pid
                        assert await old.wait_exit() == 0
                        await load.wait_for(200)
                        await load.finish()
                        new.signal(signal.SIGTERM)
                        assert await new.wait_exit() == 0
    assert load.failures == []  # not one 503 not_synced, before or after
    events = [line["event"] for line in old.lines]
    assert events.count("handoff_done_draining") == 1
