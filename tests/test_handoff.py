"""Hitless handoff end to end: real ``nodeproxy run`` processes, real sockets on loopback.

A second process started with the same ``--handoff-socket`` takes over the
listening sockets (admin included) of the running one, which drains and
exits 0, while clients keep sending; the fallbacks (the old process killed,
or not answering) bind afresh; a third process while a handoff is running
is refused with the reason.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from tests.helpers.backends import backend, free_port
from tests.helpers.load import steady_load
from tests.helpers.proc import RunningProxy, running_nodeproxy

HOST = "svc.default"
DEADLINE = 60.0


def write_config(
    tmp_path: Path,
    upstream_port: int,
    *,
    port: int = 0,
    admin_port: int = 0,
    extra: str = "",
) -> str:
    path = tmp_path / "nodeproxy.yaml"
    path.write_text(
        f"listeners: [{{name: outbound, address: '127.0.0.1:{port}'}}]\n"
        f"admin: {{address: '127.0.0.1:{admin_port}'}}\n"
        "log: {access_log: false}\n"
        f"services:\n  - name: svc\n    endpoints: ['127.0.0.1:{upstream_port}']\n" + extra
    )
    return str(path)


def run_args(config: str, handoff: Path) -> tuple[str, ...]:
    return ("run", "--config", config, "--handoff-socket", str(handoff), "--log-format", "json")


async def requests_served(admin_port: int) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{admin_port}/stats/prometheus")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("nodeproxy_requests_total{")
    )


async def test_handoff_under_load_loses_no_request_and_the_old_process_exits_0(
    tmp_path: Path,
) -> None:
    handoff = tmp_path / "handoff.sock"
    async with backend() as upstream:
        config = write_config(tmp_path, upstream.port)
        async with running_nodeproxy(*run_args(config, handoff)) as old:
            port = old.listener_ports["outbound"]
            with trio.fail_after(DEADLINE):
                async with steady_load(port, HOST, keepalive=4, fresh=4) as load:
                    await load.wait_for(200)
                    async with running_nodeproxy(*run_args(config, handoff)) as new:
                        started = new.lines[-1]
                        assert started["handoff_from"] == old.process.pid
                        assert started["inherited"] == ["admin", "listener/outbound"]
                        assert new.listener_ports == old.listener_ports
                        assert new.admin_port == old.admin_port
                        assert await old.wait_exit() == 0
                        served_by_old = load.ok
                        await load.wait_for(200)
                        await load.finish()
                        assert await requests_served(new.admin_port) > 0
                        assert handoff.is_socket()  # the new process owns the path now
                        new.signal(signal.SIGTERM)
                        assert await new.wait_exit() == 0
    print(f"ok={load.ok} retried={load.retried} by_old={served_by_old}")
    assert load.failures == []
    assert load.retried <= 4  # at most one per keep-alive client: its connection to the old one
    assert served_by_old >= 200
    assert load.ok >= served_by_old + 200
    events = [line["event"] for line in old.lines]
    assert "handoff_done_draining" in events
    assert not handoff.exists()  # released by the last process on its way out


async def test_fallback_binds_afresh_when_the_old_process_is_gone(tmp_path: Path) -> None:
    handoff = tmp_path / "handoff.sock"
    port, admin_port = free_port(), free_port()
    async with backend() as upstream:
        config = write_config(tmp_path, upstream.port, port=port, admin_port=admin_port)
        async with running_nodeproxy(*run_args(config, handoff)) as old:
            old.signal(signal.SIGKILL)
            assert await old.wait_exit() == -signal.SIGKILL
        assert handoff.is_socket()  # left behind: nobody listens there any more
        with trio.fail_after(DEADLINE):
            async with running_nodeproxy(*run_args(config, handoff)) as new:
                assert "handoff_stale_socket" in [line["event"] for line in new.lines]
                assert new.listener_ports["outbound"] == port  # bound afresh, same address
                assert "handoff_from" not in new.lines[-1]
                async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{port}") as client:
                    assert (await client.get(f"http://{HOST}/after")).status_code == 200
                new.signal(signal.SIGTERM)
                assert await new.wait_exit() == 0


async def test_fallback_when_the_process_at_the_path_does_not_answer(tmp_path: Path) -> None:
    handoff = tmp_path / "handoff.sock"
    async with backend() as upstream:
        config = write_config(tmp_path, upstream.port, extra="handoff_timeout: 1s\n")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as hung:
            hung.bind(str(handoff))
            hung.listen(4)  # connects succeed, nobody ever reads or answers
            with trio.fail_after(DEADLINE):
                async with running_nodeproxy(*run_args(config, handoff)) as new:
                    no_answer = [ln for ln in new.lines if ln["event"] == "handoff_no_answer"]
                    assert no_answer[0]["timeout_s"] == 1.0
                    port = new.listener_ports["outbound"]
                    async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{port}") as client:
                        assert (await client.get(f"http://{HOST}/x")).status_code == 200
                    new.signal(signal.SIGTERM)
                    assert await new.wait_exit() == 0


async def run_to_exit(*args: str) -> tuple[int, str]:
    done = await trio.run_process(
        [sys.executable, "-m", "nodeproxy", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return done.returncode, done.stderr.decode()


async def test_a_second_handoff_while_one_runs_is_refused(tmp_path: Path) -> None:
    """While the old process still drains a request, a third process is refused (exit 1,
    the reason on stderr); once the old one exited, the next handoff goes through."""
    handoff = tmp_path / "handoff.sock"
    answers: list[httpx.Response] = []
    async with backend() as upstream:
        config = write_config(tmp_path, upstream.port)
        async with running_nodeproxy(*run_args(config, handoff)) as old:
            port = old.listener_ports["outbound"]

            async def in_flight() -> None:
                async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{port}") as client:
                    answers.append(await client.get(f"http://{HOST}/wait", timeout=30))

            with trio.fail_after(DEADLINE):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(in_flight)
                    await upstream.arrived.wait()
                    async with running_nodeproxy(*run_args(config, handoff)) as new:
                        await old.read_event("draining")  # held open by the request in flight
                        code, stderr = await run_to_exit(*run_args(config, handoff))
                        assert code == 1
                        assert "cannot start: handoff refused" in stderr
                        assert f"still taking over from pid {old.process.pid}" in stderr
                        assert "Traceback" not in stderr
                        upstream.release.set()
                        assert await old.wait_exit() == 0
                        await new.read_event("handoff_predecessor_done")
                        await hand_over_again(config, handoff, new)
    (answer,) = answers
    assert answer.status_code == 200
    assert answer.headers["connection"] == "close"


async def hand_over_again(config: str, handoff: Path, current: RunningProxy) -> None:
    async with running_nodeproxy(*run_args(config, handoff)) as third:
        assert third.lines[-1]["handoff_from"] == current.process.pid
        assert await current.wait_exit() == 0
        third.signal(signal.SIGTERM)
        assert await third.wait_exit() == 0


async def test_after_handoff_wait_holds_the_old_process_until_a_signal(tmp_path: Path) -> None:
    """For a container that must not restart (and take the sockets back) once handed off."""
    handoff = tmp_path / "handoff.sock"
    async with backend() as upstream:
        config = write_config(tmp_path, upstream.port, extra="after_handoff: wait\n")
        with trio.fail_after(DEADLINE):
            async with running_nodeproxy(*run_args(config, handoff)) as old:
                async with running_nodeproxy(*run_args(config, handoff)) as new:
                    await old.read_event("handed_off_waiting_for_signal")  # drained, "done" sent
                    await new.read_event("handoff_predecessor_done")
                    assert old.process.returncode is None
                    old.signal(signal.SIGTERM)
                    assert await old.wait_exit() == 0
                    new.signal(signal.SIGTERM)
                    assert await new.wait_exit() == 0


def test_handoff_settings_are_checked(tmp_path: Path) -> None:
    base = write_config(tmp_path, 1)
    too_long = "/run/" + "x" * 100
    for extra, error in (
        (f"handoff_socket: {too_long}\n", "handoff_socket: path over 96 bytes"),
        ("after_handoff: later\n", "unsupported value 'later'"),
        ("handoff_timeout: soon\n", "handoff_timeout"),
    ):
        path = tmp_path / "bad.yaml"
        path.write_text(Path(base).read_text() + extra)
        done = subprocess.run(
            [sys.executable, "-m", "nodeproxy", "check-config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1, extra
        assert error in done.stderr, done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "nodeproxy", "run", "-c", base, "--handoff-socket", too_long],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--handoff-socket: path over 96 bytes" in done.stderr
