"""A handoff between two supervisors: ``--workers 2 --handoff-socket S`` replaces a running
fleet under load, with no failed request, and the old supervisor exits 0."""

from __future__ import annotations

import signal
from pathlib import Path

import trio

from tests.helpers.backends import backend
from tests.helpers.load import steady_load
from tests.helpers.proc import running_nodeproxy
from tests.test_handoff import DEADLINE, HOST, requests_served, run_args, write_config


async def test_a_fleet_hands_over_to_a_new_fleet_under_load(tmp_path: Path) -> None:
    handoff = tmp_path / "handoff.sock"
    async with backend() as upstream:
        config = write_config(tmp_path, upstream.port)
        args = (*run_args(config, handoff), "--workers", "2")
        async with running_nodeproxy(*args) as old:
            port = old.listener_ports["outbound"]
            with trio.fail_after(DEADLINE):
                async with steady_load(port, HOST, keepalive=4, fresh=4) as load:
                    await load.wait_for(200)
                    async with running_nodeproxy(*args) as new:
                        started = new.lines[-1]
                        assert started["handoff_from"] == old.process.pid
                        assert started["workers"] == 2
                        assert new.listener_ports == old.listener_ports
                        assert new.admin_port == old.admin_port
                        assert await old.wait_exit() == 0
                        served_by_old = load.ok
                        await load.wait_for(200)
                        await load.finish()
                        assert await requests_served(new.admin_port) > 0
                        new.signal(signal.SIGTERM)
                        assert await new.wait_exit() == 0
    assert load.failures == []
    assert load.retried <= 4  # at most one per keep-alive client: its connection to the old one
    assert served_by_old >= 200
    assert load.ok >= served_by_old + 200
    assert not handoff.exists()
