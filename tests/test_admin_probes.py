"""The probe listener (``admin.probe_address``): the kubelet's two paths, nothing else.

The DaemonSet keeps the admin API (``POST /drain``, ``/config_dump``) on
127.0.0.1 and points its probes at this second listener. Checked with real
sockets through ``run_app``: ``/ready`` and ``/healthz`` answer as on the admin
port, whatever the Host; every other path is 404 and ``POST /drain`` changes
nothing; the config rejects a probe address that is malformed or collides.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import httpx
import pytest
import trio
import trio.testing

from nodeproxy.app import AppHandle, run_app
from nodeproxy.config import load_config_text
from nodeproxy.errors import ConfigError

CONFIG = """
admin:
  address: 127.0.0.1:0
  probe_address: 127.0.0.1:0
listeners:
  - address: 127.0.0.1:0
services:
  - name: web
    endpoints: [{address: "127.0.0.1:9"}]
"""


@asynccontextmanager
async def app(text: str = CONFIG) -> AsyncIterator[AppHandle]:
    async with trio.open_nursery() as nursery:
        handle: AppHandle = await nursery.start(
            partial(run_app, load_config_text(text), handle_signals=False)
        )
        yield handle
        handle.runtime.drain.start("test")


def client(port: int | None) -> httpx.AsyncClient:
    assert port is not None
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False)


async def test_probe_port_answers_ready_and_healthz_for_any_host() -> None:
    async with app() as handle, client(handle.probe_port) as probes:
        assert handle.probe_port not in (None, handle.admin_port)
        for host in ("127.0.0.1", "10.1.2.3:9902", "evil.example"):
            r = await probes.get("/ready", headers={"host": host})
            assert (r.status_code, r.text) == (200, "LIVE\n")
            r = await probes.get("/healthz", headers={"host": host})
            assert (r.status_code, r.text) == (200, "ok\n")
        # A pod's connection accepted just before the drain (no request yet) keeps the app
        # draining, up to its 1 s grace, instead of stopping at once with nothing in flight.
        port = next(iter(handle.listener_ports.values()))
        pod = await trio.open_tcp_stream("127.0.0.1", port)
        await trio.testing.wait_all_tasks_blocked()  # accepted
        handle.runtime.drain.start("test")
        r = await probes.get("/ready")
        assert r.status_code == 503  # draining: the same answer as the admin port's
        assert (await probes.get("/healthz")).status_code == 200
        await pod.aclose()


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/drain"), ("GET", "/config_dump"), ("GET", "/stats"), ("GET", "/")],
)
async def test_probe_port_refuses_the_admin_api(method: str, path: str) -> None:
    async with app() as handle, client(handle.probe_port) as probes:
        r = await probes.request(method, path, headers={"host": "127.0.0.1"})
        assert r.status_code == 404
        assert r.headers["x-nodeproxy-error"] == "admin_not_a_probe_path"
        assert "web" not in r.text
        assert not handle.runtime.drain.draining
        async with client(handle.admin_port) as admin:  # the admin port still has it all
            assert (await admin.get("/config_dump")).status_code == 200


async def test_no_probe_listener_unless_configured() -> None:
    async with app(CONFIG.replace("  probe_address: 127.0.0.1:0\n", "")) as handle:
        assert handle.probe_port is None


@pytest.mark.parametrize(
    ("probe", "message"),
    [
        ("not-an-address", "admin.probe_address"),
        ("127.0.0.1:9901", "also used by admin.address"),
    ],
)
def test_probe_address_errors_name_the_field(probe: str, message: str) -> None:
    text = f"admin:\n  address: 127.0.0.1:9901\n  probe_address: {probe}\nservices: []\n"
    with pytest.raises(ConfigError, match=message):
        load_config_text(text)
